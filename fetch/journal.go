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

	"github.com/pouchmail/pouch/internal/fsx"
	"golang.org/x/sys/unix"
)

// journalHeader is the first line of every journal file this version
// writes; files of versions 1 to 4 are still read (and rewritten as version
// 5 at the first writable open, so that a version that knows no Q or E
// record, or no sizes, refuses the file instead of misreading those lines,
// which would download their messages again or delete a new one unread).
const (
	journalHeader   = "pouch-fetch-journal 5\n"
	journalHeaderV4 = "pouch-fetch-journal 4\n"
	journalHeaderV3 = "pouch-fetch-journal 3\n"
	journalHeaderV2 = "pouch-fetch-journal 2\n"
	journalHeaderV1 = "pouch-fetch-journal 1\n"
)

// tombstoneTTL is how long a UIDL that left the server is remembered, so
// that a transient partial LIST cannot cause a second download.
const tombstoneTTL = 30 * 24 * time.Hour

// Flags of a journal entry. fListed and fDup describe this run's listing and
// are never written; fStaged marks an Add not yet synced.
const (
	fSeen    uint8 = 1 << iota // downloaded, stored and durable; the time is when
	fPending                   // about to be downloaded
	fTomb                      // left the server; the time is when
	fSuspect                   // arrived damaged: never stored as mail, never deleted
	fListed                    // in this run's UIDL listing
	fDup                       // in this run's UIDL listing more than once
	fStaged                    // recorded by Add, durable after Sync
	fOld                       // with fSeen: on the server before --mark-existing, never downloaded, never deleted
)

// spillSize is how much the journal buffers before writing (without an
// fsync) when many pending records are added at once.
const spillSize = 1 << 20

// Journal is an account's state: the UIDLs already downloaded, each with the
// time its message was downloaded and the message's size. It is an
// append-only text file,
//
//	pouch-fetch-journal 5
//	<unix-seconds> SP <uidl> [SP <size>] LF        downloaded, stored and durable
//	P SP <uidl> [SP <size>] LF                     about to be downloaded (pending)
//	T SP <unix-seconds> SP <uidl> [SP <size>] LF   left the server at that time (tombstone)
//	Q SP <uidl> LF                                 arrived damaged (suspect)
//	E SP <unix-seconds> SP <uidl> [SP <size>] LF   on the server when --mark-existing ran
//	M SP <octets> SP <mbox-path> LF                mbox size before an append
//	M SP - LF                                      no mbox append outstanding
//
// written with one fdatasync per commit, and compacted (written to a temporary
// file, synced, renamed over the journal, directory synced) when UIDLs vanish
// from the server or dead lines pile up. A line torn by a crash has no LF and
// is dropped when the journal is opened; a line that does not parse, or
// whose UIDL is not 1 to 70 octets 0x21-0x7E, is skipped with a warning.
// Version 1 files have only downloaded lines; version 2 files have no Q
// lines; files before version 5 have no sizes.
//
// A size is the message's octets as LIST announced them. A UIDL is one
// message only while its size stays (RFC 1939 §7 forbids reusing a UIDL,
// but some servers do): a P line whose size differs from the downloaded
// one names a new message under the reused UIDL, and ends the old record
// (the old message left the server; a downloaded line follows once the new
// one is stored). The first downloaded line for a UIDL wins, unless its size
// differs from the recorded one: then it is the new message's, and
// replaces it. A size that is not known (a record from before version 5)
// differs from none.
//
// A pending record marks a UIDL whose message may be in the destination
// without a downloaded record (the run was killed in between): only those are
// trusted when a Maildir file carries the UIDL's digest. An M record is
// outstanding until a later downloaded line or "M -": the next run cuts the
// mbox back to that size, removing an append the journal never recorded. A
// Q record marks a message whose reply broke the protocol or disagreed with
// LIST: later runs neither download it nor delete it, until a downloaded
// line follows (--retry-quarantined) or it leaves the server. An E record
// counts as downloaded, except that the message was never stored here:
// no run deletes it, whatever the keep policy. Version 3 files have no E
// lines.
//
// A failed write is cut back to the last good offset; a failed fdatasync
// makes the journal unusable (its pages' state is unknown).
//
// The entries live in a uidTable, about 24 octets plus the UIDL each.
//
// The journal holds the account lock (flock on NAME.lock) while open, so two
// runs for one account cannot overlap; the kernel drops it if the process dies.
type Journal struct {
	dir, name string
	f         *os.File
	lock      *os.File
	ids       *uidTable
	nSeen     int
	nListed   int
	mark      int64 // outstanding mbox size, -1: none
	markPath  string
	lines     int
	off       int64 // end of the last good write
	buf       []byte
	staged    []stagedAdd
	readOnly  bool
	sys       fsCalls
	err       error // sticky: a failed fdatasync
	werr      error // a failed write of spilled records, for the next Sync
	warnings  []string
}

