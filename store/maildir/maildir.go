// Package maildir is Pouch's embedded storage backend: one Maildir per user
// (new/ cur/ tmp/, as written by Postfix, Dovecot and any MDA), with an flock for
// the POP3 maildrop lock, a small index of sizes and arrival order beside the
// Maildir, and a deletion journal that makes a QUIT commit all-or-nothing.
//
// Files kept in a user's Maildir besides new/, cur/ and tmp/:
//
//	pouch-lock     flock(2) target for the exclusive maildrop lock (RFC 1939 §4)
//	pouch-index    one line per message: base name, stored size, wire size, first
//	               retrieval (unix seconds, 0 for never), file location; in
//	               arrival order, under a header that says when it can be
//	               trusted without listing the directories (index.go)
//	pouch-expunge  the expunge journal: the files a commit removes, written
//	               in place into space reserved with the Maildir, so that
//	               deleting needs no free space; a pending one is finished
//	               by the next Open (journal.go)
//	pouch-deleted/ the holding area: deleted and expired messages kept for the
//	               policy's deletion window, named "UNIXTIME.SUB.NAME"
//	pouch-hold     present while the maildrop is under legal hold
//	pouch-purge-lock  flock(2) target that orders purges against hold changes
//	pouch-imported the journal of the messages imported from another server
//	               (import.go); pouch-import-tmp/ holds them while they are copied
//
// A message is a regular file of new/ or cur/ whose name does not start with
// "."; anything else there (directories, symbolic links, pipes) is left
// alone. Two files with one base name are two messages, and Open renames
// one aside; two names of one file are one message (twins.go). Files that
// a killed delivery left in tmp/ are removed by the retention sweep once
// unchanged for 36 hours (retention.go).
package maildir

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/internal/owner"
	"github.com/pouchmail/pouch/store"
)

const (
	lockFile    = "pouch-lock"
	indexFile   = "pouch-index"
	expungeFile = "pouch-expunge"
)

// Store keeps each user's Maildir under its root, in its Layout.
type Store struct {
	root   string
	policy func(user string) store.Policy
	now    func() time.Time
	log    *slog.Logger

	layoutOnce sync.Once
	layout     Layout
	layoutErr  error
}

// New returns a Store rooted at root (created on first use), in the layout
// that DetectLayout finds there.
func New(root string) *Store { return &Store{root: root, now: time.Now} }

// NewWithLayout returns a Store rooted at root in the given layout, whatever
// the root's layout file says.
func NewWithLayout(root string, l Layout) *Store {
	return &Store{root: root, now: time.Now, layout: l}
}

// SetPolicy sets the function that gives each user's retention policy; its
// Window decides whether a committed deletion keeps the messages in the
// holding area. Without it, deletions remove messages at once (unless the
// maildrop is under legal hold). Call it before the Store is used.
func (s *Store) SetPolicy(f func(user string) store.Policy) { s.policy = f }

// SetClock replaces time.Now, for tests of time-based policies.
func (s *Store) SetClock(now func() time.Time) { s.now = now }

// SetLogger sets where the Store reports what it skips or cleans up in a
// Maildir: entries of new/ and cur/ that are not message files, and files
// of tmp/ that a delivery left behind. Without it, nothing is reported.
// Call it before the Store is used.
func (s *Store) SetLogger(l *slog.Logger) { s.log = l }

var _ store.Store = (*Store)(nil)
var _ store.Deliverer = (*Store)(nil)

// Create makes user's Maildir (new/, cur/ and tmp/) if it does not exist, so
// that other delivery agents can write into it before the first login.
func (s *Store) Create(user string) error {
	dir, err := s.dir(user)
	if err != nil {
		return err
	}
	return ensure(dir)
}

// ensure creates the Maildir's directories.
func ensure(dir string) error {
	_, err := ensureStamps(dir)
	return err
}

