package pg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/pgtest"
	"github.com/pouchmail/pouch/store"
)

// freeze stops s's heartbeat and its watchdog, as SIGSTOP stops a node's:
// its sessions stay open, believing they hold their leases.
func (s *Store) freeze() {
	if n := s.node.Load(); n != nil {
		n.halt()
	}
}

func nodeOf(m store.Maildrop) int64 { return m.(*maildrop).lease.node.id }

func fill(t *testing.T, s *Store, user string, n int) {
	t.Helper()
	for i := range n {
		if err := s.Deliver(context.Background(), user, stringReader(fmt.Sprintf("m%d\r\n", i))); err != nil {
			t.Fatal(err)
		}
	}
}

func bodies(t *testing.T, s *Store, user string) []string {
	t.Helper()
	m, err := s.Open(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var out []string
	for i := range m.Messages() {
		out = append(out, string(readAll(t, m, i)))
	}
	return out
}

// testTTL is the lock TTL of the lease tests.
const testTTL = 2 * time.Second

// twoNodes returns two nodes on one new database, with three messages
// for u, and A's session on them.
func twoNodes(t *testing.T) (a, b *Store, ma store.Maildrop) {
	t.Helper()
	u := newSchema(t)
	a = connect(t, u, Options{LockTTL: testTTL, Node: "a"})
	b = connect(t, u, Options{LockTTL: testTTL, Node: "b"})
	fill(t, b, "u", 3)
	ma, err := a.Open(context.Background(), "u")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ma.Close() })
	return a, b, ma
}

func TestLeaseAcrossNodes(t *testing.T) {
	ctx := context.Background()
	const ttl = testTTL
	a, b, ma := twoNodes(t)
	start := time.Now()
	if _, err := b.Open(ctx, "u"); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("B opens while A holds: %v, want ErrLocked", err)
	}
	t.Logf("ErrLocked from the other node in %v", time.Since(start))
	// Delivery through either node goes on; the session does not see it.
	fill(t, a, "u", 1)
	if n := len(ma.Messages()); n != 3 {
		t.Fatalf("A's snapshot has %d messages, want 3", n)
	}

	// A is paused: B waits for A's heartbeat to expire, and no longer.
	a.freeze()
	if _, err := b.Open(ctx, "u"); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("B opens right after A paused: %v, want ErrLocked", err)
	}
	if left := waitExpired(t, b, nodeOf(ma)); left > ttl {
		t.Fatalf("A's lease had %v left, more than the TTL", left)
	}
	mb, err := b.Open(ctx, "u")
	if err != nil {
		t.Fatalf("B opens once A's heartbeat expired: %v", err)
	}
	if err := mb.Commit([]int{0}); err != nil {
		t.Fatal(err)
	}
	mb.Close()

	// A wakes up and its client QUITs: the commit re-checks the lease and
	// removes nothing.
	if err := ma.Commit([]int{1, 2}); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("A's commit after B took over: %v, want ErrLeaseLost", err)
	}
	ma.Close()
	if got := bodies(t, b, "u"); len(got) != 3 || got[0] != "m1\r\n" || got[1] != "m2\r\n" {
		t.Fatalf("after A's refused commit: %q", got)
	}
	checkConsistent(t, b)
}

