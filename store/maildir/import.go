package maildir

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/internal/owner"
	"github.com/pouchmail/pouch/store"
)

// Importing another server's messages (Dovecot's, Courier's) into a
// maildrop, so that clients that keep mail on the server see the UIDLs,
// the order and the sizes they saw before, and download nothing again.
//
// Where an imported UIDL lives: in the message file's name, like every
// other UIDL of this backend, never only in the index (a cache). A UIDL
// that can be a Maildir base name (no "/" or ":", not starting with ".")
// is the file's base name: uidOf gives it back as it is. Any other valid
// UIDL (a saved one may hold any octet in 0x21–0x7E) is carried in a
// field ",U=" (unpadded base64url) of a name of the form Pouch's delivery
// writes, which uidOf decodes (keptUID). Either way the UIDL goes wherever
// the file goes: through an index rebuild, the holding area and a
// restore, a copy of the Maildir. Pouch's delivery never writes ",U=",
// and its names carry the delivery time, so new mail never gets an
// imported UIDL; an imported UIDL of the form of those names with a time
// not yet past is refused (checkUID).
//
// The journal, pouch-imported, records every import, in the order of the
// old server, and is never a cache:
//
//	#pouch-imported 1
//	+ OLDUID SEEN SOURCE LOC FROM MAILDIR
//	- LOC
//	=
//
// "+" is the intent to place FROM (a file of the staging directory
// pouch-import-tmp/, or, for a move, an absolute path in the source
// Maildir) at LOC ("cur/NAME" or "new/NAME"): OLDUID is the UIDL the old
// server showed, SOURCE the base name of the message there, MAILDIR that
// Maildir (absolute), SEEN its first retrieval (unix seconds, 0 for
// never). "-" abandons the intent for LOC;
// "=" says that every intent above it not abandoned is done. Fields are
// encoded as in the index (appendEscaped). A last line without its line
// end was cut short by a crash and is ignored.
//
// An import of a batch of messages: each is copied into the staging
// directory and synced (a move only measures its file), the staging
// directory is synced, the intents are appended and synced, the files are
// renamed into place (renameat2 with RENAME_NOREPLACE, or link and unlink
// where the filesystem lacks it), cur/ and new/ (and for a move the
// source's directories) are synced, and "=" is appended and synced. The
// next BeginImport finishes a batch that a crash cut short: an intent
// whose FROM is still there was not carried out and is carried out now;
// one whose FROM is gone was, so it is done whether or not the message is
// still in the maildrop (a client may have deleted it since) — but a move
// whose file is in neither place is abandoned, and a later run imports it
// if the source still has it. Because every message ever imported stays
// in the journal, a later run imports nothing twice, even what clients
// have deleted since.
//
// The staging directory is not tmp/: a retention sweep removes files left
// in tmp/ for 36 hours, and a staged file named by an intent must wait for
// the next run however long that takes.
//
// Order and retrieval: Close writes the index with the imported messages
// in the journal's order and their first retrievals. When Open finds
// messages the index does not list (an index rebuilt, or a run killed
// before Close), those the journal names are put in its order, in the
// places that arrival order gave them, with its first retrievals
// (recallImports).

const (
	importJournalFile = "pouch-imported"
	importStagingDir  = "pouch-import-tmp"
	importJournalHead = "#pouch-imported 1"
)

// ImportMessage is one message of another server's Maildir to import.
type ImportMessage struct {
	// UID is the unique-id listing that the other server gave the message
	// (RFC 1939 §7). It is kept when it is a valid one: 1–70 octets in
	// 0x21–0x7E.
	UID string
	// Path is the message file.
	Path string
	// Source names the message in its Maildir (its base name), so that a
	// later run knows it again.
	Source string
	// New places the message in new/, as it was in the other server's
	// new/; otherwise it goes to cur/ with Info.
	New bool
	// Info is the part of the file name after the ":" (such as "2,S"),
	// kept as it is; empty for none.
	Info string
	// Seen is when the message was first retrieved; zero for never.
	Seen time.Time
}

// ImportStatus says what an Import did with one message.
type ImportStatus int

