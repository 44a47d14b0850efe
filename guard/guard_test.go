package guard

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newGuard(t *testing.T, path string) (*Guard, *clock) {
	t.Helper()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	g, err := New(Config{
		StatePath: path,
		Now:       clk.now,
		Trusted:   []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")},
	})
	if err != nil {
		t.Fatal(err)
	}
	return g, clk
}

var attacker = netip.MustParseAddr("198.51.100.7")

func TestDelayThenBan(t *testing.T) {
	g, clk := newGuard(t, "")
	for i := 0; i < 9; i++ {
		if d := g.Delay(attacker); d != min(time.Duration(i)*time.Second, 8*time.Second) {
			t.Fatalf("delay after %d failures = %v", i, d)
		}
		if _, banned := g.Failure(attacker, "alice"); banned {
			t.Fatalf("banned after %d failures", i+1)
		}
		clk.add(time.Second)
	}
	b, banned := g.Failure(attacker, "alice")
	if !banned || b.Until.Sub(clk.now()) != 15*time.Minute {
		t.Fatalf("10th failure: ban %+v, %v", b, banned)
	}
	if _, ok := g.Banned(attacker); !ok {
		t.Fatal("not banned")
	}
	if _, ok := g.Banned(netip.MustParseAddr("198.51.100.8")); ok {
		t.Fatal("a neighbour is banned too")
	}
	clk.add(15*time.Minute + time.Second)
	if _, ok := g.Banned(attacker); ok {
		t.Fatal("still banned after the ban time")
	}
	// A repeat offender gets twice as long.
	for i := 0; i < 10; i++ {
		b, banned = g.Failure(attacker, "bob")
	}
	if !banned || b.Until.Sub(clk.now()) != 30*time.Minute || b.Count != 2 {
		t.Fatalf("second ban %+v", b)
	}
}

func TestFailuresExpire(t *testing.T) {
	g, clk := newGuard(t, "")
	for i := 0; i < 9; i++ {
		g.Failure(attacker, "alice")
	}
	clk.add(16 * time.Minute)
	if d := g.Delay(attacker); d != 0 {
		t.Fatalf("delay after the window: %v", d)
	}
	if _, banned := g.Failure(attacker, "alice"); banned {
		t.Fatal("old failures still count")
	}
}

func TestIPv6GroupedBy64(t *testing.T) {
	g, _ := newGuard(t, "")
	for i := 0; i < 10; i++ {
		ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, byte(i + 1)})
		g.Failure(ip, "alice")
	}
	if _, ok := g.Banned(netip.MustParseAddr("2001:db8:0:1::ffff")); !ok {
		t.Fatal("the /64 is not banned")
	}
	if _, ok := g.Banned(netip.MustParseAddr("2001:db8:0:2::1")); ok {
		t.Fatal("another /64 is banned")
	}
}

func TestTrustedNeverBanned(t *testing.T) {
	g, _ := newGuard(t, "")
	ip := netip.MustParseAddr("192.0.2.10")
	for i := 0; i < 50; i++ {
		g.Failure(ip, "alice")
	}
	if _, ok := g.Banned(ip); ok || g.Delay(ip) != 0 || g.UserLocked(ip, "alice") {
		t.Fatal("a trusted address was slowed, locked or banned")
	}
}

func TestUserLockSparesCleanSources(t *testing.T) {
	g, _ := newGuard(t, "")
	// 20 failures for alice from 20 addresses (a botnet, 1 each).
	for i := 0; i < 20; i++ {
		g.Failure(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), "alice")
	}
	if !g.UserLocked(netip.AddrFrom4([4]byte{203, 0, 113, 5}), "alice") {
		t.Fatal("alice is not locked for a source that failed")
	}
	if g.UserLocked(netip.MustParseAddr("198.51.100.200"), "alice") {
		t.Fatal("alice is locked for a clean source")
	}
	if g.UserLocked(netip.AddrFrom4([4]byte{203, 0, 113, 5}), "bob") {
		t.Fatal("bob is locked")
	}
}

func TestBansSurviveRestartAndManualBans(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bans.json")
	g, clk := newGuard(t, path)
	for i := 0; i < 10; i++ {
		g.Failure(attacker, "alice")
	}
	// Another process (pouch ban) bans a network meanwhile.
	other, _ := newGuard(t, path)
	other.cfg.Now = clk.now
	if err := other.Ban(netip.MustParsePrefix("203.0.113.0/24"), time.Hour, "by hand"); err != nil {
		t.Fatal(err)
	}
	// The running guard sees it (it rereads a changed file within a second).
	g.mu.Lock()
	g.lastLoad = time.Time{}
	g.mu.Unlock()
	if _, ok := g.Banned(netip.MustParseAddr("203.0.113.9")); !ok {
		t.Fatal("a ban made by another process is not seen")
	}
	// After a restart both bans hold.
	g2, _ := newGuard(t, path)
	g2.cfg.Now = clk.now
	if _, ok := g2.Banned(attacker); !ok {
		t.Fatal("the automatic ban did not survive a restart")
	}
	if bans := g2.Bans(); len(bans) != 2 {
		t.Fatalf("bans after restart: %+v", bans)
	}
	if removed, err := g2.Unban(netip.MustParsePrefix("198.51.100.7/32")); len(removed) != 1 || err != nil {
		t.Fatalf("Unban: %v %v", removed, err)
	}
	g3, _ := newGuard(t, path)
	g3.cfg.Now = clk.now
	if _, ok := g3.Banned(attacker); ok {
		t.Fatal("unban did not persist")
	}
}

func TestGuardStaysBounded(t *testing.T) {
	g, clk := newGuard(t, "")
	for i := 0; i < 3*sweepAt; i++ {
		g.Failure(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), fmt.Sprintf("user%d", i))
		if i%1000 == 0 {
			clk.add(16 * time.Minute) // the failures so far leave the window
		}
	}
	g.mu.Lock()
	n := len(g.sources) + len(g.users)
	g.mu.Unlock()
	if n > 2*sweepAt {
		t.Fatalf("%d entries tracked", n)
	}
}

func TestMappedPrefixes(t *testing.T) {
	nets, err := ParseNets("::ffff:198.51.100.0/120")
	if err != nil || len(nets) != 1 || nets[0].String() != "198.51.100.0/24" {
		t.Fatalf("ParseNets = %v, %v", nets, err)
	}
}
