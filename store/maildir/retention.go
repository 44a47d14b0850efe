package maildir

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/internal/owner"
	"github.com/pouchmail/pouch/store"
)

// Retention: expiry (RFC 2449 §6.7), the holding area for deleted messages,
// and legal hold.

const (
	holdingDir    = "pouch-deleted"
	holdFile      = "pouch-hold"
	purgeLockFile = "pouch-purge-lock"
)

var _ store.Retainer = (*Store)(nil)
var _ store.RetrievalRecorder = (*maildrop)(nil)

// holdingName is the name of a message file in the holding area: the time it
// was deleted, the directory it came from and its name there, so that a
// restore can put it back as it was.
func holdingName(at time.Time, sub, name string) string {
	return fmt.Sprintf("%d.%s.%s", at.Unix(), sub, name)
}

// parseHolding splits a holding area file name; ok is false for other files.
func parseHolding(file string) (at time.Time, sub, name string, ok bool) {
	parts := strings.SplitN(file, ".", 3)
	if len(parts) != 3 || (parts[1] != "cur" && parts[1] != "new") || parts[2] == "" {
		return time.Time{}, "", "", false
	}
	sec, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil || sec < 0 {
		return time.Time{}, "", "", false
	}
	return time.Unix(sec, 0), parts[1], parts[2], true
}

// ensureHolding creates the holding area, durably.
func ensureHolding(dir string) error { return ensureSubdir(dir, holdingDir) }

// ensureSubdir creates the directory name of the Maildir dir if it is
// missing, given to the Maildir's owner, and syncs dir.
func ensureSubdir(dir, name string) error {
	p := filepath.Join(dir, name)
	if err := os.Mkdir(p, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return err
	}
	owner.Adopt(p)
	return fsx.SyncDir(dir)
}