const (
	// Imported: the message is in the maildrop under its UIDL.
	Imported ImportStatus = iota
	// ImportedNewUID: the message is in the maildrop, but its UIDL is
	// not a valid POP3 unique-id, so it has one of Pouch's.
	ImportedNewUID
	// AlreadyImported: an earlier import brought the message in.
	AlreadyImported
	// Refused: the message was not imported; Err says why.
	Refused
)

// ImportResult is what an Import did with one message.
type ImportResult struct {
	Status ImportStatus
	// UID is the UIDL the maildrop lists the message under, for Imported
	// and ImportedNewUID.
	UID string
	// Size is the message's size in wire form (its LIST size).
	Size int64
	Err  error
}

// Errors of an Import.
var (
	// ErrUIDInUse means that a message to import has the UIDL of a message
	// the maildrop holds already.
	ErrUIDInUse = errors.New("maildir: the UIDL is already in use in the maildrop")
	// ErrCrossDevice means that a message to move is on another file
	// system than the maildrop.
	ErrCrossDevice = errors.New("maildir: the message is on another file system than the maildrop")
)

// clashError is an ErrUIDInUse, told in one sentence.
type clashError struct{ msg string }

func (e *clashError) Error() string        { return e.msg }
func (e *clashError) Is(target error) bool { return target == ErrUIDInUse }

func clash(format string, args ...any) error { return &clashError{fmt.Sprintf(format, args...)} }

// importRecord is one intent of the journal.
type importRecord struct {
	old, source string
	maildir     string // the source Maildir
	seen        int64
	sub, name   string // where it goes
	from        string // staging name, or absolute path of a move
	state       int8   // recPending, recDone, recAbandoned
}

const (
	recPending int8 = iota
	recDone
	recAbandoned
)

func (r *importRecord) loc() string { return r.sub + "/" + r.name }
func (r *importRecord) move() bool  { return strings.HasPrefix(r.from, "/") }

// Import adds another server's messages to one user's maildrop. It holds
// the maildrop lock from BeginImport to Close; it is used by one goroutine.
type Import struct {
	m       *maildrop
	journal *os.File // open for appending once the first batch needs it
	// done maps the old UIDL of every message the journal says was
	// imported to its record.
	done map[string]*importRecord
	// present maps the UIDLs of the maildrop to their messages' indexes.
	present map[string]int
	dirty   bool // the index must be written at Close
	start   time.Time
	// rename moves a file to a name no file has (renameNoReplace); tests
	// give one that fails as on a filesystem that lacks it.
	rename func(from, dest string) error
}

// importStaged counts the files this process stages, for their names.
var importStaged atomic.Uint64

// BeginImport locks user's maildrop (ErrLocked at once if a session has
// it), finishes what an import killed part way left, and returns an Import.
// It fails if the journal is damaged.
func (s *Store) BeginImport(ctx context.Context, user string) (*Import, error) {
	md, err := s.Open(ctx, user)
	if err != nil {
		return nil, err
	}
	im := &Import{m: md.(*maildrop), start: s.now(), rename: renameNoReplace}
	if err := im.begin(ctx); err != nil {
		im.m.Close()
		return nil, err
	}
	return im, nil
}

func (im *Import) begin(ctx context.Context) error {
	m := im.m
	recs, err := readImportJournal(m.dir)
	if err != nil {
		return err
	}
	if slices.ContainsFunc(recs, func(r *importRecord) bool { return r.state == recPending }) {
		if err := im.recover(recs); err != nil {
			return err
		}
		if err := m.load(ctx); err != nil {
			return err
		}
	}
	// Files staged for a batch whose intents never reached the journal.
	staging := filepath.Join(m.dir, importStagingDir)
	if names, err := fsx.Names(staging); err == nil && len(names) > 0 {
		for _, n := range names {
			os.Remove(filepath.Join(staging, n))
		}
		if err := fsx.SyncDir(staging); err != nil {
			return err
		}
	}
	im.done = make(map[string]*importRecord)
	for _, r := range recs {
		if r.state == recDone {
			im.done[r.old] = r
		}
	}
	if arrangeImported(m.entries, recs) {
		m.setEntries(m.entries)
		im.dirty = true
	}
	im.present = make(map[string]int, len(m.messages))
	for i, msg := range m.messages {
		im.present[msg.UID] = i
	}
	return nil
}

