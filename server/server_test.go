package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/maildir"
)

// fakeAuth is a users table with plaintext secrets, and the users' own
// settings.
type fakeAuth struct {
	users    map[string]string
	apop     bool
	accounts map[string]auth.Account // settings by name; no entry: none
}

func (a fakeAuth) Account(user string) (auth.Account, error) {
	if _, ok := a.users[user]; !ok {
		return auth.Account{}, fmt.Errorf("%w: %s", auth.ErrNoSuchUser, user)
	}
	acct := a.accounts[user]
	acct.Name = user
	return acct, nil
}

func (a fakeAuth) Summary() auth.Summary {
	s := auth.Summary{APOP: a.apop}
	for _, acct := range a.accounts {
		s.MaxLoginDelay = max(s.MaxLoginDelay, acct.LoginDelay.Value)
	}
	return s
}

func (a fakeAuth) Fault() error { return nil }

func (a fakeAuth) Verify(user, password string) bool {
	pw, ok := a.users[user]
	return ok && pw == password
}

func (a fakeAuth) APOPSecret(user string) (string, bool) {
	pw, ok := a.users[user]
	return pw, ok && a.apop
}

func (a fakeAuth) APOPAvailable() bool { return a.apop }

type testServer struct {
	addr  string
	srv   *Server
	store *maildir.Store
	root  string
}

func newTestServer(t testing.TB, mod func(*Config)) *testServer {
	t.Helper()
	root := filepath.Join(t.TempDir(), "mail")
	st := maildir.New(root)
	cfg := Config{
		Store:         st,
		Auth:          fakeAuth{users: map[string]string{"alice": "secret", "bob": "pass word with spaces", "carol": "c"}},
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		Hostname:      "test.example",
		AuthFailDelay: -1,
	}
	if mod != nil {
		mod(&cfg)
	}
	srv := New(cfg)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return &testServer{addr: l.Addr().String(), srv: srv, store: st, root: root}
}

func (ts *testServer) deliver(t *testing.T, user string, msgs ...string) {
	t.Helper()
	for _, m := range msgs {
		if err := ts.store.Deliver(context.Background(), user, strings.NewReader(m)); err != nil {
			t.Fatal(err)
		}
	}
}

