package server

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/audit"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/metrics"
)

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

func TestFailedLoginsSlowThenBan(t *testing.T) {
	ts, _ := newGuarded(t, nil)
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK Pouch ready\.`)
	var took []time.Duration
	for i := 0; i < 2; i++ {
		start := time.Now()
		c.send("USER alice\r\nPASS wrong\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(authFailed)
		took = append(took, time.Since(start))
	}
	if took[1] < 50*time.Millisecond {
		t.Errorf("second failure answered after %v: no growing delay", took[1])
	}
	// The third failure bans the source and ends the session.
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
			g.Failure(netip.MustParseAddr(ip), "alice")
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
			users:  map[string]string{"alice": "secret", "bob": "secret"},
			fields: map[string]map[string]string{"alice": {"allow_nets": "127.0.0.7/32"}},
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
	old := strconv.FormatInt(time.Now().Add(-100*24*time.Hour).Unix(), 10)
	ts := newTestServer(t, func(c *Config) {
		c.PasswordMaxAge = 90 * 24 * time.Hour
		c.Auth = fakeAuth{
			users: map[string]string{"off": "secret", "old": "secret", "young": "secret", "ownage": "secret"},
			fields: map[string]map[string]string{
				"off":    {"nologin": ""},
				"old":    {"password_changed": old},
				"young":  {"password_changed": strconv.FormatInt(time.Now().Unix(), 10)},
				"ownage": {"password_changed": old, "password_max_age": "365d"},
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
			users:  map[string]string{"alice": "secret", "bob": "secret"},
			fields: map[string]map[string]string{"bob": {"login_delay": "0"}},
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
	e.expect(`-ERR \[SYS/TEMP\] too many connections; try again later`)
	a.send("QUIT\r\n")
	a.expect(`\+OK.*`)
	a.closed()
	waitSessions(t, ts.srv, 2)
	f := ts.dialFrom(t, "127.0.0.2")
	f.expect(`\+OK.*`)
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
	for i := 0; i < 3; i++ {
		c.send("USER alice\r\nPASS wrong\r\n")
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
		`pouch_logins_total{mechanism="PASS",result="failure"} 3`,
		`pouch_logins_total{mechanism="PASS",result="success"} 1`,
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
	for i := 0; i < 3; i++ {
		c.send("USER alice\r\nPASS wrong\r\n")
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
			users:  map[string]string{"alice": "secret"},
			fields: map[string]map[string]string{"alice": {"allow_nets": "192.0.2.0/24"}},
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

func (delayAuth) MaxLoginDelay() time.Duration { return 900 * time.Second }

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
