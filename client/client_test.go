package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/pouchmail/pouch/pop3"
)

func dialFake(t *testing.T, fs *fakeServer) *Client {
	t.Helper()
	c, err := Dial(context.Background(), fs.Addr, Options{TLS: TLSNone, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readAll(t *testing.T, rc io.ReadCloser, err error) string {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSessionUserPass(t *testing.T) {
	fs := newFake(t, `
		S: +OK hello
		C: CAPA
		S: +OK caps
		S: USER
		S: TOP
		S: UIDL
		S: .
		C: USER alice
		S: +OK
		C: PASS pass word
		S: +OK logged in
		C: STAT
		S: +OK 2 30
		C: LIST
		S: +OK
		S: 1 10
		S: 2 20
		S: .
		C: UIDL
		S: +OK
		S: 1 abc
		S: 2 d.e
		S: .
		C: UIDL 2
		S: +OK 2 d.e
		C: LIST 1
		S: +OK 1 10
		C: RETR 1
		S: +OK
		S: ..leading dot
		S: ...two
		S: plain
		S: .
		C: TOP 2 0
		S: +OK
		S: Subject: x
		S:
		S: .
		C: DELE 1
		S: +OK
		C: RSET
		S: +OK
		C: NOOP
		S: +OK
		C: QUIT
		S: +OK bye`)
	c := dialFake(t, fs)
	if c.Greeting() != "hello" {
		t.Errorf("greeting %q", c.Greeting())
	}
	mech, err := c.Login(Credentials{User: "alice", Password: "pass word"})
	if err != nil || mech != "USER" {
		t.Fatalf("login: %v %v", mech, err)
	}
	n, size, err := c.Stat()
	if err != nil || n != 2 || size != 30 {
		t.Fatalf("stat %d %d %v", n, size, err)
	}
	l, err := c.List()
	if err != nil || len(l) != 2 || l[1].Size != 20 {
		t.Fatalf("list %v %v", l, err)
	}
	u, err := c.Uidl()
	if err != nil || len(u) != 2 || u[1].UID != "d.e" {
		t.Fatalf("uidl %v %v", u, err)
	}
	if uid, err := c.UidlOne(2); err != nil || uid != "d.e" {
		t.Fatalf("uidl 2: %q %v", uid, err)
	}
	if s, err := c.ListOne(1); err != nil || s != 10 {
		t.Fatalf("list 1: %d %v", s, err)
	}
	rc, err := c.Retr(1)
	if got := readAll(t, rc, err); got != ".leading dot\r\n..two\r\nplain\r\n" {
		t.Errorf("retr %q", got)
	}
	rc, err = c.Top(2, 0)
	if got := readAll(t, rc, err); got != "Subject: x\r\n\r\n" {
		t.Errorf("top %q", got)
	}
	for _, f := range []func() error{func() error { return c.Dele(1) }, c.Rset, c.Noop, c.Quit} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestErrReplies(t *testing.T) {
	fs := newFake(t, `
		S: +OK hello
		C: RETR 9
		S: -ERR [SYS/TEMP] no such message
		C: NOOP
		S: +OK`)
	c := dialFake(t, fs)
	_, err := c.Retr(9)
	var pe *pop3.Error
	if !errors.As(err, &pe) || pe.Code != pop3.CodeSysTemp {
		t.Fatalf("got %v", err)
	}
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
}

func TestAPOP(t *testing.T) {
	// RFC 1939 §7 example.
	fs := newFake(t, `
		S: +OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>
		C: CAPA
		S: -ERR unknown command
		C: APOP mrose c4c9334bac560ecc979e58001b3e22fb
		S: +OK maildrop has 1 message (369 octets)`)
	c := dialFake(t, fs)
	mech, err := c.Login(Credentials{User: "mrose", Password: "tanstaaf"})
	if err != nil || mech != "APOP" {
		t.Fatalf("%s %v", mech, err)
	}
}

func TestSASLMechanisms(t *testing.T) {
	for _, tc := range []struct {
		name, script string
		cred         Credentials
	}{
		{"PLAIN", `
			C: AUTH PLAIN AGFsaWNlAHNlY3JldA==
			S: +OK`, Credentials{User: "alice", Password: "secret"}},
		{"LOGIN", `
			C: AUTH LOGIN YWxpY2U=
			S: + UGFzc3dvcmQ6
			C: c2VjcmV0
			S: +OK`, Credentials{User: "alice", Password: "secret"}},
		{"XOAUTH2", `
			C: AUTH XOAUTH2 dXNlcj1hbGljZQFhdXRoPUJlYXJlciB0b2sBAQ==
			S: +OK`, Credentials{User: "alice", OAuthToken: "tok"}},
		{"OAUTHBEARER", `
			C: AUTH OAUTHBEARER [A-Za-z0-9+/=]+
			S: +OK`, Credentials{User: "alice", OAuthToken: "tok", Host: "h", Port: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := newFake(t, `
				S: +OK hi
				C: CAPA
				S: +OK
				S: SASL `+tc.name+`
				S: .`+tc.script)
			c := dialFake(t, fs)
			mech, err := c.Login(tc.cred)
			if err != nil || mech != tc.name {
				t.Fatalf("%s %v", mech, err)
			}
		})
	}
}

func TestAuthFailureCancel(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: AUTH XOAUTH2 .*
		S: + eyJzdGF0dXMiOiI0MDEifQ==
		C: 
		S: -ERR [AUTH] invalid token`)
	c := dialFake(t, fs)
	err := c.Auth(NewXOAuth2Client("a", "b"))
	var pe *pop3.Error
	if !errors.As(err, &pe) || pe.Code != pop3.CodeAuth {
		t.Fatalf("got %v", err)
	}
}

func TestStrongestMechanism(t *testing.T) {
	// Cleartext: APOP beats PLAIN; no USER in CAPA means USER/PASS is never tried.
	fs := newFake(t, `
		S: +OK hi <1.2@x>
		C: CAPA
		S: +OK
		S: SASL PLAIN LOGIN
		S: .
		C: APOP a [0-9a-f]{32}
		S: +OK`)
	c := dialFake(t, fs)
	if m, err := c.Login(Credentials{User: "a", Password: "b"}); err != nil || m != "APOP" {
		t.Fatalf("%s %v", m, err)
	}
	fs = newFake(t, `
		S: +OK hi
		C: CAPA
		S: +OK
		S: SASL LOGIN PLAIN
		S: .
		C: AUTH PLAIN .*
		S: -ERR [AUTH] no`)
	c = dialFake(t, fs)
	if m, err := c.Login(Credentials{User: "a", Password: "b"}); err == nil || m != "PLAIN" {
		t.Fatalf("%s %v", m, err)
	}
}

func TestPipelinedRetrAndDele(t *testing.T) {
	// The script only answers after both RETRs arrived: a client that waited
	// for each reply would hang here.
	fs := newFake(t, `
		S: +OK hi
		C: CAPA
		S: +OK
		S: PIPELINING
		S: .
		C: RETR 1
		C: RETR 2
		S: +OK
		S: one
		S: .
		S: +OK
		S: two
		S: .
		C: DELE 1
		C: DELE 2
		C: RETR 3
		S: +OK
		S: -ERR gone
		S: +OK
		S: three
		S: .
		C: QUIT
		S: +OK`)
	c := dialFake(t, fs)
	if _, err := c.Capa(); err != nil {
		t.Fatal(err)
	}
	if !c.Pipelining() {
		t.Fatal("no pipelining")
	}
	for _, n := range []int{1, 2} {
		if err := c.SendRetr(n); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"one\r\n", "two\r\n"} {
		rc, err := c.ReadRetr()
		if got := readAll(t, rc, err); got != want {
			t.Errorf("got %q want %q", got, want)
		}
	}
	var errs []error
	for _, n := range []int{1, 2} {
		if err := c.SendDele(n, func(err error) { errs = append(errs, err) }); err != nil {
			t.Fatal(err)
		}
	}
	c.SendRetr(3)
	rc, err := c.ReadRetr()
	if got := readAll(t, rc, err); got != "three\r\n" {
		t.Errorf("got %q", got)
	}
	if len(errs) != 2 || errs[0] != nil || errs[1] == nil {
		t.Errorf("dele results %v", errs)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

func TestNoPipeliningNeverPipelines(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: CAPA
		S: +OK
		S: UIDL
		S: .
		C: DELE 1
		S: +OK
		C: RETR 2
		S: +OK
		S: x
		S: .`)
	c := dialFake(t, fs)
	c.Capa()
	if err := c.SendDele(1, nil); err != nil {
		t.Fatal(err)
	}
	// Without PIPELINING the DELE reply is read before RETR goes out.
	if err := c.SendRetr(2); err != nil {
		t.Fatal(err)
	}
	if err := c.SendRetr(3); !errors.Is(err, ErrNoPipelining) {
		t.Fatalf("second RETR: %v", err)
	}
	rc, err := c.ReadRetr()
	readAll(t, rc, err)
}

func TestGreetingTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c) // never greets
		}
	}()
	start := time.Now()
	_, err = Dial(context.Background(), l.Addr().String(), Options{TLS: TLSNone, DialTimeout: 200 * time.Millisecond})
	if err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("err %v after %v", err, time.Since(start))
	}
	// Cancelling the context stops the wait too.
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if _, err := Dial(ctx, l.Addr().String(), Options{TLS: TLSNone}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled dial: %v", err)
	}
}