// count returns how many messages user's maildrop holds now.
func (ts *testServer) count(t *testing.T, user string) int {
	t.Helper()
	m, err := ts.store.Open(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	return len(m.Messages())
}

type client struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func (ts *testServer) dial(t *testing.T) *client {
	t.Helper()
	return ts.dialFrom(t, "")
}

// dialFrom connects from the local address ip ("" for any).
func (ts *testServer) dialFrom(t *testing.T, ip string) *client {
	t.Helper()
	var d net.Dialer
	if ip != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ip)}
	}
	c, err := d.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, conn: c, r: bufio.NewReader(c)}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading reply: %v (got %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("reply line without CRLF: %q", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// expect reads one line and matches it against a regular expression.
func (c *client) expect(pattern string) string {
	c.t.Helper()
	l := c.line()
	if !regexp.MustCompile("^(?:" + pattern + ")$").MatchString(l) {
		c.t.Fatalf("got %q, want /%s/", l, pattern)
	}
	return l
}

// transcript runs C:/S: lines; S: lines are regular expressions.
func (c *client) transcript(script string) {
	c.t.Helper()
	for _, l := range strings.Split(strings.TrimSpace(script), "\n") {
		l = strings.TrimLeft(l, " \t")
		switch {
		case l == "S:":
			c.expect("")
		case l == "C:":
			c.send("\r\n")
		case strings.HasPrefix(l, "C: "):
			c.send(l[3:] + "\r\n")
		case strings.HasPrefix(l, "S: "):
			c.expect(l[3:])
		default:
			c.t.Fatalf("bad transcript line %q", l)
		}
	}
}

func (c *client) login(user, pass string) {
	c.t.Helper()
	c.expect(`\+OK Pouch ready\.`)
	c.send("USER " + user + "\r\nPASS " + pass + "\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(`\+OK maildrop has \d+ messages \(\d+ octets\)`)
}

func (c *client) closed() {
	c.t.Helper()
	if l, err := c.r.ReadString('\n'); err != io.EOF {
		c.t.Fatalf("connection still open: %q %v", l, err)
	}
}

func TestGreetingAndQuit(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: QUIT
		S: \+OK Pouch signing off`)
	c.closed()
}

const msg1 = "From: a@example\r\nSubject: one\r\n\r\nline 1\r\n.dot line\r\nline 3\r\n"
const msg2 = "From: b@example\nSubject: two\n\nunix\nline ends\n"

func TestFullSession(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.deliver(t, "alice", msg1, msg2)
	c := ts.dial(t)
	s1, s2 := len(msg1), len(msg2)+5 // msg2 has 5 bare LFs
	uids := listUIDs(t, ts, "alice")
	c.transcript(fmt.Sprintf(`
		S: \+OK Pouch ready\.
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: \+OK maildrop has 2 messages \(%[1]d octets\)
		C: STAT
		S: \+OK 2 %[1]d
		C: LIST
		S: \+OK 2 messages \(%[1]d octets\)
		S: 1 %[2]d
		S: 2 %[3]d
		S: \.
		C: LIST 2
		S: \+OK 2 %[3]d
		C: LIST 3
		S: -ERR no such message
		C: UIDL
		S: \+OK unique-id listing follows
		S: 1 %[4]s
		S: 2 %[5]s
		S: \.
		C: UIDL 1
		S: \+OK 1 %[4]s
		C: RETR 1
		S: \+OK %[2]d octets
		S: From: a@example
		S: Subject: one
		S:
		S: line 1
		S: \.\.dot line
		S: line 3
		S: \.
		C: RETR 2
		S: \+OK %[3]d octets
		S: From: b@example
		S: Subject: two
		S:
		S: unix
		S: line ends
		S: \.
		C: TOP 1 0
		S: \+OK top of message follows
		S: From: a@example
		S: Subject: one
		S:
		S: \.
		C: TOP 1 2
		S: \+OK top of message follows
		S: From: a@example
		S: Subject: one
		S:
		S: line 1
		S: \.\.dot line
		S: \.
		C: TOP 2 99
		S: \+OK top of message follows
		S: From: b@example
		S: Subject: two
		S:
		S: unix
		S: line ends
		S: \.
		C: NOOP
		S: \+OK
		C: DELE 1
		S: \+OK message 1 deleted
		C: DELE 1
		S: -ERR message 1 already deleted
		C: RETR 1
		S: -ERR message 1 already deleted
		C: LIST 1
		S: -ERR message 1 already deleted
		C: STAT
		S: \+OK 1 %[3]d
		C: LIST
		S: \+OK 1 messages \(%[3]d octets\)
		S: 2 %[3]d
		S: \.
		C: RSET
		S: \+OK maildrop has 2 messages \(%[1]d octets\)
		C: DELE 2
		S: \+OK message 2 deleted
		C: QUIT
		S: \+OK Pouch signing off \(1 messages left\)`, s1+s2, s1, s2, regexp.QuoteMeta(uids[0]), regexp.QuoteMeta(uids[1])))
	c.closed()
	if n := ts.count(t, "alice"); n != 1 {
		t.Fatalf("%d messages after QUIT, want 1", n)
	}
}

func listUIDs(t *testing.T, ts *testServer, user string) []string {
	t.Helper()
	m, err := ts.store.Open(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var uids []string
	for _, msg := range m.Messages() {
		uids = append(uids, msg.UID)
	}
	return uids
}

func TestWrongState(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: STAT
		S: -ERR not allowed before login
		C: RETR 1
		S: -ERR not allowed before login
		C: NOOP
		S: -ERR not allowed before login
		C: XYZZY
		S: -ERR unknown command
		C: user alice
		S: \+OK send PASS
		C: pAsS secret
		S: \+OK maildrop has 0 messages \(0 octets\)
		C: USER alice
		S: -ERR not allowed after login
		C: AUTH PLAIN
		S: -ERR not allowed after login
		C: RETR
		S: -ERR RETR takes a message number
		C: RETR 0
		S: -ERR no such message
		C: RETR -1
		S: -ERR no such message
		C: RETR 1x
		S: -ERR no such message
		C: TOP 1
		S: -ERR TOP takes a message number and a line count
		C: QUIT
		S: \+OK Pouch signing off \(maildrop empty\)`)
}

func TestPipelining(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.deliver(t, "alice", msg1, msg2)
	c := ts.dial(t)
	c.expect(`\+OK Pouch ready\.`)
	// Everything in one write: the replies must come back complete and in order.
	c.send("USER alice\r\nPASS secret\r\nSTAT\r\nRETR 1\r\nDELE 1\r\nRETR 2\r\nDELE 2\r\nSTAT\r\nQUIT\r\n")
	c.transcript(`
		S: \+OK send PASS
		S: \+OK maildrop has 2 messages .*
		S: \+OK 2 \d+
		S: \+OK \d+ octets
		S: From: a@example
		S: Subject: one
		S:
		S: line 1
		S: \.\.dot line
		S: line 3
		S: \.
		S: \+OK message 1 deleted
		S: \+OK \d+ octets
		S: From: b@example
		S: Subject: two
		S:
		S: unix
		S: line ends
		S: \.
		S: \+OK message 2 deleted
		S: \+OK 0 0
		S: \+OK Pouch signing off \(maildrop empty\)`)
	c.closed()
	if n := ts.count(t, "alice"); n != 0 {
		t.Fatalf("%d messages left, want 0", n)
	}
}

func TestDroppedConnectionDeletesNothing(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.deliver(t, "alice", msg1, msg2)
	c := ts.dial(t)
	c.login("alice", "secret")
	c.send("DELE 1\r\nDELE 2\r\n")
	c.expect(`\+OK message 1 deleted`)
	c.expect(`\+OK message 2 deleted`)
	c.conn.Close()
	waitSessions(t, ts.srv, 0)
	if n := ts.count(t, "alice"); n != 2 {
		t.Fatalf("%d messages after a dropped connection, want 2", n)
	}
}

func waitSessions(t *testing.T, srv *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for srv.Sessions() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions open, want %d", srv.Sessions(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestBadInput(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	c.expect(`\+OK Pouch ready\.`)
	c.send(strings.Repeat("A", 100000) + "\r\n")
	c.expect(`-ERR line too long`)
	c.send("NO\x00OP\r\n")
	c.expect(`-ERR invalid characters in command`)
	c.send("QU\rIT\r\n")
	c.expect(`-ERR invalid characters in command`)
	c.send("\r\n")
	c.expect(`-ERR unknown command`)
	c.send("\xff\xfe\xfd\r\n")
	c.expect(`-ERR unknown command`)
	c.send("USER two names\r\n")
	c.expect(`-ERR USER takes one user name`)
	// LF-only lines are accepted, as other servers do.
	c.send("CAPA\n")
	c.expect(`\+OK Capability list follows`)
	for c.line() != "." {
	}
	// Too many bad commands: disconnected.
	for range 3 {
		c.send("BAD\r\n")
		c.expect(`-ERR unknown command`)
	}
	c.send("BAD\r\n")
	c.expect(`-ERR too many bad commands; bye`)
	c.closed()
}

func TestTimeouts(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.PreLoginTimeout = 100 * time.Millisecond
		c.IdleTimeout = 300 * time.Millisecond
	})
	ts.deliver(t, "alice", msg1)
	c := ts.dial(t)
	c.expect(`\+OK Pouch ready\.`)
	c.expect(`-ERR autologout: idle for too long`)
	c.closed()

	// After login the longer timer applies; a timeout never enters UPDATE.
	c = ts.dial(t)
	c.login("alice", "secret")
	time.Sleep(150 * time.Millisecond) // longer than the pre-login timeout
	c.send("DELE 1\r\n")
	c.expect(`\+OK message 1 deleted`)
	c.expect(`-ERR autologout: idle for too long`)
	c.closed()
	waitSessions(t, ts.srv, 0)
	if n := ts.count(t, "alice"); n != 1 {
		t.Fatalf("%d messages after autologout, want 1", n)
	}
}

