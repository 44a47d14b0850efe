package fetch

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pouchmail/pouch/internal/crashpoint"
)

// Hooks for tests that inject failures.
var (
	journalWrite = (*os.File).Write
	fdatasyncFn  = func(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }
)

// journalHeader is the first line of every journal file this version
// writes; journalHeaderV1 files are still read (and rewritten as version 2 at
// the first writable open).
const (
	journalHeader   = "pouch-fetch-journal 2\n"
	journalHeaderV1 = "pouch-fetch-journal 1\n"
)

// tombstoneTTL is how long a UIDL that left the server is remembered, so
// that a transient partial LIST cannot cause a second download.
const tombstoneTTL = 30 * 24 * time.Hour

// Journal is an account's state: the UIDLs already downloaded, each with the
// time it was first downloaded. It is an append-only text file,
//
//	pouch-fetch-journal 2
//	<unix-seconds> SP <uidl> LF        downloaded, stored and durable
//	P SP <uidl> LF                     about to be downloaded (pending)
//	T SP <unix-seconds> SP <uidl> LF   left the server at that time (tombstone)
//	M SP <octets> SP <mbox-path> LF    mbox size before an append
//	M SP - LF                          no mbox append outstanding
//
// written with one fdatasync per commit, and compacted (written to a temporary
// file, synced, renamed over the journal, directory synced) when UIDLs vanish
// from the server or dead lines pile up. A line torn by a crash has no LF and
// is dropped when the journal is opened; a line that does not parse, or
// whose UIDL is not 1 to 70 octets 0x21-0x7E, is skipped with a warning. The
// first downloaded line for a UIDL wins. Version 1 files have only
// downloaded lines.
//
// A pending record marks a UIDL whose message may be in the destination
// without a downloaded record (the run was killed in between): only those are
// trusted when a Maildir file carries the UIDL's digest. An M record is
// outstanding until a later downloaded line or "M -": the next run cuts the
// mbox back to that size, removing an append the journal never recorded.
//
// A failed write is cut back to the last good offset; a failed fdatasync
// makes the journal unusable (its pages' state is unknown).
//
// The journal holds the account lock (flock on NAME.lock) while open, so two
// runs for one account cannot overlap; the kernel drops it if the process dies.
type Journal struct {
	dir, name string
	f         *os.File
	lock      *os.File
	seen      map[string]int64
	pending   map[string]bool
	tombs     map[string]int64
	mark      int64 // outstanding mbox size, -1: none
	markPath  string
	lines     int
	off       int64 // end of the last good write
	buf       []byte
	staged    map[string]int64
	readOnly  bool
	err       error // sticky: a failed fdatasync
	warnings  []string
}

// ErrLocked is returned when another run holds the account lock.
var ErrLocked = errors.New("another pouch fetch is running for this account")

// OpenJournal takes the lock and loads dir/name.journal, creating the
// directory and the file if needed. readOnly (for --dry-run) never writes.
func OpenJournal(dir, name string, readOnly bool) (*Journal, error) {
	if err := mkdirSynced(dir); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, name+".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (lock %s)", ErrLocked, lock.Name())
		}
		return nil, fmt.Errorf("state lock: %w", err)
	}
	j := &Journal{dir: dir, name: name, lock: lock, seen: map[string]int64{}, pending: map[string]bool{},
		tombs: map[string]int64{}, staged: map[string]int64{}, mark: -1, readOnly: readOnly}
	if !readOnly {
		// Temporary files of a compaction a killed run left (we hold the lock).
		if names, err := readNames(dir); err == nil {
			for _, n := range names {
				if strings.HasPrefix(n, name+".journal.tmp") {
					os.Remove(filepath.Join(dir, n))
				}
			}
		}
	}
	if err := j.load(); err != nil {
		lock.Close()
		return nil, err
	}
	return j, nil
}

