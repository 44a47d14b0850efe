// Package guard is Pouch's defence against password guessing: it counts
// failed logins per source (an IPv4 address, or an IPv6 /64) and user name,
// slows down and then refuses a user name for a source that keeps failing
// for it, bans a source that fails for many user names or very often, and
// keeps the bans where they survive a restart and can be managed with
// `pouch ban` (a BanStore: a file, or a table that several nodes share).
//
// Many honest users may share a source (an office NAT, a carrier's CGNAT, a
// webmail host, a load balancer), so the defence slows attackers, not
// crowds. A login is slowed only by failures of its own user name from its
// source, or by failures for many names from its source; logins that run at
// once are not slowed at all. A user name that logged in from a source
// within the window is proven there: its failures from that source are its
// user's typos and never count toward the source's ban, and its attempts
// need no place among the source's attempts. For the other names, no more
// passwords of a source are checked at once than the failures it has left
// before its ban, so that opening many connections buys an attacker nothing.
//
// Protection per user never locks a user out from everywhere: when a user
// name collects many failures, only sources that themselves failed for it
// are refused it; a correct password from a clean source still works.
package guard

import (
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"time"
)

// Config sets the rules. Zero values take the defaults in brackets.
type Config struct {
	// Trusted networks are never slowed down or banned.
	Trusted []netip.Prefix
	// Window is how long a failure, a refused attempt and a successful
	// login count (15 min).
	Window time.Duration
	// MaxFailures of one user name from one source within Window lock the
	// name for that source, until they leave the window (10). A successful
	// login of the name from the source forgets them.
	MaxFailures int
	// MaxNames user names not proven from a source, each with a failure
	// from it within Window, ban the source: password spraying (MaxFailures).
	MaxNames int
	// SourceMaxFailures failures for names not proven from a source, and
	// attempts refused there for a locked name, within Window, ban the
	// source (10 × MaxFailures).
	SourceMaxFailures int
	// BanTime is the first ban's length (15 min); each further ban of the
	// same source within BanMemory doubles it, up to MaxBanTime (24 h).
	BanTime    time.Duration
	MaxBanTime time.Duration
	// BanMemory is how long a ban is remembered for doubling (7 days).
	BanMemory time.Duration
	// DelayStep is the wait before a password is checked for each failure
	// of its user name from its source after the first, and, for a name not
	// proven there, for each name beyond half MaxNames that failed from the
	// source (1 s); the wait is at most MaxDelay (8 s).
	DelayStep time.Duration
	MaxDelay  time.Duration
	// UserMaxFailures within Window for one user name, from sources where it
	// is not proven, lock that name against each of those sources that
	// failed for it (20).
	UserMaxFailures int
	// Bans keeps the bans across restarts and shares them with pouch ban
	// and other nodes; nil keeps them in memory only, unless StatePath
	// names a file for them (FileBans).
	Bans BanStore
	// StatePath is the file keeping bans across restarts, when Bans is
	// nil.
	StatePath string
	// Now is the clock (time.Now).
	Now func() time.Time
	// Log receives what cannot be reported otherwise, like a ban list that
	// cannot be written (slog.Default()).
	Log *slog.Logger
}

func (c *Config) defaults() {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&c.Window, 15*time.Minute)
	set(&c.BanTime, 15*time.Minute)
	set(&c.MaxBanTime, 24*time.Hour)
	set(&c.BanMemory, 7*24*time.Hour)
	set(&c.DelayStep, time.Second)
	set(&c.MaxDelay, 8*time.Second)
	if c.MaxFailures <= 0 {
		c.MaxFailures = 10
	}
	if c.MaxNames <= 0 {
		c.MaxNames = c.MaxFailures
	}
	if c.SourceMaxFailures <= 0 {
		c.SourceMaxFailures = 10 * c.MaxFailures
	}
	if c.UserMaxFailures <= 0 {
		c.UserMaxFailures = 20
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.Bans == nil && c.StatePath != "" {
		c.Bans = &FileBans{Path: c.StatePath, Now: c.Now}
	}
}

// BanStore keeps the bans where every process that enforces or manages
// them reads them: a file on one machine (FileBans), or a database table
// that several nodes share.
type BanStore interface {
	// Load returns the bans kept.
	Load() (map[netip.Prefix]Ban, error)
	// Update applies change to the bans kept, in one step that no other
	// Update, of this process or another, interleaves with, and returns
	// the bans kept afterwards. It may drop bans that ended more than a
	// week ago.
	Update(change func(map[netip.Prefix]Ban)) (map[netip.Prefix]Ban, error)
	// Changed reports, without waiting on anything slow, whether the bans
	// kept may differ from what Load or Update last returned. A store that
	// tells the Guard of changes itself (by calling Reload) says false.
	Changed() bool
}

