package guard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Logins that run at once from one address are free for names proven
// there: 64 of them start together, none waits, none is slowed. At an
// address nobody logged in from yet, MaxNames start together, and each
// success makes room for the next at once.
func TestHonestConcurrencyIsFree(t *testing.T) {
	g, _ := newGuard(t, "")
	const clients = 64
	for i := range clients {
		succeed(t, g, nat, fmt.Sprintf("user%d", i))
	}
	fail(t, g, nat, "max") // someone else's typo changes nothing
	var attempts []*Attempt
	for i := range clients {
		a, d := start(t, g, nat, fmt.Sprintf("user%d", i))
		if d != 0 {
			t.Fatalf("login %d of %d at once waits %v", i+1, clients, d)
		}
		attempts = append(attempts, a)
	}
	for _, a := range attempts {
		a.Success()
	}

	cold := netip.MustParseAddr("203.0.113.2")
	attempts = attempts[:0]
	for i := range 10 {
		a, _ := start(t, g, cold, fmt.Sprintf("user%d", i))
		attempts = append(attempts, a)
	}
	if _, _, _, err := g.Attempt(noWait, cold, "user10"); !errors.Is(err, context.Canceled) {
		t.Fatalf("an 11th login of a name never seen there started at once: %v", err)
	}
	attempts[0].Success()
	start(t, g, cold, "user10")
}

// However many connections a source opens, no more of its passwords are
// checked at once than it has failures left: spraying, MaxNames, then the
// ban refuses the rest; guessing one name, MaxFailures, then the name is
// locked, and the refusals ban the source at SourceMaxFailures.
func TestParallelGuessesBounded(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		user                   func(i int) string
		checks, locked, banned int
	}{
		{"many names", func(i int) string { return fmt.Sprintf("name%d", i) }, 10, 0, 490},
		{"one name", func(int) string { return "alice" }, 10, 90, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := newGuard(t, "")
			const n = 500
			started := make(chan *Attempt, n)
			var mu sync.Mutex
			var locked, banned, bans int
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					a, _, b, err := g.Attempt(context.Background(), attacker, tc.user(i))
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err == nil:
						started <- a
					case errors.Is(err, ErrLocked):
						locked++
						if b.Net.IsValid() {
							bans++
						}
					case errors.Is(err, ErrBanned):
						banned++
					default:
						t.Error(err)
					}
				}()
			}
			var checked []*Attempt
			for range tc.checks {
				checked = append(checked, <-started)
			}
			for _, a := range checked {
				if _, ok := a.Failure(); ok {
					mu.Lock()
					bans++
					mu.Unlock()
				}
			}
			wg.Wait()
			if len(started) != 0 || locked != tc.locked || banned != tc.banned || bans != 1 {
				t.Fatalf("%d more checked, %d refused as locked, %d as banned, %d bans; want 0, %d, %d, 1",
					len(started), locked, banned, bans, tc.locked, tc.banned)
			}
		})
	}
}

// Attempts for names that already failed from a source need no new name,
// but no more of them run at once than the source has failures left before
// SourceMaxFailures.
func TestAttemptsBoundedByTheTotal(t *testing.T) {
	g, _ := newGuardWith(t, Config{SourceMaxFailures: 20})
	for i := range 5 {
		for range 3 {
			fail(t, g, attacker, fmt.Sprintf("name%d", i))
		}
	}
	for i := range 5 {
		start(t, g, attacker, fmt.Sprintf("name%d", i))
	}
	if _, _, _, err := g.Attempt(noWait, attacker, "name0"); !errors.Is(err, context.Canceled) {
		t.Fatalf("a 6th attempt with 15 failures of 20 started: %v", err)
	}
}

// A failure that comes in after its source was banned (an attempt that began
// before) neither bans again nor counts toward a repeat ban.
func TestFailureOfBannedSource(t *testing.T) {
	g, clk := newGuard(t, "")
	spray(t, g, attacker, "name", 9)
	late, _ := start(t, g, attacker, "name0")
	if b, banned := fail(t, g, attacker, "name9"); !banned || b.Count != 1 {
		t.Fatalf("10th name: %+v %v", b, banned)
	}
	if _, banned := late.Failure(); banned {
		t.Fatal("a failure after the ban banned again")
	}
	if b := g.Bans(); len(b) != 1 || b[0].Count != 1 || b[0].Until.Sub(clk.now()) != 15*time.Minute {
		t.Fatalf("bans: %+v", b)
	}
	clk.add(15*time.Minute + time.Second)
	if d := delayOf(t, g, attacker, "name0"); d != 0 {
		t.Fatalf("failures during the ban were counted: delay %v after it", d)
	}
}

