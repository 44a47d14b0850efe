package cluster_test

import (
	"bufio"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Deliveries spread over the three nodes' LMTP listeners, at once, all
// arrive, and none twice; any node then serves them.
func TestDeliveriesAcrossNodes(t *testing.T) {
	users := []string{"alice", "bob", "carol"}
	c := newCluster(t, users...)
	nodes := c.startAll()
	const perUser = 30
	var wg sync.WaitGroup
	errs := make(chan error, len(users)*perUser)
	for k, u := range users {
		for i := range perUser {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := nodes[(i+k)%len(nodes)]
				body := fmt.Sprintf("Subject: %s %d via %s\n\n%s\n.leading dot\n", u, i, n.name, strings.Repeat("x", i*100))
				r, err := n.deliver(u+"@example.org", body)
				if err != nil || !strings.HasPrefix(r, "250") {
					errs <- fmt.Errorf("delivery %d to %s via %s: %q %v", i, u, n.name, r, err)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for k, u := range users {
		got := nodes[(k+1)%3].contents(u)
		var subjects []string
		for _, m := range got {
			for _, l := range strings.Split(m, "\n") {
				if s, ok := strings.CutPrefix(l, "Subject: "); ok {
					subjects = append(subjects, s)
				}
			}
			if !strings.Contains(m, "\n.leading dot") {
				t.Errorf("%s: a message lost its dot line", u)
			}
		}
		slices.Sort(subjects)
		if len(subjects) != perUser || len(slices.Compact(slices.Clone(subjects))) != perUser {
			t.Fatalf("%s has %d messages (%d different), want %d once each", u, len(got), len(slices.Compact(subjects)), perUser)
		}
		for i := range perUser {
			want := fmt.Sprintf("%s %d via %s", u, i, nodes[(i+k)%3].name)
			if !slices.Contains(subjects, want) {
				t.Errorf("%s: %q missing", u, want)
			}
		}
	}
}

// A session on A holds the maildrop: B and C answer [IN-USE] at once, and
// get it as soon as A quits.
func TestLockAcrossNodes(t *testing.T) {
	c := newCluster(t, "alice")
	nodes := c.startAll()
	a, b, cc := nodes[0], nodes[1], nodes[2]
	if r, _ := a.deliver("alice", "Subject: one\n\nbody\n"); !strings.HasPrefix(r, "250") {
		t.Fatal(r)
	}
	pa := a.session("alice")
	for _, n := range []*node{b, cc} {
		start := time.Now()
		p := n.dial()
		r := p.login("alice")
		d := time.Since(start)
		if !strings.HasPrefix(r, "-ERR [IN-USE]") {
			t.Fatalf("login on %s while A holds the maildrop: %s", n.name, r)
		}
		if d > 2*time.Second {
			t.Errorf("%s took %v to answer [IN-USE]", n.name, d)
		}
		t.Logf("%s answered [IN-USE] in %v", n.name, d)
	}
	// A second session on A itself is refused too.
	if r := a.dial().login("alice"); !strings.HasPrefix(r, "-ERR [IN-USE]") {
		t.Fatalf("a second login on A: %s", r)
	}
	if r := pa.cmd("QUIT"); !strings.HasPrefix(r, "+OK") {
		t.Fatal(r)
	}
	pb := b.session("alice") // at once: A released its lease at QUIT
	if ids := pb.uidls(); len(ids) != 1 {
		t.Fatalf("B sees %d messages", len(ids))
	}
}

// kill -9 of A in the middle of a session with deletions pending deletes
// nothing; B gets the maildrop once A's lease has lapsed, within the lock
// TTL and a few seconds.
func TestKilledNodeTakeover(t *testing.T) {
	const ttl = 5 * time.Second
	c := newCluster(t, "alice")
	nodes := c.startAll("--lock-ttl", ttl.String())
	a, b := nodes[0], nodes[1]
	for i := range 5 {
		if r, _ := b.deliver("alice", fmt.Sprintf("Subject: %d\n\nbody %d\n", i, i)); !strings.HasPrefix(r, "250") {
			t.Fatal(r)
		}
	}
	pa := a.session("alice")
	before := pa.uidls()
	for i := 1; i <= 3; i++ {
		if r := pa.cmd(fmt.Sprintf("DELE %d", i)); !strings.HasPrefix(r, "+OK") {
			t.Fatal(r)
		}
	}
	a.kill()
	pb, took := b.waitLogin("alice", ttl+10*time.Second)
	t.Logf("B took alice's maildrop over %v after A was killed (lock TTL %v)", took, ttl)
	if took > ttl+3*time.Second {
		t.Errorf("takeover took %v, more than the TTL %v and 3 s", took, ttl)
	}
	if after := pb.uidls(); !slices.Equal(after, before) {
		t.Fatalf("after A died: %v, want %v (nothing deleted)", after, before)
	}
}

// A paused past its lease (kill -STOP): B takes the maildrop over and
// deletes; A, resumed, answers its QUIT with -ERR and deletes nothing.
func TestPausedNodeDeletesNothing(t *testing.T) {
	const ttl = 4 * time.Second
	c := newCluster(t, "alice")
	nodes := c.startAll("--lock-ttl", ttl.String())
	a, b := nodes[0], nodes[1]
	for i := range 4 {
		if r, _ := c.nodes[2].deliver("alice", fmt.Sprintf("Subject: %d\n\nbody %d\n", i, i)); !strings.HasPrefix(r, "250") {
			t.Fatal(r)
		}
	}
	pa := a.session("alice")
	uids := pa.uidls()
	for _, i := range []int{1, 2} {
		if r := pa.cmd(fmt.Sprintf("DELE %d", i)); !strings.HasPrefix(r, "+OK") {
			t.Fatal(r)
		}
	}
	a.signal(syscall.SIGSTOP)
	pb, took := b.waitLogin("alice", ttl+10*time.Second)
	t.Logf("B took the maildrop of paused A over after %v", took)
	if r := pb.cmd("DELE 3"); !strings.HasPrefix(r, "+OK") {
		t.Fatal(r)
	}
	if r := pb.cmd("QUIT"); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("B's QUIT: %s", r)
	}
	// A's client sends QUIT while A is still stopped; A reads it once
	// resumed.
	pa.send("QUIT")
	a.signal(syscall.SIGCONT)
	r, err := pa.reply(30 * time.Second)
	if !strings.HasPrefix(r, "-ERR") {
		t.Fatalf("A's QUIT after the takeover: %q %v, want -ERR", r, err)
	}
	t.Logf("A answered its QUIT: %s", r)
	want := []string{uids[0], uids[1], uids[3]} // only B's deletion happened
	p := b.session("alice")
	if got := p.uidls(); !slices.Equal(got, want) {
		t.Fatalf("after A resumed: %v, want %v", got, want)
	}
	// A serves again, as a new node.
	p.cmd("QUIT")
	if got := a.contents("alice"); len(got) != 3 {
		t.Fatalf("A after it resumed: %d messages", len(got))
	}
}

// PostgreSQL stopped with pg_ctl stop -m immediate in the middle of a
// session: the session's next commands and its QUIT answer
// -ERR [SYS/TEMP] and delete nothing, LMTP defers, /readyz says not
// ready; once the database is back all works again.
func TestDatabaseStopsMidSession(t *testing.T) {
	c := newCluster(t, "alice")
	nodes := c.startAll("--lock-ttl", "6s")
	a, b := nodes[0], nodes[1]
	for i := range 3 {
		// Message 2 is larger than a chunk: it is not read ahead with
		// message 1, and its RETR must ask the database.
		body := fmt.Sprintf("Subject: %d\n\nbody %d\n%s", i, i, strings.Repeat("z\n", i%2*200_000))
		if r, _ := a.deliver("alice", body); !strings.HasPrefix(r, "250") {
			t.Fatal(r)
		}
	}
	pa := a.session("alice")
	uids := pa.uidls()
	pa.retr(1)
	if r := pa.cmd("DELE 1"); !strings.HasPrefix(r, "+OK") {
		t.Fatal(r)
	}
	if ok, why := a.ready(); !ok {
		t.Fatalf("A not ready before the outage: %s", why)
	}
	if err := c.pg.Crash(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted {
			c.pg.Start()
		}
	}()
	if r := pa.cmd("RETR 2"); !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
		t.Fatalf("RETR while the database is down: %s", r)
	}
	if r := pa.cmd("QUIT"); !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
		t.Fatalf("QUIT while the database is down: %s", r)
	}
	if r := b.dial().login("alice"); !strings.HasPrefix(r, "-ERR [SYS/TEMP]") {
		t.Fatalf("a login while the database is down: %s", r)
	}
	if r, err := b.deliver("alice", "Subject: during\n\nx\n"); !strings.HasPrefix(r, "4") {
		t.Fatalf("LMTP while the database is down: %q %v, want a temporary failure", r, err)
	}
	for _, n := range nodes {
		if ok, why := n.ready(); ok {
			t.Fatalf("%s ready while the database is down", n.name)
		} else if !strings.Contains(why, "database") && !strings.Contains(why, "accounts in PostgreSQL") {
			// The store's ping or the accounts' source, whichever
			// found the database down first, names it.
			t.Errorf("%s's /readyz: %s", n.name, why)
		}
	}
	if err := c.pg.Start(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	start := time.Now()
	for _, n := range nodes {
		for ok, _ := n.ready(); !ok; ok, _ = n.ready() {
			if time.Since(start) > 30*time.Second {
				t.Fatalf("%s not ready 30 s after the database came back", n.name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("all nodes ready %v after the database came back", time.Since(start))
	p, took := b.waitLogin("alice", 20*time.Second)
	t.Logf("alice logged in on B %v after the nodes were ready", took)
	if got := p.uidls(); !slices.Equal(got, uids) {
		t.Fatalf("after the outage: %v, want %v (nothing deleted, nothing added)", got, uids)
	}
	p.cmd("QUIT")
	if r, err := a.deliver("alice", "Subject: after\n\nx\n"); !strings.HasPrefix(r, "250") {
		t.Fatalf("LMTP after the outage: %q %v", r, err)
	}
}

// A new password and a ban, set with pouch user and pouch ban --store on
// any machine, reach every node within a second or two: the old password
// stops working everywhere, also where the account was cached, and the
// banned address is refused everywhere until the ban is lifted.
func TestPasswordsAndBansReachEveryNode(t *testing.T) {
	c := newCluster(t, "alice")
	nodes := c.startAll()
	for _, n := range nodes {
		n.session("alice").cmd("QUIT") // each node has the account cached
	}
	const newPassword = "a brand new battery staple"
	start := time.Now()
	pouch(t, newPassword+"\n", "user", "passwd", "--data", t.TempDir(), "--store", c.url, "alice")
	for _, n := range nodes {
		for {
			p := n.dial()
			r := p.login("alice") // the old password
			if strings.HasPrefix(r, "-ERR [AUTH]") {
				break
			}
			if !strings.HasPrefix(r, "+OK") {
				t.Fatalf("%s: %s", n.name, r)
			}
			p.cmd("QUIT")
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s still takes the old password %v after the change", n.name, time.Since(start))
			}
			time.Sleep(50 * time.Millisecond)
		}
		p := n.dial()
		p.cmd("USER alice")
		if r := p.cmd("PASS " + newPassword); !strings.HasPrefix(r, "+OK") {
			t.Fatalf("%s refuses the new password: %s", n.name, r)
		}
		p.cmd("QUIT")
	}
	t.Logf("the new password was the only one on every node %v after pouch user passwd", time.Since(start))

	const banned = "127.0.0.9"
	start = time.Now()
	pouch(t, "", "ban", "add", "--data", t.TempDir(), "--store", c.url, banned, "--reason", "test")
	for _, n := range nodes {
		for !refused(n, banned) {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s still admits %s %v after the ban", n.name, banned, time.Since(start))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Logf("the ban was in force on every node %v after pouch ban add", time.Since(start))
	pouch(t, "", "ban", "del", "--data", t.TempDir(), "--store", c.url, banned)
	start = time.Now()
	for _, n := range nodes {
		for refused(n, banned) {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s still refuses %s %v after the ban was lifted", n.name, banned, time.Since(start))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// refused reports whether n turns away a connection from ip (a banned
// source gets an -ERR greeting, or none).
func refused(n *node, ip string) bool {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	conn, err := d.Dial("tcp", n.pop3)
	if err != nil {
		return true
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	l, err := bufio.NewReader(conn).ReadString('\n')
	return err != nil || !strings.HasPrefix(l, "+OK")
}
