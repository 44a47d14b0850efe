package guard

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Attempts of one source that run at once each wait a step longer than the
// one before, and no more passwords are checked than the failures that ban
// the source: the attempts beyond wait, and are refused by the ban.
func TestConcurrentAttempts(t *testing.T) {
	g, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	started := make(chan time.Duration, n)
	release := make(chan struct{})
	var checks, refused, bans int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, d, _, err := g.Attempt(context.Background(), attacker)
			if errors.Is(err, ErrBanned) {
				mu.Lock()
				refused++
				mu.Unlock()
				return
			}
			started <- d
			<-release // the password check
			mu.Lock()
			checks++
			mu.Unlock()
			if _, ok := a.Failure("alice"); ok {
				mu.Lock()
				bans++
				mu.Unlock()
			}
		}()
	}
	var delays []time.Duration
	for range 10 {
		delays = append(delays, <-started)
	}
	slices.Sort(delays)
	want := []time.Duration{0, 1, 2, 3, 4, 5, 6, 7, 8, 8}
	for i := range want {
		want[i] *= time.Second
	}
	if !slices.Equal(delays, want) {
		t.Fatalf("delays of 10 attempts at once: %v, want %v", delays, want)
	}
	close(release)
	wg.Wait()
	if checks != 10 || refused != 10 || bans != 1 {
		t.Fatalf("%d passwords checked, %d attempts refused, %d bans; want 10, 10, 1", checks, refused, bans)
	}
	if b := g.Bans(); len(b) != 1 || b[0].Count != 1 {
		t.Fatalf("bans %+v, want one, the first", b)
	}
}

// A failure that comes in after its source was banned (an attempt that began
// before) neither bans again nor counts toward a repeat ban.
func TestFailureOfBannedSource(t *testing.T) {
	g, clk := newGuard(t, "")
	for range 20 {
		g.Failure(attacker, "alice")
	}
	if b := g.Bans(); len(b) != 1 || b[0].Count != 1 || b[0].Until.Sub(clk.now()) != 15*time.Minute {
		t.Fatalf("bans after 20 failures in one burst: %+v", b)
	}
	clk.add(15*time.Minute + time.Second)
	if d := g.Delay(attacker); d != 0 {
		t.Fatalf("failures during the ban were counted: delay %v after it", d)
	}
}

// An attempt that ends without failing frees its place, and only its own:
// ending it again frees nothing more.
func TestAttemptEnds(t *testing.T) {
	g, _ := newGuard(t, "")
	var attempts []*Attempt
	for i := range 10 {
		a, d, _, err := g.Attempt(context.Background(), attacker)
		if err != nil || d != min(time.Duration(i)*time.Second, 8*time.Second) {
			t.Fatalf("attempt %d: delay %v, %v", i, d, err)
		}
		attempts = append(attempts, a)
	}
	attempts[3].Done()
	attempts[3].Done()
	attempts[3].Failure("alice") // already ended: counted, but frees no place
	if d := g.Delay(attacker); d != 8*time.Second {
		t.Fatalf("delay with 9 attempts and a failure: %v", d)
	}
	if _, _, _, err := g.Attempt(quickly(t), attacker); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("an attempt started while 9 were in progress after a failure: %v", err)
	}
	for _, a := range attempts {
		a.Done()
	}
	if d := g.Delay(attacker); d != time.Second {
		t.Fatalf("delay after every attempt ended: %v, want one step for the failure", d)
	}
	// Trusted networks are not counted at all.
	trusted := netip.MustParseAddr("192.0.2.1")
	for range 20 {
		a, d, _, err := g.Attempt(context.Background(), trusted)
		if d != 0 || err != nil {
			t.Fatal("a trusted address was slowed")
		}
		if _, banned := a.Failure("alice"); banned {
			t.Fatal("a trusted address was banned")
		}
	}
}

// quickly is a context that ends soon, for an Attempt that must wait.
func quickly(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}

// An attempt counts until it is ended, however long that takes (a long
// pre-login timeout, a slow failure delay): no more passwords of a source
// are checked at once than the failures that ban it.
func TestAttemptsNeverExpire(t *testing.T) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	g, err := New(Config{MaxFailures: 3, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, _, _, err := g.Attempt(context.Background(), attacker); err != nil {
			t.Fatal(err)
		}
	}
	clk.add(24 * time.Hour)
	if _, _, _, err := g.Attempt(quickly(t), attacker); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a fourth attempt started a day later while three never ended: %v", err)
	}
}

// An attempt waiting for a place gives up when its context ends (the
// session's pre-login deadline), and starts when a failure of its source
// leaves the window.
func TestAttemptWaits(t *testing.T) {
	g, err := New(Config{MaxFailures: 3, Window: 300 * time.Millisecond, DelayStep: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	g.Failure(attacker, "alice")
	g.Failure(attacker, "alice")
	held, _, _, err := g.Attempt(context.Background(), attacker)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	if _, _, _, err := g.Attempt(ctx, attacker); !errors.Is(err, context.Canceled) {
		t.Fatalf("waiting attempt after its context was cancelled: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, _, _, err := g.Attempt(ctx, attacker)
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
	for range 10 {
		a, _, _, _ := g.Attempt(context.Background(), attacker)
		attempts = append(attempts, a)
	}
	done := make(chan bool)
	go func() {
		_, _, b, err := g.Attempt(context.Background(), attacker) // waits: 10 in progress
		done <- errors.Is(err, ErrBanned) && b.Automatic()
	}()
	for _, a := range attempts {
		a.Failure("alice")
	}
	if !<-done {
		t.Fatal("a waiting attempt was not refused by the ban")
	}
	if a, _, b, err := g.Attempt(context.Background(), attacker); a != nil || !errors.Is(err, ErrBanned) || b.Net != netip.MustParsePrefix("198.51.100.7/32") {
		t.Fatalf("attempt of a banned source: %v %v %+v", a, err, b)
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
	for range 10 {
		g.Failure(attacker, "alice")
	}
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
	for range 10 {
		g.Failure(netip.MustParseAddr("::1"), "alice") // bans ::/64
	}
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
