package pgbans

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/pgtest"
	"github.com/pouchmail/pouch/store/pg"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// newSchema returns the URL of a new schema with Pouch's tables.
func newSchema(t *testing.T) string {
	t.Helper()
	url := pgtest.Get(t).Schema(t)
	if err := pg.Init(context.Background(), url); err != nil {
		t.Fatal(err)
	}
	return url
}

// node is one pouch serve's guard on the database at url, watching for
// changes as pouch serve does.
func node(t *testing.T, url string) *guard.Guard {
	t.Helper()
	s, err := Open(context.Background(), url, quiet)
	if err != nil {
		t.Fatal(err)
	}
	g, err := guard.New(guard.Config{Bans: s, MaxFailures: 3, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Watch(ctx, 100*time.Millisecond, g.Reload); close(done) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })
	return g
}

// eventually waits until cond holds, as long as a ban may take to reach
// another node.
func eventually(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%s: not within 10 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// failFor fails logins from ip for n user names on g, as a password
// sprayer does.
func failFor(t *testing.T, g *guard.Guard, ip netip.Addr, n int) {
	t.Helper()
	for i := range n {
		a, _, _, err := g.Attempt(context.Background(), ip, fmt.Sprintf("name%d", i))
		if err != nil {
			return // banned already
		}
		a.Failure()
	}
}

// An automatic ban made by one node and the bans added and lifted by hand
// (pouch ban, another process) reach every node at once; the failures
// that lead to a ban are counted per node.
func TestBansReachEveryNode(t *testing.T) {
	url := newSchema(t)
	a, b, c := node(t, url), node(t, url), node(t, url)
	sprayer := netip.MustParseAddr("198.51.100.7")

	// Two failures on each node: no node has seen three.
	for _, g := range []*guard.Guard{a, b, c} {
		failFor(t, g, sprayer, 2)
	}
	for _, g := range []*guard.Guard{a, b, c} {
		if _, banned := g.Banned(sprayer); banned {
			t.Fatal("banned before any node saw the threshold")
		}
	}
	// A third on A: A bans it, and B and C follow.
	failFor(t, a, sprayer, 3)
	if _, banned := a.Banned(sprayer); !banned {
		t.Fatal("A did not ban the sprayer")
	}
	d := eventually(t, "the ban reaching B and C", func() bool {
		_, onB := b.Banned(sprayer)
		_, onC := c.Banned(sprayer)
		return onB && onC
	})
	t.Logf("A's automatic ban reached B and C in %v", d)

	// pouch ban add and del, run anywhere.
	admin, err := Open(context.Background(), url, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	cmd, err := guard.New(guard.Config{Bans: admin})
	if err != nil {
		t.Fatal(err)
	}
	if bans := cmd.Bans(); len(bans) != 1 || bans[0].Net != netip.PrefixFrom(sprayer, 32) || !bans[0].Automatic() {
		t.Fatalf("pouch ban list: %+v", bans)
	}
	scanner := netip.MustParsePrefix("203.0.113.0/24")
	if err := cmd.Ban(scanner, time.Hour, "scanner"); err != nil {
		t.Fatal(err)
	}
	in := netip.MustParseAddr("203.0.113.9")
	eventually(t, "a ban by hand reaching the nodes", func() bool {
		_, onA := a.Banned(in)
		_, onC := c.Banned(in)
		return onA && onC
	})
	if _, err := cmd.UnbanAddr(sprayer); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a lifted ban reaching the nodes", func() bool {
		_, onA := a.Banned(sprayer)
		_, onB := b.Banned(sprayer)
		return !onA && !onB
	})
	if _, still := c.Banned(in); !still {
		t.Fatal("lifting one ban lifted another")
	}

	// A node started now has the bans.
	if _, banned := node(t, url).Banned(in); !banned {
		t.Fatal("a new node does not have the bans")
	}
}

// Bans made while the database is down hold on their node, are written
// once it is back, and reach the other nodes then; the nodes catch up on
// what changed while they could not listen.
func TestBansAcrossAnOutage(t *testing.T) {
	cl := pgtest.Get(t)
	url := newSchema(t)
	a, b := node(t, url), node(t, url)
	if err := cl.Crash(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			cl.Start()
		}
	})
	sprayer := netip.MustParseAddr("198.51.100.8")
	failFor(t, a, sprayer, 4)
	if _, banned := a.Banned(sprayer); !banned {
		t.Fatal("a ban made while the database is down does not hold on its node")
	}
	if err := cl.Start(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	// The next write (any ban, here one by hand on B) takes A's unsaved
	// ban along only when A writes again: A's next ban does.
	failFor(t, a, netip.MustParseAddr("198.51.100.9"), 4)
	eventually(t, "both of A's bans reaching B after the outage", func() bool {
		_, one := b.Banned(sprayer)
		_, two := b.Banned(netip.MustParseAddr("198.51.100.9"))
		return one && two
	})
}
