package guard

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// ErrBanned is Attempt's error for a source that is banned.
var ErrBanned = errors.New("guard: source banned")

// ErrLocked is Attempt's error for a user name locked for the source: it
// failed there MaxFailures times, or it collected UserMaxFailures failures
// from sources where it is not proven and this source is one of them. The
// caller answers as a failed login is answered, without checking anything;
// the refusal counts toward the source's ban.
var ErrLocked = errors.New("guard: user name locked for this source")

// maxName is the longest user name the guard keeps: no user has a longer
// one (auth.ValidName), and a longer one would only cost memory.
const maxName = 255

// source is what the guard knows of one source.
type source struct {
	// events are the failures that count toward the source's ban (those
	// for names not proven there) and the attempts refused for a locked
	// name, within the window, oldest first.
	events  []event
	names   map[string]*name
	guessed int // names with a failure among events
	pending int // attempts in progress for names not proven here
	fresh   int // of those, attempts for names with no failure among events
	// changed is closed when an attempt of the source ends, or its failures
	// or the bans change: attempts waiting for room look again.
	changed chan struct{}
}

type event struct {
	at      time.Time
	user    string
	refused bool // an attempt refused for a locked name, not a failure
}

// name is what the guard knows of one user name from one source.
type name struct {
	fails   []time.Time // failures since its last successful login here, within the window
	guesses int         // of those, the ones among the source's events
	proven  time.Time   // its last successful login from the source
	pending int         // attempts in progress
}

// forgetFailures drops the source's failures and refusals, when it is
// banned for them.
func (s *source) forgetFailures() {
	s.events, s.guessed = nil, 0
	for _, n := range s.names {
		n.fails, n.guesses = nil, 0
	}
}

// prune drops the events that left the window, which starts at cut.
func (s *source) prune(cut time.Time) {
	i := 0
	for ; i < len(s.events) && s.events[i].at.Before(cut); i++ {
		if e := s.events[i]; !e.refused {
			n := s.names[e.user] // kept while it has guesses
			if n.guesses--; n.guesses == 0 {
				s.guessed--
			}
		}
	}
	s.events = s.events[i:]
}

// after drops the times before cut from times, oldest first.
func after(times []time.Time, cut time.Time) []time.Time {
	i := 0
	for i < len(times) && times[i].Before(cut) {
		i++
	}
	return times[i:]
}

func (g *Guard) cut(now time.Time) time.Time { return now.Add(-g.cfg.Window) }

// lookup returns src and its name user, making them when they are new.
// Called with g.mu held.
func (g *Guard) lookup(src netip.Prefix, user string) (*source, *name) {
	s := g.sources[src]
	if s == nil {
		s = &source{names: make(map[string]*name)}
		g.sources[src] = s
	}
	n := s.names[user]
	if n == nil {
		n = &name{}
		s.names[user] = n
		g.names++
	}
	return s, n
}

// tidy forgets the name user of src, and then src, when nothing of them is
// left to remember at the window's start cut. Called with g.mu held.
func (g *Guard) tidy(src netip.Prefix, user string, cut time.Time) {
	s := g.sources[src]
	if s == nil {
		return
	}
	if n := s.names[user]; n != nil && n.pending == 0 && n.guesses == 0 &&
		len(after(n.fails, cut)) == 0 && !n.proven.After(cut) {
		delete(s.names, user)
		g.names--
	}
	if len(s.names) == 0 && len(s.events) == 0 && s.pending == 0 && s.changed == nil {
		delete(g.sources, src)
	}
}