func TestMissingFinalDot(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: RETR 1
		S: +OK
		S: partial line
		S! no end
		CLOSE`)
	c := dialFake(t, fs)
	rc, err := c.Retr(1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(rc)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("got %v", err)
	}
	if err := c.Noop(); err == nil {
		t.Fatal("connection still usable after a broken body")
	}
}

func TestHugeLinesAndBinary(t *testing.T) {
	big := strings.Repeat("x", 3<<20)
	fs := newFake(t, "S: +OK hi\nC: RETR 1\nS: +OK\nS: "+big+"\nS! a\\rb\x00c\\n.\\r\\n..x\\r\\n.\\r\\n")
	c := dialFake(t, fs)
	rc, err := c.Retr(1)
	got := readAll(t, rc, err)
	want := big + "\r\na\rb\x00c\n.\r\n.x\r\n"
	if got != want {
		t.Fatalf("body differs: len %d want %d", len(got), len(want))
	}
}

func TestOneByteReads(t *testing.T) {
	fs := newFake(t, "S: +OK hi\nC: RETR 1\nS: +OK\nS: ..a\nS: b\nS: .")
	c := dialFake(t, fs)
	rc, err := c.Retr(1)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	p := make([]byte, 1)
	for {
		n, err := rc.Read(p)
		buf.Write(p[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if buf.String() != ".a\r\nb\r\n" {
		t.Fatalf("%q", buf.String())
	}
}

func TestSTLSInjectionRefused(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: STLS
		S: +OK go ahead
		S: +OK injected`)
	c := dialFake(t, fs)
	if err := c.StartTLS(nil); err == nil || !strings.Contains(err.Error(), "after STLS") {
		t.Fatalf("got %v", err)
	}
}

