package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/pouchmail/pouch/fetch"
)

// maxBackoff caps the wait after repeated failures (or the account's own
// interval, when that is longer).
const maxBackoff = time.Hour

// maxJitter caps the random wait added to an interval.
const maxJitter = time.Minute

// daemon is pouch fetch --every: each account on its own schedule, up to
// parallel accounts at a time and one session per server and user at a
// time; the next run of an account is due its interval (plus a little
// jitter, so that accounts and machines do not poll in step) after its
// last run ended, never before the server's LOGIN-DELAY has passed since
// its last login (RFC 2449 §6.5), and later after failures: twice as long
// after each failure in a row, up to an hour, until a run succeeds. A
// SIGHUP loads the configuration again between runs.
type daemon struct {
	out      io.Writer
	parallel int
	config   string

	// reload loads the configuration again; hup says when.
	reload func() (fetchRun, error)
	hup    <-chan os.Signal

	// The clock, the randomness and the fetch itself, replaced by tests;
	// waiting, if set, is told the next wake-up before the loop sleeps
	// with no run in progress.
	now     func() time.Time
	after   func(time.Duration) <-chan time.Time
	rand    func() float64
	fetch   func(ctx context.Context, na namedAccount, w io.Writer) (fetch.Stats, error)
	waiting func(next time.Time)

	accts   map[string]*schedule
	order   []string // the accounts' names, in the configuration's order
	running int
	done    chan runResult
}

// schedule is one account's state in the daemon.
type schedule struct {
	name      string
	na        namedAccount
	next      time.Time // when the next run is due
	notBefore time.Time // the server's LOGIN-DELAY after the last login
	lastEnd   time.Time
	failures  int // in a row
	running   bool
	removed   bool          // by a reload while it ran
	warned    time.Duration // the LOGIN-DELAY last warned about
}

type runResult struct {
	s   *schedule
	st  fetch.Stats
	err error
}

func newDaemon(fr fetchRun, out io.Writer) *daemon {
	d := &daemon{
		out: out, parallel: fr.parallel, config: fr.config,
		now: time.Now, after: time.After, rand: rand.Float64,
		fetch: func(ctx context.Context, na namedAccount, w io.Writer) (fetch.Stats, error) {
			return fetchOne(ctx, na, false, w)
		},
		accts: map[string]*schedule{},
		done:  make(chan runResult),
	}
	now := d.now()
	for _, na := range fr.accts {
		name := na.acct.DisplayName()
		d.accts[name] = &schedule{name: name, na: na, next: now}
		d.order = append(d.order, name)
	}
	return d
}

// run fetches until ctx ends, then waits for the runs in progress, which
// end gently (the message being stored is finished, and QUIT sent).
func (d *daemon) run(ctx context.Context) {
	for {
		d.startDue(ctx)
		var timer <-chan time.Time
		next, ok := d.nextDue()
		if ok {
			timer = d.after(max(0, next.Sub(d.now())))
		}
		if d.waiting != nil && d.running == 0 {
			d.waiting(next)
		}
		select {
		case <-ctx.Done():
			for d.running > 0 {
				d.finished(<-d.done)
			}
			return
		case r := <-d.done:
			d.finished(r)
		case <-d.hup:
			d.doReload()
		case <-timer:
		}
	}
}

// startDue starts the accounts that are due, earliest first, while there
// is room.
func (d *daemon) startDue(ctx context.Context) {
	now := d.now()
	var due []*schedule
	for _, name := range d.order {
		if s := d.accts[name]; s != nil && !s.running && !s.removed && !s.next.After(now) {
			due = append(due, s)
		}
	}
	slices.SortStableFunc(due, func(a, b *schedule) int { return a.next.Compare(b.next) })
	for _, s := range due {
		if d.running >= d.parallel {
			return
		}
		if d.mailboxBusy(s) {
			continue // its turn comes when the other session ends
		}
		s.running = true
		d.running++
		na := s.na
		go func() {
			st, err := d.fetch(ctx, na, d.out)
			d.done <- runResult{s: s, st: st, err: err}
		}()
	}
}

// mailboxBusy reports whether another account of the same server and user
// is running: a POP3 server locks a maildrop for one session at a time.
func (d *daemon) mailboxBusy(s *schedule) bool {
	for _, o := range d.accts {
		if o != s && o.running && o.na.acct.Server == s.na.acct.Server && o.na.acct.User == s.na.acct.User {
			return true
		}
	}
	return false
}

// nextDue returns the earliest time an account not running is due.
func (d *daemon) nextDue() (time.Time, bool) {
	var next time.Time
	ok := false
	for _, s := range d.accts {
		if s.running || s.removed {
			continue
		}
		if !ok || s.next.Before(next) {
			next, ok = s.next, true
		}
	}
	return next, ok
}

