package server

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pouchmail/pouch/audit"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/testkit"
	"github.com/pouchmail/pouch/metrics"
)

// A client that starts a SASL exchange and falls silent has sent no
// credential: it holds no place among its source's attempts, so however
// many such connections a shared address has open, a login from it goes
// through at once.
func TestSilentExchangeHoldsNoPlace(t *testing.T) {
	g, err := guard.New(guard.Config{MaxFailures: 10, DelayStep: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, func(c *Config) {
		c.Guard = g
		c.Auth = fakeAuth{users: map[string]string{"alice": goodPassword}}
		c.PreLoginTimeout = 30 * time.Second
	})
	for range 10 {
		h := ts.dialFrom(t, "127.0.0.2")
		h.expect(`\+OK Pouch ready\.`)
		h.send("AUTH PLAIN\r\n")
		h.expect(`\+ `)
	}
	c := ts.dialFrom(t, "127.0.0.2")
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	c.login("alice", goodPassword)
}

// blockingAuth holds every password check until release is closed, and
// tells each start on entered.
type blockingAuth struct {
	fakeAuth
	entered chan struct{}
	release chan struct{}
}

func (a *blockingAuth) Verify(user, password string) bool {
	a.entered <- struct{}{}
	<-a.release
	return a.fakeAuth.Verify(user, password)
}

// A login that waits for a place among its source's attempts waits no
// longer than the pre-login timeout: then it is told to come back later,
// and the session ends.
func TestAttemptWaitEndsAtPreLoginTimeout(t *testing.T) {
	g, err := guard.New(guard.Config{MaxFailures: 3, DelayStep: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	auth := &blockingAuth{
		fakeAuth: fakeAuth{users: map[string]string{"alice": goodPassword}},
		entered:  make(chan struct{}, 3),
		release:  make(chan struct{}),
	}
	ts := newTestServer(t, func(c *Config) {
		c.Guard, c.Auth = g, auth
		c.MaxConcurrentAuth = 10
		c.PreLoginTimeout = time.Second
	})
	t.Cleanup(func() { close(auth.release) }) // before the server's shutdown
	for range 3 {
		h := ts.dialFrom(t, "127.0.0.2")
		h.expect(`\+OK Pouch ready\.`)
		h.send("USER alice\r\nPASS " + goodPassword + "\r\n")
		<-auth.entered
	}
	c := ts.dialFrom(t, "127.0.0.2")
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	c.expect(`\+OK Pouch ready\.`)
	c.send("USER alice\r\nPASS " + goodPassword + "\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(`-ERR \[SYS/TEMP\] too many logins from your address at once; try again later`)
	c.closed()
}

// panicAuth panics on checking the password of "boom".
type panicAuth struct{ fakeAuth }

func (a panicAuth) Verify(user, password string) bool {
	if user == "boom" {
		panic("password check failed badly")
	}
	return a.fakeAuth.Verify(user, password)
}

// A session that ends in the middle of an attempt, even by a recovered
// panic, ends the attempt: none is left holding its source's places.
func TestSessionEndEndsItsAttempt(t *testing.T) {
	g, err := guard.New(guard.Config{MaxFailures: 1})
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, func(c *Config) {
		c.Guard = g
		c.Auth = panicAuth{fakeAuth{users: map[string]string{"alice": goodPassword}}}
		c.PreLoginTimeout = 3 * time.Second
	})
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK Pouch ready\.`)
	c.send("USER boom\r\n")
	c.expect(`\+OK send PASS`)
	c.send("PASS " + goodPassword + "\r\n")
	c.closed()
	c = ts.dialFrom(t, "127.0.0.2")
	c.login("alice", goodPassword)
}

// Attackers elsewhere have locked the name alice against sources that
// failed; alice's own address has one typo. Her client, polling with the
// right password, is refused as a failure would be, but that is no failed
// login: it is not logged as one for fail2ban, not counted as a failure by
// the guard, and her address is not banned for it.
func TestUserLockedRefusalIsNoFailure(t *testing.T) {
	var logs testkit.SyncBuffer
	auditPath := filepath.Join(t.TempDir(), "audit.log")
	al, err := audit.Open(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	const delay = 100 * time.Millisecond
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func(d time.Duration) time.Time { mu.Lock(); defer mu.Unlock(); now = now.Add(d); return now }
	g, err := guard.New(guard.Config{MaxFailures: 3, UserMaxFailures: 4, Now: func() time.Time { return clock(0) }})
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, func(c *Config) {
		c.Guard = g
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.Audit = al
		c.Auth = fakeAuth{users: map[string]string{"alice": goodPassword}}
		c.AuthFailDelay = delay
	})
	victim := netip.MustParseAddr("127.0.0.9")
	guardFail(t, g, "127.0.0.9", "alice") // one typo
	clock(10 * time.Minute)
	for _, ip := range []string{"127.0.0.4", "127.0.0.4", "127.0.0.5"} {
		guardFail(t, g, ip, "alice") // 4 failures for alice: locked
	}
	for range 3 {
		c := ts.dialFrom(t, "127.0.0.9")
		c.expect(`\+OK Pouch ready\.`)
		start := time.Now()
		c.send("USER alice\r\nPASS " + goodPassword + "\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(authFailed)
		if took := time.Since(start); took < delay {
			t.Errorf("the refusal came after %v, before the failure delay %v", took, delay)
		}
	}
	if b, banned := g.Banned(victim); banned {
		t.Fatalf("the user's own address was banned for her right password: %+v", b)
	}
	// Once her typo leaves the window her address has no failure of alice:
	// the refusals were none, or they would lock alice there now.
	clock(5*time.Minute + time.Second)
	c := ts.dialFrom(t, "127.0.0.9")
	c.login("alice", goodPassword)
	text := logs.String()
	if strings.Contains(text, `msg="authentication failed"`) {
		t.Errorf("a refusal of the right password was logged as a failed login:\n%s", text)
	}
	refused := regexp.MustCompile(`msg="login refused" .*user=alice method=PASS reason="user locked"`)
	if n := len(refused.FindAllString(text, -1)); n != 3 {
		t.Errorf("%d refusals logged, want 3:\n%s", n, text)
	}
	events := auditEvents(t, auditPath, "login_refused")
	if len(events) != 3 || events[0]["reason"] != "user locked" || events[0]["user"] != "alice" {
		t.Errorf("login_refused events %v", events)
	}
	if n := len(auditEvents(t, auditPath, "login_failed")); n != 0 {
		t.Errorf("%d login_failed events, want none", n)
	}
}

// A POP3S connection whose handshake fails (a scanner, a client that
// refuses the certificate) leaves the session gauges as they were.
func TestFailedHandshakeLeavesSessionGauge(t *testing.T) {
	m := metrics.New()
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) { c.Metrics = m })
	for range 3 {
		c, err := net.Dial("tcp", ts.tlsAddr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("not a TLS client hello\r\n"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 100))
		c.Close()
	}
	waitSessions(t, ts.srv, 0)
	body := scrapeMetrics(t, m)
	for _, want := range []string{`pouch_sessions{tls="yes"} 0`, `pouch_connections_total{tls="yes"} 3`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, `pouch_sessions{tls="no"} -`) {
		t.Errorf("a TLS session was counted out as one without TLS")
	}
}

// A SASL message that cannot be read as credentials checks nothing: it is
// no failed login (no fail2ban line, nothing counted by the guard), but it
// is a bad command.
func TestMalformedSASLIsABadCommand(t *testing.T) {
	var logs testkit.SyncBuffer
	g, err := guard.New(guard.Config{MaxFailures: 3})
	if err != nil {
		t.Fatal(err)
	}
	auth := &countingAuth{fakeAuth: fakeAuth{users: map[string]string{"alice": goodPassword}}}
	ts := newTestServer(t, func(c *Config) {
		c.Guard, c.Auth = g, auth
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.AuthFailDelay = 300 * time.Millisecond
		c.MaxBadCommands = 4
	})
	ip := netip.MustParseAddr("127.0.0.2")
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK Pouch ready\.`)
	for _, msg := range []string{b64("nonuls"), b64("\x00\x00" + goodPassword), "="} {
		c.send("AUTH PLAIN " + msg + "\r\n")
		c.expect(saslMalformed)
	}
	c.send("AUTH LOGIN =\r\n") // an empty user name
	c.expect(`-ERR too many bad commands; bye`)
	c.closed()
	if n := auth.checks.Load(); n != 0 {
		t.Errorf("%d passwords checked for messages without credentials", n)
	}
	if _, banned := g.Banned(ip); banned {
		t.Fatal("banned for malformed SASL messages")
	}
	if d := guardDelay(t, g, "127.0.0.2", "alice"); d != 0 {
		t.Errorf("guard delay %v: malformed messages counted as failures", d)
	}
	if text := logs.String(); strings.Contains(text, `msg="authentication failed"`) {
		t.Errorf("a malformed message was logged as a failed login:\n%s", text)
	}
	c = ts.dialFrom(t, "127.0.0.2")
	c.login("alice", goodPassword)
}

// A session kicked (or shut down) while it waits out the failure delay ends
// at once, rather than hold its goroutine and its place among the open
// sessions until the delay is over.
func TestKickEndsTheFailureDelay(t *testing.T) {
	auth := &blockingAuth{
		fakeAuth: fakeAuth{users: map[string]string{"alice": goodPassword}},
		entered:  make(chan struct{}, 1),
		release:  make(chan struct{}),
	}
	close(auth.release)
	ts := newTestServer(t, func(c *Config) {
		c.Auth = auth
		c.AuthFailDelay = time.Minute
	})
	c := ts.dial(t)
	c.expect(`\+OK Pouch ready\.`)
	c.send("USER alice\r\nPASS wrong\r\n")
	c.expect(`\+OK send PASS`)
	<-auth.entered // the failure delay is next
	who := ts.srv.Who()
	if len(who) != 1 || ts.srv.Kick(who[0].ID) != 1 {
		t.Fatalf("sessions %+v", who)
	}
	waitSessions(t, ts.srv, 0) // the session's goroutine ended, not only its connection
}

// One user's failures slow that user only: after max's wrong passwords,
// lena logs in at once from the same address, with PASS or SASL.
func TestOtherUsersFailuresDoNotSlowALogin(t *testing.T) {
	g, err := guard.New(guard.Config{DelayStep: time.Minute, MaxDelay: time.Hour}) // the defaults, but a step no test would wait out
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, func(c *Config) {
		c.Guard = g
		c.Auth = fakeAuth{users: map[string]string{"max": goodPassword, "lena": goodPassword}}
	})
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK Pouch ready\.`)
	for range 2 {
		c.send("USER max\r\nPASS wrong\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(authFailed)
	}
	if d := guardDelay(t, g, "127.0.0.2", "max"); d != time.Minute {
		t.Fatalf("max's next try waits %v, want a step", d)
	}
	lena := ts.dialFrom(t, "127.0.0.2")
	lena.conn.SetDeadline(time.Now().Add(10 * time.Second))
	lena.login("lena", goodPassword)
	lena.send("QUIT\r\n")
	lena.expect(`\+OK .*`)
	lena.closed()
	lena = ts.dialFrom(t, "127.0.0.2")
	lena.conn.SetDeadline(time.Now().Add(10 * time.Second))
	lena.expect(`\+OK Pouch ready\.`)
	lena.send("AUTH PLAIN " + b64("\x00lena\x00"+goodPassword) + "\r\n")
	lena.expect(`\+OK maildrop has \d+ messages .*`)
}

// 64 logins at once from one address, of names that logged in from there
// before, all have their passwords checked at once: none waits for another.
func TestConcurrentLoginsFromOneAddress(t *testing.T) {
	const clients = 64
	g, err := guard.New(guard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	users := make(map[string]string)
	for i := range clients {
		users[fmt.Sprint("user", i)] = goodPassword
	}
	auth := &blockingAuth{fakeAuth: fakeAuth{users: users}, entered: make(chan struct{}, clients), release: make(chan struct{})}
	ts := newTestServer(t, func(c *Config) {
		c.Guard, c.Auth = g, auth
		c.MaxConcurrentAuth = clients
		c.MaxConnectionsPerIP = 0
	})
	for i := range clients { // each name logs in once
		guardSucceed(t, g, "127.0.0.2", fmt.Sprint("user", i))
	}
	conns := make([]*client, clients)
	for i := range clients {
		conns[i] = ts.dialFrom(t, "127.0.0.2")
		conns[i].conn.SetDeadline(time.Now().Add(20 * time.Second))
		conns[i].expect(`\+OK Pouch ready\.`)
		conns[i].send(fmt.Sprintf("USER user%d\r\nPASS %s\r\n", i, goodPassword))
	}
	for i := range clients {
		select {
		case <-auth.entered:
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d passwords checked at once; the others wait", i, clients)
		}
	}
	close(auth.release)
	for _, c := range conns {
		c.expect(`\+OK send PASS`)
		c.expect(`\+OK maildrop has \d+ messages .*`)
	}
}