// An attempt ends once: Done frees its place, and only its own; a Failure
// or Success after it records nothing.
func TestAttemptEnds(t *testing.T) {
	g, _ := newGuard(t, "")
	var attempts []*Attempt
	for i := range 10 {
		a, d := start(t, g, attacker, fmt.Sprintf("name%d", i))
		if d != 0 {
			t.Fatalf("attempt %d of 10 at once waits %v", i+1, d)
		}
		attempts = append(attempts, a)
	}
	attempts[3].Done()
	attempts[3].Done()
	if _, banned := attempts[3].Failure(); banned {
		t.Fatal("a failure of an ended attempt banned")
	}
	attempts[3].Success()
	start(t, g, attacker, "name10")
	if _, _, _, err := g.Attempt(noWait, attacker, "name11"); !errors.Is(err, context.Canceled) {
		t.Fatalf("an attempt started while 10 were in progress: %v", err)
	}
	g.mu.Lock()
	s := g.sources[Source(attacker)]
	events, proven := len(s.events), s.names["name3"] != nil
	g.mu.Unlock()
	if events != 0 || proven {
		t.Fatalf("an ended attempt recorded %d failures, proven %v", events, proven)
	}
	// Trusted networks are not counted at all.
	trusted := netip.MustParseAddr("192.0.2.1")
	for range 20 {
		a, d, _, err := g.Attempt(noWait, trusted, "alice")
		if d != 0 || err != nil {
			t.Fatal("a trusted address was slowed")
		}
		if _, banned := a.Failure(); banned {
			t.Fatal("a trusted address was banned")
		}
	}
}

// An attempt counts until it is ended, however long that takes (a long
// pre-login timeout, a slow failure delay): no more passwords of a source
// are checked at once than it has failures left.
func TestAttemptsNeverExpire(t *testing.T) {
	g, clk := newGuardWith(t, Config{MaxFailures: 3})
	for i := range 3 {
		start(t, g, attacker, fmt.Sprintf("name%d", i))
	}
	clk.add(24 * time.Hour)
	if _, _, _, err := g.Attempt(quickly(t), attacker, "name3"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a fourth attempt started a day later while three never ended: %v", err)
	}
}