// recover settles the pending intents of recs (see the package comment of
// this file) and records the outcome in the journal.
func (im *Import) recover(recs []*importRecord) error {
	m := im.m
	have := make(map[string]int, len(m.entries))
	for i, e := range m.entries {
		have[e.base] = i
	}
	var tail []byte
	var drop []string // staged copies of abandoned intents (dropAbandoned)
	touched := map[string]bool{}
	for _, r := range recs {
		if r.state != recPending {
			continue
		}
		from := r.fromPath(m.dir)
		dest := filepath.Join(m.dir, r.sub, r.name)
		var fst, dst syscall.Stat_t
		fromErr := syscall.Lstat(from, &fst)
		i, placed := have[baseName(r.name)]
		if placed {
			e := m.entries[i]
			placed = syscall.Lstat(filepath.Join(m.dir, e.sub, e.name), &dst) == nil
		}
		switch {
		case fromErr == nil && placed && fst.Ino == dst.Ino && fst.Dev == dst.Dev:
			// A link was made and its source not yet unlinked.
			if err := os.Remove(from); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			touched[filepath.Dir(from)] = true
			r.state = recDone
		case fromErr == nil:
			// Never placed: place it now.
			err := im.place(from, dest)
			if errors.Is(err, fs.ErrExist) {
				r.state = recAbandoned
				tail = appendEscaped(append(tail, "- "...), r.loc())
				tail = append(tail, '\n')
				if !r.move() {
					drop = append(drop, from)
				}
				continue
			}
			if err != nil {
				return err
			}
			touched[filepath.Dir(from)] = true
			touched[filepath.Dir(dest)] = true
			r.state = recDone
		case placed, !r.move():
			// Placed; if the maildrop no longer has it, a client deleted it.
			r.state = recDone
		default:
			// A move whose file is in neither place: the source renamed
			// it. A later run imports it again from the source.
			r.state = recAbandoned
			tail = appendEscaped(append(tail, "- "...), r.loc())
			tail = append(tail, '\n')
		}
	}
	for d := range touched {
		if err := fsx.SyncDir(d); err != nil {
			return err
		}
	}
	tail = append(tail, "=\n"...)
	if err := im.appendJournal(tail); err != nil {
		return err
	}
	dropAbandoned(drop)
	return nil
}

// dropAbandoned removes the staged copies of abandoned intents, once the
// journal says that they are abandoned: until then, an intent whose file is
// gone and whose name is in the maildrop (here, another file's) is taken
// for placed.
func dropAbandoned(staged []string) {
	for _, f := range staged {
		os.Remove(f)
	}
}

// fromPath is the file an intent places.
func (r *importRecord) fromPath(dir string) string {
	if r.move() {
		return r.from
	}
	return filepath.Join(dir, importStagingDir, r.from)
}

// place renames from to dest, failing with fs.ErrExist rather than
// replacing a file at dest.
func (im *Import) place(from, dest string) error {
	err := im.rename(from, dest)
	if err == unix.EINVAL || err == unix.ENOSYS {
		// A filesystem without RENAME_NOREPLACE: link fails where dest
		// exists. A crash between the two leaves both names, which
		// recover tells apart by their inode.
		if err = os.Link(from, dest); err != nil {
			return err
		}
		crashpoint.Hit("maildir.import.linked")
		return os.Remove(from)
	}
	if err != nil {
		return &fs.PathError{Op: "rename", Path: from, Err: err}
	}
	return nil
}

// renameNoReplace is renameat2(2) with RENAME_NOREPLACE.
func renameNoReplace(from, dest string) error {
	return unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, dest, unix.RENAME_NOREPLACE)
}

