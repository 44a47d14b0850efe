package server

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/audit"
	"github.com/pouchmail/pouch/internal/testkit"
)

// waitFor polls cond until it holds, failing the test after ten seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// sessionOf returns the session Who lists with that remote address.
func sessionOf(srv *Server, remote string) (SessionInfo, bool) {
	for _, s := range srv.Who() {
		if s.Remote == remote {
			return s, true
		}
	}
	return SessionInfo{}, false
}

// wire is a line as it travelled: CRLF included.
func wire(lines ...string) int64 {
	n := 0
	for _, l := range lines {
		n += len(l) + 2
	}
	return int64(n)
}

func TestWho(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	if got := ts.srv.Who(); len(got) != 0 {
		t.Fatalf("Who on an idle server = %+v", got)
	}
	before := time.Now()

	// Not logged in.
	anon := ts.dial(t)
	anon.expect(`\+OK Pouch ready\.`)
	// Logged in without TLS; every octet both ways is counted.
	plain := ts.dial(t)
	greeting := plain.expect(`\+OK Pouch ready\.`)
	plain.send("USER alice\r\nPASS secret\r\n")
	r1 := plain.expect(`\+OK send PASS`)
	r2 := plain.expect(`\+OK maildrop has 0 messages \(0 octets\)`)
	// Logged in after STLS.
	secure := ts.dial(t)
	secure.expect(`\+OK Pouch ready\.`)
	secure.starttls(ts.roots)
	secure.send("USER bob\r\nPASS pass word with spaces\r\n")
	secure.expect(`\+OK send PASS`)
	secure.expect(`\+OK maildrop has 0 messages.*`)

	wantIn, wantOut := wire("USER alice", "PASS secret"), wire(greeting, r1, r2)
	waitFor(t, "the counters of the plaintext session", func() bool {
		s, _ := sessionOf(ts.srv, plain.conn.LocalAddr().String())
		return s.BytesIn == wantIn && s.BytesOut == wantOut
	})
	got := ts.srv.Who()
	if len(got) != 3 {
		t.Fatalf("Who = %+v, want 3 sessions", got)
	}
	// Oldest first.
	for i, c := range []*client{anon, plain, secure} {
		if got[i].Remote != c.conn.LocalAddr().String() {
			t.Errorf("session %d is %s, want %s", i, got[i].Remote, c.conn.LocalAddr())
		}
		if got[i].Since.Before(before) || got[i].Since.After(time.Now()) || i > 0 && got[i].Since.Before(got[i-1].Since) {
			t.Errorf("session %d: since %v", i, got[i].Since)
		}
		if got[i].ID == "" || i > 0 && got[i].ID == got[i-1].ID {
			t.Errorf("session %d: id %q", i, got[i].ID)
		}
	}
	for i, want := range []struct {
		user, state string
		tls         bool
	}{{"", StateAuthorization, false}, {"alice", StateTransaction, false}, {"bob", StateTransaction, true}} {
		if got[i].User != want.user || got[i].State != want.state || got[i].TLS != want.tls {
			t.Errorf("session %d = %+v, want user %q, state %s, TLS %v", i, got[i], want.user, want.state, want.tls)
		}
	}
	if got[0].BytesIn != 0 || got[0].BytesOut != int64(len("+OK Pouch ready.\r\n")) {
		t.Errorf("idle session counted %d in, %d out", got[0].BytesIn, got[0].BytesOut)
	}
	// TLS records are counted as they are on the wire: more than the text.
	if got[2].BytesIn <= wire("STLS", "USER bob", "PASS pass word with spaces") {
		t.Errorf("TLS session counted only %d octets in", got[2].BytesIn)
	}
	// A session that ended is gone.
	plain.send("QUIT\r\n")
	plain.expect(`\+OK .*`)
	plain.closed()
	waitFor(t, "the ended session to leave the list", func() bool {
		_, ok := sessionOf(ts.srv, plain.conn.LocalAddr().String())
		return !ok
	})
}

