package server

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The limits pouch serve starts with (--max-connections,
// --max-connections-per-ip, --max-prelogin-connections).
const (
	flagMaxConnections = 1000
	flagMaxPerIP       = 100
	flagMaxPreLogin    = 250
)

// flooder holds connections that never log in, from one loopback address,
// and opens a new one each time one is closed, until stop.
type flooder struct {
	t      *testing.T
	addr   string
	from   string
	shed   *atomic.Int64 // connections told they were shed
	opened *atomic.Int64
}

// hold opens a connection, reads the greeting, and waits until the server
// closes it; it reports whether the server answered at all.
func (f *flooder) hold(stop <-chan struct{}) bool {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(f.from)}}
	c, err := d.Dial("tcp", f.addr)
	if err != nil {
		return false
	}
	defer c.Close()
	f.opened.Add(1)
	go func() { <-stop; c.Close() }()
	r := bufio.NewReader(c)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return true
		}
		if strings.HasPrefix(l, "-ERR [SYS/TEMP] too many connections waiting to log in") {
			f.shed.Add(1)
		}
	}
}

// 1,100 connections that never log in, 11 from each of 100 addresses (under
// the per-address limit), reconnecting as soon as they are closed, cannot
// keep a user out at pouch serve's default limits: the oldest of them are
// closed to make room, and logged-in sessions are never touched.
func TestPreLoginFloodCannotKeepUsersOut(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.MaxConnections, c.MaxConnectionsPerIP, c.MaxPreLogin = flagMaxConnections, flagMaxPerIP, flagMaxPreLogin
		c.PreLoginTimeout = time.Minute
	})
	// A user logged in before the flood stays logged in through it.
	before := ts.dialFrom(t, "127.0.1.1")
	before.login("bob", "pass word with spaces")

	var shed, opened atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for a := range 100 {
		f := &flooder{t: t, addr: ts.addr, from: fmt.Sprintf("127.0.0.%d", 10+a), shed: &shed, opened: &opened}
		for range 11 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if !f.hold(stop) {
						return
					}
				}
			}()
		}
	}
	defer func() { close(stop); wg.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for opened.Load() < 1100 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if opened.Load() < 1100 {
		t.Fatalf("only %d flood connections opened", opened.Load())
	}
	// The flood goes on while users log in, one after another.
	for i := range 5 {
		c := ts.dialFrom(t, "127.0.1.2")
		c.login("alice", "secret")
		c.send("STAT\r\nQUIT\r\n")
		c.expect(`\+OK 0 0`)
		c.expect(`\+OK Pouch signing off.*`)
		c.closed()
		t.Logf("login %d during the flood: ok", i+1)
	}
	before.send("NOOP\r\n")
	before.expect(`\+OK`)
	counts := func() (pre, in int) {
		ts.srv.mu.Lock()
		defer ts.srv.mu.Unlock()
		return ts.srv.preLogin.Len(), ts.srv.loggedIn
	}
	// The last user's session ends just after its client saw it close.
	waitFor(t, "one session logged in", func() bool { _, in := counts(); return in == 1 })
	if pre, _ := counts(); pre > flagMaxPreLogin {
		t.Errorf("%d sessions not logged in, over the cap of %d", pre, flagMaxPreLogin)
	}
	if shed.Load() == 0 {
		t.Error("no flood connection was told it was closed to make room")
	}
	t.Logf("%d flood connections opened, %d shed with a reply", opened.Load(), shed.Load())
}

// A connection whose credentials are being checked is never shed: when all
// the others not logged in are, a new connection is refused instead.
func TestShedPassesOverLoginsInProgress(t *testing.T) {
	auth := &blockingAuth{
		fakeAuth: fakeAuth{users: map[string]string{"alice": "secret"}},
		entered:  make(chan struct{}, 1),
		release:  make(chan struct{}),
	}
	ts := newTestServer(t, func(c *Config) {
		c.Auth = auth
		c.MaxPreLogin = 1
	})
	released := false
	release := func() {
		if !released {
			released = true
			close(auth.release)
		}
	}
	t.Cleanup(release) // before the server's shutdown
	a := ts.dialFrom(t, "127.0.0.2")
	a.expect(`\+OK Pouch ready\.`)
	a.send("USER alice\r\nPASS secret\r\n")
	<-auth.entered
	b := ts.dialFrom(t, "127.0.0.3")
	b.expect(`-ERR \[SYS/TEMP\] too many connections waiting to log in; try again later`)
	b.closed()
	release()
	a.expect(`\+OK send PASS`)
	a.expect(`\+OK maildrop has 0 messages .*`)
	// Logged in, a is no longer among the connections not logged in.
	c := ts.dialFrom(t, "127.0.0.3")
	c.expect(`\+OK Pouch ready\.`)
}

// On the POP3S port a connection still in its TLS handshake is shed with
// nothing sent: nothing may go before the handshake (RFC 8314 §3.3).
func TestShedDuringHandshakeSendsNothing(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) { c.MaxPreLogin = 1 })
	raw, err := net.Dial("tcp", ts.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	waitSessions(t, ts.srv, 1)
	c := ts.dialTLSFrom(t, "127.0.0.2", nil)
	c.expect(`\+OK Pouch ready\.`)
	var b [1]byte
	if n, err := raw.Read(b[:]); n != 0 || err == nil {
		t.Fatalf("the shed connection got %q (%v); want it closed unanswered", b[:n], err)
	}
}

// A session whose credentials were checked and that waits for the client
// again (here after OAUTHBEARER's error challenge) may be shed like any
// other: a stalled exchange holds no place that shedding passes over.
func TestShedAfterTheCheck(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) { c.MaxPreLogin = 1 })
	a := ts.dialTLS(t, nil)
	a.expect(`\+OK Pouch ready\.`)
	a.send("AUTH OAUTHBEARER " + bearerAs("alice", "bad") + "\r\n")
	a.expect(`\+ .*`)
	b := ts.dialTLS(t, nil)
	b.expect(`\+OK Pouch ready\.`)
	a.expect(`-ERR \[SYS/TEMP\] too many connections waiting to log in; try again`)
}

// A client that quits and connects again at once takes the place of the
// session it just ended: the per-address, per-user and total limits count a
// session out before its last reply, not when its goroutine is done.
func TestQuitFreesItsPlaceAtOnce(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.MaxConnections, c.MaxConnectionsPerIP, c.MaxSessionsPerUser = 1, 1, 1
	})
	for i := range 300 {
		c := ts.dial(t)
		if i%2 == 0 {
			c.login("alice", "secret")
		} else {
			c.expect(`\+OK Pouch ready\.`)
		}
		c.send("QUIT\r\n")
		c.expect(`\+OK Pouch signing off.*`)
		c.conn.Close()
	}
}