// appendJournal appends b to the journal, which it creates if needed, and
// syncs it.
func (im *Import) appendJournal(b []byte) error {
	if im.journal == nil {
		path := filepath.Join(im.m.dir, importJournalFile)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			if err := writeFileAtomic(im.m.dir, importJournalFile, []byte(importJournalHead+"\n")); err != nil {
				return err
			}
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		im.journal = f
	}
	if _, err := im.journal.Write(b); err != nil {
		return err
	}
	return im.journal.Sync()
}

// checkUID says whether msg may be imported: AlreadyImported or Refused
// (with ok false), or ok.
func (im *Import) checkUID(msg *ImportMessage) (res ImportResult, ok bool) {
	if r, found := im.done[msg.UID]; found {
		if r.source == msg.Source {
			return ImportResult{Status: AlreadyImported, UID: msg.UID}, false
		}
		return ImportResult{Status: Refused, Err: clash("UIDL %q was imported for another message (%s) already", msg.UID, r.source)}, false
	}
	if !store.ValidUID(msg.UID) {
		return ImportResult{}, true // imported with a UIDL of Pouch's
	}
	if i, found := im.present[msg.UID]; found {
		return ImportResult{Status: Refused, Err: clash("UIDL %q is that of message %d of the maildrop (%s/%s) already",
			msg.UID, i+1, im.m.entries[i].sub, im.m.entries[i].name)}, false
	}
	if ownName(msg.UID) {
		if sec, _, found := arrival(msg.UID); found && sec >= im.start.Unix() {
			return ImportResult{Status: Refused, Err: clash("UIDL %q has the form of the names Pouch gives new mail, with a time not yet past",
				msg.UID)}, false
		}
	}
	return ImportResult{}, true
}

// staged is one message of a batch on its way into the maildrop.
type staged struct {
	i    int // index in the batch
	rec  importRecord
	e    entry
	from string // the file to place
}