// Ban is one banned network.
type Ban struct {
	Net    netip.Prefix `json:"net"`
	Until  time.Time    `json:"until"`
	Reason string       `json:"reason"`
	// Count is how many times this network was banned automatically, for
	// doubling the next ban.
	Count int `json:"count,omitempty"`
	// Since is when the last ban started.
	Since time.Time `json:"since"`
}

// Automatic reports whether the guard made the ban after failed logins, as
// opposed to an operator with pouch ban.
func (b Ban) Automatic() bool { return b.Count > 0 }

// Guard tracks failures and bans. It is safe for concurrent use.
type Guard struct {
	cfg Config

	mu        sync.Mutex
	sources   map[netip.Prefix]*source // what is known of each source (attempt.go)
	names     int                      // user names tracked in all sources
	users     map[string][]time.Time   // recent failures per user name where it is not proven
	bans      map[netip.Prefix]Ban
	unsaved   map[netip.Prefix]Ban // automatic bans not yet written to the BanStore
	nextSweep int                  // size at which sweep looks again
	lastLoad  time.Time            // when the BanStore was last asked for changes

	notices notices // refused connections logged, per source
}

// New returns a Guard, loading the bans kept in cfg.Bans (or the file
// cfg.StatePath).
func New(cfg Config) (*Guard, error) {
	cfg.defaults()
	g := &Guard{
		cfg:     cfg,
		sources: make(map[netip.Prefix]*source),
		users:   make(map[string][]time.Time),
		bans:    make(map[netip.Prefix]Ban),
		unsaved: make(map[netip.Prefix]Ban),
	}
	if cfg.Bans != nil {
		bans, err := cfg.Bans.Load()
		if err != nil {
			return nil, err
		}
		g.bans = bans
	}
	return g, nil
}

// Source is the unit failures are counted by: the address itself for IPv4,
// its /64 for IPv6 (one customer's network).
func Source(ip netip.Addr) netip.Prefix {
	ip = ip.Unmap()
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.Prefix(64)
	return p
}