// TestLeaseTakeoverDuringCommit: a takeover that comes while the old
// holder's commit runs waits for it, and sees what it removed.
func TestLeaseTakeoverDuringCommit(t *testing.T) {
	ctx := context.Background()
	a, b, ma := twoNodes(t)
	m := ma.(*maildrop)
	// A's commit locks the lease row and stops before COMMIT.
	tx, _, err := a.beginChecked(ctx, m.id, m.lease)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := takeOut(ctx, tx, m.id, []int64{m.rows[0].id}, false, time.Now()); err != nil {
		t.Fatal(err)
	}
	a.freeze()
	waitExpired(t, b, nodeOf(ma))
	opened := make(chan store.Maildrop)
	go func() {
		mb, err := b.Open(ctx, "u")
		if err != nil {
			t.Error(err)
		}
		opened <- mb
	}()
	select {
	case <-opened:
		t.Fatal("B took the maildrop over while A's commit held the lease row")
	case <-time.After(200 * time.Millisecond):
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	mb := <-opened
	if mb == nil {
		t.FailNow()
	}
	defer mb.Close()
	if n := len(mb.Messages()); n != 2 {
		t.Fatalf("B's snapshot has %d messages, want the 2 that A's commit left", n)
	}
}

// TestLeaseRace: of many sessions opening one maildrop at once on two
// nodes, exactly one gets it.
func TestLeaseRace(t *testing.T) {
	ctx := context.Background()
	u := newSchema(t)
	nodes := []*Store{connect(t, u, Options{}), connect(t, u, Options{})}
	for round := range 10 {
		user := fmt.Sprintf("u%d", round)
		var (
			wg  sync.WaitGroup
			mu  sync.Mutex
			got []store.Maildrop
		)
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m, err := nodes[i%2].Open(ctx, user)
				switch {
				case err == nil:
					mu.Lock()
					got = append(got, m)
					mu.Unlock()
				case !errors.Is(err, store.ErrLocked):
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if len(got) != 1 {
			t.Fatalf("round %d: %d sessions got the maildrop", round, len(got))
		}
		got[0].Close()
	}
}

// proxy forwards TCP connections to the database, and can cut them off
// the way a network partition does: nothing gets through and nothing
// answers, until it heals and the connections cut meanwhile are reset.
type proxy struct {
	l      net.Listener
	target string

	mu   sync.Mutex
	cut  bool
	up   map[net.Conn]bool // connections to the database
	held map[net.Conn]bool // client connections during the cut
}

func newProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target, up: map[net.Conn]bool{}, held: map[net.Conn]bool{}}
	t.Cleanup(func() { l.Close(); p.heal() })
	go p.serve()
	return p
}

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		go p.forward(c)
	}
}

// silence keeps c open and unanswered until the cut heals.
func (p *proxy) silence(c net.Conn) {
	p.mu.Lock()
	p.held[c] = true
	p.mu.Unlock()
	io.Copy(io.Discard, c)
	c.Close()
}

func (p *proxy) forward(c net.Conn) {
	p.mu.Lock()
	cut := p.cut
	p.mu.Unlock()
	if cut {
		p.silence(c)
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.up[up] = true
	p.mu.Unlock()
	go func() {
		io.Copy(c, up)
		p.mu.Lock()
		cut := p.cut
		p.mu.Unlock()
		if !cut {
			c.Close()
		}
	}()
	io.Copy(up, c)
	up.Close()
	p.mu.Lock()
	delete(p.up, up)
	cut = p.cut
	p.mu.Unlock()
	if cut {
		p.silence(c)
	} else {
		c.Close()
	}
}

// partition cuts the connections to the database off.
func (p *proxy) partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for up := range p.up {
		up.Close()
	}
}

// heal ends the partition: the connections it held are reset.
func (p *proxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	for c := range p.held {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	p.held = map[net.Conn]bool{}
}

func (p *proxy) url(t *testing.T, dbURL string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = p.l.Addr().String()
	return u.String()
}

func TestLostHeartbeatEndsSessions(t *testing.T) {
	ctx := context.Background()
	const ttl = 2 * time.Second
	u := newSchema(t)
	p := newProxy(t, fmt.Sprintf("127.0.0.1:%d", pgtest.Get(t).Port()))
	a := connect(t, p.url(t, u), Options{LockTTL: ttl, Node: "a"})
	b := connect(t, u, Options{LockTTL: ttl, Node: "b"})
	fill(t, b, "u", 2)
	ma, err := a.Open(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	defer ma.Close()
	lost := ma.(interface{ Lost() <-chan struct{} }).Lost()

	p.partition()
	start := time.Now()
	select {
	case <-lost:
	case <-time.After(2 * ttl):
		t.Fatal("A's session was not told that its node lost the database")
	}
	// A gives up nine tenths of the TTL after its last renewal, which was
	// before the cut: before the database can expire it.
	if d := time.Since(start); d >= ttl {
		t.Fatalf("A gave up %v after the cut, not before the TTL", d)
	}
	t.Logf("A gave up %v after the cut", time.Since(start))
	if _, err := ma.Open(0); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("RETR on A after it gave up: %v, want ErrLeaseLost", err)
	}
	if err := ma.Commit([]int{0}); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("QUIT on A after it gave up: %v, want ErrLeaseLost", err)
	}
	ma.Close()

	// A's heartbeat expires in the database; then B has the maildrop.
	waitExpired(t, b, nodeOf(ma))
	if got := bodies(t, b, "u"); len(got) != 2 {
		t.Fatalf("B sees %d messages, want 2", len(got))
	}
	// Healed, A serves again as a new node.
	p.heal()
	m2, err := a.Open(ctx, "u")
	if err != nil {
		t.Fatalf("A after the partition healed: %v", err)
	}
	if nodeOf(m2) == nodeOf(ma) {
		t.Fatal("A kept its lost node")
	}
	m2.Close()
}