// Add imports msgs, in order, as one batch: copied, or with move renamed
// (the source must then be on the maildrop's file system). It returns what
// happened to each; a message that the journal says was imported, or
// whose UIDL is in use, is left alone. An error stops the batch: what it
// did is finished by the next BeginImport.
func (im *Import) Add(ctx context.Context, msgs []ImportMessage, move bool) ([]ImportResult, error) {
	m := im.m
	results := make([]ImportResult, len(msgs))
	var batch []staged
	taken := map[string]bool{} // UIDLs of this batch
	fail := func(err error) ([]ImportResult, error) {
		for _, s := range batch {
			if !move {
				os.Remove(s.from)
			}
		}
		return results, err
	}
	var dirDev uint64
	if move {
		var st syscall.Stat_t
		if err := syscall.Stat(m.dir, &st); err != nil {
			return results, err
		}
		dirDev = st.Dev
	}
	var todo []int // the messages to stage, by index
	for i := range msgs {
		msg := &msgs[i]
		res, ok := im.checkUID(msg)
		if ok && taken[msg.UID] {
			res, ok = ImportResult{Status: Refused, Err: clash("UIDL %q is given to another message of the source too", msg.UID)}, false
		}
		if !ok {
			results[i] = res
			continue
		}
		taken[msg.UID] = true
		todo = append(todo, i)
	}
	if !move && len(todo) > 0 {
		if err := ensureSubdir(m.dir, importStagingDir); err != nil {
			return results, err
		}
	}
	// Staging is mostly waiting for fsync: several at once let the
	// filesystem commit them together.
	stagedAt := make([]staged, len(msgs))
	errs := make([]error, len(msgs))
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < min(importWorkers, len(todo)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if errs[i] = ctx.Err(); errs[i] == nil {
					stagedAt[i], errs[i] = im.stage(&msgs[i], move, dirDev)
				}
			}
		}()
	}
	for _, i := range todo {
		next <- i
	}
	close(next)
	wg.Wait()
	var failure error
	for _, i := range todo {
		switch err := errs[i]; {
		case err == nil:
			s := stagedAt[i]
			s.i = i
			batch = append(batch, s)
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotFile) || errors.Is(err, ErrCrossDevice):
			results[i] = ImportResult{Status: Refused, Err: err}
		case failure == nil:
			failure = err
		}
	}
	if failure != nil {
		return fail(failure)
	}
	if len(batch) == 0 {
		return results, nil
	}
	if !move {
		if err := fsx.SyncDir(filepath.Join(m.dir, importStagingDir)); err != nil {
			return fail(err)
		}
	}
	crashpoint.Hit("maildir.import.staged")
	var b []byte
	for _, s := range batch {
		r := &s.rec
		b = append(b, "+ "...)
		b = appendEscaped(b, r.old)
		b = fmt.Appendf(b, " %d ", r.seen)
		b = appendEscaped(b, r.source)
		b = append(b, ' ')
		b = appendEscaped(b, r.loc())
		b = append(b, ' ')
		b = appendEscaped(b, r.from)
		b = append(b, ' ')
		b = appendEscaped(b, r.maildir)
		b = append(b, '\n')
	}
	// From here on the journal may name every file, even when the append
	// fails (part of it, or all of it unsynced, can reach the disk): the
	// staged files stay for the next BeginImport, which finishes the
	// batch. Removed, they would be taken for placed.
	if err := im.appendJournal(b); err != nil {
		return results, err
	}
	crashpoint.Hit("maildir.import.journaled")
	b = b[:0]
	touched := map[string]bool{}
	var placed []staged
	var drop []string // staged copies of abandoned intents (dropAbandoned)
	for n, s := range batch {
		dest := filepath.Join(m.dir, s.e.sub, s.e.name)
		err := im.place(s.from, dest)
		if errors.Is(err, fs.ErrExist) {
			// Another program wrote a file of that name meanwhile.
			b = appendEscaped(append(b, "- "...), s.rec.loc())
			b = append(b, '\n')
			if !move {
				drop = append(drop, s.from)
			}
			results[s.i] = ImportResult{Status: Refused, Err: clash("a file %s appeared in the maildrop meanwhile", dest)}
			continue
		}
		if err != nil {
			return results, err
		}
		if n == 0 {
			crashpoint.Hit("maildir.import.first-placed")
		}
		touched[filepath.Join(m.dir, s.e.sub)] = true
		if move {
			touched[filepath.Dir(s.from)] = true
		}
		placed = append(placed, s)
	}
	for d := range touched {
		if err := fsx.SyncDir(d); err != nil {
			return results, err
		}
	}
	crashpoint.Hit("maildir.import.placed")
	b = append(b, "=\n"...)
	if err := im.appendJournal(b); err != nil {
		return results, err
	}
	dropAbandoned(drop)
	for _, s := range placed {
		rec := s.rec
		rec.state = recDone
		im.done[rec.old] = &rec
		m.entries = append(m.entries, s.e)
		uid := uidOf(s.e.base)
		im.present[uid] = len(m.entries) - 1
		status := Imported
		if uid != rec.old {
			status = ImportedNewUID
		}
		results[s.i] = ImportResult{Status: status, UID: uid, Size: s.e.wire}
	}
	if len(placed) > 0 {
		m.setEntries(m.entries)
		im.dirty = true
	}
	return results, nil
}

