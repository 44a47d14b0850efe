package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pouchmail/pouch/audit"
	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/testkit"
	"github.com/pouchmail/pouch/metrics"
)

// guardAttempt starts in g an attempt of user from ip, as a session does,
// and returns it with its delay.
func guardAttempt(t testing.TB, g *guard.Guard, ip, user string) (*guard.Attempt, time.Duration) {
	t.Helper()
	a, d, _, err := g.Attempt(context.Background(), netip.MustParseAddr(ip), user)
	if err != nil {
		t.Fatalf("guard attempt of %s from %s: %v", user, ip, err)
	}
	return a, d
}

// guardFail records in g a failed login of user from ip.
func guardFail(t testing.TB, g *guard.Guard, ip, user string) {
	t.Helper()
	a, _ := guardAttempt(t, g, ip, user)
	a.Failure()
}

// guardSucceed records in g a successful login of user from ip.
func guardSucceed(t testing.TB, g *guard.Guard, ip, user string) {
	t.Helper()
	a, _ := guardAttempt(t, g, ip, user)
	a.Success()
}

// guardDelay is g's delay for a login of user from ip now.
func guardDelay(t testing.TB, g *guard.Guard, ip, user string) time.Duration {
	t.Helper()
	a, d := guardAttempt(t, g, ip, user)
	a.Done()
	return d
}

func newGuarded(t *testing.T, mod func(*Config)) (*testServer, *guard.Guard) {
	t.Helper()
	g, err := guard.New(guard.Config{MaxFailures: 3, DelayStep: 50 * time.Millisecond, MaxDelay: 200 * time.Millisecond, UserMaxFailures: 4})
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, func(c *Config) {
		c.Guard = g
		if mod != nil {
			mod(c)
		}
	})
	return ts, g
}

// Failed logins of one name from one address slow that name down there,
// then lock it there; failures for as many names ban the address.
func TestFailedLoginsSlowLockThenBan(t *testing.T) {
	ts, g := newGuarded(t, nil) // MaxFailures 3, DelayStep 50 ms
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK Pouch ready\.`)
	var took []time.Duration
	for range 3 {
		start := time.Now()
		c.send("USER alice\r\nPASS wrong\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(authFailed)
		took = append(took, time.Since(start))
	}
	if took[2] < 50*time.Millisecond {
		t.Errorf("third failure answered after %v: no growing delay", took[2])
	}
	// alice is locked here: even her right password is refused.
	c.send("USER alice\r\nPASS secret\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(authFailed)
	// Others from this address are not slowed by alice's failures.
	if d := guardDelay(t, g, "127.0.0.2", "bob"); d != 0 {
		t.Errorf("bob waits %v for alice's failures", d)
	}
	b := ts.dialFrom(t, "127.0.0.2")
	b.login("bob", "pass word with spaces")
	// A third name that fails bans the source and ends the session.
	c.send("USER carol\r\nPASS wrong\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(authFailed)
	c.send("USER nobody\r\nPASS wrong\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(authFailed)
	c.closed()
	// A banned source is refused at connect.
	c = ts.dialFrom(t, "127.0.0.2")
	c.expect(`-ERR \[SYS/TEMP\] too many failed logins from your address; try again after .*`)
	c.closed()
	// Others are not.
	c = ts.dialFrom(t, "127.0.0.3")
	c.login("alice", "secret")
}

func TestUserLockSparesCleanSource(t *testing.T) {
	ts, g := newGuarded(t, nil)
	// Attackers on two addresses fail for alice, two times each (no ban).
	for _, ip := range []string{"127.0.0.4", "127.0.0.5"} {
		for i := 0; i < 2; i++ {
			guardFail(t, g, ip, "alice")
		}
	}
	// Even the right password is refused from an attacking address…
	c := ts.dialFrom(t, "127.0.0.4")
	c.transcript(`
		S: \+OK Pouch ready\.
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: ` + authFailed)
	// …but works from a clean one.
	c = ts.dialFrom(t, "127.0.0.6")
	c.login("alice", "secret")
}

func TestAccessRules(t *testing.T) {
	deny, _ := guard.ParseNets("127.0.0.3")
	rules, err := guard.NewRules(nil, deny, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, func(c *Config) {
		c.Rules = rules
		c.Auth = fakeAuth{
			users:    map[string]string{"alice": "secret", "bob": "secret"},
			accounts: map[string]auth.Account{"alice": {Access: auth.Access{AllowNets: nets("127.0.0.7/32")}}},
		}
	})
	c := ts.dialFrom(t, "127.0.0.3")
	c.expect(`-ERR \[SYS/PERM\] access denied`)
	c.closed()
	// alice may log in only from 127.0.0.7.
	c = ts.dialFrom(t, "127.0.0.8")
	c.transcript(`
		S: \+OK Pouch ready\.
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: ` + authFailed + `
		C: USER bob
		S: \+OK send PASS
		C: PASS secret
		S: \+OK maildrop .*`)
	c = ts.dialFrom(t, "127.0.0.7")
	c.login("alice", "secret")
}

func TestPerUserSwitches(t *testing.T) {
	old := time.Now().Add(-100 * 24 * time.Hour)
	ts := newTestServer(t, func(c *Config) {
		c.PasswordMaxAge = 90 * 24 * time.Hour
		c.Auth = fakeAuth{
			users: map[string]string{"off": "secret", "old": "secret", "young": "secret", "ownage": "secret"},
			accounts: map[string]auth.Account{
				"off":    {Disabled: true},
				"old":    {PasswordChanged: old},
				"young":  {PasswordChanged: time.Now()},
				"ownage": {PasswordChanged: old, PasswordMaxAge: auth.Own(365 * 24 * time.Hour)},
			},
		}
	})
	c := ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: USER off
		S: \+OK send PASS
		C: PASS secret
		S: -ERR \[SYS/PERM\] POP3 access is disabled for this account
		C: USER old
		S: \+OK send PASS
		C: PASS secret
		S: -ERR \[AUTH\] password expired
		C: USER ownage
		S: \+OK send PASS
		C: PASS secret
		S: \+OK maildrop .*`)
	c = ts.dial(t)
	c.expect(`\+OK.*`)
	c.login2("young", "secret")
}