// purgeLock takes a blocking flock of the given kind on the maildrop's purge
// lock: shared by everything that removes messages for good, exclusive while
// the legal hold changes, so that nothing is purged once SetHold returned.
func purgeLock(dir string, how int) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, purgeLockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	owner.Adopt(f.Name())
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("maildir: lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// readHold reads the legal hold of the Maildir dir: "UNIXTIME\nREASON\n".
func readHold(dir string) (store.Hold, error) {
	data, err := os.ReadFile(filepath.Join(dir, holdFile))
	if errors.Is(err, fs.ErrNotExist) {
		return store.Hold{}, nil
	}
	if err != nil {
		return store.Hold{}, err
	}
	// Whatever the file holds, its presence is the hold.
	h := store.Hold{Set: true}
	head, reason, _ := strings.Cut(string(data), "\n")
	if sec, err := strconv.ParseInt(head, 10, 64); err == nil {
		h.Since = time.Unix(sec, 0)
	}
	h.Reason = strings.TrimSuffix(reason, "\n")
	return h, nil
}

// Hold reports the legal hold on user's maildrop.
func (s *Store) Hold(ctx context.Context, user string) (store.Hold, error) {
	dir, err := s.dir(user)
	if err != nil {
		return store.Hold{}, err
	}
	return readHold(dir)
}

// SetHold sets or clears the legal hold. It waits for a purge in progress to
// finish; once it returns, no purge removes anything until the hold is
// cleared. A session's QUIT keeps its deletions in the holding area while the
// hold is set.
func (s *Store) SetHold(ctx context.Context, user string, h store.Hold) error {
	dir, err := s.dir(user)
	if err != nil {
		return err
	}
	if err := ensure(dir); err != nil {
		return err
	}
	unlock, err := purgeLock(dir, syscall.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	if !h.Set {
		err := os.Remove(filepath.Join(dir, holdFile))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		return fsx.SyncDir(dir)
	}
	if h.Since.IsZero() {
		h.Since = s.now()
	}
	reason := strings.ReplaceAll(h.Reason, "\n", " ")
	return writeFileAtomic(dir, holdFile, fmt.Appendf(nil, "%d\n%s\n", h.Since.Unix(), reason))
}

// Users lists the users that have a Maildir under the root: in the
// Domains layout, user@domain for each Maildir in a domain's directory.
// A domain's directory that cannot be listed fails it.
func (s *Store) Users(ctx context.Context) ([]string, error) {
	layout, err := s.Layout()
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(s.root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var users []string
	for _, e := range ents {
		if !e.IsDir() || !validPart(e.Name()) {
			continue
		}
		d := filepath.Join(s.root, e.Name())
		if layout == Domains && !isMaildir(d) {
			subs, err := os.ReadDir(d)
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed meanwhile
			}
			if err != nil {
				// Its users' maildrops must not go missing from the list.
				return nil, err
			}
			if !isDir(filepath.Join(d, "cur")) {
				for _, u := range subs {
					if u.IsDir() && validPart(u.Name()) && isDir(filepath.Join(d, u.Name(), "cur")) {
						users = append(users, u.Name()+"@"+e.Name())
					}
				}
				continue
			}
		}
		if _, err := s.dir(e.Name()); err != nil {
			continue
		}
		if isDir(filepath.Join(d, "cur")) {
			users = append(users, e.Name())
		}
	}
	return users, nil
}

// nameTime is the delivery time at the start of a Maildir base name, if it
// has one.
func nameTime(base string) (time.Time, bool) {
	sec, _, ok := arrival(base)
	return time.Unix(sec, 0), ok
}

// deliveredAt is when the message of e, in the Maildir dir, arrived: the
// time in its name, or else its file's modification time (zero when neither
// is known).
func deliveredAt(dir string, e *entry) time.Time {
	if t, ok := nameTime(e.base); ok {
		return t
	}
	if fi, err := os.Stat(filepath.Join(dir, e.sub, e.name)); err == nil {
		return fi.ModTime()
	}
	return time.Time{}
}

// Sweep applies p to user's maildrop as of now. It does nothing while a
// session has the maildrop open (ErrLocked) or while it is under legal hold.
// Expired messages go through the same journal as a QUIT's deletions: into
// the holding area if p has a Window, otherwise away for good. Then the
// holding area is purged of what has been there for Window or longer, and
// tmp/ of the files that deliveries left there (cleanTmp).
func (s *Store) Sweep(ctx context.Context, user string, p store.Policy, now time.Time) (store.SweepResult, error) {
	var res store.SweepResult
	var m *maildrop
	dir, err := s.dir(user)
	if err != nil {
		return res, err
	}
	// A Maildir that another program made, and that no session opened
	// yet, gets the journal's reserve before its disk fills up.
	if err := reserveJournal(dir); err != nil {
		s.noReserve(user, err)
	}
	if p.Expire > 0 {
		if m, err = s.open(ctx, user, dir); err != nil {
			return res, err
		}
	} else {
		// Only the holding area to purge: no need to read the maildrop.
		if _, err := os.Stat(filepath.Join(dir, holdingDir)); errors.Is(err, fs.ErrNotExist) {
			return res, s.cleanTmp(user, dir, now, false)
		}
		lock, err := lockMaildrop(dir)
		if err != nil {
			return res, err
		}
		m = &maildrop{store: s, user: user, dir: dir, lock: lock}
	}
	defer m.Close()
	m.done = true // nothing else commits through this maildrop
	unlock, err := purgeLock(m.dir, syscall.LOCK_SH)
	if err != nil {
		return res, err
	}
	defer unlock()
	if h, err := readHold(m.dir); err != nil || h.Set {
		return res, err
	}
	if p.Expire > 0 {
		var doomed []int
		for i := range m.entries {
			e := &m.entries[i]
			delivered := deliveredAt(m.dir, e)
			from := delivered
			if p.FromRetrieval {
				if e.seen == 0 {
					continue
				}
				from = time.Unix(e.seen, 0)
			}
			if !from.IsZero() && now.Sub(from) >= p.Expire {
				doomed = append(doomed, i)
				r := store.Removed{UID: m.messages[i].UID, Size: e.wire, Delivered: delivered}
				if p.Window > 0 {
					r.Deleted = now
				}
				res.Expired = append(res.Expired, r)
			}
		}
		if len(doomed) > 0 {
			if err := m.remove(doomed, p.Window > 0, now); err != nil {
				return store.SweepResult{}, err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	held, err := listHolding(m.dir)
	if err != nil {
		return res, err
	}
	purged := false
	for _, h := range held {
		if now.Sub(h.at) < p.Window {
			continue
		}
		crashpoint.Hit("maildir.purge.before-unlink")
		if err := os.Remove(filepath.Join(m.dir, holdingDir, h.file)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return res, err
		}
		purged = true
		res.Purged = append(res.Purged, h.removed())
	}
	if purged {
		if err := fsx.SyncDir(filepath.Join(m.dir, holdingDir)); err != nil {
			return res, err
		}
	}
	return res, s.cleanTmp(user, m.dir, now, true)
}

// tmpMaxAge is how long a file stays in tmp/ unchanged before a sweep
// removes it, as the Maildir convention has it (qmail, Dovecot): a delivery
// writes into tmp/ only for moments before it renames the file into new/,
// so such a file was left by a delivery that was killed or failed, which
// never acknowledged it.
const tmpMaxAge = 36 * time.Hour

// cleanTmp removes the regular files of the Maildir dir's tmp/ whose
// modification and change times are both more than tmpMaxAge before now;
// a delivery still writing a file keeps changing them. It lists tmp/ and
// stats only its files, which are few but for such leftovers, once per
// sweep, not at every Open. It removes nothing under legal hold: locked
// says that the caller holds the purge lock and found no hold, otherwise
// it checks under the lock itself, when there is something to remove.
// Each removal stands on its own file's times: a sweep killed part way
// leaves the rest to the next, and none of them is mail.
func (s *Store) cleanTmp(user, dir string, now time.Time, locked bool) error {
	tmp := filepath.Join(dir, "tmp")
	ents, err := readDir(tmp)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	limit := now.Add(-tmpMaxAge).UnixNano()
	var stale []string
	for _, d := range ents {
		if d.typ != syscall.DT_REG && d.typ != syscall.DT_UNKNOWN {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(tmp, d.name), &st); err != nil {
			continue // gone meanwhile; or it is not for us to remove
		}
		if st.Mode&syscall.S_IFMT == syscall.S_IFREG && st.Mtim.Nano() < limit && st.Ctim.Nano() < limit {
			stale = append(stale, d.name)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	if !locked {
		unlock, err := purgeLock(dir, syscall.LOCK_SH)
		if err != nil {
			return err
		}
		defer unlock()
		if h, err := readHold(dir); err != nil || h.Set {
			return err
		}
	}
	removed := 0
	for _, name := range stale {
		err := os.Remove(filepath.Join(tmp, name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err == nil {
			removed++
		}
	}
	if s.log != nil && removed > 0 {
		s.log.Info("maildir: removed files that deliveries left in tmp/", "user", user, "count", removed,
			"older_than", tmpMaxAge)
	}
	return fsx.SyncDir(tmp)
}

// heldFile is one message in the holding area.
type heldFile struct {
	file, sub, name string
	at              time.Time
	e               entry
}

func (h heldFile) removed() store.Removed {
	r := store.Removed{UID: uidOf(h.e.base), Size: h.e.wire, Deleted: h.at}
	if t, ok := nameTime(h.e.base); ok {
		r.Delivered = t
	}
	return r
}

// listHolding lists the holding area of the Maildir dir, oldest deletion
// first, with the sizes of the messages (from their names, or by reading
// them).
func listHolding(dir string) ([]heldFile, error) {
	names, err := fsx.Names(filepath.Join(dir, holdingDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []heldFile
	for _, file := range names {
		at, sub, name, ok := parseHolding(file)
		if !ok {
			continue
		}
		h := heldFile{file: file, sub: sub, name: name, at: at,
			e: entry{base: baseName(name), sub: holdingDir, name: file}}
		if err := sizeOf(dir, &h.e); err != nil {
			if gone(err) {
				continue
			}
			return nil, err
		}
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b heldFile) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return strings.Compare(a.file, b.file)
	})
	return out, nil
}

// Restore moves the messages that entered the holding area at or after since
// back into the maildrop: under their original names (so with their original
// UIDs, and a client that kept its copy does not fetch them again), or as
// new deliveries with new UIDs when asNew is set. A message whose name is in
// the maildrop again meanwhile is left in the holding area.
func (s *Store) Restore(ctx context.Context, user string, since time.Time, asNew bool) ([]store.Removed, error) {
	md, err := s.Open(ctx, user)
	if err != nil {
		return nil, err
	}
	m := md.(*maildrop)
	defer m.Close()
	m.done = true
	held, err := listHolding(m.dir)
	if err != nil {
		return nil, err
	}
	present := make(map[string]bool, len(m.entries))
	for _, e := range m.entries {
		present[e.base] = true
	}
	if len(m.removed) > 0 && !asNew {
		// The last commit's base names come back with their messages:
		// they must no longer be taken for other files' (twins.go).
		if err := clearJournal(m.dir); err != nil {
			return nil, err
		}
	}
	var out []store.Removed
	for _, h := range held {
		if h.at.Before(since) {
			continue
		}
		if err := ctx.Err(); err != nil {
			break
		}
		sub, name := h.sub, h.name
		if asNew {
			// Named as Pouch's delivery names a message, with the sizes
			// listHolding measured (a ",W=" of another program's name
			// may not count what the wire form adds: sizeOf).
			sub, name = "new", SizedName(UniqueName(s.now()), h.e.raw, h.e.wire)
		} else if present[h.e.base] {
			continue
		}
		if err := os.Rename(filepath.Join(m.dir, holdingDir, h.file), filepath.Join(m.dir, sub, name)); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return out, syncAfterRestore(m.dir, err)
		}
		crashpoint.Hit("maildir.restore.moved")
		r := h.removed()
		r.UID = uidOf(baseName(name))
		out = append(out, r)
	}
	return out, syncAfterRestore(m.dir, nil)
}

// syncAfterRestore makes the moves of a restore durable; err, if not nil,
// is the failure that stopped it.
func syncAfterRestore(dir string, err error) error {
	for _, sub := range []string{"cur", "new", holdingDir} {
		if e := fsx.SyncDir(filepath.Join(dir, sub)); e != nil && err == nil && !errors.Is(e, fs.ErrNotExist) {
			err = e
		}
	}
	return err
}

// Stats describes user's maildrop without taking its lock: what a session
// opening it now would see, the holding area and the legal hold.
func (s *Store) Stats(ctx context.Context, user string) (store.Stats, error) {
	var st store.Stats
	dir, err := s.dir(user)
	if err != nil {
		return st, err
	}
	if _, err := os.Stat(dir); err != nil {
		return st, err
	}
	if st.Hold, err = readHold(dir); err != nil {
		return st, err
	}
	scanned, err := scan(dir)
	if err != nil {
		return st, err
	}
	idx, err := readIndex(filepath.Join(dir, indexFile))
	if err != nil {
		return st, err
	}
	known := make(map[string]entry, len(idx))
	for _, e := range idx {
		known[e.base] = e
	}
	for _, e := range scanned {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		if k, ok := known[e.base]; ok {
			e.raw, e.wire, e.seen = k.raw, k.wire, k.seen
		} else if err := sizeOf(dir, &e); err != nil {
			if gone(err) {
				continue
			}
			return st, err
		}
		st.Messages++
		st.Octets += e.wire
		if e.seen != 0 {
			st.Retrieved++
		}
		if t := deliveredAt(dir, &e); !t.IsZero() {
			if st.Oldest.IsZero() || t.Before(st.Oldest) {
				st.Oldest = t
			}
			if t.After(st.Newest) {
				st.Newest = t
			}
		}
	}
	held, err := listHolding(dir)
	if err != nil {
		return st, err
	}
	for _, h := range held {
		st.Held++
		st.HeldOctets += h.e.wire
		if st.OldestDeleted.IsZero() || h.at.Before(st.OldestDeleted) {
			st.OldestDeleted = h.at
		}
	}
	return st, nil
}

// Retrieved records the first retrieval of the messages at the given
// indexes, in the index, for policies that expire messages counted from it.
func (m *maildrop) Retrieved(indexes []int, t time.Time) error {
	changed := false
	for _, i := range indexes {
		if i >= 0 && i < len(m.entries) && m.entries[i].seen == 0 {
			m.entries[i].seen = max(t.Unix(), 1)
			changed = true
		}
	}
	if !changed {
		return nil
	}
	return writeIndex(m.dir, m.entries)
}