// stage measures msg's file and, unless it is moved, copies it into the
// staging directory, synced, with its modification time. It names the
// message in the maildrop.
func (im *Import) stage(msg *ImportMessage, move bool, dirDev uint64) (staged, error) {
	m := im.m
	flag := syscall.O_RDONLY
	src, err := os.OpenFile(msg.Path, flag|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return staged{}, err
	}
	defer src.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(src.Fd()), &st); err != nil {
		return staged{}, &fs.PathError{Op: "fstat", Path: msg.Path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return staged{}, &fs.PathError{Op: "open", Path: msg.Path, Err: errNotFile}
	}
	if move && st.Dev != dirDev {
		return staged{}, fmt.Errorf("%w: %s", ErrCrossDevice, msg.Path)
	}
	mtime := time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
	var size sizes
	from := msg.Path
	if move {
		if _, err := io.Copy(&size, src); err != nil {
			return staged{}, err
		}
		// The old server synced it when it wrote it; a sync of a clean
		// file costs nothing, and makes sure.
		if err := src.Sync(); err != nil {
			return staged{}, err
		}
		adoptFile(src, m.dir)
		if !filepath.IsAbs(from) {
			if from, err = filepath.Abs(from); err != nil {
				return staged{}, err
			}
		}
	} else {
		staging := filepath.Join(m.dir, importStagingDir)
		from = filepath.Join(staging, fmt.Sprintf("%d.P%dN%d", im.start.Unix(), os.Getpid(), importStaged.Add(1)))
		if err := copyFile(from, src, &size, mtime); err != nil {
			os.Remove(from)
			return staged{}, err
		}
	}
	base := im.nameFor(msg.UID, size.Raw(), size.Wire(), size.last == '\n', mtime)
	e := entry{base: base, sub: "cur", name: base, raw: size.Raw(), wire: size.Wire()}
	if msg.New {
		e.sub = "new"
	}
	if msg.Info != "" {
		e.name = base + ":" + msg.Info
	}
	if !msg.Seen.IsZero() {
		e.seen = max(msg.Seen.Unix(), 1)
	}
	s := staged{e: e, from: from, rec: importRecord{old: msg.UID, source: msg.Source, seen: e.seen,
		sub: e.sub, name: e.name, maildir: sourceMaildir(msg.Path)}}
	if move {
		s.rec.from = from
	} else {
		s.rec.from = filepath.Base(from)
	}
	return s, nil
}

// importWorkers is how many messages of a batch are staged at once.
const importWorkers = 8

// sizes counts a message's stored and wire sizes, and keeps its last octet.
type sizes struct {
	store.SizeCounter
	last byte
}

func (s *sizes) Write(p []byte) (int, error) {
	if len(p) > 0 {
		s.last = p[len(p)-1]
	}
	return s.SizeCounter.Write(p)
}

