package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/fetch"
	"github.com/pouchmail/pouch/internal/popscript"
	"github.com/pouchmail/pouch/internal/testkit"
)

// simClock drives a daemon step by step: each time the daemon sleeps with
// no run in progress, the clock moves to its wake-up time and wakes it.
type simClock struct {
	mu      sync.Mutex
	now     time.Time
	pending chan time.Time
}

func (c *simClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *simClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	c.pending = ch
	c.mu.Unlock()
	return ch
}

// wake moves the clock to next and fires the timer the daemon waits on.
func (c *simClock) wake(next time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if next.After(c.now) {
		c.now = next
	}
	if c.pending != nil {
		c.pending <- c.now
		c.pending = nil
	}
}

// call is one run the simulated daemon made.
type call struct {
	name string
	at   time.Time
}

// simDaemon runs a daemon over accts on the simulated clock, with fetch
// answering each run, until stop says so; it returns the runs made.
func simDaemon(t *testing.T, accts []namedAccount, parallel int, out io.Writer,
	fetchFn func(name string, n int, now time.Time) (fetch.Stats, error), stop func(calls []call) bool) []call {
	t.Helper()
	clk := &simClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	d := newDaemon(fetchRun{accts: accts, daemon: true, parallel: parallel}, out)
	d.now, d.after, d.rand = clk.Now, clk.After, func() float64 { return 0.5 }
	var mu sync.Mutex
	var calls []call
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	counts := map[string]int{}
	d.fetch = func(_ context.Context, na namedAccount, _ io.Writer) (fetch.Stats, error) {
		name := na.acct.DisplayName()
		mu.Lock()
		counts[name]++
		n := counts[name]
		calls = append(calls, call{name, clk.Now()})
		mu.Unlock()
		return fetchFn(name, n, clk.Now())
	}
	d.waiting = func(next time.Time) {
		mu.Lock()
		done := stop(calls)
		mu.Unlock()
		if done {
			cancel()
			return
		}
		clk.wake(next)
	}
	finished := make(chan struct{})
	go func() { d.run(ctx); close(finished) }()
	select {
	case <-finished:
	case <-time.After(20 * time.Second):
		t.Fatal("the simulated daemon did not stop")
	}
	return calls
}

func simAccount(name, server, user string, every time.Duration) namedAccount {
	return namedAccount{acct: &fetch.Account{Name: name, Server: server, User: user}, every: every}
}

// Each account keeps its own interval plus jitter; failures back off
// exponentially (equal jitter, capped at an hour) and a success resets
// them; the server's LOGIN-DELAY is a floor, said once.
func TestDaemonSchedule(t *testing.T) {
	out := &testkit.SyncBuffer{}
	calls := simDaemon(t, []namedAccount{simAccount("a", "s1:995", "u", 5*time.Minute), simAccount("b", "s2:995", "u", 2*time.Minute)},
		4, out, func(name string, n int, now time.Time) (fetch.Stats, error) {
			if name == "b" {
				return fetch.Stats{}, nil
			}
			switch n {
			case 2, 3, 4, 5, 6:
				return fetch.Stats{}, errors.New("connection refused")
			case 8:
				return fetch.Stats{LoggedIn: now, LoginDelay: 15 * time.Minute}, nil
			}
			return fetch.Stats{}, nil
		}, func(calls []call) bool {
			n := 0
			for _, c := range calls {
				if c.name == "a" {
					n++
				}
			}
			return n >= 10
		})
	var gaps []time.Duration
	var last time.Time
	bGaps := map[time.Duration]bool{}
	var lastB time.Time
	for _, c := range calls {
		if c.name == "b" {
			if !lastB.IsZero() {
				bGaps[c.at.Sub(lastB)] = true
			}
			lastB = c.at
			continue
		}
		if !last.IsZero() {
			gaps = append(gaps, c.at.Sub(last))
		}
		last = c.at
	}
	// rand is 0.5: jitter 15s on 5m (a tenth, halved); the back-off after
	// n failures is 5m·2^n capped at 1h, of which a quarter is taken off.
	want := []time.Duration{
		5*time.Minute + 15*time.Second, // success
		7*time.Minute + 30*time.Second, // 1 failure: 10m → 7.5m
		15 * time.Minute,               // 2: 20m → 15m
		30 * time.Minute,               // 3: 40m → 30m
		45 * time.Minute,               // 4: 80m, capped at 1h → 45m
		45 * time.Minute,               // 5: still capped
		5*time.Minute + 15*time.Second, // success: reset
		15 * time.Minute,               // LOGIN-DELAY 15m after the login
		5*time.Minute + 15*time.Second,
	}
	if fmt.Sprint(gaps) != fmt.Sprint(want) {
		t.Fatalf("gaps of a:\n got %v\nwant %v", gaps, want)
	}
	if len(bGaps) != 1 || !bGaps[2*time.Minute+6*time.Second] {
		t.Fatalf("gaps of b: %v", bGaps)
	}
	s := out.String()
	if strings.Count(s, "a: trying again in") != 5 || !strings.Contains(s, "a: trying again in 7m30s (after a failure)") ||
		!strings.Contains(s, "a: trying again in 45m (after 5 failures in a row)") {
		t.Fatalf("%s", s)
	}
	if strings.Count(s, "allows one login every 15m (LOGIN-DELAY), so it is checked that often rather than every 5m") != 1 {
		t.Fatalf("%s", s)
	}
}

