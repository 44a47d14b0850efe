package guard

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
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
	return newGuardWith(t, Config{StatePath: path})
}

// newGuardWith is newGuard with cfg's settings.
func newGuardWith(t *testing.T, cfg Config) (*Guard, *clock) {
	t.Helper()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg.Now = clk.now
	cfg.Trusted = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g, clk
}

var (
	attacker = netip.MustParseAddr("198.51.100.7")
	nat      = netip.MustParseAddr("203.0.113.1") // many honest users
)

// start starts an attempt of user from ip that must start at once, and
// returns it with its delay.
func start(t *testing.T, g *Guard, ip netip.Addr, user string) (*Attempt, time.Duration) {
	t.Helper()
	a, d, _, err := g.Attempt(noWait, ip, user)
	if err != nil {
		t.Fatalf("attempt of %s from %v: %v", user, ip, err)
	}
	return a, d
}

// fail records a failed login of user from ip.
func fail(t *testing.T, g *Guard, ip netip.Addr, user string) (Ban, bool) {
	t.Helper()
	a, _ := start(t, g, ip, user)
	return a.Failure()
}

// succeed records a successful login of user from ip.
func succeed(t *testing.T, g *Guard, ip netip.Addr, user string) {
	t.Helper()
	a, _ := start(t, g, ip, user)
	a.Success()
}

// delayOf is the delay of a login of user from ip now.
func delayOf(t *testing.T, g *Guard, ip netip.Addr, user string) time.Duration {
	t.Helper()
	a, d := start(t, g, ip, user)
	a.Done()
	return d
}

// noWait is a context that has ended: an Attempt given it fails at once
// rather than wait.
var noWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// quickly is a context that ends soon, for an Attempt that must wait.
func quickly(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}

// spray fails once for each of n names from ip, and returns the last
// failure's ban.
func spray(t *testing.T, g *Guard, ip netip.Addr, prefix string, n int) (Ban, bool) {
	t.Helper()
	var b Ban
	var banned bool
	for i := range n {
		b, banned = fail(t, g, ip, fmt.Sprintf("%s%d", prefix, i))
	}
	return b, banned
}

// One user's typos slow down that user only: after max's wrong password,
// lena's login from the same address waits nothing, and so does max's own
// second try; each further failure of max adds a step for max.
func TestTyposSlowTheirOwnNameOnly(t *testing.T) {
	g, _ := newGuard(t, "")
	fail(t, g, nat, "max")
	if d := delayOf(t, g, nat, "lena"); d != 0 {
		t.Fatalf("lena waits %v after max's one typo", d)
	}
	if d := delayOf(t, g, nat, "max"); d != 0 {
		t.Fatalf("max's second try waits %v", d)
	}
	for i := 2; i <= 9; i++ {
		fail(t, g, nat, "max")
		if d, want := delayOf(t, g, nat, "max"), min(time.Duration(i-1)*time.Second, 8*time.Second); d != want {
			t.Fatalf("max after %d failures waits %v, want %v", i, d, want)
		}
		if d := delayOf(t, g, nat, "lena"); d != 0 {
			t.Fatalf("lena waits %v after %d typos of max", d, i)
		}
	}
}

// MaxFailures of one name from one source lock the name there: the next
// attempt is refused without a check, until the failures leave the window.
// Other names from that source, and the name from other sources, go on; the
// source is not banned.
func TestNameLockedForItsSource(t *testing.T) {
	g, clk := newGuard(t, "")
	for i := range 10 {
		if _, banned := fail(t, g, nat, "max"); banned {
			t.Fatalf("banned after %d failures of one name", i+1)
		}
		clk.add(time.Second)
	}
	if a, _, b, err := g.Attempt(noWait, nat, "max"); a != nil || err != ErrLocked || b.Net.IsValid() {
		t.Fatalf("max after 10 failures: %v, %v, %+v", a, err, b)
	}
	if d := delayOf(t, g, nat, "lena"); d != 0 {
		t.Fatalf("lena waits %v", d)
	}
	if d := delayOf(t, g, netip.MustParseAddr("198.51.100.200"), "max"); d != 0 {
		t.Fatalf("max from elsewhere waits %v", d)
	}
	if _, banned := g.Banned(nat); banned {
		t.Fatal("the shared address is banned for one user's failures")
	}
	clk.add(15*time.Minute - 9*time.Second) // the first failure leaves the window
	if _, _, _, err := g.Attempt(noWait, nat, "max"); err != nil {
		t.Fatalf("max is still locked after his first failure left the window: %v", err)
	}
}