func TestLoginDelay(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.LoginDelay = 300 * time.Second
		c.Auth = fakeAuth{
			users:    map[string]string{"alice": "secret", "bob": "secret"},
			accounts: map[string]auth.Account{"bob": {LoginDelay: auth.Own(time.Duration(0))}},
		}
	})
	c := ts.dial(t)
	c.expect(`\+OK.*`)
	if caps := c.capa(); !has(caps, "LOGIN-DELAY 300 USER") {
		t.Fatalf("CAPA before login: %v", caps)
	}
	c.login2("alice", "secret")
	if caps := c.capa(); !has(caps, "LOGIN-DELAY 300") {
		t.Fatalf("CAPA after login: %v", caps)
	}
	c.send("QUIT\r\n")
	c.expect(`\+OK.*`)
	c = ts.dial(t)
	c.transcript(`
		S: \+OK.*
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: -ERR \[LOGIN-DELAY\] minimum time between logins not reached`)
	// bob has no delay of his own.
	for i := 0; i < 2; i++ {
		c = ts.dial(t)
		c.expect(`\+OK.*`)
		c.login2("bob", "secret")
		c.send("QUIT\r\n")
		c.expect(`\+OK.*`)
	}
}

// The per-address limit refuses; the total makes room by closing the
// oldest connection not logged in, and refuses only when every session is
// logged in.
func TestConnectionLimits(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.MaxConnections = 3
		c.MaxConnectionsPerIP = 2
	})
	a := ts.dialFrom(t, "127.0.0.2")
	a.expect(`\+OK.*`)
	b := ts.dialFrom(t, "127.0.0.2")
	b.expect(`\+OK.*`)
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`-ERR \[SYS/TEMP\] too many connections from your address`)
	d := ts.dialFrom(t, "127.0.0.3")
	d.expect(`\+OK.*`)
	e := ts.dialFrom(t, "127.0.0.4")
	e.expect(`\+OK.*`)
	// a, the oldest not logged in, made room for e.
	a.expect(`-ERR \[SYS/TEMP\] too many connections waiting to log in; try again`)
	a.closed()
	waitSessions(t, ts.srv, 3)
	for _, c := range []*client{b, d, e} {
		c.send("USER alice\r\nPASS secret\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(`\+OK maildrop has .*|-ERR \[IN-USE\].*`)
	}
	// b holds the maildrop; d and e are refused IN-USE but stay
	// connected, not logged in: they are shed for f and g.
	f := ts.dialFrom(t, "127.0.0.5")
	f.expect(`\+OK.*`)
	g := ts.dialFrom(t, "127.0.0.5")
	g.expect(`\+OK.*`)
	d.expect(`-ERR \[SYS/TEMP\] too many connections waiting to log in; try again`)
	e.expect(`-ERR \[SYS/TEMP\] too many connections waiting to log in; try again`)
	f.send("USER bob\r\nPASS pass word with spaces\r\n")
	f.expect(`\+OK send PASS`)
	f.expect(`\+OK maildrop has .*`)
	g.send("USER carol\r\nPASS c\r\n")
	g.expect(`\+OK send PASS`)
	g.expect(`\+OK maildrop has .*`)
	// Three sessions logged in: nothing to shed, the next is refused.
	h := ts.dialFrom(t, "127.0.0.6")
	h.expect(`-ERR \[SYS/TEMP\] too many connections; try again later`)
	b.send("QUIT\r\n")
	b.expect(`\+OK.*`)
	b.closed()
	waitSessions(t, ts.srv, 2)
	i := ts.dialFrom(t, "127.0.0.2")
	i.expect(`\+OK.*`)
}

