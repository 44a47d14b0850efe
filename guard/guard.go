// Package guard is Pouch's defence against password guessing: it counts
// failed logins per source (an IPv4 address, or an IPv6 /64) and per user name,
// slows a source down as its failures grow, bans it for a while after too many,
// and keeps the bans in a file so that they survive a restart and can be
// managed with `pouch ban`.
//
// Protection per user never locks a user out from everywhere: when a user name
// collects many failures, only sources that themselves failed are refused
// for it; a correct password from a clean source still works.
package guard

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/pouchmail/pouch/internal/filelock"

	"github.com/pouchmail/pouch/internal/owner"
)

// Config sets the rules. Zero values take the defaults in brackets.
type Config struct {
	// Trusted networks are never slowed down or banned.
	Trusted []netip.Prefix
	// Window is how long a failure counts (15 min).
	Window time.Duration
	// MaxFailures from one source within Window bans it (10).
	MaxFailures int
	// BanTime is the first ban's length (15 min); each further ban of the
	// same source within BanMemory doubles it, up to MaxBanTime (24 h).
	BanTime    time.Duration
	MaxBanTime time.Duration
	// BanMemory is how long a ban is remembered for doubling (7 days).
	BanMemory time.Duration
	// DelayStep is the delay added for each recent failure of a source,
	// before its next password is checked (1 s), up to MaxDelay (8 s).
	DelayStep time.Duration
	MaxDelay  time.Duration
	// UserMaxFailures within Window for one user name lock that name against
	// every source with failures of its own (20).
	UserMaxFailures int
	// StatePath is the file keeping bans across restarts ("" keeps them in
	// memory only).
	StatePath string
	// Now is the clock (time.Now).
	Now func() time.Time
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
	if c.UserMaxFailures <= 0 {
		c.UserMaxFailures = 20
	}
	if c.Now == nil {
		c.Now = time.Now
	}
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

// Guard tracks failures and bans. It is safe for concurrent use.
type Guard struct {
	cfg Config

	mu        sync.Mutex
	sources   map[netip.Prefix][]time.Time // recent failures per source
	users     map[string][]time.Time       // recent failures per user name
	bans      map[netip.Prefix]Ban
	unsaved   map[netip.Prefix]Ban // automatic bans not yet written to StatePath
	nextSweep int                  // size at which sweep looks again
	stamp     stamp                // of StatePath at the last load or save
	lastLoad  time.Time
}

// New returns a Guard, loading the bans kept in cfg.StatePath.
func New(cfg Config) (*Guard, error) {
	cfg.defaults()
	g := &Guard{
		cfg:     cfg,
		sources: make(map[netip.Prefix][]time.Time),
		users:   make(map[string][]time.Time),
		bans:    make(map[netip.Prefix]Ban),
		unsaved: make(map[netip.Prefix]Ban),
	}
	if cfg.StatePath != "" {
		bans, stamp, err := readBans(cfg.StatePath)
		if err != nil {
			return nil, err
		}
		g.bans, g.stamp = bans, stamp
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

// recent drops the times older than the window.
func (g *Guard) recent(times []time.Time, now time.Time) []time.Time {
	cut := now.Add(-g.cfg.Window)
	i := 0
	for i < len(times) && times[i].Before(cut) {
		i++
	}
	return times[i:]
}

// Banned reports whether ip is banned now, and until when.
func (g *Guard) Banned(ip netip.Addr) (time.Time, bool) {
	if g.trusted(ip) {
		return time.Time{}, false
	}
	g.reloadIfChanged()
	now := g.cfg.Now()
	ip = ip.Unmap()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, b := range g.bans {
		if b.Until.After(now) && b.Net.Contains(ip) {
			return b.Until, true
		}
	}
	return time.Time{}, false
}

// Delay is how long to wait before checking a password from ip: a step per
// recent failure of its source, up to the maximum.
func (g *Guard) Delay(ip netip.Addr) time.Duration {
	if g.trusted(ip) {
		return 0
	}
	now := g.cfg.Now()
	src := Source(ip)
	g.mu.Lock()
	defer g.mu.Unlock()
	n := len(g.recent(g.sources[src], now))
	return min(time.Duration(n)*g.cfg.DelayStep, g.cfg.MaxDelay)
}

// UserLocked reports whether user is locked for ip: the user name has
// collected many failures and ip's source has failed too. The caller treats
// this as a failed login without checking the password.
func (g *Guard) UserLocked(ip netip.Addr, user string) bool {
	if g.trusted(ip) {
		return false
	}
	now := g.cfg.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.recent(g.users[user], now)) >= g.cfg.UserMaxFailures &&
		len(g.recent(g.sources[Source(ip)], now)) > 0
}

// sweepAt is the number of tracked sources and names from which old
// entries are dropped, and maxTracked the most kept even then: an attacker
// trying many names or addresses cannot make the guard grow without bound.
const (
	sweepAt    = 10_000
	maxTracked = 100_000
)

// sweep drops sources and user names without recent failures once there
// are many; if too many remain, it forgets user names first. Called with
// g.mu held.
func (g *Guard) sweep(now time.Time) {
	if len(g.sources)+len(g.users) < max(sweepAt, g.nextSweep) {
		return
	}
	defer func() { g.nextSweep = 2 * (len(g.sources) + len(g.users)) }() // amortized
	for k, v := range g.sources {
		if len(g.recent(v, now)) == 0 {
			delete(g.sources, k)
		}
	}
	for k, v := range g.users {
		if len(g.recent(v, now)) == 0 {
			delete(g.users, k)
		}
	}
	if len(g.users) > maxTracked/2 {
		clear(g.users)
	}
	if len(g.sources) > maxTracked {
		clear(g.sources)
	}
}

// Failure records a failed login of user from ip. It returns the ban when
// this failure caused one.
func (g *Guard) Failure(ip netip.Addr, user string) (Ban, bool) {
	if g.trusted(ip) {
		return Ban{}, false
	}
	now := g.cfg.Now()
	src := Source(ip)
	g.mu.Lock()
	g.sweep(now)
	g.sources[src] = append(g.recent(g.sources[src], now), now)
	if user != "" {
		g.users[user] = append(g.recent(g.users[user], now), now)
	}
	if len(g.sources[src]) < g.cfg.MaxFailures {
		g.mu.Unlock()
		return Ban{}, false
	}
	delete(g.sources, src)
	prev := g.bans[src]
	b := Ban{Net: src, Since: now, Reason: fmt.Sprintf("%d failed logins", g.cfg.MaxFailures), Count: 1}
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
	g.mu.Unlock()
	g.save()
	return b, true
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

// Unban lifts the ban of a network. It reports false if none was there.
func (g *Guard) Unban(net netip.Prefix) (bool, error) {
	found := false
	err := g.update(func(bans map[netip.Prefix]Ban) {
		if _, found = bans[net.Masked()]; found {
			delete(bans, net.Masked())
		}
	})
	return found, err
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

// update changes the bans under the state file's lock, merging with what
// another process (pouch ban) wrote meanwhile.
func (g *Guard) update(change func(map[netip.Prefix]Ban)) error {
	if g.cfg.StatePath == "" {
		g.mu.Lock()
		change(g.bans)
		g.mu.Unlock()
		return nil
	}
	unlock, err := lock(g.cfg.StatePath)
	if err != nil {
		return err
	}
	defer unlock()
	onDisk, _, err := readBans(g.cfg.StatePath)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	change(onDisk)
	stamp, err := writeBans(g.cfg.StatePath, onDisk, g.cfg.Now())
	if err != nil {
		return err
	}
	for k, v := range g.unsaved {
		if _, ok := onDisk[k]; !ok {
			onDisk[k] = v
		}
	}
	g.bans, g.stamp = onDisk, stamp
	return nil
}

// save writes the bans after an automatic ban. A failure to write is not
// fatal: the ban holds in memory.
func (g *Guard) save() {
	if g.cfg.StatePath == "" {
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
	if err == nil {
		g.mu.Lock()
		for k, v := range mine {
			if g.unsaved[k].Since.Equal(v.Since) {
				delete(g.unsaved, k)
			}
		}
		g.mu.Unlock()
	}
}

// Reload rereads the state file now (pouch reload, SIGHUP), keeping the
// automatic bans not yet written to it. On error the bans in use stay.
func (g *Guard) Reload() error {
	if g.cfg.StatePath == "" {
		return nil
	}
	return g.load()
}

// load reads the state file and puts its bans in force, with the ones not
// written yet.
func (g *Guard) load() error {
	bans, st, err := readBans(g.cfg.StatePath)
	if err != nil {
		return err
	}
	g.mu.Lock()
	for k, v := range g.unsaved { // not written yet: keep them
		bans[k] = v
	}
	g.bans, g.stamp, g.lastLoad = bans, st, time.Now()
	g.mu.Unlock()
	return nil
}

// reloadIfChanged rereads the state file, at most once a second, when
// another process changed it.
func (g *Guard) reloadIfChanged() {
	if g.cfg.StatePath == "" {
		return
	}
	now := time.Now()
	g.mu.Lock()
	if now.Sub(g.lastLoad) < time.Second {
		g.mu.Unlock()
		return
	}
	g.lastLoad = now
	stamp := g.stamp
	g.mu.Unlock()
	fi, err := os.Stat(g.cfg.StatePath)
	if err != nil || stampOf(fi) == stamp {
		return
	}
	_ = g.load() // a file that cannot be read now keeps the bans in force
}

type stateFile struct {
	Bans []Ban `json:"bans"`
}

// stamp identifies a version of the state file; it is replaced by rename,
// so a new version has a new inode.
type stamp struct {
	ino   uint64
	mtime time.Time
	size  int64
}

func stampOf(fi fs.FileInfo) stamp {
	s := stamp{mtime: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = st.Ino
	}
	return s
}

func readBans(path string) (map[netip.Prefix]Ban, stamp, error) {
	bans := make(map[netip.Prefix]Ban)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return bans, stamp{}, nil
	}
	if err != nil {
		return nil, stamp{}, fmt.Errorf("guard: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, stamp{}, fmt.Errorf("guard: %w", err)
	}
	var st stateFile
	if err := json.NewDecoder(f).Decode(&st); err != nil {
		return nil, stamp{}, fmt.Errorf("guard: %s is damaged: %w", path, err)
	}
	for _, b := range st.Bans {
		bans[b.Net.Masked()] = b
	}
	return bans, stampOf(fi), nil
}

// writeBans replaces the state file atomically, dropping bans that ended
// longer ago than they are remembered.
func writeBans(path string, bans map[netip.Prefix]Ban, now time.Time) (stamp, error) {
	var st stateFile
	for _, b := range bans {
		if now.Sub(b.Until) < 7*24*time.Hour {
			st.Bans = append(st.Bans, b)
		}
	}
	sort.Slice(st.Bans, func(i, j int) bool { return st.Bans[i].Net.String() < st.Bans[j].Net.String() })
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return stamp{}, err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".bans.tmp*")
	if err != nil {
		return stamp{}, fmt.Errorf("guard: %w", err)
	}
	defer os.Remove(tmp.Name())
	owner.Adopt(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return stamp{}, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return stamp{}, err
	}
	if err := tmp.Close(); err != nil {
		return stamp{}, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return stamp{}, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}, err
	}
	return stampOf(fi), nil
}

// lock takes the lock of the state file's ".lock" companion.
func lock(path string) (func(), error) {
	unlock, err := filelock.Lock(path + ".lock")
	if err != nil {
		return nil, fmt.Errorf("guard: %w", err)
	}
	return unlock, nil
}