// A successful login forgets the name's failures from its source (they
// were its user's typos) and proves the name there: its later failures
// count for the name only, never toward the source's ban.
func TestSuccessProvesTheName(t *testing.T) {
	g, _ := newGuardWith(t, Config{MaxNames: 3})
	for range 3 {
		fail(t, g, nat, "max")
	}
	succeed(t, g, nat, "max")
	if d := delayOf(t, g, nat, "max"); d != 0 {
		t.Fatalf("max waits %v after logging in", d)
	}
	for _, user := range []string{"ann", "bob", "cid"} {
		succeed(t, g, nat, user)
		fail(t, g, nat, user) // a typo after logging in
	}
	if _, banned := fail(t, g, nat, "max"); banned {
		t.Fatal("typos of proven names banned the source")
	}
	g.mu.Lock()
	s := g.sources[Source(nat)]
	events, guessed := len(s.events), s.guessed
	g.mu.Unlock()
	if events != 0 || guessed != 0 {
		t.Fatalf("typos of proven names counted against the source: %d events, %d names", events, guessed)
	}
}

// Many honest users behind one address, 2% of their logins with a wrong
// password, all day: nobody is banned, locked or slowed beyond a step after
// two typos in a row.
func TestSharedAddressWithTypos(t *testing.T) {
	g, clk := newGuard(t, "")
	const users = 300
	for u := range users {
		succeed(t, g, nat, fmt.Sprintf("user%d", u))
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 24 * 60 * 30 { // 30 logins a minute
		user := fmt.Sprintf("user%d", r.IntN(users))
		if d := delayOf(t, g, nat, user); d > time.Second {
			t.Fatalf("login %d of %s waits %v", i, user, d)
		}
		if r.IntN(50) == 0 {
			if _, banned := fail(t, g, nat, user); banned {
				t.Fatalf("the address is banned after %d logins", i)
			}
		} else {
			succeed(t, g, nat, user)
		}
		clk.add(2 * time.Second)
	}
	if b := g.Bans(); len(b) != 0 {
		t.Fatalf("bans: %+v", b)
	}
}

// A client stuck with an old password, polling every minute from a shared
// address, locks its own name there and nothing else: its refused polls stay
// far below the source's total.
func TestStuckClientLocksOnlyItsName(t *testing.T) {
	g, clk := newGuard(t, "")
	succeed(t, g, nat, "lena")
	locked := 0
	for range 120 {
		a, _, _, err := g.Attempt(noWait, nat, "max")
		switch err {
		case nil:
			a.Failure()
		case ErrLocked:
			locked++
		default:
			t.Fatal(err)
		}
		if d := delayOf(t, g, nat, "lena"); d != 0 {
			t.Fatalf("lena waits %v", d)
		}
		clk.add(time.Minute)
	}
	if _, banned := g.Banned(nat); banned || locked == 0 {
		t.Fatalf("banned %v, %d polls refused as locked", banned, locked)
	}
}

// Failures for MaxNames names not proven from a source ban it (password
// spraying); one name fewer does not. From half of MaxNames on, each
// further name slows the names not proven there, and only them.
func TestSprayingBans(t *testing.T) {
	g, clk := newGuard(t, "")
	succeed(t, g, attacker, "own") // the attacker's own account
	for i := range 9 {
		if _, banned := fail(t, g, attacker, fmt.Sprintf("name%d", i)); banned {
			t.Fatalf("banned after %d names", i+1)
		}
		want := max(time.Duration(i+1-5), 0) * time.Second
		if d := delayOf(t, g, attacker, "another"); d != want {
			t.Fatalf("after %d names a new name waits %v, want %v", i+1, d, want)
		}
		if d := delayOf(t, g, attacker, "own"); d != 0 {
			t.Fatalf("a proven name waits %v", d)
		}
	}
	b, banned := fail(t, g, attacker, "name9")
	if !banned || b.Until.Sub(clk.now()) != 15*time.Minute || b.Count != 1 || !strings.Contains(b.Reason, "10 user names") {
		t.Fatalf("10th name: ban %+v, %v", b, banned)
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
	if d := delayOf(t, g, attacker, "another"); d != 0 {
		t.Fatalf("the failures that led to the ban still count: %v", d)
	}
	// A repeat offender gets twice as long.
	b, banned = spray(t, g, attacker, "again", 10)
	if !banned || b.Until.Sub(clk.now()) != 30*time.Minute || b.Count != 2 {
		t.Fatalf("second ban %+v", b)
	}
}

// A source that keeps coming back for a locked name is banned once its
// failures and refusals reach SourceMaxFailures.
func TestHammeringBans(t *testing.T) {
	g, _ := newGuard(t, "")
	for range 10 {
		fail(t, g, attacker, "alice")
	}
	for i := 10; i < 99; i++ {
		if a, _, b, err := g.Attempt(noWait, attacker, "alice"); a != nil || err != ErrLocked || b.Net.IsValid() {
			t.Fatalf("attempt %d: %v %v %+v", i+1, a, err, b)
		}
	}
	_, _, b, err := g.Attempt(noWait, attacker, "alice")
	if err != ErrLocked || b.Count != 1 || !strings.Contains(b.Reason, "100 failed or refused") {
		t.Fatalf("100th attempt: %v, ban %+v", err, b)
	}
	if _, _, _, err := g.Attempt(noWait, attacker, "bob"); err != ErrBanned {
		t.Fatalf("after the ban: %v", err)
	}
}

func TestFailuresExpire(t *testing.T) {
	g, clk := newGuard(t, "")
	spray(t, g, attacker, "name", 8)
	for range 8 {
		fail(t, g, attacker, "alice")
	}
	clk.add(16 * time.Minute)
	if d := delayOf(t, g, attacker, "alice"); d != 0 {
		t.Fatalf("delay after the window: %v", d)
	}
	if _, banned := fail(t, g, attacker, "another"); banned {
		t.Fatal("old failures still count")
	}
}

func TestIPv6GroupedBy64(t *testing.T) {
	g, _ := newGuard(t, "")
	for i := range 10 {
		ip := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, byte(i + 1)})
		fail(t, g, ip, fmt.Sprintf("name%d", i))
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
	for range 50 {
		spray(t, g, ip, "name", 3)
		fail(t, g, ip, "alice")
	}
	if _, ok := g.Banned(ip); ok || delayOf(t, g, ip, "alice") != 0 {
		t.Fatal("a trusted address was slowed or banned")
	}
	if _, _, _, err := g.Attempt(noWait, ip, "alice"); err != nil {
		t.Fatalf("a trusted address was refused: %v", err)
	}
}

// A name that collects UserMaxFailures failures from sources where it is
// not proven is locked for those of them that failed for it, and for them
// only: not for a clean source, not for one where it logged in, not for
// other names.
func TestUserLockSparesCleanSources(t *testing.T) {
	g, _ := newGuard(t, "")
	home := netip.MustParseAddr("198.51.100.200")
	succeed(t, g, home, "alice")
	fail(t, g, home, "alice") // a typo at home
	// 20 failures for alice from 20 addresses (a botnet, 1 each).
	for i := range 20 {
		fail(t, g, netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), "alice")
	}
	if _, _, _, err := g.Attempt(noWait, netip.AddrFrom4([4]byte{203, 0, 113, 5}), "alice"); err != ErrLocked {
		t.Fatalf("alice from a source that failed: %v, want locked", err)
	}
	for _, ip := range []netip.Addr{home, netip.MustParseAddr("198.51.100.201")} {
		if _, _, _, err := g.Attempt(noWait, ip, "alice"); err != nil {
			t.Fatalf("alice from %v: %v", ip, err)
		}
	}
	if _, _, _, err := g.Attempt(noWait, netip.AddrFrom4([4]byte{203, 0, 113, 5}), "bob"); err != nil {
		t.Fatalf("bob: %v", err)
	}
}