// TestDatabaseCrash stops PostgreSQL with pg_ctl stop -m immediate in the
// middle of a session and of a delivery: the session's operations fail
// with errors that are not the store's (the server answers [SYS/TEMP]),
// nothing half done is left, and all works again once it is back.
func TestDatabaseCrash(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Get(t)
	u := newSchema(t)
	s := connect(t, u, Options{})
	fill(t, s, "u", 3)
	m, err := s.Open(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(readAll(t, m, 0)); got != "m0\r\n" {
		t.Fatalf("message 1 = %q", got)
	}
	// The bodies read ahead with message 1 would be sent from memory, as
	// they are: the RETR below is to ask the database.
	m.(*maildrop).dropAhead()
	// A delivery whose sender is half way through when the database goes.
	crashed := make(chan error, 1)
	msg := crashMessage(3 * ChunkSize)
	r := &triggerReader{r: bytes.NewReader(msg), at: ChunkSize + 100, fire: func() { crashed <- c.Crash() }}
	if err := s.Deliver(ctx, "u", r); err == nil {
		t.Fatal("a delivery through a database crash succeeded")
	}
	if err := <-crashed; err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted {
			c.Start()
		}
	}()
	temporary := func(what string, err error) {
		t.Helper()
		if err == nil || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrLocked) || errors.Is(err, store.ErrBadUser) {
			t.Errorf("%s with the database down: %v, want a temporary error", what, err)
		}
	}
	_, err = m.Open(1)
	temporary("RETR", err)
	temporary("QUIT", m.Commit([]int{0, 1}))
	m.Close()
	_, err = s.Open(ctx, "v")
	temporary("login", err)
	temporary("delivery", s.Deliver(ctx, "u", stringReader("x\r\n")))

	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	if got := bodies(t, s, "u"); len(got) != 3 {
		t.Fatalf("after the restart: %d messages, want the 3 before (%q)", len(got), got)
	}
	if n, octets, err := s.Usage("u"); n != 3 || octets != 12 || err != nil {
		t.Fatalf("usage after the restart: %d, %d, %v", n, octets, err)
	}
	checkConsistent(t, s)
	fill(t, s, "u", 1)
	if got := bodies(t, s, "u"); len(got) != 4 {
		t.Fatalf("after a delivery: %d messages, want 4", len(got))
	}
}

// triggerReader calls fire once at octets have been read, and goes on.
type triggerReader struct {
	r    io.Reader
	at   int
	n    int
	fire func()
}

func (t *triggerReader) Read(p []byte) (int, error) {
	if t.n < t.at && t.n+len(p) > t.at {
		p = p[:t.at-t.n]
	}
	n, err := t.r.Read(p)
	t.n += n
	if t.n == t.at && t.fire != nil {
		t.fire()
		t.fire = nil
	}
	return n, err
}

// TestTidy: the leases of nodes long expired and the rows of nodes
// expired for an hour go; a live node's lease stays.
func TestTidy(t *testing.T) {
	ctx := context.Background()
	a, b, ma := twoNodes(t)
	mb, err := b.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	defer mb.Close()
	a.freeze()
	sql(t, b.connConfig.ConnString(), "UPDATE nodes SET expires = now() - interval '2 minutes' WHERE id = $1", nodeOf(ma))
	b.tidy(ctx)
	count := func(q string) (n int) {
		t.Helper()
		if err := b.pool.QueryRow(ctx, q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count("SELECT count(*) FROM leases"); n != 1 || holder(t, b) != 0 {
		t.Fatalf("%d leases after tidying, want only B's", n)
	}
	if n := count("SELECT count(*) FROM nodes"); n != 2 {
		t.Fatalf("%d nodes, want 2: A's row stays for an hour", n)
	}
	sql(t, b.connConfig.ConnString(), "UPDATE nodes SET expires = now() - interval '2 hours' WHERE id = $1", nodeOf(ma))
	b.tidy(ctx)
	if n := count("SELECT count(*) FROM nodes"); n != 1 {
		t.Fatalf("%d nodes, want B's alone", n)
	}
}