// copyFile writes src to a new file at path, counting it in size, gives
// it the modification time mtime, and syncs it.
func copyFile(path string, src io.Reader, size io.Writer, mtime time.Time) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	owner.Adopt(path)
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(io.MultiWriter(f, size), onlyReader{src}, buf); err != nil {
		f.Close()
		return err
	}
	// The time before the sync, so that it is as durable as the data.
	ts := []unix.Timespec{unix.NsecToTimespec(mtime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// onlyReader hides everything of a reader but Read, so that io.CopyBuffer
// uses the buffer it is given.
type onlyReader struct{ io.Reader }

// adoptFile gives f, a message moved into the Maildir dir, the owner of
// dir when this process runs as root, so that a server running as its own
// user can read it.
func adoptFile(f *os.File, dir string) {
	if os.Geteuid() != 0 {
		return
	}
	var d, st syscall.Stat_t
	if syscall.Stat(dir, &d) != nil || syscall.Fstat(int(f.Fd()), &st) != nil {
		return
	}
	if d.Uid == 0 && d.Gid == 0 || d.Uid == st.Uid && d.Gid == st.Gid {
		return
	}
	_ = f.Chown(int(d.Uid), int(d.Gid))
}

// nameFor returns the base name a message with UIDL uid gets: uid itself
// where it can be a base name whose ",S=" and ",W=" fields (if any) give
// the sizes that a rebuilt index would find; otherwise a name of the form
// Pouch's delivery writes, with uid in a ",U=" field when it is valid.
// raw and wire are the message's sizes, lf whether it ends in a line end.
func (im *Import) nameFor(uid string, raw, wire int64, lf bool, mtime time.Time) string {
	if store.ValidUID(uid) && plainName(uid) && sizesFromName(uid, raw, wire, lf) {
		return uid
	}
	name := SizedName(UniqueName(mtime), raw, wire)
	if store.ValidUID(uid) {
		name += ",U=" + base64.RawURLEncoding.EncodeToString([]byte(uid))
	}
	return name
}

// plainName reports whether u can be a Maildir base name whose UIDL is u.
func plainName(u string) bool {
	return u != "" && u[0] != '.' && !strings.ContainsAny(u, "/:") && uidOf(u) == u
}

// sizesFromName reports whether sizeOf, measuring a file named base of
// raw octets (lf: ending in a line end) for an index that does not list
// it, finds the wire size wire: from the ",S=" and ",W=" fields where it
// trusts them, or else by reading the file, which gives the true size.
func sizesFromName(base string, raw, wire int64, lf bool) bool {
	w, hasW := field(base, "W")
	if !hasW {
		return true
	}
	s, hasS := field(base, "S")
	if ownName(base) {
		return w == wire && s == raw
	}
	if raw > 0 && w >= raw && (!hasS || s == raw) {
		if !lf {
			w += 2
		}
		return w == wire
	}
	return true
}

// keptUID decodes the UIDL that a name of the form of Pouch's delivery
// carries in a ",U=" field (see the comment at the top of this file).
func keptUID(base string) (string, bool) {
	i := strings.LastIndex(base, ",U=")
	if i < 0 || !ownName(base) {
		return "", false
	}
	v := base[i+3:]
	if j := strings.IndexByte(v, ','); j >= 0 {
		v = v[:j]
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(v)
	if err != nil || !store.ValidUID(string(b)) || base64.RawURLEncoding.EncodeToString(b) != v {
		return "", false
	}
	return string(b), true
}

// sourceMaildir is the Maildir of a message file (the directory above its
// cur/ or new/), absolute.
func sourceMaildir(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	return filepath.Dir(filepath.Dir(path))
}

// Prune removes from the maildrop the messages that earlier runs copied
// from the Maildir dir and that are no longer there (present reports
// whether dir still has a message, by its base name): mail that clients
// deleted on the old server after an import made while it still served.
// It removes them as a QUIT that deleted them would (through the expunge
// journal; under legal hold into the holding area), and returns how many.
// Messages moved into the maildrop, and those of other Maildirs, are left
// alone. It is the last use of the Import before Close.
func (im *Import) Prune(dir string, present func(source string) bool) (int, error) {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	recs, err := readImportJournal(im.m.dir)
	if err != nil {
		return 0, err
	}
	gone := map[string]bool{}
	for _, r := range recs {
		if r.state == recDone && !r.move() && r.maildir == dir && !present(r.source) {
			gone[baseName(r.name)] = true
		}
	}
	var doomed []int
	var kept []entry
	for i, e := range im.m.entries {
		if gone[e.base] {
			doomed = append(doomed, i)
		} else {
			kept = append(kept, e)
		}
	}
	if len(doomed) == 0 {
		return 0, nil
	}
	if err := im.m.Commit(doomed); err != nil {
		return 0, err
	}
	im.m.setEntries(kept)
	im.dirty = true
	return len(doomed), nil
}

// Close writes the index, with the imported messages in the journal's
// order, and releases the maildrop lock.
func (im *Import) Close() error {
	var err error
	if im.dirty {
		crashpoint.Hit("maildir.import.before-index")
		err = writeIndex(im.m.dir, im.m.entries)
	}
	if im.journal != nil {
		if e := im.journal.Close(); err == nil {
			err = e
		}
		im.journal = nil
	}
	// Empty by now, unless a batch failed part way.
	_ = os.Remove(filepath.Join(im.m.dir, importStagingDir))
	if e := im.m.Close(); err == nil {
		err = e
	}
	return err
}

// Dir is the Maildir the messages go into.
func (im *Import) Dir() string { return im.m.dir }

// Messages returns the maildrop as the import has made it so far, in order.
func (im *Import) Messages() []store.Message { return im.m.messages }

// readImportJournal reads the journal of the Maildir dir, whose lock the
// caller holds; a missing one has no records.
func readImportJournal(dir string) ([]*importRecord, error) {
	path := filepath.Join(dir, importJournalFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	recs, line := parseImportJournal(data)
	if line > 0 {
		return nil, fmt.Errorf("maildir: the import journal %s is damaged at line %d", path, line)
	}
	if end := bytes.LastIndexByte(data, '\n') + 1; end < len(data) {
		// A line cut short by a crash: its batch never went further
		// (each append is synced before the next step). Cut it off, so
		// that the next append starts a line of its own.
		if err := os.Truncate(path, int64(end)); err != nil {
			return nil, err
		}
		if err := syncFile(path); err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// syncFile fsyncs the file at path.
func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// parseImportJournal parses a journal; bad is the number of the first line
// it cannot read, or 0.
func parseImportJournal(data []byte) (recs []*importRecord, bad int) {
	lines := bytes.Split(data, []byte("\n"))
	lines = lines[:len(lines)-1] // the last is empty, or cut short by a crash
	if len(lines) == 0 || string(lines[0]) != importJournalHead {
		if len(data) == 0 {
			return nil, 0
		}
		return nil, 1
	}
	pending := map[string]*importRecord{}
	for n, line := range lines[1:] {
		fields := bytes.Split(line, []byte(" "))
		switch {
		case len(fields) == 1 && string(fields[0]) == "=":
			for _, r := range pending {
				r.state = recDone
			}
			clear(pending)
		case len(fields) == 2 && string(fields[0]) == "-":
			loc, ok := unescape(fields[1])
			r := pending[string(loc)]
			if !ok || r == nil {
				return nil, n + 2
			}
			r.state = recAbandoned
			delete(pending, string(loc))
		case len(fields) == 7 && string(fields[0]) == "+":
			var dec [6][]byte
			ok := true
			for k, f := range fields[1:] {
				if dec[k], ok = unescape(f); !ok {
					break
				}
			}
			seen, okSeen := parseCount(dec[1])
			sub, name, okLoc := strings.Cut(string(dec[3]), "/")
			if !ok || !okSeen || !okLoc || sub != "cur" && sub != "new" || name == "" ||
				strings.Contains(name, "/") || len(dec[0]) == 0 || len(dec[4]) == 0 || len(dec[5]) == 0 {
				return nil, n + 2
			}
			r := &importRecord{old: string(dec[0]), seen: seen, source: string(dec[2]), sub: sub, name: name,
				from: string(dec[4]), maildir: string(dec[5])}
			recs = append(recs, r)
			pending[r.loc()] = r
		default:
			return nil, n + 2
		}
	}
	return recs, 0
}

// arrangeImported puts the messages of entries that recs imported in the
// order of recs, in the places they hold, and gives those without a first
// retrieval the one recorded at import. It reports whether it changed
// anything.
func arrangeImported(entries []entry, recs []*importRecord) bool {
	if len(recs) == 0 {
		return false
	}
	order := make(map[string]int, len(recs))
	for i, r := range recs {
		// A pending intent's file, if there, was placed by a run that
		// a crash stopped before it said so.
		if r.state != recAbandoned {
			order[baseName(r.name)] = i
		}
	}
	var slots []int
	for i := range entries {
		if _, ok := order[entries[i].base]; ok {
			slots = append(slots, i)
		}
	}
	if len(slots) == 0 {
		return false
	}
	moved := make([]entry, len(slots))
	for k, i := range slots {
		moved[k] = entries[i]
	}
	slices.SortStableFunc(moved, func(a, b entry) int { return order[a.base] - order[b.base] })
	changed := false
	for k, i := range slots {
		e := moved[k]
		if r := recs[order[e.base]]; e.seen == 0 && r.seen > 0 {
			e.seen = r.seen
			changed = true
		}
		changed = changed || entries[i].base != e.base
		entries[i] = e
	}
	return changed
}

// recallImports puts fresh, the messages an Open found that the index did
// not list (all of them when it rebuilds the index), in the order and with
// the first retrievals of the import journal, for those it names. The
// journal is read only when some of them could be imported ones: not when
// all have the names of Pouch's own deliveries. A journal that cannot be
// read leaves the arrival order.
func recallImports(dir string, fresh []entry) {
	if !slices.ContainsFunc(fresh, func(e entry) bool {
		return !ownName(e.base) || strings.Contains(e.base, ",U=")
	}) {
		return
	}
	data, err := os.ReadFile(filepath.Join(dir, importJournalFile))
	if err != nil {
		return
	}
	if recs, bad := parseImportJournal(data); bad == 0 {
		arrangeImported(fresh, recs)
	}
}
