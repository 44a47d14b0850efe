package fetch

import (
	"fmt"
	"time"
)

// plan is what a run does with each message the server listed, decided from
// the listing, the journal's records and the account's policy alone: which
// messages to download, which to delete before QUIT, which were stored by a
// killed run, which to record as on the server before --mark-existing, and
// which to keep or skip, with the warnings to give. Making a plan changes
// nothing; runner.execute carries it out.
type plan struct {
	fetch      chunks[uint32] // indexes into the listing: to download, in order
	fetchBytes int64
	dele       chunks[uint32] // message numbers: to delete before QUIT
	recovered  chunks[uint32] // indexes: stored by a killed run, to record as downloaded now
	mark       chunks[uint32] // indexes: to record as on the server before --mark-existing (E)

	kept, skipped int // left on the server by the keep policy; skipped, each said why
	warnings      []string
	now           time.Time // when it was made: the time of the records it adds
}

// planInput is what a plan is made from.
type planInput struct {
	a      *Account // the keep policy, --max-size, --retry-quarantined, --mark-existing
	l      *listing
	ids    *uidTable // the journal's records, with this run's listing flags
	noUIDL bool      // the server has no UIDL: every message is new
	// stored tells whether the destination holds the message with this
	// UIDL and size (negative: a record that has none) already (the
	// Maildir's digests); nil: it cannot tell.
	stored func(uid string, size int64) bool
	now    time.Time
}

// due reports whether a message first downloaded at t is due for deletion
// at now under the keep policy.
func (a *Account) due(t, now time.Time) bool { return !a.KeepForever && now.Sub(t) >= a.Keep }

// otherSize reports whether the entry's recorded size is known and is not
// size, as LIST announced it.
func otherSize(ids *uidTable, id ref, size int64) bool {
	was, known := ids.Size(id)
	return known && was != size
}

// pendingSize is the entry's recorded size, or -1.
func pendingSize(ids *uidTable, id ref) int64 {
	if size, known := ids.Size(id); known {
		return size
	}
	return -1
}

// makePlan decides, message by message, in LIST order.
func makePlan(in planInput) *plan {
	a, l, ids := in.a, in.l, in.ids
	p := &plan{now: in.now}
	warn := func(format string, args ...any) { p.warnings = append(p.warnings, fmt.Sprintf(format, args...)) }
	due := func(t time.Time) bool { return a.due(t, in.now) }
	var dups map[ref]int
	l.ids.each(func(id ref) {
		if id != 0 && id != badID && ids.Has(id, fDup) {
			if dups == nil {
				dups = map[ref]int{}
			}
			dups[id]++
		}
	})
	for i := range l.len() {
		num, size := l.num(i), l.size(i)
		if !in.noUIDL {
			id := l.id(i)
			switch {
			case id == 0:
				warn("message %d has no UIDL: skipped", num)
				p.skipped++
				continue
			case id == badID:
				p.skipped++ // warned while listing
				continue
			case dups[id] > 0:
				warn("message %d: UIDL %q is shared by %d messages: skipped and never deleted", num, ids.UID(id), dups[id])
				p.skipped++
				continue
			case ids.Has(id, fSuspect) && !a.RetryQuarantined:
				warn("message %d: UIDL %q arrived damaged in an earlier run: left on the server, neither downloaded nor deleted (--retry-quarantined tries it again)", num, ids.UID(id))
				p.skipped++
				continue
			case (ids.Has(id, fSeen) || ids.Has(id, fTomb)) && otherSize(ids, id, size):
				// RFC 1939 §7 forbids reusing a UIDL, but some servers
				// do: a message's size does not change, so this is a new
				// message, downloaded as one (its pending record ends
				// the old one's).
				was, _ := ids.Size(id)
				warn("message %d: UIDL %q came back with another size (%d octets, was %d): taken as a new message", num, ids.UID(id), size, was)
			case ids.Has(id, fSeen|fOld):
				// On the server before --mark-existing: not stored here,
				// so never deleted.
				p.kept++
				continue
			case ids.Has(id, fSeen) && !ids.Has(id, fSuspect):
				if due(time.Unix(ids.Time(id), 0)) {
					p.dele.add(num)
				} else {
					p.kept++
				}
				continue
			case ids.Has(id, fTomb):
				// It vanished from an earlier LIST: either that LIST was
				// partial (it was downloaded then) or the server reuses
				// the UIDL for a new message. Neither download it twice
				// nor delete it unread.
				warn("message %d: UIDL %q left the server's list recently and came back: not downloaded again and not deleted", num, ids.UID(id))
				p.skipped++
				continue
			case in.stored != nil && ids.Has(id, fPending) && !ids.Has(id, fSeen) && !otherSize(ids, id, size) && in.stored(ids.UID(id), pendingSize(ids, id)):
				// Stored by a run that was killed before its journal
				// entry (the pending record says this message, not an
				// earlier one with the same UIDL, was being stored; the
				// digest names its size too, so that it is not taken for
				// an earlier one under a reused UIDL).
				p.recovered.add(uint32(i))
				if due(in.now) {
					p.dele.add(num)
				} else {
					p.kept++
				}
				continue
			}
		}
		if a.MarkExisting {
			// Never downloaded, so never deleted (the E record); a
			// quarantined message is not recorded.
			if id := l.id(i); !ids.Has(id, fStaged) && !ids.Has(id, fSeen) && !ids.Has(id, fSuspect) {
				p.mark.add(uint32(i))
			} else {
				p.skipped++
			}
			continue
		}
		if a.MaxSize > 0 && size > a.MaxSize {
			p.skipped++
			if a.DeleteOversized {
				warn("message %d (%d octets) is larger than --max-size: deleted without downloading", num, size)
				p.dele.add(num)
			} else {
				warn("message %d (%d octets) is larger than --max-size: left on the server", num, size)
			}
			continue
		}
		p.fetch.add(uint32(i))
		p.fetchBytes += size
	}
	if a.MarkExisting {
		// Nothing is deleted in a run that marks, whatever the keep
		// policy: what is due stays for the next one.
		p.kept += p.dele.len()
		p.dele = chunks[uint32]{}
	}
	return p
}