func TestSTLSRefusedNoFallback(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: STLS
		S: -ERR no TLS here`)
	_, err := Dial(context.Background(), fs.Addr, Options{TLS: TLSStartTLS, Timeout: 5 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "STLS refused") {
		t.Fatalf("got %v", err)
	}
}

func TestBadArgumentNotSent(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: NOOP
		S: +OK`)
	c := dialFake(t, fs)
	if err := c.User("a\r\nDELE 1"); !errors.Is(err, pop3.ErrBadLine) {
		t.Fatalf("got %v", err)
	}
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
}

var _ sasl.Client = (*scramMech)(nil)

// Multi-line replies are capped in lines and octets.
func TestMultiLineReplyCap(t *testing.T) {
	oldLines, oldBytes := maxMultiLines, maxMultiBytes
	defer func() { maxMultiLines, maxMultiBytes = oldLines, oldBytes }()
	maxMultiLines, maxMultiBytes = 5, 1<<20
	fs := newFake(t, `
		S: +OK hi
		C: LIST
		S: +OK
		S: 1 1
		S: 2 1
		S: 3 1
		S: 4 1
		S: 5 1
		S: 6 1
		S: .
		CLOSE`)
	c := dialFake(t, fs)
	if _, err := c.List(); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("got %v", err)
	}
	maxMultiLines, maxMultiBytes = 100, 20
	fs = newFake(t, `
		S: +OK hi
		C: UIDL
		S: +OK
		S: 1 aaaaaaaaaa
		S: 2 bbbbbbbbbb
		S: .
		CLOSE`)
	c = dialFake(t, fs)
	if _, err := c.Uidl(); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("got %v", err)
	}
}