// ensureStamps creates the Maildir's directories that are missing, and
// returns the stamps of cur/ and new/ (without hashes), from the stat that
// tells whether they exist.
// When it creates any, it syncs the directories above them too, so that a
// first delivery acknowledged afterwards does not lose its Maildir in a crash.
func ensureStamps(dir string) (stamps, error) {
	var st stamps
	created := false
	var made []string // directories above the subdirectories that MkdirAll makes
	for _, sub := range []string{"tmp", "new", "cur"} {
		p := filepath.Join(dir, sub)
		dirStats.Add(1)
		var s syscall.Stat_t
		if err := syscall.Stat(p, &s); err == nil {
			if sub != "tmp" {
				*st.of(sub) = dirStamp{mtime: s.Mtim.Nano(), ctime: s.Ctim.Nano(), ino: s.Ino}
			}
			continue
		}
		if _, err := os.Stat(dir); err != nil {
			// The directories above that are missing too: the mail root,
			// a domain's directory.
			for d := dir; ; d = filepath.Dir(d) {
				if _, err := os.Stat(d); err == nil || d == filepath.Dir(d) {
					break
				}
				made = append(made, d)
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return stamps{}, err
			}
			for i := len(made) - 1; i >= 0; i-- {
				owner.Adopt(made[i])
			}
		}
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return stamps{}, err
		}
		owner.Adopt(p)
		created = true
	}
	if !created {
		return st, nil
	}
	// The space that deleting mail needs is taken with the Maildir, before
	// a disk can fill up (journal.go); an Open tries again if it fails.
	_ = reserveJournal(dir)
	// dir holds the new subdirectories, its parent the user's entry, and
	// the parent of each directory that MkdirAll made (a domain's, the
	// mail root) its entry.
	toSync := []string{dir, filepath.Dir(dir)}
	for _, d := range made {
		toSync = append(toSync, filepath.Dir(d))
	}
	for _, d := range slices.Compact(toSync) {
		if err := fsx.SyncDir(d); err != nil {
			return stamps{}, err
		}
	}
	return statDirs(dir)
}

// entry is one message file of a snapshot.
type entry struct {
	base string // unique part of the file name, before ":2,"
	sub  string // "new" or "cur" when scanned
	name string // full file name when scanned
	raw  int64  // stored size
	wire int64  // wire size
	seen int64  // first retrieval, unix seconds; 0: never retrieved
	// extra holds the index columns after the ones this version knows,
	// kept as they are when the index is rewritten.
	extra string
}

// Open locks the user's Maildir, finishes an interrupted commit, and snapshots
// new/ and cur/.
func (s *Store) Open(ctx context.Context, user string) (store.Maildrop, error) {
	dir, err := s.dir(user)
	if err != nil {
		return nil, err
	}
	m, err := s.open(ctx, user, dir)
	if err != nil {
		return nil, err // not a nil *maildrop in the interface
	}
	return m, nil
}

// open is Open of user's Maildir dir.
func (s *Store) open(ctx context.Context, user, dir string) (*maildrop, error) {
	// The lock comes first: the stamps that load takes must show any change
	// that a session holding it made. Only a new user's Maildir is created
	// before it (load creates what else is missing).
	lock, err := lockMaildrop(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := ensure(dir); err != nil {
			return nil, err
		}
		lock, err = lockMaildrop(dir)
	}
	if err != nil {
		return nil, err
	}
	m := &maildrop{store: s, user: user, dir: dir, lock: lock}
	if err := m.load(ctx); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// lockMaildrop takes the maildrop lock of the Maildir dir, or fails at once
// with ErrLocked.
func lockMaildrop(dir string) (*os.File, error) {
	lock, err := owner.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, store.ErrLocked
		}
		return nil, fmt.Errorf("maildir: lock %s: %w", dir, err)
	}
	return lock, nil
}

type maildrop struct {
	store    *Store
	user     string
	dir      string
	lock     *os.File
	entries  []entry
	messages []store.Message
	done     bool
	// removed are the base names that the last commit removed, as its
	// journal says (journal.go).
	removed map[string]bool
}