// A login put off for LOGIN-DELAY is no failure: the next run is due when
// the server allows it, without back-off.
func TestDaemonLoginDelayRefusal(t *testing.T) {
	calls := simDaemon(t, []namedAccount{simAccount("a", "s:995", "u", time.Minute)}, 1, io.Discard,
		func(_ string, n int, now time.Time) (fetch.Stats, error) {
			if n == 2 {
				return fetch.Stats{}, &fetch.LoginDelayError{Delay: 10 * time.Minute, Until: now.Add(10 * time.Minute), Refused: true}
			}
			return fetch.Stats{}, nil
		}, func(calls []call) bool { return len(calls) >= 4 })
	if g := calls[2].at.Sub(calls[1].at); g != 10*time.Minute {
		t.Fatalf("after the refusal: %v", g)
	}
	if g := calls[3].at.Sub(calls[2].at); g != time.Minute+3*time.Second {
		t.Fatalf("then: %v", g)
	}
}

// No more than parallel accounts run at once, and two accounts of one
// server and user never together.
func TestDaemonParallelAndSameMailbox(t *testing.T) {
	accts := []namedAccount{
		simAccount("a", "s1:995", "u", time.Minute), simAccount("b", "s2:995", "u", time.Minute),
		simAccount("c", "s3:995", "u", time.Minute), simAccount("d", "s1:995", "u", time.Minute),
	}
	d := newDaemon(fetchRun{accts: accts, daemon: true, parallel: 2}, io.Discard)
	now := time.Now()
	d.now = func() time.Time { return now }
	release := make(chan struct{})
	d.fetch = func(context.Context, namedAccount, io.Writer) (fetch.Stats, error) {
		<-release
		return fetch.Stats{}, nil
	}
	running := func() string {
		var names []string
		for _, n := range d.order {
			if d.accts[n].running {
				names = append(names, n)
			}
		}
		return strings.Join(names, " ")
	}
	d.startDue(context.Background())
	if r := running(); r != "a b" || d.running != 2 {
		t.Fatalf("running %q (%d)", r, d.running)
	}
	close(release)
	d.finished(<-d.done)
	d.finished(<-d.done)
	// d waited for a (the same mailbox), c for room.
	d.startDue(context.Background())
	if r := running(); r != "c d" {
		t.Fatalf("running %q", r)
	}
	d.finished(<-d.done)
	d.finished(<-d.done)
	if d.running != 0 {
		t.Fatal(d.running)
	}
}

