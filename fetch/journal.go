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
	"time"

	"golang.org/x/sys/unix"

	"github.com/pouchmail/pouch/internal/crashpoint"
)

// journalHeader is the first line of every journal file.
const journalHeader = "pouch-fetch-journal 1\n"

// Journal is an account's state: the UIDLs already downloaded, each with the
// time it was first downloaded. It is an append-only text file,
//
//	pouch-fetch-journal 1
//	<unix-seconds> SP <uidl> LF
//	...
//
// written with one fdatasync per commit, and compacted (written to a temporary
// file, synced, renamed over the journal, directory synced) when UIDLs vanish
// from the server or dead lines pile up. A line torn by a crash has no LF and
// is dropped when the journal is opened. The first line for a UIDL wins.
//
// The journal holds the account lock (flock on NAME.lock) while open, so two
// runs for one account cannot overlap; the kernel drops it if the process dies.
type Journal struct {
	dir, name string
	f         *os.File
	lock      *os.File
	seen      map[string]int64
	lines     int
	buf       []byte
	readOnly  bool
}

// ErrLocked is returned when another run holds the account lock.
var ErrLocked = errors.New("another pouch fetch is running for this account")

// OpenJournal takes the lock and loads dir/name.journal, creating the
// directory and the file if needed. readOnly (for --dry-run) never writes.
func OpenJournal(dir, name string, readOnly bool) (*Journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
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
	j := &Journal{dir: dir, name: name, lock: lock, seen: map[string]int64{}, readOnly: readOnly}
	if err := j.load(); err != nil {
		lock.Close()
		return nil, err
	}
	return j, nil
}

func (j *Journal) path() string { return filepath.Join(j.dir, j.name+".journal") }

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
	if !bytes.HasPrefix(data, []byte(journalHeader)) {
		if len(data) < len(journalHeader) && bytes.HasPrefix([]byte(journalHeader), data) {
			// A crash while creating it: nothing was recorded yet.
			if j.readOnly {
				return nil
			}
			return j.rewrite()
		}
		return fmt.Errorf("state journal %s: not a pouch fetch journal", j.path())
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
		ts, uid, ok := bytes.Cut(line, []byte(" "))
		t, err := strconv.ParseInt(string(ts), 10, 64)
		if !ok || err != nil || len(uid) == 0 {
			return fmt.Errorf("state journal %s: bad line %q", j.path(), line)
		}
		j.lines++
		if _, dup := j.seen[string(uid)]; !dup {
			j.seen[string(uid)] = t
		}
	}
	if j.readOnly {
		return nil
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
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return err
	}
	j.f = f
	return nil
}

// Len returns the number of UIDLs recorded.
func (j *Journal) Len() int { return len(j.seen) }

// Seen returns when uid was first downloaded, if it was.
func (j *Journal) Seen(uid string) (time.Time, bool) {
	t, ok := j.seen[uid]
	return time.Unix(t, 0), ok
}

// Add records uid as downloaded at t; it is durable after Sync.
func (j *Journal) Add(uid string, t time.Time) {
	if _, ok := j.seen[uid]; ok {
		return
	}
	j.seen[uid] = t.Unix()
	j.buf = strconv.AppendInt(j.buf, t.Unix(), 10)
	j.buf = append(j.buf, ' ')
	j.buf = append(j.buf, uid...)
	j.buf = append(j.buf, '\n')
	j.lines++
}

// Sync writes what Add recorded and waits until it is on disk.
func (j *Journal) Sync() error {
	if len(j.buf) == 0 || j.readOnly {
		j.buf = j.buf[:0]
		return nil
	}
	if _, err := j.f.Write(j.buf); err != nil {
		return fmt.Errorf("state journal: %w", err)
	}
	j.buf = j.buf[:0]
	if err := unix.Fdatasync(int(j.f.Fd())); err != nil {
		return fmt.Errorf("state journal: fsync: %w", err)
	}
	return nil
}

// Prune forgets the UIDLs not in present (they left the server) and compacts
// the journal when that or duplicate lines make it worth it.
func (j *Journal) Prune(present map[string]bool) error {
	removed := 0
	for uid := range j.seen {
		if !present[uid] {
			delete(j.seen, uid)
			removed++
		}
	}
	if j.readOnly || (removed == 0 && j.lines <= 2*len(j.seen)+1024) {
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
	tmp, err := os.CreateTemp(j.dir, j.name+".journal.tmp*")
	if err != nil {
		return fmt.Errorf("state journal: %w", err)
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	w.WriteString(journalHeader)
	for uid, t := range j.seen {
		fmt.Fprintf(w, "%d %s\n", t, uid)
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
	if err := syncDir(j.dir); err != nil {
		tmp.Close()
		return err
	}
	if j.f != nil {
		j.f.Close()
	}
	j.f = tmp
	j.lines = len(j.seen)
	_, err = tmp.Seek(0, io.SeekEnd)
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
