package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/tlsutil"
	"github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/server/servertest"
	"github.com/pouchmail/pouch/store/maildir"
)

// startPouch runs an in-process Pouch with users u0…u(n-1), each with msgs
// messages, on a plaintext and an implicit-TLS listener.
func startPouch(t *testing.T, users, msgs int) (plain, tlsAddr string, creds []Cred) {
	t.Helper()
	dir := t.TempDir()
	st := maildir.New(filepath.Join(dir, "mail"))
	auth := servertest.Users{}
	for i := range users {
		name := fmt.Sprintf("u%d", i)
		auth[name] = "pw" + name
		creds = append(creds, Cred{name, "pw" + name})
		for j := range msgs {
			body := fmt.Sprintf("Subject: %d\n\n.leading dot\n%s\n", j, strings.Repeat("x", 100*j))
			if err := st.Deliver(context.Background(), name, strings.NewReader(body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := tlsutil.SelfSigned(cert, key, "localhost"); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	_, plain, implicit := servertest.Start(t, server.Config{
		Store: st, Auth: auth, AuthFailDelay: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		TLS:    &tls.Config{Certificates: []tls.Certificate{pair}},
	})
	return plain, implicit, creds
}

func TestMixes(t *testing.T) {
	plain, tlsAddr, creds := startPouch(t, 4, 5)
	var want int64
	for j := range 5 {
		want += int64(len(fmt.Sprintf("Subject: %d\r\n\r\n.leading dot\r\n%s\r\n", j, strings.Repeat("x", 100*j))))
	}
	for _, tc := range []struct {
		name     string
		addr     string
		tls      string
		mix      Mix
		pipeline bool
	}{
		{"full", plain, TLSNone, MixFull, false},
		{"full-pipelined", plain, TLSNone, MixFull, true},
		{"full-tls", tlsAddr, TLSImplicit, MixFull, true},
		{"full-starttls", plain, TLSStartTLS, MixFull, false},
		{"top", plain, TLSNone, MixTop, true},
		{"login", plain, TLSNone, MixLogin, false},
		{"uidl", plain, TLSNone, MixUIDL, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := Run(context.Background(), Config{Addr: tc.addr, Users: creds, Clients: 4, Sessions: 8,
				Mix: tc.mix, TLS: tc.tls, Pipeline: tc.pipeline, PipelineDepth: 3, Timeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Failed != 0 || rep.Sessions != 8 {
				t.Fatalf("sessions %d, failed %d: %v", rep.Sessions, rep.Failed, rep.Errors)
			}
			switch tc.mix {
			case MixFull:
				if rep.Messages != 40 || rep.Bytes != 8*want {
					t.Errorf("messages %d octets %d, want 40 and %d", rep.Messages, rep.Bytes, 8*want)
				}
				if h := rep.Commands["RETR"]; h == nil || h.Count() != 40 {
					t.Errorf("RETR latencies: %+v", h)
				}
			case MixTop:
				if rep.Messages != 40 || rep.Commands["TOP"].Count() != 40 {
					t.Errorf("messages %d", rep.Messages)
				}
			case MixUIDL:
				if rep.Commands["UIDL"].Count() != 8 {
					t.Errorf("UIDL count %d", rep.Commands["UIDL"].Count())
				}
			case MixLogin:
				if rep.Messages != 0 || rep.Commands["PASS"].Count() != 8 {
					t.Errorf("messages %d", rep.Messages)
				}
			}
			var b strings.Builder
			rep.Write(&b)
			if !strings.Contains(b.String(), "sessions/s") {
				t.Errorf("report: %s", b.String())
			}
			b.Reset()
			if err := rep.WriteJSON(&b); err != nil || !strings.Contains(b.String(), `"sessions":8`) {
				t.Errorf("JSON report %v: %s", err, b.String())
			}
		})
	}
}

func TestIdleAndProbe(t *testing.T) {
	plain, _, creds := startPouch(t, 6, 1)
	var ready strings.Builder
	rep, err := Run(context.Background(), Config{Addr: plain, Users: creds, Clients: 5, Mix: MixIdle,
		Duration: 500 * time.Millisecond, Probe: 20 * time.Millisecond, Ready: &ready})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sessions != 5 || rep.Peak != 5 || rep.Failed != 0 {
		t.Errorf("sessions %d peak %d failed %d: %v", rep.Sessions, rep.Peak, rep.Failed, rep.Errors)
	}
	if !strings.Contains(ready.String(), "all 5 idle sessions") {
		t.Errorf("ready line: %q", ready.String())
	}
	if rep.Probe == nil || rep.Probe.Count() < 5 {
		t.Errorf("probe: %+v", rep.Probe)
	}
}

// TestSizeMismatch: a server whose RETR sends fewer octets than LIST said
// fails the session.
func TestSizeMismatch(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		fmt.Fprint(c, "+OK hi\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch strings.Fields(line)[0] {
			case "LIST":
				fmt.Fprint(c, "+OK\r\n1 100\r\n.\r\n")
			case "UIDL":
				fmt.Fprint(c, "+OK\r\n1 a\r\n.\r\n")
			case "RETR":
				fmt.Fprint(c, "+OK\r\nshort\r\n.\r\n")
			default:
				fmt.Fprint(c, "+OK\r\n")
			}
		}
	}()
	rep, err := Run(context.Background(), Config{Addr: l.Addr().String(), Users: []Cred{{"a", "b"}}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 1 || len(rep.Errors) != 1 {
		t.Fatalf("failed %d, errors %v", rep.Failed, rep.Errors)
	}
	for k := range rep.Errors {
		if !strings.Contains(k, "LIST said 100") {
			t.Errorf("error %q", k)
		}
	}
}

func TestReadUsers(t *testing.T) {
	got, err := ReadUsers(strings.NewReader("# comment\nalice:{PLAIN}se:cret\n\nbob:pw\r\n"))
	if err != nil || len(got) != 2 || got[0] != (Cred{"alice", "se:cret"}) || got[1] != (Cred{"bob", "pw"}) {
		t.Fatalf("%v %v", got, err)
	}
	if _, err := ReadUsers(strings.NewReader("nocolon\n")); err == nil {
		t.Error("no error for a line without a colon")
	}
}

func TestHistogram(t *testing.T) {
	var h Histogram
	for i := 1; i <= 100; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	if p := h.Quantile(0.5); p < 49*time.Millisecond || p > 52*time.Millisecond {
		t.Errorf("p50 %v", p)
	}
	if p := h.Quantile(0.99); p < 98*time.Millisecond || p > 100*time.Millisecond {
		t.Errorf("p99 %v", p)
	}
	var o Histogram
	o.Merge(&h)
	if o.Count() != 100 || o.Max() != 100*time.Millisecond {
		t.Errorf("merge: %d %v", o.Count(), o.Max())
	}
}

func TestUserIndex(t *testing.T) {
	const c, n = 64, 200
	for k := range 10 {
		seen := map[int]bool{}
		for i := range c {
			u := userIndex(i, k, c, n)
			if u < 0 || u >= n || u%c != i || seen[u] {
				t.Fatalf("client %d session %d: user %d", i, k, u)
			}
			seen[u] = true
		}
	}
	used := map[int]bool{}
	for i := range c {
		for k := range 4 {
			used[userIndex(i, k, c, n)] = true
		}
	}
	if len(used) != n {
		t.Errorf("%d of %d users used", len(used), n)
	}
}

// fakeServer is a POP3 server on loopback for the login tests: it greets
// with greeting, answers PASS with +OK when the password is the user's in
// passwords (or with pass's answer, if pass is set), records each PASS as
// user and whether it was right, and answers every other command +OK.
type fakeServer struct {
	greeting  string
	passwords map[string]string
	pass      func(user, password string) string
	mu        sync.Mutex
	right     map[string]int
	wrong     map[string]int
}

func (f *fakeServer) start(t *testing.T) string {
	t.Helper()
	f.right, f.wrong = map[string]int{}, map[string]int{}
	if f.greeting == "" {
		f.greeting = "+OK hi"
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return l.Addr().String()
}

// seen returns the right and wrong passwords the server saw for user.
func (f *fakeServer) seen(user string) (right, wrong int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.right[user], f.wrong[user]
}

func (f *fakeServer) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	fmt.Fprint(c, f.greeting+"\r\n")
	if strings.HasPrefix(f.greeting, "-ERR") {
		return
	}
	user := ""
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		switch verb {
		case "USER":
			user = arg
			fmt.Fprint(c, "+OK\r\n")
		case "PASS":
			ok := f.passwords[user] == arg
			f.mu.Lock()
			if ok {
				f.right[user]++
			} else {
				f.wrong[user]++
			}
			f.mu.Unlock()
			switch {
			case f.pass != nil:
				fmt.Fprint(c, f.pass(user, arg)+"\r\n")
			case ok:
				fmt.Fprint(c, "+OK in\r\n")
			default:
				fmt.Fprint(c, "-ERR [AUTH] no\r\n")
			}
		case "QUIT":
			fmt.Fprint(c, "+OK bye\r\n")
			return
		case "UIDL", "LIST":
			fmt.Fprint(c, "+OK\r\n.\r\n")
		default:
			fmt.Fprint(c, "+OK\r\n")
		}
	}
}

// TestWrongPasswordRate: the share of mistyped logins is drawn for each
// session, so every user gets some right and some wrong; the wrong ones are
// refused and reported apart from the sessions, and nothing fails.
func TestWrongPasswordRate(t *testing.T) {
	f := &fakeServer{passwords: map[string]string{"a": "pw-a", "b": "pw-b", "c": "pw-c", "d": "pw-d"}}
	addr := f.start(t)
	var creds []Cred
	for _, u := range []string{"a", "b", "c", "d"} {
		creds = append(creds, Cred{u, f.passwords[u]})
	}
	const n = 400
	rep, err := Run(context.Background(), Config{Addr: addr, Users: creds, Clients: 4, Sessions: n,
		Mix: MixUIDL, WrongPasswordRate: 0.5, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 0 || rep.CorrectRefused != 0 || rep.WrongAccepted != 0 {
		t.Fatalf("failed %d, correct refused %d, wrong accepted %d: %v", rep.Failed, rep.CorrectRefused, rep.WrongAccepted, rep.Errors)
	}
	if rep.Sessions+rep.WrongRefused != n {
		t.Errorf("sessions %d + wrong %d, want %d", rep.Sessions, rep.WrongRefused, n)
	}
	// Each user has 100 sessions, each wrong with probability ½: fewer than
	// 20 of either kind is a chance below 10⁻¹⁰.
	for u := range f.passwords {
		if right, wrong := f.seen(u); right < 20 || wrong < 20 {
			t.Errorf("user %s: %d right and %d wrong passwords", u, right, wrong)
		}
	}
	if got := rep.Commands["PASS"].Count(); got != uint64(rep.Sessions) {
		t.Errorf("PASS latencies %d, want one per session (%d)", got, rep.Sessions)
	}
	if got := rep.Commands[PASSWrong].Count(); got != uint64(rep.WrongRefused) {
		t.Errorf("PASS-wrong latencies %d, want %d", got, rep.WrongRefused)
	}
	if got := rep.Commands["UIDL"].Count(); got != uint64(rep.Sessions) {
		t.Errorf("UIDL ran %d times, want only in the %d sessions logged in", got, rep.Sessions)
	}
	var b strings.Builder
	rep.Write(&b)
	if !strings.Contains(b.String(), fmt.Sprintf("mistyped passwords refused %d", rep.WrongRefused)) || !strings.Contains(b.String(), PASSWrong) {
		t.Errorf("report: %s", b.String())
	}
	b.Reset()
	if err := rep.WriteJSON(&b); err != nil || !strings.Contains(b.String(), fmt.Sprintf(`"wrong_refused":%d`, rep.WrongRefused)) ||
		!strings.Contains(b.String(), `"correct_refused":0`) || !strings.Contains(b.String(), `"PASS-wrong":`) {
		t.Errorf("JSON report %v: %s", err, b.String())
	}
}

// TestWrongPasswordsPouch: against Pouch, every mistyped login is refused and
// every correct one gets in, in every mix that logs in.
func TestWrongPasswordsPouch(t *testing.T) {
	plain, _, creds := startPouch(t, 4, 2)
	for _, mix := range []Mix{MixFull, MixLogin} {
		rep, err := Run(context.Background(), Config{Addr: plain, Users: creds, Clients: 4, Sessions: 40,
			Mix: mix, WrongPasswordRate: 0.25, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Failed != 0 || rep.CorrectRefused != 0 || rep.WrongAccepted != 0 || rep.Sessions+rep.WrongRefused != 40 {
			t.Errorf("%s: sessions %d, wrong %d, failed %d, correct refused %d, wrong accepted %d: %v",
				mix, rep.Sessions, rep.WrongRefused, rep.Failed, rep.CorrectRefused, rep.WrongAccepted, rep.Errors)
		}
		if mix == MixFull && rep.Messages != 2*rep.Sessions {
			t.Errorf("messages %d in %d sessions, want 2 each", rep.Messages, rep.Sessions)
		}
	}
}

// TestWrongPasswordAccepted: a server that lets a mistyped password in fails
// the session, and is counted as such, not as a correct login refused.
func TestWrongPasswordAccepted(t *testing.T) {
	f := &fakeServer{passwords: map[string]string{"a": "pw-a"}, pass: func(string, string) string { return "+OK in" }}
	addr := f.start(t)
	rep, err := Run(context.Background(), Config{Addr: addr, Users: []Cred{{"a", "pw-a"}}, Sessions: 3,
		WrongPasswordRate: 1, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.WrongAccepted != 3 || rep.Failed != 3 || rep.CorrectRefused != 0 || rep.WrongRefused != 0 || rep.Sessions != 0 {
		t.Fatalf("wrong accepted %d, failed %d, correct refused %d, wrong refused %d, sessions %d",
			rep.WrongAccepted, rep.Failed, rep.CorrectRefused, rep.WrongRefused, rep.Sessions)
	}
	if right, wrong := f.seen("a"); right != 0 || wrong != 3 {
		t.Errorf("server saw %d right and %d wrong passwords", right, wrong)
	}
}

// TestCorrectRefused: a correct login the server does not let in, at PASS or
// at the greeting (a ban), is counted as refused.
func TestCorrectRefused(t *testing.T) {
	for _, f := range []*fakeServer{
		{passwords: map[string]string{"a": "pw-a"}, pass: func(string, string) string { return "-ERR [SYS/TEMP] too many logins" }},
		{greeting: "-ERR [SYS/TEMP] too many failed logins from your address"},
	} {
		addr := f.start(t)
		rep, err := Run(context.Background(), Config{Addr: addr, Users: []Cred{{"a", "pw-a"}}, Sessions: 5, Mix: MixLogin, Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if rep.CorrectRefused != 5 || rep.Failed != 5 || rep.Sessions != 0 {
			t.Errorf("greeting %q: correct refused %d, failed %d, sessions %d", f.greeting, rep.CorrectRefused, rep.Failed, rep.Sessions)
		}
		var b strings.Builder
		rep.Write(&b)
		if !strings.Contains(b.String(), "correct logins refused 5") {
			t.Errorf("report: %s", b.String())
		}
	}
}

func TestTypo(t *testing.T) {
	for _, pw := range []string{"", "a", "pw-u17", "Pässwörd", "日本語"} {
		for range 200 {
			got := typo(pw)
			if got == pw || len([]rune(got)) != max(len([]rune(pw)), 1) {
				t.Fatalf("typo(%q) = %q", pw, got)
			}
			diff := 0
			for i, r := range []rune(pw) {
				if []rune(got)[i] != r {
					diff++
				}
			}
			if pw != "" && diff != 1 {
				t.Fatalf("typo(%q) = %q: %d characters changed", pw, got, diff)
			}
		}
	}
}

func TestWrongPasswordRateChecked(t *testing.T) {
	users := []Cred{{"a", "b"}}
	for _, cfg := range []Config{
		{WrongPasswordRate: -0.1},
		{WrongPasswordRate: 1.5},
		{WrongPasswordRate: math.NaN()},
		{WrongPasswordRate: 0.1, Mix: MixIdle, Duration: time.Second},
	} {
		cfg.Addr, cfg.Users = "127.0.0.1:1", users
		if _, err := Run(context.Background(), cfg); err == nil {
			t.Errorf("rate %v, mix %q: no error", cfg.WrongPasswordRate, cfg.Mix)
		}
	}
}

// TestSessionsShared: --sessions as many as users logs every user in
// exactly once, however much faster some clients are than others.
func TestSessionsShared(t *testing.T) {
	f := &fakeServer{passwords: map[string]string{}}
	slow := map[string]bool{}
	var creds []Cred
	for i := range 50 {
		u := fmt.Sprint("u", i)
		f.passwords[u] = "pw-" + u
		creds = append(creds, Cred{u, "pw-" + u})
		slow[u] = i%8 == 0
	}
	f.pass = func(user, password string) string {
		if slow[user] {
			time.Sleep(20 * time.Millisecond) // the server is slow for some; the others must not take their turns
		}
		return "+OK in"
	}
	addr := f.start(t)
	rep, err := Run(context.Background(), Config{Addr: addr, Users: creds, Clients: 8, Sessions: 50, Mix: MixLogin, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sessions != 50 || rep.Failed != 0 {
		t.Fatalf("sessions %d, failed %d: %v", rep.Sessions, rep.Failed, rep.Errors)
	}
	for _, c := range creds {
		if right, _ := f.seen(c.User); right != 1 {
			t.Errorf("user %s logged in %d times", c.User, right)
		}
	}
}