// mkdirSynced creates dir (and its parents) and fsyncs the parent of each
// directory it created, so that the state directory survives a crash.
func mkdirSynced(dir string) error {
	dir = filepath.Clean(dir)
	if st, err := os.Stat(dir); err == nil {
		if !st.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirSynced(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return syncDirFn(parent)
}

func (j *Journal) path() string { return filepath.Join(j.dir, j.name+".journal") }

// Warnings returns the problems found while loading or pruning.
func (j *Journal) Warnings() []string { return j.warnings }

func (j *Journal) warn(format string, args ...any) {
	j.warnings = append(j.warnings, fmt.Sprintf(format, args...))
}

func (j *Journal) load() error {
	data, err := os.ReadFile(j.path())
	if errors.Is(err, os.ErrNotExist) {
		if j.readOnly {
			return nil
		}
		return j.rewrite()
	}
	if err != nil {
		return fmt.Errorf("state journal: %w", err)
	}
	v1 := bytes.HasPrefix(data, []byte(journalHeaderV1))
	if !v1 && !bytes.HasPrefix(data, []byte(journalHeader)) {
		if len(data) < len(journalHeader) && (bytes.HasPrefix([]byte(journalHeader), data) || bytes.HasPrefix([]byte(journalHeaderV1), data)) {
			// A crash while creating it: nothing was recorded yet.
			if j.readOnly {
				return nil
			}
			return j.rewrite()
		}
		return fmt.Errorf("state journal %s: not a pouch fetch journal (or a newer version)", j.path())
	}
	good := len(journalHeader)
	rest := data[good:]
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break // torn last line
		}
		line := rest[:i]
		rest = rest[i+1:]
		good += i + 1
		j.lines++
		if !j.parse(string(line), v1) {
			j.warn("state journal %s: bad line %q skipped", j.path(), line)
		}
	}
	if j.readOnly {
		return nil
	}
	if v1 {
		return j.rewrite() // upgrade
	}
	f, err := os.OpenFile(j.path(), os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("state journal: %w", err)
	}
	if good < len(data) {
		if err := f.Truncate(int64(good)); err != nil {
			f.Close()
			return fmt.Errorf("state journal: %w", err)
		}
	}
	if j.off, err = f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return err
	}
	j.f = f
	return nil
}

// parse applies one journal line.
func (j *Journal) parse(line string, v1 bool) bool {
	kind, rest, ok := strings.Cut(line, " ")
	if !ok {
		return false
	}
	if !v1 {
		switch kind {
		case "P":
			if !validUID(rest) {
				return false
			}
			j.pending[rest] = true
			return true
		case "T":
			ts, uid, ok := strings.Cut(rest, " ")
			t, err := strconv.ParseInt(ts, 10, 64)
			if !ok || err != nil || !validUID(uid) {
				return false
			}
			delete(j.seen, uid)
			j.tombs[uid] = t
			return true
		case "M":
			if rest == "-" {
				j.mark, j.markPath = -1, ""
				return true
			}
			sz, p, ok := strings.Cut(rest, " ")
			n, err := strconv.ParseInt(sz, 10, 64)
			if !ok || err != nil || n < 0 || p == "" {
				return false
			}
			j.mark, j.markPath = n, p
			return true
		}
	}
	t, err := strconv.ParseInt(kind, 10, 64)
	if err != nil || !validUID(rest) {
		return false
	}
	if _, dup := j.seen[rest]; !dup {
		j.seen[rest] = t
	}
	delete(j.tombs, rest)
	j.mark, j.markPath = -1, "" // written only after the destination synced
	return true
}

// Len returns the number of UIDLs recorded as downloaded.
func (j *Journal) Len() int { return len(j.seen) }

// Seen returns when uid was first downloaded, if it was.
func (j *Journal) Seen(uid string) (time.Time, bool) {
	t, ok := j.seen[uid]
	return time.Unix(t, 0), ok
}

// Pending reports whether a run recorded that it was about to download uid
// and no run recorded it as downloaded.
func (j *Journal) Pending(uid string) bool {
	_, done := j.seen[uid]
	return j.pending[uid] && !done
}

// Tombstoned reports whether uid left the server less than 30 days ago.
func (j *Journal) Tombstoned(uid string) bool {
	_, ok := j.tombs[uid]
	return ok
}

// Add records uid as downloaded at t; it is durable (and Seen) after Sync.
func (j *Journal) Add(uid string, t time.Time) {
	if _, ok := j.seen[uid]; ok {
		return
	}
	if _, ok := j.staged[uid]; ok {
		return
	}
	j.staged[uid] = t.Unix()
	j.buf = strconv.AppendInt(j.buf, t.Unix(), 10)
	j.buf = append(j.buf, ' ')
	j.buf = append(j.buf, uid...)
	j.buf = append(j.buf, '\n')
}

// AddPending records that uid is about to be downloaded; durable after Sync.
func (j *Journal) AddPending(uid string) {
	if j.pending[uid] {
		return
	}
	j.pending[uid] = true
	j.buf = append(j.buf, "P "...)
	j.buf = append(j.buf, uid...)
	j.buf = append(j.buf, '\n')
}

// Mark records, durably, the size of the mbox at path before an append.
func (j *Journal) Mark(size int64, path string) error {
	j.mark, j.markPath = size, path
	j.buf = fmt.Appendf(j.buf, "M %d %s\n", size, path)
	return j.Sync()
}

// OutstandingMark returns the mbox size recorded before an append that no
// downloaded record followed, if any.
func (j *Journal) OutstandingMark() (size int64, path string, ok bool) {
	return j.mark, j.markPath, j.mark >= 0
}

// ClearMark records, durably, that no mbox append is outstanding.
func (j *Journal) ClearMark() error {
	j.mark, j.markPath = -1, ""
	j.buf = append(j.buf, "M -\n"...)
	return j.Sync()
}