// TestFetchEveryReload: SIGHUP between runs adds an account and changes
// another; a configuration that does not load leaves the running one.
func TestFetchEveryReload(t *testing.T) {
	addr, st := fetchServer(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fetch.toml")
	write := func(body string) {
		t.Helper()
		tmp := cfg + ".tmp"
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Rename(tmp, cfg)
	}
	head := `
server = "` + addr + `"
tls = "none"
state-dir = "` + dir + `/state"
every = "1s"
`
	write(head + `
[account.a]
user = "alice"
password-command = "echo secret"
to = "maildir:` + dir + `/a1"
`)
	st.Deliver(context.Background(), "alice", strings.NewReader("Subject: 1\n\none\n"))
	out := &testkit.SyncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run([]string{"fetch", "--config", cfg}, nil, io.Discard, out) }()
	waitFor := func(dir string, n int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for countFiles(t, dir) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%s never got %d messages:\n%s", dir, n, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitOut := func(s string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(out.String(), s) {
			if time.Now().After(deadline) {
				t.Fatalf("never said %q:\n%s", s, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(dir+"/a1", 1) // the daemon runs, with its SIGHUP handler

	write(head + `
[account.a]
user = "alice"
password-command = "echo secret"
to = "maildir:` + dir + `/a2"

[account.b]
user = "bob"
password-command = "echo hunter2"
to = "maildir:` + dir + `/b"
`)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitOut("pouch fetch: reloaded " + cfg + ": added b; changed a\n")
	st.Deliver(context.Background(), "alice", strings.NewReader("Subject: 2\n\ntwo\n"))
	st.Deliver(context.Background(), "bob", strings.NewReader("Subject: b\n\nb\n"))
	waitFor(dir+"/a2", 1)
	waitFor(dir+"/b", 1)

	write(head + "[account.a\n")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitOut("pouch fetch: reloading " + cfg + ": config " + cfg + ":")
	waitOut("; keeping the configuration in use\n")
	st.Deliver(context.Background(), "alice", strings.NewReader("Subject: 3\n\nthree\n"))
	waitFor(dir+"/a2", 2)

	// Removed: b is fetched no more.
	write(head + `
[account.a]
user = "alice"
password-command = "echo secret"
to = "maildir:` + dir + `/a2"
`)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitOut("removed b\n")
	syscall.Kill(os.Getpid(), syscall.SIGINT)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("--every did not stop on SIGINT")
	}
	if n := countFiles(t, dir+"/a1"); n != 1 {
		t.Fatalf("a1 has %d messages", n)
	}
}

// TestFetchEveryLoginDelay: a server whose LOGIN-DELAY is longer than the
// interval is never asked sooner, and failures are spaced out.
func TestFetchEveryLoginDelayAndBackoff(t *testing.T) {
	var down atomic.Int32
	down.Store(2)
	b := (&popscript.Box{LoginDelay: 2 * time.Second, Messages: []popscript.Message{{UID: "1", Body: "Subject: 1\n\none\n"}},
		Down: func() string {
			if down.Add(-1) >= 0 {
				return "[SYS/TEMP] overloaded"
			}
			return ""
		}}).Start(t)
	dir := t.TempDir()
	out := &testkit.SyncBuffer{}
	done := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		fa, err := parseFetchArgs([]string{"--server", b.Addr, "--tls", "none", "--user", "u", "--password-command", "echo x",
			"--to", "maildir:" + dir + "/Mail", "--state-dir", dir + "/state", "--every", "1s", "--keep", "forever"}, out)
		if err != nil {
			done <- err
			return
		}
		fr, err := loadAccounts(fa, nil, false, &tokenStores{stderr: out}, out)
		if err != nil {
			done <- err
			return
		}
		newDaemon(fr, out).run(ctx)
		done <- nil
	}()
	deadline := time.Now().Add(30 * time.Second)
	for len(b.Logins()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d logins:\n%s", len(b.Logins()), out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if p := b.Problems(); len(p) != 0 {
		t.Fatalf("%q", p)
	}
	c := b.Connects()
	// Two failures: the second try at least 1s after the first, the third
	// at least 2s after the second (back-off from a 1s interval).
	if c[1].Sub(c[0]) < time.Second || c[2].Sub(c[1]) < 2*time.Second {
		t.Fatalf("connections at %v", c)
	}
	l := b.Logins()
	for i := 1; i < len(l); i++ {
		if l[i].Sub(l[i-1]) < 2*time.Second {
			t.Fatalf("logins %v apart", l[i].Sub(l[i-1]))
		}
	}
	s := out.String()
	if !strings.Contains(s, "trying again in") || !strings.Contains(s, "the server allows one login every 2s (LOGIN-DELAY), so it is checked that often rather than every 1s") {
		t.Fatalf("%s", s)
	}
}

// A reload in which an account's settings are wrong keeps that account's
// settings in use (a new one is not fetched) and applies the others.
func TestDaemonReloadKeepsAccountWithBadSettings(t *testing.T) {
	acct := func(name, user string) namedAccount {
		return namedAccount{acct: &fetch.Account{Name: name, Server: "127.0.0.1:1", User: user}, every: time.Minute}
	}
	a, b := acct("a", "alice"), acct("b", "bob")
	var out strings.Builder
	d := newDaemon(fetchRun{accts: []namedAccount{a, b}, daemon: true, parallel: 1, config: "fetch.toml"}, &out)
	b2 := acct("b", "bob2")
	d.reload = func() (fetchRun, error) {
		return fetchRun{accts: []namedAccount{b2}, daemon: true, parallel: 1, config: "fetch.toml", bad: []badAccount{
			{"a", usageError("account a: --window -5: give at least 1 (RETR commands in flight)")},
			{"c", usageError("account c: --server is required")},
		}}, nil
	}
	d.doReload()
	if s := d.accts["a"]; s == nil || s.na.acct != a.acct {
		t.Errorf("a's settings in use were not kept: %+v", s)
	}
	if s := d.accts["b"]; s == nil || s.na.acct != b2.acct {
		t.Errorf("b's new settings were not taken: %+v", s)
	}
	if d.accts["c"] != nil {
		t.Error("c, whose settings are wrong, was added")
	}
	if !slices.Equal(d.order, []string{"a", "b"}) {
		t.Errorf("order %q", d.order)
	}
	for _, want := range []string{
		"pouch fetch: reloading fetch.toml: account a: --window -5: give at least 1 (RETR commands in flight); keeping its configuration in use\n",
		"pouch fetch: reloading fetch.toml: account c: --server is required; it is not fetched until that is fixed\n",
		"pouch fetch: reloaded fetch.toml: changed b\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