// wake wakes the attempts of s waiting for room. Called with g.mu held.
func (g *Guard) wake(s *source) {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

// wakeAll wakes every attempt waiting for room, when the bans changed.
// Called with g.mu held.
func (g *Guard) wakeAll() {
	for _, s := range g.sources {
		g.wake(s)
	}
}

// An Attempt is one authentication attempt in progress, from Guard.Attempt
// until its Success, Failure or Done. It never expires: whoever starts an
// attempt ends it, however the login ends.
type Attempt struct {
	g    *Guard
	ip   netip.Addr
	src  netip.Prefix
	user string
	// proven: the name was proven from the source when the attempt began,
	// so it is not among the source's pending attempts; fresh: it is among
	// them, for a name with no failure counted against the source.
	proven, fresh bool
	ended         bool // under g.mu
}

// Attempt starts an authentication attempt of user from ip, once the
// password or token has arrived and before it is checked, and returns it
// with how long to wait first: a DelayStep for each failure of user from
// the source after the first, and, unless user is proven there, one for
// each user name beyond half MaxNames that failed from the source.
//
// Attempts that run at once are not slowed, but they need room. Those of
// one name from one source never outnumber the failures the name has left
// before it is locked there. Those of names not proven from the source
// never outnumber the failures the source has left before its ban, and
// those of names with no failure counted against the source never
// outnumber the names it has left before its ban for spraying. An attempt
// without room waits until one ends or a failure leaves the window.
//
// Attempt returns ErrBanned and the ban, without starting an attempt, when
// the source is banned before or while it waits, and ctx's error when ctx
// ends while it waits. It returns ErrLocked when user is locked for the
// source; that refusal counts toward the source's ban, and when it bans
// the source Attempt returns that new ban with ErrLocked.
func (g *Guard) Attempt(ctx context.Context, ip netip.Addr, user string) (*Attempt, time.Duration, Ban, error) {
	ip = ip.Unmap()
	src := Source(ip)
	if len(user) > maxName {
		user = strings.Clone(user[:maxName])
	}
	if g.trusted(ip) {
		return &Attempt{g: g, ip: ip, src: src, user: user, ended: true}, 0, Ban{}, nil
	}
	for {
		g.reloadIfChanged()
		now := g.cfg.Now()
		cut := g.cut(now)
		g.mu.Lock()
		// Under the same lock as the start of the attempt: a ban cannot
		// come in between.
		if b, ok := g.bannedLocked(ip, now); ok {
			g.tidy(src, user, cut)
			g.mu.Unlock()
			return nil, 0, b, ErrBanned
		}
		g.sweep(now)
		s, n := g.lookup(src, user)
		s.prune(cut)
		n.fails = after(n.fails, cut)
		proven := n.proven.After(cut)
		if g.locked(n, user, proven, cut) {
			s.events = append(s.events, event{at: now, user: user, refused: true})
			var b Ban
			if len(s.events) >= g.cfg.SourceMaxFailures {
				b = g.banLocked(src, fmt.Sprintf("%d failed or refused logins", len(s.events)), now)
			}
			g.tidy(src, user, cut)
			g.mu.Unlock()
			if b.Net.IsValid() {
				g.save()
			}
			return nil, 0, b, ErrLocked
		}
		if g.room(s, n, proven) {
			a := &Attempt{g: g, ip: ip, src: src, user: user, proven: proven, fresh: !proven && n.guesses == 0}
			n.pending++
			if !proven {
				s.pending++
			}
			if a.fresh {
				s.fresh++
			}
			d := g.delay(s, n, proven)
			g.mu.Unlock()
			return a, d, Ban{}, nil
		}
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		changed := s.changed
		// The oldest failure leaving the window may make room.
		var oldest time.Time
		if len(s.events) > 0 {
			oldest = s.events[0].at
		}
		if len(n.fails) > 0 && (oldest.IsZero() || n.fails[0].Before(oldest)) {
			oldest = n.fails[0]
		}
		g.mu.Unlock()
		var aged <-chan time.Time
		var t *time.Timer
		if !oldest.IsZero() {
			t = time.NewTimer(oldest.Add(g.cfg.Window).Sub(now))
			aged = t.C
		}
		var err error
		select {
		case <-changed:
		case <-aged:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if t != nil {
			t.Stop()
		}
		if err != nil {
			g.mu.Lock()
			g.tidy(src, user, g.cut(g.cfg.Now()))
			g.mu.Unlock()
			return nil, 0, Ban{}, err
		}
	}
}

// locked reports whether name n, user, is locked for its source. Called
// with g.mu held.
func (g *Guard) locked(n *name, user string, proven bool, cut time.Time) bool {
	if len(n.fails) >= g.cfg.MaxFailures {
		return true
	}
	return !proven && len(n.fails) > 0 && len(after(g.users[user], cut)) >= g.cfg.UserMaxFailures
}

// room reports whether an attempt for name n of source s may start now (see
// Attempt). Called with g.mu held.
func (g *Guard) room(s *source, n *name, proven bool) bool {
	if n.pending >= g.cfg.MaxFailures-len(n.fails) {
		return false
	}
	if proven {
		return true
	}
	return s.pending < g.cfg.SourceMaxFailures-len(s.events) &&
		(n.guesses > 0 || s.fresh < g.cfg.MaxNames-s.guessed)
}

// delay is the wait before the password of an attempt for name n of source
// s is checked (see Attempt). Called with g.mu held.
func (g *Guard) delay(s *source, n *name, proven bool) time.Duration {
	steps := max(len(n.fails)-1, 0)
	if !proven {
		steps += max(s.guessed-g.cfg.MaxNames/2, 0)
	}
	return min(time.Duration(steps)*g.cfg.DelayStep, g.cfg.MaxDelay)
}

// end ends attempt a, which has not ended yet, and wakes the attempts of its
// source waiting for room. Called with g.mu held.
func (g *Guard) end(a *Attempt) (*source, *name) {
	a.ended = true
	s, n := g.lookup(a.src, a.user) // kept while the attempt is in progress
	n.pending--
	if !a.proven {
		s.pending--
	}
	if a.fresh {
		s.fresh--
	}
	g.wake(s)
	return s, n
}

// Done ends an attempt whose credentials were not found wrong, nor right:
// nothing was checked, or the client left. Ending an attempt again, or a nil
// one, does nothing.
func (a *Attempt) Done() {
	if a == nil {
		return
	}
	g := a.g
	cut := g.cut(g.cfg.Now())
	g.mu.Lock()
	defer g.mu.Unlock()
	if !a.ended {
		g.end(a)
		g.tidy(a.src, a.user, cut)
	}
}

// Success ends an attempt whose credentials were right: the user name is
// proven from the source for Window, and its failures from there were its
// user's typos, so they are forgotten. Later calls, or a nil attempt, do
// nothing.
func (a *Attempt) Success() {
	if a == nil {
		return
	}
	g := a.g
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if a.ended {
		return
	}
	s, n := g.end(a)
	n.proven, n.fails = now, nil
	kept := s.events[:0]
	for _, e := range s.events {
		if e.user != a.user {
			kept = append(kept, e)
		}
	}
	clear(s.events[len(kept):]) // no stale names held
	s.events = kept
	if n.guesses > 0 {
		n.guesses = 0
		s.guessed--
	}
}

// Failure ends an attempt whose credentials were wrong, recording a failed
// login of its user name from its source, and returns the ban when this
// failure caused one. The failure of a name proven from the source counts
// only for that name there (its delay and lock). A failure from a source
// already banned (an attempt that began before the ban) is not counted: it
// neither bans again nor counts toward the next ban. Later calls, or a nil
// attempt, do nothing.
func (a *Attempt) Failure() (Ban, bool) {
	if a == nil {
		return Ban{}, false
	}
	g := a.g
	now := g.cfg.Now()
	cut := g.cut(now)
	g.mu.Lock()
	if a.ended {
		g.mu.Unlock()
		return Ban{}, false
	}
	s, n := g.end(a)
	var b Ban
	if _, banned := g.bannedLocked(a.ip, now); !banned {
		s.prune(cut)
		n.fails = append(after(n.fails, cut), now)
		if !n.proven.After(cut) {
			s.events = append(s.events, event{at: now, user: a.user})
			if n.guesses++; n.guesses == 1 {
				s.guessed++
			}
			u := append(after(g.users[a.user], cut), now)
			g.users[a.user] = u[max(len(u)-g.cfg.UserMaxFailures, 0):] // enough to tell a lock
			switch {
			case s.guessed >= g.cfg.MaxNames:
				b = g.banLocked(a.src, fmt.Sprintf("failed logins for %d user names", s.guessed), now)
			case len(s.events) >= g.cfg.SourceMaxFailures:
				b = g.banLocked(a.src, fmt.Sprintf("%d failed or refused logins", len(s.events)), now)
			}
		}
	}
	g.tidy(a.src, a.user, cut)
	g.mu.Unlock()
	if !b.Net.IsValid() {
		return Ban{}, false
	}
	g.save()
	return b, true
}

// sweepAt is the number of tracked sources, user names per source and user
// names from which old entries are dropped, and maxTracked the most kept
// even then: an attacker trying many names or addresses cannot make the
// guard grow without bound.
const (
	sweepAt    = 10_000
	maxTracked = 100_000
)

// sweep drops what left the window once much is tracked; if too much
// remains, it forgets the failures of user names across sources first,
// then everything of the sources but their attempts in progress. Called
// with g.mu held.
func (g *Guard) sweep(now time.Time) {
	size := func() int { return len(g.sources) + g.names + len(g.users) }
	if size() < max(sweepAt, g.nextSweep) {
		return
	}
	defer func() { g.nextSweep = 2 * size() }() // amortized
	cut := g.cut(now)
	for k, v := range g.users {
		if len(after(v, cut)) == 0 {
			delete(g.users, k)
		}
	}
	for src, s := range g.sources {
		s.prune(cut)
		if s.pending == 0 {
			g.wake(s) // a waiting attempt gave up, or waits for a proven name's
		}
		for user := range s.names {
			g.tidy(src, user, cut)
		}
		g.tidy(src, "", cut)
	}
	if len(g.users) > maxTracked/2 {
		clear(g.users)
	}
	if len(g.sources)+g.names <= maxTracked {
		return
	}
	for src, s := range g.sources {
		s.forgetFailures()
		for user, n := range s.names {
			if n.pending == 0 {
				delete(s.names, user)
				g.names--
			}
		}
		g.tidy(src, "", cut)
	}
}