// markDone buffers "M -" if an mbox mark is outstanding: the destination
// synced, so the append is complete. It goes before the downloaded lines of
// the batch, so that a torn write can only lose those (fetched again), never
// keep the mark behind recorded messages.
func (j *Journal) markDone() {
	if j.mark >= 0 {
		j.mark, j.markPath = -1, ""
		j.buf = append(j.buf, "M -\n"...)
	}
}

// Sync writes what was recorded and waits until it is on disk.
func (j *Journal) Sync() error {
	if j.err != nil {
		return j.err
	}
	if len(j.buf) == 0 || j.readOnly {
		j.buf = j.buf[:0]
		clear(j.staged)
		return nil
	}
	n, err := journalWrite(j.f, j.buf)
	if err != nil {
		// Cut a partial write back, so that a retry cannot merge lines.
		j.buf = j.buf[:0]
		clear(j.staged)
		if n > 0 {
			if terr := j.f.Truncate(j.off); terr != nil {
				j.err = fmt.Errorf("state journal: %v; cutting it back: %w", err, terr)
				return j.err
			}
		}
		if _, serr := j.f.Seek(j.off, io.SeekStart); serr != nil {
			j.err = fmt.Errorf("state journal: %w", serr)
			return j.err
		}
		return fmt.Errorf("state journal: %w", err)
	}
	j.lines += bytes.Count(j.buf, []byte{'\n'})
	j.buf = j.buf[:0]
	if err := fdatasyncFn(j.f); err != nil {
		j.err = fmt.Errorf("state journal: fsync: %w (the journal is unusable until the next run)", err)
		clear(j.staged)
		return j.err
	}
	j.off += int64(n)
	for uid, t := range j.staged {
		j.seen[uid] = t
		delete(j.tombs, uid)
	}
	if len(j.staged) > 0 {
		j.mark, j.markPath = -1, "" // downloaded lines follow the destination's sync
	}
	clear(j.staged)
	return nil
}

// Prune forgets the UIDLs not in present (they left the server), keeping
// them as tombstones for 30 days, and compacts the journal when that or
// dead lines make it worth it. An empty present set with a non-empty journal
// prunes nothing: a server listing no messages at all is more likely broken
// than emptied by someone else.
func (j *Journal) Prune(present map[string]bool) error {
	if len(present) == 0 && len(j.seen) > 0 {
		j.warn("the server lists no messages, but the journal knows %d: not forgetting them this time", len(j.seen))
		return nil
	}
	now := time.Now()
	removed := 0
	for uid := range j.seen {
		if !present[uid] {
			delete(j.seen, uid)
			j.tombs[uid] = now.Unix()
			removed++
		}
	}
	for uid := range j.pending {
		if !present[uid] {
			delete(j.pending, uid)
			removed++
		}
	}
	for uid, t := range j.tombs {
		if !present[uid] && now.Sub(time.Unix(t, 0)) > tombstoneTTL {
			delete(j.tombs, uid)
			removed++
		}
	}
	live := len(j.seen) + len(j.tombs) + len(j.pending)
	if j.readOnly || (removed == 0 && j.lines <= 2*live+1024) {
		return nil
	}
	if err := j.Sync(); err != nil {
		return err
	}
	return j.rewrite()
}

// rewrite writes the live entries to a new file and renames it over the
// journal: a crash leaves either the old or the new journal, both complete.
func (j *Journal) rewrite() error {
	if j.err != nil {
		return j.err
	}
	tmp, err := os.CreateTemp(j.dir, j.name+".journal.tmp*")
	if err != nil {
		return fmt.Errorf("state journal: %w", err)
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	w.WriteString(journalHeader)
	lines := 0
	for uid, t := range j.tombs {
		fmt.Fprintf(w, "T %d %s\n", t, uid)
		lines++
	}
	for uid := range j.pending {
		if _, done := j.seen[uid]; !done {
			fmt.Fprintf(w, "P %s\n", uid)
			lines++
		}
	}
	for uid, t := range j.seen {
		fmt.Fprintf(w, "%d %s\n", t, uid)
		lines++
	}
	if j.mark >= 0 {
		// Last, so that no downloaded line clears it.
		fmt.Fprintf(w, "M %d %s\n", j.mark, j.markPath)
		lines++
	}
	err = w.Flush()
	if err == nil {
		err = tmp.Sync()
	}
	if err != nil {
		tmp.Close()
		return fmt.Errorf("state journal: %w", err)
	}
	crashpoint.Hit("fetch.journal.compact-synced")
	if err := os.Rename(tmp.Name(), j.path()); err != nil {
		tmp.Close()
		return fmt.Errorf("state journal: %w", err)
	}
	if err := syncDirFn(j.dir); err != nil {
		tmp.Close()
		return err
	}
	if j.f != nil {
		j.f.Close()
	}
	j.f = tmp
	j.lines = lines
	j.off, err = tmp.Seek(0, io.SeekEnd)
	return err
}

// Close releases the journal and the account lock.
func (j *Journal) Close() error {
	if j.f != nil {
		j.f.Close()
	}
	return j.lock.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