// With PIPELINING, LIST and UIDL go out together; a -ERR to UIDL is
// reported apart.
func TestListUidlPipelined(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: CAPA
		S: +OK
		S: PIPELINING
		S: .
		C: LIST
		C: UIDL
		S: +OK
		S: 1 10
		S: 2 20
		S: .
		S: +OK
		S: 1 a
		S: 2 b
		S: .
		C: LIST
		C: UIDL
		S: +OK
		S: 1 10
		S: .
		S: -ERR no UIDL here
		C: NOOP
		S: +OK`)
	c := dialFake(t, fs)
	if _, err := c.Capa(); err != nil {
		t.Fatal(err)
	}
	l, u, uerr, err := c.ListUidl()
	if err != nil || uerr != nil || len(l) != 2 || len(u) != 2 || l[1].Size != 20 || u[1].UID != "b" {
		t.Fatalf("%v %v %v %v", l, u, uerr, err)
	}
	l, u, uerr, err = c.ListUidl()
	if err != nil || uerr == nil || len(l) != 1 || u != nil {
		t.Fatalf("%v %v %v %v", l, u, uerr, err)
	}
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
}

// A continuation or any other line that is neither +OK nor -ERR where a
// DELE's status line is due breaks the session.
func TestNonStatusReplyToDele(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: DELE 1
		S: + go on
		CLOSE`)
	c := dialFake(t, fs)
	called := false
	if err := c.SendDele(1, func(error) { called = true }); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); !errors.Is(err, pop3.ErrProtocol) || called {
		t.Fatalf("got %v, callback %v", err, called)
	}
	if err := c.Noop(); err == nil {
		t.Fatal("the session goes on")
	}
}

// Octets that answer no command, after a body or a STAT, break the session.
func TestUnsolicitedData(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: RETR 1
		S! +OK\r\nhalf\r\n.\r\nthe other half\r\n.\r\n
		CLOSE`)
	c := dialFake(t, fs)
	rc, err := c.Retr(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(rc); !errors.Is(err, pop3.ErrProtocol) || !strings.Contains(err.Error(), "answer no command") {
		t.Fatalf("got %v", err)
	}
	fs = newFake(t, `
		S: +OK hi
		C: STAT
		S! +OK 1 10\r\n+OK\r\n
		CLOSE`)
	c = dialFake(t, fs)
	if _, _, err := c.Stat(); !errors.Is(err, pop3.ErrProtocol) {
		t.Fatalf("got %v", err)
	}
}

// STAT's drop listing is parsed; a -ERR comes back as such, and a +OK
// without a drop listing is a protocol error.
func TestStatReplies(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: STAT
		S: +OK 0 0
		C: STAT
		S: -ERR no
		C: STAT
		S: +OK two
		CLOSE`)
	c := dialFake(t, fs)
	if n, size, err := c.Stat(); n != 0 || size != 0 || err != nil {
		t.Fatalf("got %d %d %v", n, size, err)
	}
	var pe *pop3.Error
	if _, _, err := c.Stat(); !errors.As(err, &pe) {
		t.Fatalf("got %v", err)
	}
	if _, _, err := c.Stat(); !errors.Is(err, pop3.ErrProtocol) {
		t.Fatalf("got %v", err)
	}
}

// Abort, from another goroutine, ends a wait on a silent server at once.
func TestAbort(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: NOOP`)
	c := dialFake(t, fs)
	time.AfterFunc(50*time.Millisecond, c.Abort)
	start := time.Now()
	if err := c.Noop(); err == nil || time.Since(start) > 4*time.Second {
		t.Fatalf("got %v after %v", err, time.Since(start))
	}
	if err := c.Noop(); err == nil {
		t.Fatal("usable after Abort")
	}
}

// ListUidlFunc streams both listings; an error from a callback ends the
// session.
func TestListUidlFunc(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: LIST
		S: +OK
		S: 1 10
		S: 2 20
		S: .
		C: UIDL
		S: +OK
		S: 1 a
		S: 2 b
		S: .
		C: LIST
		S: +OK
		S: 1 10
		S: 2 x
		S: .
		CLOSE`)
	c := dialFake(t, fs)
	var lines []string
	uerr, err := c.ListUidlFunc(func(n int, size int64) error {
		lines = append(lines, fmt.Sprint(n, size))
		return nil
	}, func(n int, uid []byte) error {
		lines = append(lines, fmt.Sprintf("%d %s", n, uid))
		return nil
	})
	if err != nil || uerr != nil || strings.Join(lines, ",") != "1 10,2 20,1 a,2 b" {
		t.Fatalf("%q %v %v", lines, uerr, err)
	}
	_, err = c.ListUidlFunc(func(int, int64) error { return nil }, nil)
	if !errors.Is(err, pop3.ErrProtocol) || !strings.Contains(err.Error(), `bad LIST line "2 x"`) {
		t.Fatalf("got %v", err)
	}
}