// An attempt waiting for room gives up when its context ends (the
// session's pre-login deadline), and starts when a failure of its name
// leaves the window.
func TestAttemptWaits(t *testing.T) {
	g, err := New(Config{MaxFailures: 3, Window: 300 * time.Millisecond, DelayStep: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		a, _, _, _ := g.Attempt(context.Background(), attacker, "alice")
		a.Failure()
	}
	held, _, _, err := g.Attempt(context.Background(), attacker, "alice")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	if _, _, _, err := g.Attempt(ctx, attacker, "alice"); !errors.Is(err, context.Canceled) {
		t.Fatalf("waiting attempt after its context was cancelled: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, _, _, err := g.Attempt(ctx, attacker, "alice")
	if err != nil {
		t.Fatalf("the failures left the window, yet the attempt did not start: %v", err)
	}
	a.Done()
	held.Done()
}

// Attempt refuses a banned source, also one banned while it waited.
func TestAttemptOfBannedSource(t *testing.T) {
	g, _ := newGuard(t, "")
	var attempts []*Attempt
	for i := range 10 {
		a, _ := start(t, g, attacker, fmt.Sprintf("name%d", i))
		attempts = append(attempts, a)
	}
	done := make(chan bool)
	go func() {
		_, _, b, err := g.Attempt(context.Background(), attacker, "name10") // waits: 10 in progress
		done <- errors.Is(err, ErrBanned) && b.Automatic()
	}()
	for _, a := range attempts {
		a.Failure()
	}
	if !<-done {
		t.Fatal("a waiting attempt was not refused by the ban")
	}
	if a, _, b, err := g.Attempt(noWait, attacker, "alice"); a != nil || !errors.Is(err, ErrBanned) || b.Net != netip.MustParsePrefix("198.51.100.7/32") {
		t.Fatalf("attempt of a banned source: %v %v %+v", a, err, b)
	}
}

// User names longer than any user's are kept short.
func TestLongNamesClipped(t *testing.T) {
	g, _ := newGuard(t, "")
	long := strings.Repeat("x", 1<<14)
	fail(t, g, attacker, long)
	g.mu.Lock()
	defer g.mu.Unlock()
	for user := range g.sources[Source(attacker)].names {
		if len(user) > maxName {
			t.Fatalf("a name of %d octets kept", len(user))
		}
	}
}

// A ban list that cannot be written is logged; the ban holds in memory.
func TestSaveFailureLogged(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	os.Mkdir(dir, 0o700)
	var log bytes.Buffer
	g, err := New(Config{StatePath: filepath.Join(dir, "bans.json"), Log: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(dir)
	spray(t, g, attacker, "name", 10)
	if _, banned := g.Banned(attacker); !banned {
		t.Fatal("the ban does not hold in memory")
	}
	if !strings.Contains(log.String(), "writing the ban list failed") || !strings.Contains(log.String(), "bans.json") {
		t.Fatalf("log: %q", log.String())
	}
}

// Unban removes one network exactly; UnbanAddr every ban holding an address.
func TestUnbanAddr(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bans.json")
	g, _ := newGuard(t, path)
	spray(t, g, netip.MustParseAddr("::1"), "name", 10) // bans ::/64
	g.Ban(netip.MustParsePrefix("::/16"), time.Hour, "by hand")
	g.Ban(netip.MustParsePrefix("2001:db8::/32"), time.Hour, "by hand")
	if removed, _ := g.Unban(netip.MustParsePrefix("::1/128")); len(removed) != 0 {
		t.Fatalf("Unban(::1/128) removed %v", removed)
	}
	removed, err := g.UnbanAddr(netip.MustParseAddr("::1"))
	if err != nil || len(removed) != 2 || removed[0].Net.String() != "::/16" || removed[1].Net.String() != "::/64" {
		t.Fatalf("UnbanAddr(::1) = %+v, %v", removed, err)
	}
	if _, banned := g.Banned(netip.MustParseAddr("::1")); banned {
		t.Fatal("::1 is still banned")
	}
	if b := g.Bans(); len(b) != 1 || b[0].Net.String() != "2001:db8::/32" {
		t.Fatalf("bans left: %+v", b)
	}
}

// Refused connections are logged once a minute per source.
func TestNotice(t *testing.T) {
	g, clk := newGuard(t, "")
	if ok, _ := g.Notice(attacker); !ok {
		t.Fatal("the first refusal is not logged")
	}
	for range 1000 {
		if ok, _ := g.Notice(attacker); ok {
			t.Fatal("a refusal within the minute is logged")
		}
	}
	if ok, _ := g.Notice(netip.MustParseAddr("198.51.100.8")); !ok {
		t.Fatal("another source's first refusal is not logged")
	}
	clk.add(time.Minute)
	if ok, missed := g.Notice(attacker); !ok || missed != 1000 {
		t.Fatalf("a minute later: %v, %d unlogged", ok, missed)
	}
}

// BenchmarkConcurrentLogins is the guard's share of a login when 64
// clients log in at once from one address, as 199 users who logged in there
// before, one login in fifty with a wrong password.
func BenchmarkConcurrentLogins(b *testing.B) {
	g, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	const users = 199 // prime to 50: every name has its typos, among successes
	names := make([]string, users)
	for i := range names {
		names[i] = fmt.Sprint("user", i)
		a, _, _, _ := g.Attempt(context.Background(), nat, names[i])
		a.Success()
	}
	var next atomic.Int64
	b.SetParallelism(64 / max(1, runtime.GOMAXPROCS(0)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			a, d, _, err := g.Attempt(context.Background(), nat, names[i%users])
			if err != nil || d > time.Second {
				a.Done()
				b.Errorf("login %d: %v, delay %v", i, err, d)
				return
			}
			if i%50 == 0 {
				a.Failure()
			} else {
				a.Success()
			}
		}
	})
}
