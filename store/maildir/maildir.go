// Package maildir is Pouch's embedded storage backend: one Maildir per user
// (new/ cur/ tmp/, as written by Postfix, Dovecot and any MDA), with an flock for
// the POP3 maildrop lock, a small index of sizes and arrival order beside the
// Maildir, and a deletion journal that makes a QUIT commit all-or-nothing.
//
// Files kept in a user's Maildir besides new/, cur/ and tmp/:
//
//	pouch-lock     flock(2) target for the exclusive maildrop lock (RFC 1939 §4)
//	pouch-index    one line per message: base name, stored size, wire size; in arrival order
//	pouch-expunge  the deletions of a QUIT being committed (replayed by the next Open)
package maildir

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/store"
)

const (
	lockFile    = "pouch-lock"
	indexFile   = "pouch-index"
	expungeFile = "pouch-expunge"
	maxUIDLen   = 70 // RFC 1939 §7
)

// Store keeps each user's Maildir in Root/USER.
type Store struct {
	root string
}

// New returns a Store rooted at root (created on first use).
func New(root string) *Store { return &Store{root: root} }

var _ store.Store = (*Store)(nil)
var _ store.Deliverer = (*Store)(nil)

// dir returns the user's Maildir, refusing names that could leave the root.
func (s *Store) dir(user string) (string, error) {
	if user == "" || len(user) > 255 || strings.HasPrefix(user, ".") || !utf8.ValidString(user) ||
		strings.ContainsAny(user, "/\\\x00") {
		return "", store.ErrBadUser
	}
	return filepath.Join(s.root, user), nil
}

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
// When it creates any, it syncs the directories above them too, so that a
// first delivery acknowledged afterwards does not lose its Maildir in a crash.
func ensure(dir string) error {
	created := false
	for _, sub := range []string{"tmp", "new", "cur"} {
		p := filepath.Join(dir, sub)
		if _, err := os.Stat(p); err == nil {
			continue
		}
		if err := os.MkdirAll(p, 0o700); err != nil {
			return err
		}
		created = true
	}
	if !created {
		return nil
	}
	// dir holds the new subdirectories, its parent the user's entry, and the
	// grandparent the mail root's entry, should MkdirAll have made it.
	for _, d := range []string{dir, filepath.Dir(dir), filepath.Dir(filepath.Dir(dir))} {
		if err := syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// entry is one message file of a snapshot.
type entry struct {
	base string // unique part of the file name, before ":2,"
	sub  string // "new" or "cur" when scanned
	name string // full file name when scanned
	raw  int64  // stored size
	wire int64  // wire size
}

// Open locks the user's Maildir, finishes an interrupted commit, and snapshots
// new/ and cur/.
func (s *Store) Open(ctx context.Context, user string) (store.Maildrop, error) {
	dir, err := s.dir(user)
	if err != nil {
		return nil, err
	}
	if err := ensure(dir); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
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
	m := &maildrop{dir: dir, lock: lock}
	if err := m.load(ctx); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

type maildrop struct {
	dir      string
	lock     *os.File
	entries  []entry
	messages []store.Message
	done     bool
}

// load replays a pending expunge journal and builds the snapshot.
func (m *maildrop) load(ctx context.Context) error {
	if err := m.replayExpunge(); err != nil {
		return err
	}
	scanned, err := scan(m.dir)
	if err != nil {
		return err
	}
	idx, err := readIndex(filepath.Join(m.dir, indexFile))
	if err != nil {
		return err
	}
	// Known messages keep their index order; the rest follow in delivery order.
	var known, fresh []entry
	for _, e := range idx {
		if f, ok := scanned[e.base]; ok {
			f.raw, f.wire = e.raw, e.wire
			known = append(known, f)
			delete(scanned, e.base)
		}
	}
	changed := len(known) != len(idx)
	for _, f := range scanned {
		fresh = append(fresh, f)
	}
	slices.SortFunc(fresh, compareArrival)
	for i := range fresh {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := sizeOf(m.dir, &fresh[i]); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				fresh[i].base = "" // removed by someone else meanwhile
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
	if changed {
		// The index is a cache: failing to write it costs time at the next
		// login, never correctness.
		_ = writeIndex(m.dir, m.entries)
	}
	m.messages = make([]store.Message, len(m.entries))
	for i, e := range m.entries {
		m.messages[i] = store.Message{UID: uidOf(e.base), Size: e.wire}
	}
	return nil
}

// scan lists the message files of new/ and cur/ by base name.
func scan(dir string) (map[string]entry, error) {
	found := make(map[string]entry)
	for _, sub := range []string{"cur", "new"} {
		f, err := os.Open(filepath.Join(dir, sub))
		if err != nil {
			return nil, err
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return nil, err
		}
		for _, name := range names {
			if name == "" || name[0] == '.' {
				continue
			}
			base := baseName(name)
			if _, dup := found[base]; dup {
				continue // cur/ wins over a stale copy in new/
			}
			found[base] = entry{base: base, sub: sub, name: name}
		}
	}
	return found, nil
}

// baseName strips the Maildir info part (":2,FLAGS") from a file name.
func baseName(name string) string {
	if i := strings.IndexByte(name, ':'); i >= 0 {
		return name[:i]
	}
	return name
}

// uidOf derives the UIDL from a base name: the name itself when it is a valid
// unique-id (RFC 1939 §7), otherwise a digest of it. Either way it depends only
// on the base name, which Maildir keeps for the life of the message.
func uidOf(base string) string {
	if len(base) <= maxUIDLen {
		ok := true
		for i := 0; i < len(base); i++ {
			if base[i] < 0x21 || base[i] > 0x7e {
				ok = false
				break
			}
		}
		if ok {
			return base
		}
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

// sizeOf fills in the sizes of a message not in the index: from the ",W="
// (and ",S=") fields of its name when present, otherwise by reading it.
func sizeOf(dir string, e *entry) error {
	if w, ok := field(e.base, "W"); ok {
		e.wire = w
		if s, ok := field(e.base, "S"); ok {
			e.raw = s
		}
		return nil
	}
	f, err := os.Open(filepath.Join(dir, e.sub, e.name))
	if err != nil {
		return err
	}
	defer f.Close()
	e.raw, e.wire, err = store.CanonicalSize(f)
	return err
}

// compareArrival orders message files by the delivery time at the start of
// their names ("SECONDS.M<usec>..."), then by name.
func compareArrival(a, b entry) int {
	as, au := arrival(a.base)
	bs, bu := arrival(b.base)
	if as != bs {
		return cmpInt(as, bs)
	}
	if au != bu {
		return cmpInt(au, bu)
	}
	return strings.Compare(a.base, b.base)
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// arrival parses "SECONDS.M<usec>" or "SECONDS.<anything>" from a base name.
func arrival(base string) (sec, usec int64) {
	head, rest, _ := strings.Cut(base, ".")
	sec, err := strconv.ParseInt(head, 10, 64)
	if err != nil {
		return 1<<62 - 1, 0 // unknown time: after every dated message
	}
	if strings.HasPrefix(rest, "M") {
		end := 1
		for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
			end++
		}
		usec, _ = strconv.ParseInt(rest[1:end], 10, 64)
	}
	return sec, usec
}

// readIndex reads pouch-index. A missing or damaged index reads as empty (it is
// rebuilt from the files).
func readIndex(path string) ([]entry, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	for sc.Scan() {
		parts := strings.Split(sc.Text(), " ")
		if len(parts) != 3 {
			return nil, nil
		}
		raw, err1 := strconv.ParseInt(parts[1], 10, 64)
		wire, err2 := strconv.ParseInt(parts[2], 10, 64)
		if err1 != nil || err2 != nil || raw < 0 || wire < 0 {
			return nil, nil
		}
		out = append(out, entry{base: parts[0], raw: raw, wire: wire})
	}
	if sc.Err() != nil {
		return nil, nil
	}
	return out, nil
}

// writeIndex replaces pouch-index atomically.
func writeIndex(dir string, entries []entry) error {
	var b strings.Builder
	for _, e := range entries {
		fmt.Fprintf(&b, "%s %d %d\n", e.base, e.raw, e.wire)
	}
	return writeFileAtomic(dir, indexFile, []byte(b.String()))
}

// writeFileAtomic writes dir/name through a temporary file, fsyncs it, renames
// it into place and fsyncs dir.
func writeFileAtomic(dir, name string, data []byte) error {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
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

type readCloser struct {
	io.Reader
	io.Closer
}

// relocate finds e's file again by its base name.
func (m *maildrop) relocate(e *entry) bool {
	for _, sub := range []string{"cur", "new"} {
		names, err := readNames(filepath.Join(m.dir, sub))
		if err != nil {
			continue
		}
		for _, name := range names {
			if baseName(name) == e.base {
				e.sub, e.name = sub, name
				return true
			}
		}
	}
	return false
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// Commit removes the given messages. The base names are first written to the
// expunge journal and synced: from that moment the deletion is decided, and an
// interrupted commit is completed by the next Open. Then the files are unlinked,
// the directories synced and the journal removed.
func (m *maildrop) Commit(deleted []int) error {
	if m.done {
		return errors.New("maildir: commit after commit or close")
	}
	m.done = true
	if len(deleted) == 0 {
		return nil
	}
	var b strings.Builder
	for _, i := range deleted {
		if i < 0 || i >= len(m.entries) {
			return store.ErrNotFound
		}
		b.WriteString(m.entries[i].base)
		b.WriteByte('\n')
	}
	crashpoint.Hit("maildir.commit.before-journal")
	if err := writeFileAtomic(m.dir, expungeFile, []byte(b.String())); err != nil {
		return err
	}
	crashpoint.Hit("maildir.commit.journaled")
	for n, i := range deleted {
		e := &m.entries[i]
		err := os.Remove(filepath.Join(m.dir, e.sub, e.name))
		if errors.Is(err, fs.ErrNotExist) && m.relocate(e) {
			err = os.Remove(filepath.Join(m.dir, e.sub, e.name))
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err // the journal stays; the next Open finishes the job
		}
		if n == 0 {
			crashpoint.Hit("maildir.commit.first-unlinked")
		}
	}
	return m.finishExpunge()
}

// finishExpunge syncs the directories after the unlinks and drops the journal.
func (m *maildrop) finishExpunge() error {
	for _, sub := range []string{"cur", "new"} {
		if err := syncDir(filepath.Join(m.dir, sub)); err != nil {
			return err
		}
	}
	if err := os.Remove(filepath.Join(m.dir, expungeFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(m.dir)
}

// replayExpunge completes a commit that a crash interrupted.
func (m *maildrop) replayExpunge() error {
	data, err := os.ReadFile(filepath.Join(m.dir, expungeFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	doomed := make(map[string]bool)
	for _, base := range strings.Split(string(data), "\n") {
		if base != "" {
			doomed[base] = true
		}
	}
	for _, sub := range []string{"cur", "new"} {
		names, err := readNames(filepath.Join(m.dir, sub))
		if err != nil {
			return err
		}
		for _, name := range names {
			if doomed[baseName(name)] {
				if err := os.Remove(filepath.Join(m.dir, sub, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
					return err
				}
			}
		}
	}
	return m.finishExpunge()
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

// Deliver writes a message into user's new/ (Maildir delivery: tmp/, fsync,
// rename into new/, fsync new/). The name carries ",S=" and ",W=" so that the
// sizes are known without reading the file.
func (s *Store) Deliver(ctx context.Context, user string, r io.Reader) error {
	dir, err := s.dir(user)
	if err != nil {
		return err
	}
	if err := ensure(dir); err != nil {
		return err
	}
	now := time.Now()
	unique := fmt.Sprintf("%d.M%06dP%dQ%d.%s", now.Unix(), now.Nanosecond()/1000, os.Getpid(),
		deliveries.Add(1), hostname())
	tmpPath := filepath.Join(dir, "tmp", unique)
	f, err := os.OpenFile(tmpPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmpPath)
		}
	}()
	var size store.SizeCounter
	if _, err := io.Copy(io.MultiWriter(f, &size), contextReader{ctx, r}); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	name := fmt.Sprintf("%s,S=%d,W=%d", unique, size.Raw(), size.Wire())
	crashpoint.Hit("maildir.deliver.synced")
	if err := os.Rename(tmpPath, filepath.Join(dir, "new", name)); err != nil {
		return err
	}
	ok = true
	return syncDir(filepath.Join(dir, "new"))
}

var deliveries atomic.Uint64

// hostname returns the host name for Maildir file names, with "/" and ":"
// encoded as the Maildir specification asks.
func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "localhost"
	}
	return strings.NewReplacer("/", `\057`, ":", `\072`, ",", `\054`).Replace(h)
}

// contextReader stops a copy when ctx is done.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