// load creates the directories that are missing, replays a pending expunge
// journal and builds the snapshot from the index, checked against a listing
// of cur/ and new/ where the directory changed since the index listed it
// (index.go).
func (m *maildrop) load(ctx context.Context) error {
	// The stamps are taken before the listing: a change made after them
	// shows as a change at the next Open. They come from the stat that
	// checks that the directories exist, unless a replay changed them.
	start := time.Now()
	st, err := ensureStamps(m.dir)
	if err != nil {
		return err
	}
	jr, replayed, err := m.replayJournal()
	if err != nil {
		return err
	}
	if replayed {
		start = time.Now()
		if st, err = statDirs(m.dir); err != nil {
			return err
		}
	}
	if jr != nil && !jr.pending {
		m.removed = jr.bases()
	}
	idx, hdr, err := loadIndex(filepath.Join(m.dir, indexFile))
	if err != nil {
		return err
	}
	trustCur, trustNew := hdr.trusted(st, idx)
	if trustCur && trustNew {
		if hdr.version != 3 {
			// Written by an earlier version: in this version's format from
			// now on, with the same lines (so the same order and UIDs).
			_ = storeIndex(m.dir, idx, nil)
		}
		m.setEntries(idx)
		return nil
	}
	// List the directories that changed; the lines of the others stand.
	trusted := func(sub string) bool { return sub == "cur" && trustCur || sub == "new" && trustNew }
	scanned := make(map[string]entry)
	var twins []entry // files with the base name of another (twins.go)
	var skipped []string
	for _, sub := range subdirs {
		if !trusted(sub) {
			listings.Add(1)
			if err := list(scanned, &twins, m.dir, sub, &skipped); err != nil {
				return err
			}
		}
	}
	m.store.skipped(m.user, skipped)
	// A file named as a message that the last commit removed is another
	// message.
	for base := range m.removed {
		if f, ok := scanned[base]; ok {
			twins = append(twins, f)
			delete(scanned, base)
		}
	}
	// Known messages keep their index order; the rest follow in delivery order.
	known := make([]entry, 0, len(idx))
	var fresh []entry
	moved := false // a known file has another name or directory than indexed
	for _, e := range idx {
		f, ok := scanned[e.base]
		switch {
		case trusted(e.sub) && ok:
			// e's directory did not change, so its file is still there:
			// the one listed in the other directory is another file.
			twins = append(twins, f)
			f = e
		case trusted(e.sub):
			f, ok = e, true
		case ok:
			if f.sub != e.sub || f.name != e.name {
				// The file the index knew keeps the name, if it is among
				// several that have it.
				for i, t := range twins {
					if t.sub == e.sub && t.name == e.name {
						twins[i], f = f, t
						break
					}
				}
			}
			moved = moved || f.sub != e.sub || f.name != e.name
			f.raw, f.wire, f.seen, f.extra = e.raw, e.wire, e.seen, e.extra
		}
		if ok {
			known = append(known, f)
			delete(scanned, e.base)
		}
	}
	for _, f := range scanned {
		fresh = append(fresh, f)
	}
	if len(twins) > 0 {
		keepers := make(map[string]entry, len(twins))
		for _, t := range twins {
			keepers[t.base] = entry{}
		}
		for _, e := range slices.Concat(known, fresh) {
			if _, ok := keepers[e.base]; ok {
				keepers[e.base] = e
			}
		}
		fresh = append(fresh, m.renameTwins(twins, keepers)...)
	}
	changed := len(known) != len(idx) || moved || hdr.version != 3
	fresh = sortArrival(m.dir, fresh)
	recallImports(m.dir, fresh) // import.go
	for i := range fresh {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := sizeOf(m.dir, &fresh[i]); err != nil {
			if gone(err) {
				fresh[i].base = "" // removed or replaced by someone else meanwhile
				continue
			}
			return err
		}
		changed = true
	}
	m.entries = known
	for _, f := range fresh {
		if f.base != "" {
			m.entries = append(m.entries, f)
		}
	}
	// The index is a cache: failing to write it costs time at the next
	// login, never correctness. It records a directory's stamp only once
	// the directory has settled; until then every Open lists it.
	var rec stamps
	newStamp := false
	for _, sub := range subdirs {
		if d := *st.of(sub); d.settled(start) {
			*rec.of(sub) = d
			newStamp = newStamp || !hdr.stamps.of(sub).same(d)
		}
	}
	if changed || newStamp {
		_ = storeIndex(m.dir, m.entries, &rec)
	}
	m.setEntries(m.entries)
	return nil
}