func TestBansSurviveRestartAndManualBans(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bans.json")
	g, clk := newGuard(t, path)
	spray(t, g, attacker, "name", 10)
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

// Ban lists written before the guard counted per user name read as they
// were.
func TestBanListFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bans.json")
	old := `{
  "bans": [
    {
      "net": "198.51.100.7/32",
      "until": "2026-01-01T00:15:00Z",
      "reason": "10 failed logins",
      "count": 1,
      "since": "2026-01-01T00:00:00Z"
    }
  ]
}
`
	if err := os.WriteFile(path, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	g, _ := newGuard(t, path)
	b, ok := g.Banned(attacker)
	if !ok || b.Count != 1 || b.Reason != "10 failed logins" {
		t.Fatalf("ban read from an older list: %+v %v", b, ok)
	}
}

func TestGuardStaysBounded(t *testing.T) {
	g, clk := newGuard(t, "")
	for i := range 3 * sweepAt {
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		if i%3 == 0 {
			succeed(t, g, ip, fmt.Sprintf("user%d", i))
		} else {
			fail(t, g, ip, fmt.Sprintf("user%d", i))
		}
		if i%1000 == 0 {
			clk.add(16 * time.Minute) // the failures so far leave the window
		}
	}
	g.mu.Lock()
	n := len(g.sources) + g.names + len(g.users)
	g.mu.Unlock()
	if n > 3*sweepAt {
		t.Fatalf("%d entries tracked", n)
	}
}

func TestMappedPrefixes(t *testing.T) {
	nets, err := ParseNets("::ffff:198.51.100.0/120")
	if err != nil || len(nets) != 1 || nets[0].String() != "198.51.100.0/24" {
		t.Fatalf("ParseNets = %v, %v", nets, err)
	}
}