func TestGracefulShutdown(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.deliver(t, "alice", msg1, msg2)
	c := ts.dial(t)
	c.login("alice", "secret")
	c.send("DELE 1\r\n")
	c.expect(`\+OK message 1 deleted`)

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- ts.srv.Shutdown(ctx)
	}()
	// The open session may still finish its work.
	waitClosedListener(t, ts.addr)
	c.send("QUIT\r\n")
	c.expect(`\+OK Pouch signing off \(1 messages left\)`)
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if n := ts.count(t, "alice"); n != 1 {
		t.Fatalf("%d messages, want 1", n)
	}
}

func TestShutdownGraceExpires(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.deliver(t, "alice", msg1)
	c := ts.dial(t)
	c.login("alice", "secret")
	c.send("DELE 1\r\n")
	c.expect(`\+OK message 1 deleted`)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown returned nil with a session still open")
	}
	c.closed()
	if n := ts.count(t, "alice"); n != 1 {
		t.Fatalf("%d messages after a forced shutdown, want 1", n)
	}
}

func waitClosedListener(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepting after Shutdown")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestVanishedMessage(t *testing.T) {
	ts := newTestServer(t, nil)
	ts.deliver(t, "alice", msg1)
	c := ts.dial(t)
	c.login("alice", "secret")
	files, _ := filepath.Glob(filepath.Join(ts.root, "alice", "new", "*"))
	for _, f := range files {
		if err := removeFile(f); err != nil {
			t.Fatal(err)
		}
	}
	c.transcript(`
		C: RETR 1
		S: -ERR \[SYS/PERM\] message 1 is no longer available
		C: NOOP
		S: \+OK`)
}

func TestLargeMessageByteExact(t *testing.T) {
	ts := newTestServer(t, nil)
	var b strings.Builder
	b.WriteString("Subject: big\r\n\r\n")
	for i := 0; b.Len() < 3<<20; i++ {
		if i%7 == 0 {
			b.WriteString(".")
		}
		b.WriteString(strings.Repeat("x", i%3000))
		b.WriteString("\r\n")
	}
	msg := b.String()
	ts.deliver(t, "alice", msg)
	c := ts.dial(t)
	c.login("alice", "secret")
	c.send("RETR 1\r\n")
	c.expect(fmt.Sprintf(`\+OK %d octets`, len(msg)))
	var got strings.Builder
	for {
		l := c.line()
		if l == "." {
			break
		}
		got.WriteString(strings.TrimPrefix(l, ".") + "\r\n")
	}
	if got.String() != msg {
		t.Fatalf("message differs: got %d octets, want %d", got.Len(), len(msg))
	}
}

var _ store.Store = (*maildir.Store)(nil)

func removeFile(path string) error { return os.Remove(path) }