func (g *Guard) trusted(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range g.cfg.Trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Banned reports whether ip is banned now, and by which ban (the one that
// lasts longest when several hold).
func (g *Guard) Banned(ip netip.Addr) (Ban, bool) {
	if g.trusted(ip) {
		return Ban{}, false
	}
	g.reloadIfChanged()
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.bannedLocked(ip.Unmap(), now)
}

// bannedLocked is Banned with g.mu held.
func (g *Guard) bannedLocked(ip netip.Addr, now time.Time) (Ban, bool) {
	var found Ban
	ok := false
	for _, b := range g.bans {
		if b.Until.After(now) && b.Net.Contains(ip) && (!ok || b.Until.After(found.Until)) {
			found, ok = b, true
		}
	}
	return found, ok
}

// banLocked bans src automatically for reason, for BanTime doubled for each
// ban of it remembered, and wakes its waiting attempts. The caller saves the
// bans once it has let go of g.mu. Called with g.mu held.
func (g *Guard) banLocked(src netip.Prefix, reason string, now time.Time) Ban {
	prev := g.bans[src]
	b := Ban{Net: src, Since: now, Reason: reason, Count: 1}
	length := g.cfg.BanTime
	if prev.Count > 0 && now.Sub(prev.Since) < g.cfg.BanMemory {
		b.Count = prev.Count + 1
		for i := 1; i < b.Count && length < g.cfg.MaxBanTime; i++ {
			length *= 2
		}
	}
	b.Until = now.Add(min(length, g.cfg.MaxBanTime))
	g.bans[src] = b
	g.unsaved[src] = b
	if s := g.sources[src]; s != nil {
		s.forgetFailures() // they led to this ban; the next one starts afresh
		g.wake(s)
	}
	return b
}

// Ban bans a network by hand for d (forever when d is 0).
func (g *Guard) Ban(net netip.Prefix, d time.Duration, reason string) error {
	now := g.cfg.Now()
	until := now.Add(d)
	if d == 0 {
		until = now.AddDate(100, 0, 0)
	}
	return g.update(func(bans map[netip.Prefix]Ban) {
		bans[net.Masked()] = Ban{Net: net.Masked(), Since: now, Until: until, Reason: reason}
	})
}

// Unban removes the ban of exactly the network net, and returns it (none
// when there was none).
func (g *Guard) Unban(net netip.Prefix) ([]Ban, error) {
	net = net.Masked()
	return g.unban(func(b Ban) bool { return b.Net == net })
}

// UnbanAddr removes every ban whose network holds ip, and returns them.
func (g *Guard) UnbanAddr(ip netip.Addr) ([]Ban, error) {
	ip = ip.Unmap()
	return g.unban(func(b Ban) bool { return b.Net.Contains(ip) })
}

func (g *Guard) unban(match func(Ban) bool) ([]Ban, error) {
	var removed []Ban
	err := g.update(func(bans map[netip.Prefix]Ban) {
		for k, b := range bans {
			if match(b) {
				removed = append(removed, b)
				delete(bans, k)
			}
		}
	})
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	for _, b := range removed {
		delete(g.bans, b.Net) // also a ban not written yet
		delete(g.unsaved, b.Net)
	}
	g.mu.Unlock()
	sort.Slice(removed, func(i, j int) bool { return removed[i].Net.String() < removed[j].Net.String() })
	return removed, nil
}

// Bans lists the bans in force, soonest to end first.
func (g *Guard) Bans() []Ban {
	g.reloadIfChanged()
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []Ban
	for _, b := range g.bans {
		if b.Until.After(now) {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Until.Before(out[j].Until) })
	return out
}

// update changes the bans kept in the BanStore, merged with what another
// process (pouch ban, another node) wrote meanwhile.
func (g *Guard) update(change func(map[netip.Prefix]Ban)) error {
	if g.cfg.Bans == nil {
		g.mu.Lock()
		change(g.bans)
		g.wakeAll()
		g.mu.Unlock()
		return nil
	}
	// The store orders writers; the write happens outside g.mu, so that
	// checks of incoming connections (Banned) never wait for it. Bans made
	// meanwhile are in g.unsaved and merged below.
	kept, err := g.cfg.Bans.Update(change)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, v := range g.unsaved {
		if old, ok := kept[k]; !ok || v.Since.After(old.Since) {
			kept[k] = v
		}
	}
	g.bans = kept
	g.wakeAll()
	return nil
}

// save writes the bans after an automatic ban. A failure to write is not
// fatal: the ban holds in memory, and the next write tries again; it is
// logged.
func (g *Guard) save() {
	if g.cfg.Bans == nil {
		return
	}
	g.mu.Lock()
	mine := make(map[netip.Prefix]Ban, len(g.unsaved))
	for k, v := range g.unsaved {
		mine[k] = v
	}
	g.mu.Unlock()
	err := g.update(func(bans map[netip.Prefix]Ban) {
		for k, v := range mine {
			if old, ok := bans[k]; !ok || v.Since.After(old.Since) {
				bans[k] = v
			}
		}
	})
	if err != nil {
		g.cfg.Log.Error("writing the ban list failed; the new bans hold in memory until a write succeeds", "err", err)
		return
	}
	g.mu.Lock()
	for k, v := range mine {
		if g.unsaved[k].Since.Equal(v.Since) {
			delete(g.unsaved, k)
		}
	}
	g.mu.Unlock()
}

// Reload reads the bans kept now (pouch reload, SIGHUP, or a BanStore
// that saw them change), keeping the automatic bans not yet written. On
// error the bans in use stay.
func (g *Guard) Reload() error {
	if g.cfg.Bans == nil {
		return nil
	}
	return g.load()
}

// load reads the bans kept and puts them in force, with the ones not
// written yet.
func (g *Guard) load() error {
	bans, err := g.cfg.Bans.Load()
	if err != nil {
		return err
	}
	g.mu.Lock()
	for k, v := range g.unsaved { // not written yet: keep them
		bans[k] = v
	}
	g.bans, g.lastLoad = bans, time.Now()
	g.wakeAll()
	g.mu.Unlock()
	return nil
}

// reloadIfChanged reads the bans again, asking the store at most once a
// second, when another process changed them.
func (g *Guard) reloadIfChanged() {
	if g.cfg.Bans == nil {
		return
	}
	now := time.Now()
	g.mu.Lock()
	if now.Sub(g.lastLoad) < time.Second {
		g.mu.Unlock()
		return
	}
	g.lastLoad = now
	g.mu.Unlock()
	if !g.cfg.Bans.Changed() {
		return
	}
	_ = g.load() // bans that cannot be read now: the ones in force stay
}