// finished schedules the next run of an account whose run ended.
func (d *daemon) finished(r runResult) {
	s := r.s
	s.running = false
	d.running--
	if s.removed {
		delete(d.accts, s.name)
		return
	}
	end := d.now()
	s.lastEnd = end
	iv := s.na.every
	var ld *fetch.LoginDelayError
	switch {
	case errors.As(r.err, &ld) && !ld.Until.IsZero():
		// The server asked for the wait: no failure, no back-off.
		s.notBefore = ld.Until
		s.next = end.Add(iv)
	case r.err == nil:
		s.failures = 0
		s.next = end.Add(iv + d.jitter(iv))
	default:
		s.failures++
		wait := d.backoff(iv, s.failures)
		s.next = end.Add(wait)
		if !s.na.quiet {
			fmt.Fprintf(d.out, "pouch fetch: %s: trying again in %s (%s)\n", s.name, fetch.ShortDuration(wait), failures(s.failures))
		}
	}
	if st := r.st; st.LoginDelay > 0 && !st.LoggedIn.IsZero() {
		s.notBefore = st.LoggedIn.Add(st.LoginDelay)
		if st.LoginDelay > iv && s.warned != st.LoginDelay && !s.na.quiet {
			s.warned = st.LoginDelay
			fmt.Fprintf(d.out, "pouch fetch: %s: the server allows one login every %s (LOGIN-DELAY), so it is checked that often rather than every %s\n",
				s.name, fetch.ShortDuration(st.LoginDelay), fetch.ShortDuration(iv))
		}
	}
	if s.next.Before(s.notBefore) {
		s.next = s.notBefore
	}
}

func failures(n int) string {
	if n == 1 {
		return "after a failure"
	}
	return fmt.Sprintf("after %d failures in a row", n)
}

// jitter is a random wait of up to a tenth of the interval (at most
// maxJitter), so that accounts, and machines that started together, drift
// apart instead of polling servers in step.
func (d *daemon) jitter(iv time.Duration) time.Duration {
	return time.Duration(d.rand() * float64(min(iv/10, maxJitter)))
}

// backoff is the wait after the nth failure in a row: the interval times
// 2^n, capped at maxBackoff (or the interval if that is longer), of which
// a random part of up to half is taken off ("equal jitter"), but never
// less than the interval.
func (d *daemon) backoff(iv time.Duration, n int) time.Duration {
	limit := max(maxBackoff, iv)
	w := limit
	if n < 40 && iv<<n > 0 && iv<<n < limit {
		w = iv << n
	}
	w = w/2 + time.Duration(d.rand()*float64(w/2))
	return max(w, iv)
}

// doReload loads the configuration again. Accounts added are due at once;
// accounts removed stop after the run in progress; accounts changed use
// their new settings from their next run on; an account whose new settings
// are wrong keeps those in use (or, new, is not fetched). A configuration
// that does not load changes nothing.
func (d *daemon) doReload() {
	fr, err := d.reload()
	if err == nil && !fr.daemon && len(fr.accts) > 0 {
		err = errors.New("it no longer sets an interval (every)")
	}
	where := "the configuration"
	if d.config != "" {
		where = d.config
	}
	if err != nil {
		fmt.Fprintf(d.out, "pouch fetch: reloading %s: %v; keeping the configuration in use\n", where, err)
		return
	}
	now := d.now()
	var added, removed, changed []string
	seen := map[string]bool{}
	order := d.order
	d.order = nil
	for _, b := range fr.bad {
		if s := d.accts[b.name]; s != nil && !s.removed {
			seen[b.name] = true
			fmt.Fprintf(d.out, "pouch fetch: reloading %s: %s; keeping its configuration in use\n", where, plainError(b.err))
		} else {
			fmt.Fprintf(d.out, "pouch fetch: reloading %s: %s; it is not fetched until that is fixed\n", where, plainError(b.err))
		}
	}
	for _, name := range order {
		if seen[name] {
			d.order = append(d.order, name) // kept as it was
		}
	}
	for _, na := range fr.accts {
		name := na.acct.DisplayName()
		seen[name] = true
		d.order = append(d.order, name)
		s := d.accts[name]
		if s == nil || s.removed {
			if s != nil && s.running {
				// Removed and added back while its run goes on.
				s.removed = false
				s.na = na
				continue
			}
			d.accts[name] = &schedule{name: name, na: na, next: now}
			added = append(added, name)
			continue
		}
		if sameAccount(s.na, na) {
			continue // its token source is as good as the new one
		}
		changed = append(changed, name)
		if na.every != s.na.every && !s.running && s.failures == 0 && !s.lastEnd.IsZero() {
			s.next = s.lastEnd.Add(na.every + d.jitter(na.every))
			if s.next.Before(s.notBefore) {
				s.next = s.notBefore
			}
		}
		s.na = na
	}
	for name, s := range d.accts {
		if seen[name] {
			continue
		}
		removed = append(removed, name)
		if s.running {
			s.removed = true
		} else {
			delete(d.accts, name)
		}
	}
	d.parallel = fr.parallel
	slices.Sort(removed)
	var parts []string
	for _, p := range []struct {
		what  string
		names []string
	}{{"added", added}, {"removed", removed}, {"changed", changed}} {
		if len(p.names) > 0 {
			parts = append(parts, p.what+" "+strings.Join(p.names, ", "))
		}
	}
	if len(parts) == 0 {
		parts = []string{"no account changed"}
	}
	fmt.Fprintf(d.out, "pouch fetch: reloaded %s: %s\n", where, strings.Join(parts, "; "))
}

// sameAccount reports whether two loads of an account have the same
// settings (token sources aside: each load makes its own).
func sameAccount(a, b namedAccount) bool {
	x, y := *a.acct, *b.acct
	x.Tokens, y.Tokens = nil, nil
	a.acct, b.acct = &x, &y
	return reflect.DeepEqual(a, b)
}