func TestSlowlorisCannotHoldASlot(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.PreLoginTimeout = 300 * time.Millisecond })
	c := ts.dial(t)
	c.expect(`\+OK.*`)
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for time.Since(start) < 3*time.Second {
			if _, err := c.conn.Write([]byte("N")); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	c.expect(`-ERR autologout: idle for too long`)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a trickling client held its slot for %v", d)
	}
	c.conn.Close()
	<-done
}

func TestAuditAndMetrics(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	al, err := audit.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	ts, _ := newGuarded(t, func(c *Config) { c.Audit, c.Metrics = al, m })
	ts.deliver(t, "alice", msg1, msg2)
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK.*`)
	for _, user := range []string{"alice", "bob", "nobody"} { // a ban for spraying
		c.send("USER " + user + "\r\nPASS wrong\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(authFailed)
	}
	c = ts.dial(t)
	c.login("alice", "secret")
	c.transcript(`
		C: RETR 1
		S: \+OK .*
		S: From: a@example
		S: Subject: one
		S:
		S: line 1
		S: \.\.dot line
		S: line 3
		S: \.
		C: DELE 1
		S: \+OK message 1 deleted
		C: QUIT
		S: \+OK .*`)
	c.closed()
	waitSessions(t, ts.srv, 0)

	f, _ := os.Open(path)
	defer f.Close()
	var events []string
	var logout map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e map[string]any
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		events = append(events, e["event"].(string))
		if e["event"] == "logout" {
			logout = e
		}
		if strings.Contains(sc.Text(), "secret") || strings.Contains(sc.Text(), "wrong") {
			t.Fatalf("a password in the audit log: %s", sc.Text())
		}
	}
	if got := strings.Join(events, " "); got != "login_failed login_failed login_failed ban login logout" {
		t.Fatalf("audit events: %s", got)
	}
	if logout["retrieved"] != float64(1) || logout["deleted"] != float64(1) || logout["user"] != "alice" {
		t.Fatalf("logout event %v", logout)
	}

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`pouch_logins_total{mechanism="PASS",result="failure",tls="no"} 3`,
		`pouch_logins_total{mechanism="PASS",result="success",tls="no"} 1`,
		`pouch_bans_total 1`,
		`pouch_message_bytes_sent_total ` + strconv.Itoa(len(msg1)),
		`pouch_command_duration_seconds_count{command="RETR"} 1`,
		`pouch_sessions{tls="no"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestBanStopsOpenSessions(t *testing.T) {
	ts, _ := newGuarded(t, nil)
	waiting := ts.dialFrom(t, "127.0.0.2")
	waiting.expect(`\+OK Pouch ready\.`)
	// Another connection from the same address gets it banned.
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK Pouch ready\.`)
	for _, user := range []string{"bob", "carol", "nobody"} {
		c.send("USER " + user + "\r\nPASS wrong\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(authFailed)
	}
	c.closed()
	// The session that was already open cannot try even the right password.
	waiting.transcript(`
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: -ERR \[SYS/TEMP\] too many failed logins from your address; try again after .*`)
	waiting.closed()
}

func TestRefusalByUserRulesTakesTheFailureDelay(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.AuthFailDelay = 200 * time.Millisecond
		rules, _ := guard.NewRules(nil, nil, nil, nil, "")
		c.Rules = rules
		c.Auth = fakeAuth{
			users:    map[string]string{"alice": "secret"},
			accounts: map[string]auth.Account{"alice": {Access: auth.Access{AllowNets: nets("192.0.2.0/24")}}},
		}
	})
	c := ts.dial(t)
	c.expect(`\+OK.*`)
	start := time.Now()
	c.send("USER alice\r\nPASS secret\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(authFailed)
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("a right password from a refused network was answered after %v, sooner than a wrong one", d)
	}
}

// delayAuth announces the largest per-user LOGIN-DELAY, as auth.Users does.
type delayAuth struct{ fakeAuth }

func (delayAuth) Summary() auth.Summary { return auth.Summary{MaxLoginDelay: 900 * time.Second} }

func TestLoginDelayAnnouncesTheLargest(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.LoginDelay = 60 * time.Second
		c.Auth = delayAuth{fakeAuth{users: map[string]string{"alice": "secret"}}}
	})
	c := ts.dial(t)
	c.expect(`\+OK.*`)
	if caps := c.capa(); !has(caps, "LOGIN-DELAY 900 USER") {
		t.Fatalf("CAPA before login: %v", caps)
	}
}

// countingAuth counts the passwords checked.
type countingAuth struct {
	fakeAuth
	checks atomic.Int64
}

func (a *countingAuth) Verify(user, password string) bool {
	a.checks.Add(1)
	return a.fakeAuth.Verify(user, password)
}

const goodPassword = "Kq7-vTz2-mW9p"

// burst opens n connections from ip at once, each sending pairs pipelined
// USER/PASS pairs for alice with wrong passwords and QUIT, and returns when each
// -ERR [AUTH] came (after start) and how many connections were refused as
// banned.
func burst(t *testing.T, addr, ip string, n, pairs int) (authAt []time.Duration, banned int) {
	return burstWith(t, addr, ip, n, pairs, func(i, j int) (string, string) { return "alice", fmt.Sprintf("wrong-%d-%d-guess", i, j) })
}

// burstWith is burst with the user name and guess of pair j on connection i.
func burstWith(t *testing.T, addr, ip string, n, pairs int, guess func(i, j int) (user, password string)) (authAt []time.Duration, banned int) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			var b strings.Builder
			for j := range pairs {
				user, password := guess(i, j)
				fmt.Fprintf(&b, "USER %s\r\nPASS %s\r\n", user, password)
			}
			b.WriteString("QUIT\r\n") // a connection never banned ends too
			if _, err := io.WriteString(c, b.String()); err != nil {
				t.Error(err)
				return
			}
			r := bufio.NewReader(c)
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				mu.Lock()
				switch {
				case strings.HasPrefix(l, "-ERR [AUTH]"):
					authAt = append(authAt, time.Since(start))
				case strings.HasPrefix(l, "-ERR [SYS/TEMP] too many failed logins"):
					banned++
				case strings.HasPrefix(l, "+OK"):
				default:
					t.Errorf("unexpected reply %q", l)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(authAt)
	return authAt, banned
}

// Parallel connections from one source, each with pipelined attempts at one
// name: no more of its passwords are checked than the failures that lock
// the name there, whatever the number of connections; later attempts are
// refused as failures are, without a check, and the refusals ban the source
// at SourceMaxFailures. The checked attempts ran at once: none waited for
// another's delay.
func TestParallelAttemptsFromOneSource(t *testing.T) {
	g, err := guard.New(guard.Config{MaxFailures: 10, SourceMaxFailures: 50, DelayStep: 40 * time.Millisecond, MaxDelay: 320 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	auth := &countingAuth{fakeAuth: fakeAuth{users: map[string]string{"alice": goodPassword}}}
	ts := newTestServer(t, func(c *Config) {
		c.Guard, c.Auth = g, auth
		c.AuthFailDelay = 100 * time.Millisecond
	})
	authAt, banned := burst(t, ts.addr, "127.0.0.2", 20, 5)
	if n := auth.checks.Load(); n != 10 {
		t.Errorf("%d passwords checked; alice is locked after 10", n)
	}
	// 10 failures and 40 refusals are answered -ERR [AUTH]; the refusal
	// that banned the source ends its session, and every other connection
	// is told of the ban at its next attempt.
	if len(authAt) != 50 || banned == 0 {
		t.Fatalf("%d wrong-password replies, %d connections refused as banned; want 50 and some", len(authAt), banned)
	}
	if b := g.Bans(); len(b) != 1 || b[0].Count != 1 || b[0].Until.Sub(b[0].Since) != 15*time.Minute {
		t.Fatalf("bans after one burst: %+v; want one first ban of 15 minutes", b)
	}
}

// The guard's delay (a step for each failure of the name from the address
// after the first) comes before the attempt and the failure delay after
// it: the two add up.
func TestGuardDelayAddsToFailureDelay(t *testing.T) {
	g, err := guard.New(guard.Config{MaxFailures: 10, DelayStep: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, func(c *Config) {
		c.Guard = g
		c.AuthFailDelay = 200 * time.Millisecond
	})
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK.*`)
	for i := range 3 {
		start := time.Now()
		c.send("USER alice\r\nPASS wrong\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(authFailed)
		if took, want := time.Since(start), 200*time.Millisecond+time.Duration(max(i-1, 0))*100*time.Millisecond; took < want {
			t.Errorf("failure %d answered after %v, before %v", i+1, took, want)
		}
	}
}

// A user whose own settings cannot be read cannot log in: the right
// password gets -ERR [SYS/PERM], the operator is told which fields are
// wrong, and nothing counts as a failed password.
func TestInvalidUserSettings(t *testing.T) {
	usersPath := filepath.Join(t.TempDir(), "users")
	line := "alice:{PLAIN}" + goodPassword + "::::::allow_nets=10.0.0.0/33 login_delay=abc password_max_age=ninety\n"
	if err := os.WriteFile(usersPath, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := auth.OpenUsers(usersPath)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	al, err := audit.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var logs testkit.SyncBuffer
	ts, g := newGuarded(t, func(c *Config) {
		c.Audit = al
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		rules, _ := guard.NewRules(nil, nil, nil, nil, "")
		c.Rules = rules
		c.Auth = users
	})
	for range 4 { // more than MaxFailures (3)
		c := ts.dialFrom(t, "127.0.0.2")
		c.expect(`\+OK.*`)
		c.send("USER alice\r\nPASS " + goodPassword + "\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(`-ERR \[SYS/PERM\] this account's settings are invalid; ask the administrator`)
	}
	if d := guardDelay(t, g, "127.0.0.2", "alice"); d != 0 {
		t.Errorf("refusals for the operator's mistake were counted as failures (delay %v)", d)
	}
	text := logs.String()
	for _, want := range []string{"level=ERROR", "allow_nets", "login_delay", "password_max_age"} {
		if !strings.Contains(text, want) {
			t.Errorf("log lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "authentication failed") {
		t.Errorf("a fail2ban failure line for a right password:\n%s", text)
	}
	events := auditEvents(t, path, "login_refused")
	if len(events) != 4 || events[0]["reason"] != "invalid settings" {
		t.Fatalf("audit events: %v", events)
	}
	// A wrong password learns nothing: it fails as for any user.
	c := ts.dialFrom(t, "127.0.0.3")
	c.expect(`\+OK.*`)
	c.send("USER alice\r\nPASS wrong-password\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(authFailed)
}

// nets parses networks for the tests' accounts.
func nets(s string) []netip.Prefix {
	var out []netip.Prefix
	for _, n := range strings.Split(s, ",") {
		out = append(out, netip.MustParsePrefix(n))
	}
	return out
}

// A right password refused by the user's network rules is recorded under
// its real mechanism, with the reason apart.
func TestAccessRulesRefusalRecordsMechanism(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	al, err := audit.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	ts := newTestServer(t, func(c *Config) {
		c.Audit, c.Metrics = al, m
		rules, _ := guard.NewRules(nil, nil, nil, nil, "")
		c.Rules = rules
		c.Auth = fakeAuth{
			users:    map[string]string{"alice": goodPassword},
			accounts: map[string]auth.Account{"alice": {Access: auth.Access{AllowNets: nets("192.0.2.0/24")}}},
		}
	})
	c := ts.dial(t)
	c.expect(`\+OK.*`)
	c.send("USER alice\r\nPASS " + goodPassword + "\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(authFailed)
	events := auditEvents(t, path, "login_failed")
	if len(events) != 1 || events[0]["method"] != "PASS" || events[0]["reason"] != "access rules" {
		t.Fatalf("audit events: %v", events)
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if body := rec.Body.String(); !strings.Contains(body, `pouch_logins_total{mechanism="PASS",result="failure",tls="no"} 1`) {
		t.Fatalf("metrics:\n%s", body)
	}
}

// Logins refused after the right password are audited with the reason. A
// disabled account answers its right password after the same delay as a
// wrong one, and both count as failures for the guard.
func TestRefusedLoginsAudited(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	al, err := audit.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-100 * 24 * time.Hour)
	g, err := guard.New(guard.Config{MaxFailures: 10, DelayStep: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, func(c *Config) {
		c.Audit, c.Guard = al, g
		c.AuthFailDelay = 150 * time.Millisecond
		c.PasswordMaxAge = 90 * 24 * time.Hour
		c.MaxSessionsPerUser = 1
		c.Auth = fakeAuth{
			users: map[string]string{"off": goodPassword, "old": goodPassword, "slow": goodPassword, "busy": goodPassword},
			accounts: map[string]auth.Account{
				"off":  {Disabled: true},
				"old":  {PasswordChanged: old},
				"slow": {LoginDelay: auth.Own(600 * time.Second)},
			},
		}
	})
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK.*`)
	for _, pw := range []string{goodPassword, "wrong-password-1"} {
		start := time.Now()
		c.send("USER off\r\nPASS " + pw + "\r\n")
		c.expect(`\+OK send PASS`)
		if pw == goodPassword {
			c.expect(`-ERR \[SYS/PERM\] POP3 access is disabled for this account`)
		} else {
			c.expect(authFailed)
		}
		if took := time.Since(start); took < 150*time.Millisecond {
			t.Errorf("disabled account, password %q: answered after %v, before the failure delay", pw, took)
		}
	}
	if d := guardDelay(t, g, "127.0.0.2", "off"); d != 10*time.Millisecond {
		t.Errorf("a disabled account's right and wrong passwords: guard delay %v, want two failures counted", d)
	}
	c.send("USER old\r\nPASS " + goodPassword + "\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(`-ERR \[AUTH\] password expired`)
	first := ts.dial(t)
	first.login("slow", goodPassword)
	first.send("QUIT\r\n")
	first.expect(`\+OK.*`)
	first.closed()
	c.send("USER slow\r\nPASS " + goodPassword + "\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(`-ERR \[LOGIN-DELAY\] .*`)
	busy := ts.dial(t)
	busy.login("busy", goodPassword)
	c.send("USER busy\r\nPASS " + goodPassword + "\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(`-ERR \[IN-USE\] .*`)
	var got []string
	for _, e := range auditEvents(t, path, "login_refused") {
		got = append(got, fmt.Sprintf("%s:%s:%s", e["user"], e["method"], e["reason"]))
	}
	want := []string{"off:PASS:disabled", "old:PASS:password expired", "slow:PASS:login delay", "busy:PASS:too many sessions"}
	if !slices.Equal(got, want) {
		t.Fatalf("login_refused events %v, want %v", got, want)
	}
}

// A banned source and a source denied by the access rules are logged at
// connect with a connection id, once a minute however often they come back.
func TestRefusedConnectionsLogged(t *testing.T) {
	var logs testkit.SyncBuffer
	deny, _ := guard.ParseNets("127.0.0.3")
	rules, err := guard.NewRules(nil, deny, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	ts, g := newGuarded(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.Rules = rules
	})
	for _, user := range []string{"alice", "bob", "carol"} {
		guardFail(t, g, "127.0.0.2", user)
	}
	for range 5 {
		for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
			c := ts.dialFrom(t, ip)
			c.expect(`-ERR .*`)
			c.closed()
		}
	}
	text := logs.String()
	banned := regexp.MustCompile(`(?m)msg="connection refused: source banned" session=\S+ ip=127\.0\.0\.2 net=127\.0\.0\.2/32 until=\S+ unlogged=0$`)
	denied := regexp.MustCompile(`(?m)msg="connection refused by access rules" session=\S+ ip=127\.0\.0\.3 reason=.* unlogged=0$`)
	if n := len(banned.FindAllString(text, -1)); n != 1 {
		t.Errorf("%d lines for 5 refusals of a banned source, want 1:\n%s", n, text)
	}
	if n := len(denied.FindAllString(text, -1)); n != 1 {
		t.Errorf("%d lines for 5 refusals by the access rules, want 1:\n%s", n, text)
	}
}

// A ban made by hand tells the client only that it is blocked.
func TestManualBanReply(t *testing.T) {
	ts, g := newGuarded(t, nil)
	waiting := ts.dialFrom(t, "127.0.0.2")
	waiting.expect(`\+OK.*`)
	if err := g.Ban(netip.MustParsePrefix("127.0.0.2/32"), time.Hour, "scanner"); err != nil {
		t.Fatal(err)
	}
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`-ERR \[SYS/PERM\] access from your address is blocked`)
	c.closed()
	waiting.send("USER alice\r\nPASS secret\r\n")
	waiting.expect(`\+OK send PASS`)
	waiting.expect(`-ERR \[SYS/PERM\] access from your address is blocked`)
	waiting.closed()
}
