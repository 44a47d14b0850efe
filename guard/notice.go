package guard

import (
	"net/netip"
	"sync"
	"time"
)

// noticeEvery is how often a refused connection is logged per source: a
// banned client reconnecting thousands of times must not fill the disk.
const noticeEvery = time.Minute

// notices remembers, per source, when a refused connection was last logged
// and how many were not logged since.
type notices struct {
	mu   sync.Mutex
	seen map[netip.Prefix]*notice
}

type notice struct {
	at     time.Time
	missed int
}

// ok reports whether a refusal of ip is to be logged now: the first of its
// source in noticeEvery. missed is how many refusals of the source were not
// logged before this one.
func (n *notices) ok(ip netip.Addr, now time.Time) (log bool, missed int) {
	src := Source(ip)
	n.mu.Lock()
	defer n.mu.Unlock()
	if e := n.seen[src]; e != nil && now.Sub(e.at) < noticeEvery {
		e.missed++
		return false, 0
	}
	if n.seen == nil || len(n.seen) >= maxTracked {
		for k, e := range n.seen {
			if now.Sub(e.at) >= noticeEvery {
				delete(n.seen, k)
			}
		}
		if n.seen == nil || len(n.seen) >= maxTracked {
			n.seen = make(map[netip.Prefix]*notice)
		}
	}
	if e := n.seen[src]; e != nil {
		missed = e.missed
	}
	n.seen[src] = &notice{at: now}
	return true, missed
}

// Notice reports whether a connection from ip refused as banned is to be
// logged: the first refusal of its source in a minute. unlogged is how many
// refusals of the source went unlogged before this one.
func (g *Guard) Notice(ip netip.Addr) (log bool, unlogged int) {
	return g.notices.ok(ip, g.cfg.Now())
}