type stagedAdd struct {
	r ref
	t int64
}

// ErrLocked is returned when another run holds the account lock.
var ErrLocked = errors.New("another pouch fetch is running for this account")

// OpenJournal takes the lock and loads dir/name.journal, creating the
// directory and the file if needed. readOnly (for --dry-run) never writes.
func OpenJournal(dir, name string, readOnly bool) (*Journal, error) {
	return openJournal(dir, name, readOnly, osCalls)
}

func openJournal(dir, name string, readOnly bool, sys fsCalls) (*Journal, error) {
	if err := mkdirSynced(dir, sys.syncDir); err != nil {
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
	j := &Journal{dir: dir, name: name, lock: lock, ids: newUIDTable(), mark: -1, readOnly: readOnly, sys: sys}
	if !readOnly {
		// Temporary files of a compaction a killed run left (we hold the
		// lock); earlier versions named them NAME.journal.tmp*.
		fsx.RemoveTemps(j.path())
		if names, err := fsx.Names(dir); err == nil {
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

// mkdirSynced creates dir (and its parents) and fsyncs (syncDir) the parent
// of each directory it created, so that the state directory survives a
// crash.
func mkdirSynced(dir string, syncDir func(string) error) error {
	dir = filepath.Clean(dir)
	if st, err := os.Stat(dir); err == nil {
		if !st.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirSynced(parent, syncDir); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return syncDir(parent)
}

func (j *Journal) path() string { return filepath.Join(j.dir, j.name+".journal") }

// Warnings returns the problems found while loading or pruning.
func (j *Journal) Warnings() []string { return j.warnings }

func (j *Journal) warn(format string, args ...any) {
	j.warnings = append(j.warnings, fmt.Sprintf(format, args...))
}

func (j *Journal) load() error {
	f, err := os.Open(j.path())
	if errors.Is(err, os.ErrNotExist) {
		if j.readOnly {
			return nil
		}
		return j.rewrite()
	}
	if err != nil {
		return fmt.Errorf("state journal: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	head, err := br.Peek(len(journalHeader))
	version, torn := 0, false
	for v, h := range []string{journalHeaderV1, journalHeaderV2, journalHeaderV3, journalHeaderV4, journalHeader} {
		if string(head) == h {
			version = v + 1
		}
		torn = torn || err == io.EOF && strings.HasPrefix(h, string(head))
	}
	if version == 0 {
		if torn {
			// A crash while creating it: nothing was recorded yet.
			if j.readOnly {
				return nil
			}
			return j.rewrite()
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("state journal: %w", err)
		}
		return fmt.Errorf("state journal %s: not a pouch fetch journal (or a newer version)", j.path())
	}
	br.Discard(len(journalHeader))
	good := int64(len(journalHeader))
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// No valid line is this long: skip it whole.
			n := int64(len(line))
			for err == bufio.ErrBufferFull {
				line, err = br.ReadSlice('\n')
				n += int64(len(line))
			}
			if err != nil {
				break // torn last line
			}
			good += n
			j.lines++
			j.warn("state journal %s: bad line of %d octets skipped", j.path(), n)
			continue
		}
		if err == io.EOF {
			break // torn last line, or the end
		}
		if err != nil {
			return fmt.Errorf("state journal: %w", err)
		}
		good += int64(len(line))
		j.lines++
		line = line[:len(line)-1]
		if !j.parse(line, version) {
			j.warn("state journal %s: bad line %q skipped", j.path(), line)
		}
	}
	if j.readOnly {
		return nil
	}
	if version < 5 {
		return j.rewrite() // upgrade
	}
	w, err := os.OpenFile(j.path(), os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("state journal: %w", err)
	}
	if err := w.Truncate(good); err != nil {
		w.Close()
		return fmt.Errorf("state journal: %w", err)
	}
	if j.off, err = w.Seek(0, io.SeekEnd); err != nil {
		w.Close()
		return err
	}
	j.f = w
	return nil
}

// entry returns the entry for a valid UIDL, adding it if it is new.
func (j *Journal) entry(uid []byte) (ref, bool) {
	if !validUID(uid) {
		return 0, false
	}
	r, err := j.ids.Insert(uid)
	return r, err == nil
}

// parse applies one journal line of a file of the given version.
func (j *Journal) parse(line []byte, version int) bool {
	kind, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok {
		return false
	}
	if version >= 2 {
		switch string(kind) {
		case "P":
			r, size, ok := j.sizedEntry(rest, version)
			if ok {
				j.pending(r, size)
			}
			return ok
		case "T":
			r, t, size, ok := j.timedEntry(rest, version)
			if ok {
				j.setSeen(r, false)
				j.ids.Clear(r, fOld)
				j.ids.Set(r, fTomb)
				j.ids.SetTime(r, t)
				j.ids.SetSize(r, size)
			}
			return ok
		case "Q":
			if version < 3 {
				return false
			}
			r, ok := j.entry(rest)
			if ok {
				j.ids.Set(r, fSuspect)
			}
			return ok
		case "E":
			if version < 4 {
				return false
			}
			r, t, size, ok := j.timedEntry(rest, version)
			if ok && (!j.ids.Has(r, fSeen) || j.otherSize(r, size)) {
				j.setSeen(r, true)
				j.ids.Set(r, fOld)
				j.ids.SetTime(r, t)
				j.ids.SetSize(r, size)
				j.ids.Clear(r, fTomb)
			}
			return ok
		case "M":
			if string(rest) == "-" {
				j.mark, j.markPath = -1, ""
				return true
			}
			sz, p, ok := bytes.Cut(rest, []byte(" "))
			n, err := strconv.ParseInt(string(sz), 10, 64)
			if !ok || err != nil || n < 0 || len(p) == 0 {
				return false
			}
			j.mark, j.markPath = n, string(p)
			return true
		}
	}
	t, err := strconv.ParseInt(string(kind), 10, 64)
	if err != nil {
		return false
	}
	r, size, ok := j.sizedEntry(rest, version)
	if !ok {
		return false
	}
	j.downloaded(r, t, size)
	j.ids.Clear(r, fTomb|fSuspect)
	j.mark, j.markPath = -1, "" // written only after the destination synced
	return true
}

// sizedEntry parses "<uidl> [SP <size>]" (the size from version 5 on) and
// returns its entry, adding it if it is new; size is -1 when there is none.
func (j *Journal) sizedEntry(rest []byte, version int) (ref, int64, bool) {
	uid, sz, sized := bytes.Cut(rest, []byte(" "))
	size := int64(-1)
	if sized {
		n, err := strconv.ParseInt(string(sz), 10, 64)
		if version < 5 || err != nil || n < 0 {
			return 0, 0, false
		}
		size = n
	}
	r, ok := j.entry(uid)
	return r, size, ok
}

// timedEntry parses "<unix-seconds> SP <uidl> [SP <size>]", as sizedEntry
// does the part after the time.
func (j *Journal) timedEntry(rest []byte, version int) (r ref, t, size int64, ok bool) {
	ts, rest, ok := bytes.Cut(rest, []byte(" "))
	t, err := strconv.ParseInt(string(ts), 10, 64)
	if !ok || err != nil {
		return 0, 0, 0, false
	}
	r, size, ok = j.sizedEntry(rest, version)
	return r, t, size, ok
}

// otherSize reports whether the entry's recorded size is known and differs
// from size (known): the UIDL now names another message.
func (j *Journal) otherSize(r ref, size int64) bool {
	old, ok := j.ids.Size(r)
	return ok && size >= 0 && old != size
}

// downloaded applies a downloaded record of a message of size octets
// (negative: unknown) at t. The first record for a UIDL wins, unless the
// sizes differ: then the UIDL names a new message, whose record replaces
// the old one. An unknown size is filled in.
func (j *Journal) downloaded(r ref, t, size int64) {
	switch {
	case !j.ids.Has(r, fSeen) || j.otherSize(r, size):
		j.setSeen(r, true)
		j.ids.Clear(r, fOld)
		j.ids.SetTime(r, t)
		j.ids.SetSize(r, size)
	case size >= 0:
		j.ids.SetSize(r, size)
	}
}

// pending applies a pending record of a message of size octets (negative:
// unknown). If the entry was downloaded, or left the server, with another
// size, the UIDL now names a new message: the old record ends.
func (j *Journal) pending(r ref, size int64) {
	switch other := j.otherSize(r, size); {
	case j.ids.Has(r, fSeen) && !other:
		j.ids.Set(r, fPending)
		return
	case j.ids.Has(r, fSeen):
		j.setSeen(r, false)
		j.ids.Clear(r, fOld)
	case j.ids.Has(r, fTomb) && other:
		j.ids.Clear(r, fTomb)
	}
	j.ids.Set(r, fPending)
	j.ids.SetSize(r, size)
}

// setSeen sets or clears fSeen, keeping the count.
func (j *Journal) setSeen(r ref, on bool) {
	switch was := j.ids.Has(r, fSeen); {
	case on && !was:
		j.ids.Set(r, fSeen)
		j.nSeen++
	case !on && was:
		j.ids.Clear(r, fSeen)
		j.nSeen--
	}
}

// Len returns the number of UIDLs recorded as downloaded.
func (j *Journal) Len() int { return j.nSeen }

// Seen returns when uid's message was downloaded, if it was.
func (j *Journal) Seen(uid string) (time.Time, bool) {
	r := j.ids.FindString(uid)
	if !j.ids.Has(r, fSeen) {
		return time.Time{}, false
	}
	return time.Unix(j.ids.Time(r), 0), true
}

// Pending reports whether a run recorded that it was about to download uid
// and no run recorded it as downloaded.
func (j *Journal) Pending(uid string) bool {
	r := j.ids.FindString(uid)
	return j.ids.Has(r, fPending) && !j.ids.Has(r, fSeen)
}

// Tombstoned reports whether uid left the server less than 30 days ago.
func (j *Journal) Tombstoned(uid string) bool {
	return j.ids.Has(j.ids.FindString(uid), fTomb)
}

// Suspect reports whether uid's message arrived damaged and is left alone.
func (j *Journal) Suspect(uid string) bool {
	return j.ids.Has(j.ids.FindString(uid), fSuspect)
}

// Listed records that uid is in this run's UIDL listing and returns its
// entry; dup says it was listed before. Prune forgets what was not listed.
func (j *Journal) Listed(uid []byte) (r ref, dup bool, err error) {
	r, err = j.ids.Insert(uid)
	if err != nil {
		return 0, false, err
	}
	if j.ids.Has(r, fListed) {
		j.ids.Set(r, fDup)
		return r, true, nil
	}
	j.ids.Set(r, fListed)
	j.nListed++
	return r, false, nil
}

// Add records uid's message of size octets (as LIST announced it) as
// downloaded at t; it is durable (and Seen) after Sync.
func (j *Journal) Add(uid string, t time.Time, size int64) {
	if r, err := j.ids.InsertString(uid); err == nil {
		j.addRef(r, t, size)
	}
}

// addRef is Add for an entry. A suspect entry (downloaded again with
// --retry-quarantined) gets a new downloaded line, which clears it. An entry
// downloaded with another size is first ended by addPendingRef.
func (j *Journal) addRef(r ref, t time.Time, size int64) {
	if j.ids.Has(r, fStaged) || j.ids.Has(r, fSeen) && !j.ids.Has(r, fSuspect) {
		return
	}
	if _, known := j.ids.Size(r); !j.ids.Has(r, fSeen) || !known {
		j.ids.SetSize(r, size)
	}
	j.ids.Set(r, fStaged)
	j.staged = append(j.staged, stagedAdd{r, t.Unix()})
	j.buf = strconv.AppendInt(j.buf, t.Unix(), 10)
	j.buf = append(j.buf, ' ')
	j.buf = appendSized(j.buf, j.ids.uidBytes(r), size)
}

// appendSized appends "<uidl> [SP <size>] LF" (no size when it is negative).
func appendSized(b, uid []byte, size int64) []byte {
	b = append(b, uid...)
	if size >= 0 {
		b = append(b, ' ')
		b = strconv.AppendInt(b, size, 10)
	}
	return append(b, '\n')
}

// addExistingRef records that the entry's message of size octets was on
// the server when --mark-existing ran: it counts as downloaded and is never
// deleted. It is durable (and Seen) after Sync.
func (j *Journal) addExistingRef(r ref, t time.Time, size int64) bool {
	if j.ids.Has(r, fStaged) || j.ids.Has(r, fSeen) || j.ids.Has(r, fSuspect) {
		return false
	}
	j.ids.SetSize(r, size)
	j.ids.Set(r, fStaged|fOld)
	j.staged = append(j.staged, stagedAdd{r, t.Unix()})
	j.buf = fmt.Appendf(j.buf, "E %d ", t.Unix())
	j.buf = appendSized(j.buf, j.ids.uidBytes(r), size)
	j.spill()
	return true
}

// Existing reports whether uid was recorded by --mark-existing.
func (j *Journal) Existing(uid string) bool {
	return j.ids.Has(j.ids.FindString(uid), fSeen|fOld)
}

// AddPending records that uid's message of size octets is about to be
// downloaded; durable after Sync. If uid was downloaded with another size,
// its record ends here: the UIDL now names a new message.
func (j *Journal) AddPending(uid string, size int64) {
	if r, err := j.ids.InsertString(uid); err == nil {
		j.addPendingRef(r, size)
	}
}

func (j *Journal) addPendingRef(r ref, size int64) {
	if old, known := j.ids.Size(r); j.ids.Has(r, fPending) && known && old == size {
		return
	}
	j.pending(r, size)
	j.buf = append(j.buf, "P "...)
	j.buf = appendSized(j.buf, j.ids.uidBytes(r), size)
	j.spill()
}

// addSuspectRef records that the entry's message arrived damaged; durable
// after Sync.
func (j *Journal) addSuspectRef(r ref) {
	j.ids.Set(r, fSuspect)
	j.buf = append(j.buf, "Q "...)
	j.buf = append(j.buf, j.ids.uidBytes(r)...)
	j.buf = append(j.buf, '\n')
}

// spill writes a large buffer out (without waiting for the disk), so that
// recording millions of pending UIDLs does not hold them all in memory; a
// failure is returned by the next Sync.
func (j *Journal) spill() {
	if len(j.buf) < spillSize || j.readOnly || j.err != nil || j.werr != nil {
		return
	}
	j.werr = j.write()
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

// dropStaged forgets the Adds not yet durable.
func (j *Journal) dropStaged() {
	for _, s := range j.staged {
		j.ids.Clear(s.r, fStaged)
		if !j.ids.Has(s.r, fSeen) {
			j.ids.Clear(s.r, fOld)
		}
	}
	j.staged = j.staged[:0]
}

// write appends the buffer to the file. A failed write is cut back to the
// last good offset, so that a retry cannot merge lines.
func (j *Journal) write() error {
	if len(j.buf) == 0 {
		return nil
	}
	n, err := j.sys.write(j.f, j.buf)
	if err != nil {
		j.buf = j.buf[:0]
		j.dropStaged()
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
	j.off += int64(n)
	j.buf = j.buf[:0]
	return nil
}

// Sync writes what was recorded and waits until it is on disk.
func (j *Journal) Sync() error {
	if j.err != nil {
		return j.err
	}
	if j.readOnly {
		j.buf = j.buf[:0]
		j.dropStaged()
		return nil
	}
	if err := j.werr; err != nil {
		j.werr = nil
		j.buf = j.buf[:0]
		j.dropStaged()
		return err
	}
	if len(j.buf) == 0 && len(j.staged) == 0 {
		return nil
	}
	if err := j.write(); err != nil {
		return err
	}
	if err := j.sys.fdatasync(j.f); err != nil {
		j.err = fmt.Errorf("state journal: fsync: %w (the journal is unusable until the next run)", err)
		j.dropStaged()
		return j.err
	}
	for _, s := range j.staged {
		r := s.r
		j.ids.Clear(r, fStaged|fTomb|fSuspect)
		if !j.ids.Has(r, fSeen) {
			j.setSeen(r, true)
			j.ids.SetTime(r, s.t)
		}
	}
	// (The sizes were set by addRef and addExistingRef: the entries were
	// not downloaded, or with the same or an unknown size, as replaying
	// the lines gives.)
	if len(j.staged) > 0 {
		j.mark, j.markPath = -1, "" // downloaded lines follow the destination's sync
	}
	j.staged = j.staged[:0]
	return nil
}

// Prune forgets the UIDLs that this run's listing (Listed) did not name
// (they left the server), keeping downloaded ones as tombstones for 30
// days, and compacts the journal when that or dead lines make it worth it.
// due is the keep policy: whether a message first downloaded at a time is
// due for deletion.
//
// An empty listing is believed (the downloaded UIDLs become tombstones, as
// with any listing) only if pouch fetch may have deleted every message the
// journal knows: each was downloaded and is due for deletion. If the
// journal expects any message on the server (kept by the policy or by
// --mark-existing, quarantined, or about to be downloaded), the server more
// likely lost its maildrop for a while than someone emptied it: nothing is
// forgotten, with a warning that counts them.
func (j *Journal) Prune(due func(downloaded time.Time) bool) error {
	if j.nListed == 0 {
		if n := j.expected(due); n > 0 {
			j.warn("the server lists no messages, but the journal expects %d there (kept, quarantined or not yet downloaded): not forgetting anything this time", n)
			return nil
		}
	}
	now := time.Now()
	removed, live := 0, 0
	j.ids.Each(func(r ref) {
		f := j.ids.Flags(r)
		if f&fListed == 0 {
			if f&fSeen != 0 {
				j.setSeen(r, false)
				j.ids.Clear(r, fOld)
				j.ids.Set(r, fTomb)
				j.ids.SetTime(r, now.Unix())
				removed++
			}
			if f&(fPending|fSuspect) != 0 {
				j.ids.Clear(r, fPending|fSuspect)
				removed++
			}
			if f&fTomb != 0 && now.Sub(time.Unix(j.ids.Time(r), 0)) > tombstoneTTL {
				j.ids.Clear(r, fTomb)
				removed++
			}
		}
		if j.ids.Flags(r)&(fSeen|fPending|fTomb|fSuspect) != 0 {
			live++
		}
	})
	if j.readOnly || (removed == 0 && j.lines <= 2*live+1024) {
		return nil
	}
	if err := j.Sync(); err != nil {
		return err
	}
	return j.rewrite()
}

// expected counts the entries whose messages should be on the server:
// pouch fetch has not deleted them, nor will before it lists them again.
func (j *Journal) expected(due func(downloaded time.Time) bool) int {
	n := 0
	j.ids.Each(func(r ref) {
		f := j.ids.Flags(r)
		switch {
		case f&fSuspect != 0: // quarantined: never deleted
		case f&fSeen == 0 && f&fPending != 0: // about to be downloaded
		case f&fSeen == 0:
			return // a tombstone, or forgotten
		case f&fOld != 0: // on the server before --mark-existing: never deleted
		case due(time.Unix(j.ids.Time(r), 0)):
			return // deleted by a QUIT, or by the next run's if that one failed
		}
		n++
	})
	return n
}

// rewrite writes the live entries to a new file and renames it over the
// journal: a crash leaves either the old or the new journal, both complete.
func (j *Journal) rewrite() error {
	if j.err != nil {
		return j.err
	}
	tmp, err := fsx.Create(j.path(), fsx.Options{Perm: 0o600,
		Synced: "fetch.journal.compact-synced", Renamed: "fetch.journal.compact-renamed"})
	if err != nil {
		return fmt.Errorf("state journal: %w", err)
	}
	defer tmp.Discard()
	w := bufio.NewWriterSize(tmp, 64<<10)
	w.WriteString(journalHeader)
	lines := 0
	var line []byte
	j.ids.Each(func(r ref) {
		f, uid := j.ids.Flags(r), j.ids.uidBytes(r)
		size, known := j.ids.Size(r)
		if !known {
			size = -1
		}
		line = line[:0]
		if f&fTomb != 0 {
			line = fmt.Appendf(line, "T %d ", j.ids.Time(r))
			line = appendSized(line, uid, size)
			lines++
		}
		if f&fPending != 0 && f&fSeen == 0 {
			line = append(line, "P "...)
			line = appendSized(line, uid, size)
			lines++
		}
		if f&(fSeen|fOld) == fSeen|fOld {
			line = fmt.Appendf(line, "E %d ", j.ids.Time(r))
			line = appendSized(line, uid, size)
			lines++
		} else if f&fSeen != 0 {
			line = fmt.Appendf(line, "%d ", j.ids.Time(r))
			line = appendSized(line, uid, size)
			lines++
		}
		if f&fSuspect != 0 {
			// After the downloaded line, which would clear it.
			line = fmt.Appendf(line, "Q %s\n", uid)
			lines++
		}
		w.Write(line)
	})
	if j.mark >= 0 {
		// Last, so that no downloaded line clears it.
		fmt.Fprintf(w, "M %d %s\n", j.mark, j.markPath)
		lines++
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("state journal: %w", err)
	}
	if err := tmp.Commit(); err != nil {
		tmp.Close()
		return fmt.Errorf("state journal: %w", err)
	}
	if j.f != nil {
		j.f.Close()
	}
	j.f = tmp.File
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