// setEntries makes entries the snapshot.
func (m *maildrop) setEntries(entries []entry) {
	m.entries = entries
	m.messages = make([]store.Message, len(entries))
	for i, e := range entries {
		m.messages[i] = store.Message{UID: uidOf(e.base), Size: e.wire}
	}
}

// scan lists the message files of new/ and cur/: a file whose base name
// another has too is listed as well (Open renames it aside: twins.go).
func scan(dir string) ([]entry, error) {
	found := make(map[string]entry)
	var out []entry
	for _, sub := range subdirs {
		if err := list(found, &out, dir, sub, nil); err != nil {
			return nil, err
		}
	}
	for _, e := range found {
		out = append(out, e)
	}
	return out, nil
}

// skipped reports, once for a listing, the entries of user's new/ and cur/
// that are not message files (directories, symbolic links, pipes...).
func (s *Store) skipped(user string, names []string) {
	if len(names) == 0 || s.log == nil {
		return
	}
	const shown = 5
	s.log.Warn("maildir: ignoring entries that are not regular files", "user", user,
		"count", len(names), "names", names[:min(len(names), shown)])
}

// baseName strips the Maildir info part (":2,FLAGS") from a file name.
func baseName(name string) string {
	if i := strings.IndexByte(name, ':'); i >= 0 {
		return name[:i]
	}
	return name
}

// uidOf derives the UIDL from a base name: the UIDL an import kept in it
// (keptUID), or the name itself when it is a valid unique-id (RFC 1939 §7),
// otherwise a digest of it. Either way it depends only on the base name,
// which Maildir keeps for the life of the message.
func uidOf(base string) string {
	if u, ok := keptUID(base); ok {
		return u // an imported UIDL (import.go)
	}
	if store.ValidUID(base) {
		return base
	}
	sum := sha256.Sum256([]byte(base))
	return "H" + hex.EncodeToString(sum[:24])
}

// field returns the value of a ",K=V" field of a Maildir base name.
func field(base, key string) (int64, bool) {
	for _, part := range strings.Split(base, ",")[1:] {
		if v, ok := strings.CutPrefix(part, key+"="); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			return n, err == nil && n >= 0
		}
	}
	return 0, false
}

// errNotFile is the error for a message that turns out not to be a regular
// file (replaced by a directory or a link since it was listed).
var errNotFile = errors.New("maildir: not a regular file")

// gone reports whether err says that a listed message is no longer there
// as a message file.
func gone(err error) bool { return errors.Is(err, fs.ErrNotExist) || errors.Is(err, errNotFile) }