func TestKick(t *testing.T) {
	var logs testkit.SyncBuffer
	auditPath := filepath.Join(t.TempDir(), "audit.log")
	al, err := audit.Open(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { al.Close() })
	ts := newTestServer(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.Audit = al
	})
	ts.deliver(t, "alice", msg1, msg2)

	alice := ts.dial(t)
	alice.login("alice", "secret")
	alice.send("DELE 1\r\nDELE 2\r\n")
	alice.expect(`\+OK message 1 deleted`)
	alice.expect(`\+OK message 2 deleted`)
	anon := ts.dial(t)
	anon.expect(`\+OK Pouch ready\.`)
	// A session that only said USER alice is not alice's.
	anon.send("USER alice\r\n")
	anon.expect(`\+OK send PASS`)
	bob := ts.dial(t)
	bob.login("bob", "pass word with spaces")
	waitSessions(t, ts.srv, 3)

	if n := ts.srv.Kick("nobody"); n != 0 {
		t.Errorf("Kick(nobody) = %d", n)
	}
	if n := ts.srv.Kick(""); n != 0 {
		t.Errorf(`Kick("") = %d`, n)
	}
	aliceInfo, _ := sessionOf(ts.srv, alice.conn.LocalAddr().String())
	if n := ts.srv.Kick("alice"); n != 1 {
		t.Fatalf("Kick(alice) = %d, want 1", n)
	}
	alice.closed()
	waitSessions(t, ts.srv, 2)
	// Like a dropped connection: the deletions were not committed.
	if n := ts.count(t, "alice"); n != 2 {
		t.Fatalf("%d messages after alice was kicked, want 2", n)
	}

	anonInfo, ok := sessionOf(ts.srv, anon.conn.LocalAddr().String())
	if !ok {
		t.Fatal("the anonymous session is not listed")
	}
	if n := ts.srv.Kick(anonInfo.ID); n != 1 {
		t.Fatalf("Kick(%s) = %d, want 1", anonInfo.ID, n)
	}
	anon.closed()
	waitSessions(t, ts.srv, 1)
	// Bob's session is untouched.
	bob.send("NOOP\r\n")
	bob.expect(`\+OK.*`)

	waitFor(t, "the kick in the log", func() bool {
		return strings.Contains(logs.String(), "msg=kicked session="+aliceInfo.ID) &&
			strings.Contains(logs.String(), "msg=kicked session="+anonInfo.ID)
	})
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "msg=kicked session="+aliceInfo.ID) && !strings.Contains(l, "user=alice") {
			t.Errorf("kick logged without the user: %s", l)
		}
		if strings.Contains(l, "msg=logout") && strings.Contains(l, "user=alice") && !strings.Contains(l, "committed=false") {
			t.Errorf("kicked session logged out as committed: %s", l)
		}
	}
	kicks := auditEvents(t, auditPath, "kick")
	if len(kicks) != 2 || kicks[0]["session"] != aliceInfo.ID || kicks[0]["user"] != "alice" ||
		kicks[1]["session"] != anonInfo.ID || kicks[1]["user"] != "" || kicks[0]["ip"] != "127.0.0.1" {
		t.Errorf("audit kick events: %v", kicks)
	}
}

func auditEvents(t *testing.T, path, event string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	dec := json.NewDecoder(f)
	for {
		var m map[string]any
		if err := dec.Decode(&m); err == io.EOF {
			return out
		} else if err != nil {
			t.Fatal(err)
		}
		if m["event"] == event {
			out = append(out, m)
		}
	}
}

// A kicked session runs none of the commands it had already read: here a
// whole login, DELE and QUIT wait in its buffer while a failed login's delay
// runs, and the kick comes during that delay.
func TestKickDropsBufferedCommands(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.AuthFailDelay = 2 * time.Second })
	ts.deliver(t, "alice", msg1)
	c := ts.dial(t)
	c.expect(`\+OK Pouch ready\.`)
	c.send("USER alice\r\nPASS wrong\r\nUSER alice\r\nPASS secret\r\nDELE 1\r\nQUIT\r\n")
	// Flushed just before the failed login's delay begins.
	c.expect(`\+OK send PASS`)
	info, ok := sessionOf(ts.srv, c.conn.LocalAddr().String())
	if !ok {
		t.Fatal("session not listed")
	}
	if n := ts.srv.Kick(info.ID); n != 1 {
		t.Fatalf("Kick = %d", n)
	}
	waitSessions(t, ts.srv, 0)
	if n := ts.count(t, "alice"); n != 1 {
		t.Fatalf("%d messages after the kick, want 1: a buffered QUIT was run", n)
	}
}
