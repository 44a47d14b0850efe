package server

import (
	"context"
	"testing"
	"time"

	"github.com/pouchmail/pouch/store"
)

// fakeRetention: alice keeps mail 30 days after retrieval, bob may not leave
// mail on the server, everyone else 45 days after delivery.
type fakeRetention struct{}

func (fakeRetention) Policy(user string) store.Policy {
	switch user {
	case "alice":
		return store.Policy{Expire: 30*24*time.Hour + time.Hour, FromRetrieval: true}
	case "bob":
		return store.Policy{DeleteRetrieved: true}
	}
	return store.Policy{Expire: 45 * 24 * time.Hour}
}

func (fakeRetention) Floor() (store.Policy, bool) { return store.Policy{DeleteRetrieved: true}, true }

func TestExpireCapability(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.Retention = fakeRetention{} })
	for _, tc := range []struct{ user, pass, want string }{
		{"alice", "secret", "EXPIRE 30"},
		{"bob", "pass word with spaces", "EXPIRE 0"},
		{"carol", "c", "EXPIRE 45"},
	} {
		c := ts.dial(t)
		c.expect(`\+OK Pouch ready\.`)
		c.send("CAPA\r\n")
		if !capaHas(c, "EXPIRE 0 USER") {
			t.Errorf("before login: no EXPIRE 0 USER")
		}
		c.send("USER " + tc.user + "\r\nPASS " + tc.pass + "\r\nCAPA\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(`\+OK maildrop has .*`)
		if !capaHas(c, tc.want) {
			t.Errorf("%s: no %q after login", tc.user, tc.want)
		}
		c.send("QUIT\r\n")
		c.expect(`\+OK Pouch signing off.*`)
	}
}

// capaHas reads a CAPA response and reports whether it has line want.
func capaHas(c *client, want string) bool {
	c.t.Helper()
	c.expect(`\+OK Capability list follows`)
	found := false
	for l := c.line(); l != "."; l = c.line() {
		found = found || l == want
	}
	return found
}

func TestExpireNeverWithoutPolicy(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	c.expect(`\+OK Pouch ready\.`)
	c.send("CAPA\r\n")
	if !capaHas(c, "EXPIRE NEVER") {
		t.Fatal("no EXPIRE NEVER")
	}
}

// Under EXPIRE 0, QUIT deletes what was retrieved with RETR, not what was
// only looked at with TOP; a dropped connection deletes nothing.
func TestExpireZeroDeletesRetrieved(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.Retention = fakeRetention{} })
	ts.deliver(t, "bob", msg1, msg2, msg1)
	c := ts.dial(t)
	c.login("bob", "pass word with spaces")
	c.send("RETR 1\r\n")
	c.expect(`\+OK \d+ octets`)
	for c.line() != "." {
	}
	c.conn.Close()
	waitSessions(t, ts.srv, 0)
	if n := ts.count(t, "bob"); n != 3 {
		t.Fatalf("%d messages after a dropped connection, want 3", n)
	}
	c = ts.dial(t)
	c.login("bob", "pass word with spaces")
	c.send("RETR 1\r\n")
	c.expect(`\+OK \d+ octets`)
	for c.line() != "." {
	}
	c.send("TOP 2 0\r\n")
	c.expect(`\+OK top of message follows`)
	for c.line() != "." {
	}
	c.send("DELE 3\r\nQUIT\r\n")
	c.expect(`\+OK message 3 deleted`)
	c.expect(`\+OK Pouch signing off \(1 messages left\)`)
	if n := ts.count(t, "bob"); n != 1 {
		t.Fatalf("%d messages left, want 1", n)
	}
}

// The first retrieval is recorded at QUIT, for expiry counted from it.
func TestRetrievalRecorded(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.Retention = fakeRetention{} })
	ts.deliver(t, "alice", msg1, msg2, msg1)
	ctx := context.Background()
	c := ts.dial(t)
	c.login("alice", "secret")
	c.send("RETR 2\r\nTOP 3 1\r\n")
	c.expect(`\+OK \d+ octets`)
	for c.line() != "." {
	}
	c.expect(`\+OK top of message follows`)
	for c.line() != "." {
	}
	c.conn.Close()
	waitSessions(t, ts.srv, 0)
	if st, _ := ts.store.Stats(ctx, "alice"); st.Retrieved != 0 {
		t.Fatalf("retrieval recorded without QUIT: %+v", st)
	}
	c = ts.dial(t)
	c.login("alice", "secret")
	c.send("RETR 2\r\nTOP 3 1\r\n")
	c.expect(`\+OK \d+ octets`)
	for c.line() != "." {
	}
	c.expect(`\+OK top of message follows`)
	for c.line() != "." {
	}
	c.send("QUIT\r\n")
	c.expect(`\+OK Pouch signing off \(3 messages left\)`)
	st, err := ts.store.Stats(ctx, "alice")
	if err != nil || st.Retrieved != 2 || st.Messages != 3 {
		t.Fatalf("stats = %+v, %v", st, err)
	}
	// The sweep counts from that retrieval: message 1 stays.
	res, err := ts.store.Sweep(ctx, "alice", store.Policy{Expire: time.Hour, FromRetrieval: true}, time.Now().Add(2*time.Hour))
	if err != nil || len(res.Expired) != 2 {
		t.Fatalf("sweep: %+v, %v", res, err)
	}
}