// sizeOf fills in the sizes of a message not in the index. The ",S=" and
// ",W=" fields of a name that Pouch's delivery wrote (ownName) give them as
// they are. Dovecot writes ",W=" too, but does not count the CRLF that the
// wire form adds after a last line without a line end (store.SizeCounter):
// for other names the file's size must match ",S=" and its last octet says
// whether to add it. Without the fields, the message is read.
func sizeOf(dir string, e *entry) error {
	w, hasW := field(e.base, "W")
	if hasW && ownName(e.base) {
		e.wire = w
		if s, ok := field(e.base, "S"); ok {
			e.raw = s
		}
		return nil
	}
	path := filepath.Join(dir, e.sub, e.name)
	f, err := openFile(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(f.fd, &st); err != nil {
		return &fs.PathError{Op: "fstat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return &fs.PathError{Op: "open", Path: path, Err: errNotFile}
	}
	if hasW && st.Size > 0 && w >= st.Size {
		s, hasS := field(e.base, "S")
		if !hasS || s == st.Size {
			var last [1]byte
			n, err := syscall.Pread(f.fd, last[:], st.Size-1)
			if err == nil && n == 1 {
				e.raw, e.wire = st.Size, w
				if last[0] != '\n' {
					e.wire += 2
				}
				return nil
			}
		}
	}
	e.raw, e.wire, err = store.CanonicalSize(f)
	return err
}

// ownName reports whether base is a name that Pouch's delivery (and its
// fetch client's Maildir delivery) writes: "SEC.M<usec, 6 digits>P<pid>Q<n>.HOST,S=RAW,W=WIRE",
// maybe followed by more ",K=V" fields. HOST has "," encoded (hostname).
func ownName(base string) bool {
	s := base
	digits := func(min, max int) bool {
		n := 0
		for n < len(s) && n < max && s[n] >= '0' && s[n] <= '9' {
			n++
		}
		s = s[n:]
		return n >= min
	}
	lit := func(p string) bool {
		var ok bool
		s, ok = strings.CutPrefix(s, p)
		return ok
	}
	if !digits(1, 20) || !lit(".M") || !digits(6, 6) || !lit("P") || !digits(1, 20) ||
		!lit("Q") || !digits(1, 20) || !lit(".") {
		return false
	}
	host, fields, ok := strings.Cut(s, ",")
	if !ok || host == "" {
		return false
	}
	s = fields
	if !lit("S=") || !digits(1, 20) || !lit(",W=") || !digits(1, 20) {
		return false
	}
	return s == "" || s[0] == ','
}

// arrival parses the delivery time at the start of a Maildir base name,
// "SECONDS.UNIQUE.HOST" as the Maildir specification has delivery agents
// write it. UNIQUE is digits and "_" (qmail's process id, mbsync's
// "<pid>_<n>"), then a run of fields, each an upper-case letter or "#"
// followed by digits, lower-case hex digits or "_": Pouch's and Dovecot's
// "M<usec>P<pid>...", Postfix's "V<dev>I<inode>M<usec>", Courier's
// "M<usec>P<pid>_<n>", "P<pid>...". SECONDS may be followed by "_<n>"
// (OfflineIMAP). usec is the M field's, if any. ok is false for other
// names, whose delivery time is not known from the name.
func arrival(base string) (sec, usec int64, ok bool) {
	head, rest, found := strings.Cut(base, ".")
	head, count, _ := strings.Cut(head, "_")
	if !found || len(head) > 12 || !allDigits(head) || count != "" && !allDigits(count) {
		return 0, 0, false
	}
	unique, _, found := strings.Cut(rest, ".")
	if !found || unique == "" {
		return 0, 0, false
	}
	sec, _ = strconv.ParseInt(head, 10, 64)
	i := 0
	for i < len(unique) && (unique[i] >= '0' && unique[i] <= '9' || unique[i] == '_') {
		i++
	}
	for i < len(unique) {
		if c := unique[i]; !(c >= 'A' && c <= 'Z' || c == '#') {
			return 0, 0, false
		}
		j := i + 1
		for j < len(unique) && (unique[j] >= '0' && unique[j] <= '9' || unique[j] >= 'a' && unique[j] <= 'f' || unique[j] == '_') {
			j++
		}
		if j == i+1 {
			return 0, 0, false
		}
		if v := unique[i+1 : j]; unique[i] == 'M' && len(v) <= 6 && allDigits(v) {
			usec, _ = strconv.ParseInt(v, 10, 64)
		}
		i = j
	}
	return sec, usec, true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// readIndex reads pouch-index (index.go). A missing or damaged index reads as
// empty (it is rebuilt from the files).
func readIndex(path string) ([]entry, error) {
	idx, _, err := loadIndex(path)
	return idx, err
}

// writeIndex replaces pouch-index atomically with entries. The index stays
// trusted without a listing of the directories if it was, and entries are
// the same files as before (only sizes or retrieval times changed).
func writeIndex(dir string, entries []entry) error {
	return storeIndex(dir, entries, nil)
}

// writeFileAtomic replaces dir/name with data (fsx.WriteFile), the file
// given to the Maildir's owner.
func writeFileAtomic(dir, name string, data []byte) error {
	return fsx.WriteFile(filepath.Join(dir, name), data, fsx.Options{Perm: 0o600, Owner: fsx.OwnDir})
}

func (m *maildrop) Messages() []store.Message { return m.messages }

// Open opens message i. If another program renamed the file since the snapshot
// (flags changed, or moved from new/ to cur/), it is found again by base name.
func (m *maildrop) Open(i int) (io.ReadCloser, error) {
	if i < 0 || i >= len(m.entries) {
		return nil, store.ErrNotFound
	}
	e := &m.entries[i]
	f, err := openFile(filepath.Join(m.dir, e.sub, e.name))
	if errors.Is(err, fs.ErrNotExist) {
		if m.relocate(e) {
			f, err = openFile(filepath.Join(m.dir, e.sub, e.name))
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return readCloser{store.NewCanonicalReader(f), f}, nil
}

// readCloser is a message in wire form, and as stored (store.StoredReader).
type readCloser struct {
	io.Reader
	f *file
}

func (r readCloser) Close() error { return r.f.Close() }

// Stored returns the message file as stored.
func (r readCloser) Stored() io.Reader { return r.f }

// Commit removes the given messages. Their files' base names and inode
// numbers are first written to the expunge journal and synced: from that
// moment the deletion is decided, and an interrupted commit is completed by
// the next Open. Then the files are unlinked (or moved into the holding
// area, when the user's policy has a deletion window or the maildrop is
// under legal hold), the directories synced and the journal marked done
// (commit.go).
func (m *maildrop) Commit(deleted []int) error {
	if m.done {
		return errors.New("maildir: commit after commit or close")
	}
	m.done = true
	if len(deleted) == 0 {
		return nil
	}
	for _, i := range deleted {
		if i < 0 || i >= len(m.entries) {
			return store.ErrNotFound
		}
	}
	unlock, err := purgeLock(m.dir, syscall.LOCK_SH)
	if err != nil {
		return err
	}
	defer unlock()
	keep := m.store.policyOf(m.user).Window > 0
	if !keep {
		h, err := readHold(m.dir)
		if err != nil {
			return err
		}
		keep = h.Set
	}
	return m.remove(deleted, keep, m.store.now())
}

// policyOf returns user's retention policy.
func (s *Store) policyOf(user string) store.Policy {
	if s.policy == nil {
		return store.Policy{}
	}
	return s.policy(user)
}

// Close releases the lock.
func (m *maildrop) Close() error {
	m.done = true
	if m.lock == nil {
		return nil
	}
	err := m.lock.Close() // closing the descriptor drops the flock
	m.lock = nil
	return err
}

// Deliver writes a message into user's new/ as a Delivery (tmp/, fsync,
// rename into new/, fsync new/). The name carries ",S=" and ",W=" so that
// the sizes are known without reading the file.
func (s *Store) Deliver(ctx context.Context, user string, r io.Reader) error {
	dir, err := s.dir(user)
	if err != nil {
		return err
	}
	if err := ensure(dir); err != nil {
		return err
	}
	d, err := NewDelivery(dir, s.now(), "")
	if err != nil {
		return err
	}
	defer d.Abort()
	if _, err := io.Copy(d, store.ContextReader(ctx, r)); err != nil {
		return err
	}
	if _, err := d.Commit(""); err != nil {
		return err
	}
	return SyncNew(dir)
}
