package maildir

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/internal/owner"
	"github.com/pouchmail/pouch/store"
)

// The expunge journal, pouch-expunge, makes a commit all or nothing: the
// files it removes are written to it and synced before the first is
// removed, and the next Open finishes a commit that a crash interrupted.
//
// It is written where the space is already taken, so that a commit that
// only removes mail needs no free space: the file is made journalSize
// octets long, of zeros written and fsynced, when Pouch creates the
// Maildir, or first opens or sweeps it (reserve), and every commit writes
// its journal into it in place and fdatasyncs it. Its format:
//
//	#pouch-expunge 3 STATE LEN HASH     padded with spaces to 63 octets, and LF
//	#hold UNIXTIME                      when the files go into the holding area
//	BASE INODE                          one line per file
//
// BASE is the file's base name, written as in the index (appendEscaped),
// and INODE its inode number, so that only the file the session listed is
// removed, never another file that has, or takes, the same base name. LEN
// is the octet count of the lines after the header and HASH the first 16
// octets of their SHA-256, in hex. STATE is "pending" until the files are
// removed and their directories synced, then "done". A done journal keeps
// its lines: they say which base names the last commit removed, and a file
// found later under one of them is another message, renamed aside at Open
// (twins.go). A header that does not parse, or lines that do not match it,
// are what a write torn by a crash leaves, before anything was removed, and
// read as no journal, as do the zeros of the reserve.
//
// A commit whose journal does not fit grows the file first (fallocate); on
// a full disk, where it cannot, the commit goes in batches of what fits,
// each all or nothing. The file is cut back to journalSize afterwards,
// which leaves its lines unread: the names of such a commit are not kept.
//
// Journals of earlier versions are text files that exist only while a
// commit is pending: "#pouch-expunge 2", then the escaped base names one a
// line (version 2), or the base names as they are (version 1), with
// "#hold UNIXTIME" for the holding area. They are replayed by base name,
// then replaced by a reserve.

const (
	// journalSize is the reserve: one block of the filesystems mail lives
	// on (ext4, XFS; a page of tmpfs), the least that any file with
	// content takes, which holds a commit of about 60 messages named as
	// Pouch and Dovecot name them (a line of 60 to 70 octets each).
	journalSize   = 4096
	journalHeader = 64
	journalMagic  = "#pouch-expunge 3 "
	// journalVersion is the first line of a text journal of version 2,
	// whose names are encoded as in the index (appendEscaped).
	journalVersion = "#pouch-expunge 2"

	statePending = "pending"
	stateDone    = "done"
)

// doomed is one file of a journal: its base name, and its inode number (0
// in a journal of an earlier version: any file of that base name).
type doomed struct {
	base string
	ino  uint64
}

// journal is what a journal file says.
type journal struct {
	pending bool
	keep    bool      // into the holding area
	at      time.Time // with keep: the time of the deletion
	files   []doomed
	lines   []byte // as written, after the header
	legacy  bool   // a text journal of an earlier version
	inodes  map[string][]uint64
}

// has reports whether the journal names a file of this base name and inode.
func (j *journal) has(base string, ino uint64) bool {
	if j.inodes == nil {
		j.inodes = make(map[string][]uint64, len(j.files))
		for _, d := range j.files {
			j.inodes[d.base] = append(j.inodes[d.base], d.ino)
		}
	}
	for _, n := range j.inodes[base] {
		if n == 0 || n == ino {
			return true
		}
	}
	return false
}

// bases returns the base names the journal names.
func (j *journal) bases() map[string]bool {
	if j == nil || len(j.files) == 0 {
		return nil
	}
	m := make(map[string]bool, len(j.files))
	for _, d := range j.files {
		m[d.base] = true
	}
	return m
}

// journalLines returns the lines of a journal, after the header.
func journalLines(keep bool, at time.Time, files []doomed) []byte {
	var b []byte
	if keep {
		b = fmt.Appendf(b, "#hold %d\n", at.Unix())
	}
	for _, d := range files {
		b = appendLine(b, d)
	}
	return b
}

func appendLine(b []byte, d doomed) []byte {
	b = appendEscaped(b, d.base)
	b = append(b, ' ')
	b = strconv.AppendUint(b, d.ino, 10)
	return append(b, '\n')
}

// headerFor returns the header of a journal whose lines are lines.
func headerFor(state string, lines []byte) []byte {
	sum := sha256.Sum256(lines)
	h := make([]byte, 0, journalHeader)
	h = fmt.Appendf(h, "%s%s %d %s", journalMagic, state, len(lines), hex.EncodeToString(sum[:16]))
	for len(h) < journalHeader-1 {
		h = append(h, ' ')
	}
	return append(h, '\n')
}

// parseJournal parses the content of a journal file. It returns nil for no
// journal: an empty file, the reserve's zeros, or a journal of this version
// that a crash tore. It fails only for a text journal of an earlier version
// that is damaged.
func parseJournal(data []byte, path string) (*journal, error) {
	if len(data) == 0 || data[0] == 0 {
		return nil, nil
	}
	if !bytes.HasPrefix(data, []byte(journalMagic)) {
		return parseLegacy(data, path)
	}
	if len(data) < journalHeader || data[journalHeader-1] != '\n' {
		return nil, nil
	}
	fields := bytes.Fields(data[len(journalMagic) : journalHeader-1])
	if len(fields) != 3 {
		return nil, nil
	}
	j := &journal{}
	switch string(fields[0]) {
	case statePending:
		j.pending = true
	case stateDone:
	default:
		return nil, nil
	}
	n, ok := parseCount(fields[1])
	if !ok || n > int64(len(data)-journalHeader) {
		return nil, nil
	}
	lines := data[journalHeader : journalHeader+int(n)]
	sum := sha256.Sum256(lines)
	if hex.EncodeToString(sum[:16]) != string(fields[2]) {
		return nil, nil
	}
	j.lines = lines
	for len(lines) > 0 {
		i := bytes.IndexByte(lines, '\n')
		if i < 0 {
			return nil, nil
		}
		line := lines[:i]
		lines = lines[i+1:]
		if v, ok := bytes.CutPrefix(line, []byte("#hold ")); ok {
			sec, ok := parseCount(v)
			if !ok {
				return nil, nil
			}
			j.keep, j.at = true, time.Unix(sec, 0)
			continue
		}
		b, ino, ok := bytes.Cut(line, []byte(" "))
		if !ok {
			return nil, nil
		}
		base, ok1 := unescape(b)
		inode, err := strconv.ParseUint(string(ino), 10, 64)
		if !ok1 || err != nil || len(base) == 0 {
			return nil, nil
		}
		j.files = append(j.files, doomed{base: string(base), ino: inode})
	}
	return j, nil
}

// parseLegacy parses a text journal of version 1 or 2, pending by its
// presence.
func parseLegacy(data []byte, path string) (*journal, error) {
	j := &journal{pending: true, legacy: true}
	escapedNames := false // version 2; version 1 has the names as they are
	for n, line := range bytes.Split(data, []byte("\n")) {
		damaged := fmt.Errorf("maildir: damaged journal %s: %q", path, line)
		if v, ok := bytes.CutPrefix(line, []byte("#hold ")); ok {
			sec, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				return nil, damaged
			}
			j.keep, j.at = true, time.Unix(sec, 0)
		} else if n == 0 && string(line) == journalVersion {
			escapedNames = true
		} else if len(line) > 0 && escapedNames {
			base, ok := unescape(line)
			if !ok {
				return nil, damaged
			}
			j.files = append(j.files, doomed{base: string(base)})
		} else if len(line) > 0 {
			j.files = append(j.files, doomed{base: string(line)})
		}
	}
	return j, nil
}

// journalFile is an open pouch-expunge, used with plain system calls (as
// message files are: file.go).
type journalFile struct {
	fd   int
	path string
	size int64
}

// openJournal opens the journal of the Maildir dir, creating the file
// (empty) if it is missing, and then syncing dir: a commit's fdatasync of
// the journal would not make the file's name durable, and a commit whose
// journal a crash lost could not be finished.
func openJournal(dir string) (*journalFile, error) {
	path := filepath.Join(dir, expungeFile)
	const flags = syscall.O_RDWR | syscall.O_CLOEXEC | syscall.O_NOFOLLOW
	fd, err := sysOpen(path, flags, 0)
	created := false
	if err == syscall.ENOENT {
		if fd, err = sysOpen(path, flags|syscall.O_CREAT|syscall.O_EXCL, 0o600); err == nil {
			owner.Adopt(path)
			created = true
		} else if err == syscall.EEXIST {
			fd, err = sysOpen(path, flags, 0)
		}
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	j := &journalFile{fd: fd, path: path}
	if created {
		if err := fsx.SyncDir(dir); err != nil {
			j.Close()
			return nil, err
		}
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		j.Close()
		return nil, j.err("fstat", err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		j.Close()
		return nil, j.err("open", errNotFile)
	}
	j.size = st.Size
	return j, nil
}

func sysOpen(path string, flags int, perm uint32) (int, error) {
	for {
		fd, err := syscall.Open(path, flags, perm)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

func (j *journalFile) err(op string, err error) error {
	return &fs.PathError{Op: op, Path: j.path, Err: err}
}

func (j *journalFile) Close() error { return syscall.Close(j.fd) }

// pread reads len(b) octets at off, or up to the end of the file.
func (j *journalFile) pread(b []byte, off int64) (int, error) {
	n := 0
	for n < len(b) {
		m, err := syscall.Pread(j.fd, b[n:], off+int64(n))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return n, j.err("read", err)
		}
		if m == 0 {
			break
		}
		n += m
	}
	return n, nil
}

// pwrite writes b at off.
func (j *journalFile) pwrite(b []byte, off int64) error {
	for len(b) > 0 {
		m, err := syscall.Pwrite(j.fd, b, off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return j.err("write", err)
		}
		b, off = b[m:], off+int64(m)
	}
	return nil
}

func (j *journalFile) datasync() error {
	if err := syscall.Fdatasync(j.fd); err != nil {
		return j.err("fdatasync", err)
	}
	return nil
}

// stat updates size after a write that may have extended the file part way.
func (j *journalFile) stat() {
	var st syscall.Stat_t
	if syscall.Fstat(j.fd, &st) == nil {
		j.size = st.Size
	}
}

// read returns the content of the file that parseJournal needs: the first
// octet when it is a zero (the reserve), the header and the lines it
// counts in this version, all of it in an earlier one.
func (j *journalFile) read() ([]byte, error) {
	var head [journalHeader]byte
	n, err := j.pread(head[:min(j.size, journalHeader)], 0)
	if err != nil || n == 0 || head[0] == 0 {
		return head[:n], err
	}
	size := j.size
	if bytes.HasPrefix(head[:n], []byte(journalMagic)) {
		fields := bytes.Fields(head[len(journalMagic):n])
		if len(fields) < 2 {
			return head[:n], nil
		}
		lines, ok := parseCount(fields[1])
		if !ok {
			return head[:n], nil
		}
		size = min(size, journalHeader+lines)
	}
	buf := make([]byte, size)
	n, err = j.pread(buf, 0)
	return buf[:n], err
}

// reserve makes the file journalSize octets long with zeros written past
// its end, and syncs it, so that the blocks are the file's: writing the
// journal in place later needs no space. It never changes what the file
// holds.
func (j *journalFile) reserve() error {
	if j.size >= journalSize {
		return nil
	}
	if err := j.pwrite(make([]byte, journalSize-j.size), j.size); err != nil {
		j.stat() // keep what was written: the next Open completes it
		return err
	}
	j.size = journalSize
	if err := syscall.Fsync(j.fd); err != nil {
		return j.err("fsync", err)
	}
	return nil
}

// grow makes room for a journal of size octets: with fallocate(2), which
// fails at once when the disk has no room, or where the filesystem does
// not have it, with zeros written past the end.
func (j *journalFile) grow(size int64) error {
	if size <= j.size {
		return nil
	}
	err := syscall.Fallocate(j.fd, 0, 0, size)
	if err == syscall.EOPNOTSUPP {
		err = j.pwrite(make([]byte, size-j.size), j.size)
	} else if err != nil {
		err = j.err("fallocate", err)
	}
	if err != nil {
		j.stat()
		return err
	}
	j.size = size
	return nil
}

// write writes a journal in state with lines, and fdatasyncs it. The file
// must be large enough (grow).
func (j *journalFile) write(state string, lines []byte) error {
	b := append(headerFor(state, lines), lines...)
	if int64(len(b)) > j.size {
		return fmt.Errorf("maildir: journal of %d octets in %s of %d", len(b), j.path, j.size)
	}
	if err := j.pwrite(b, 0); err != nil {
		return err
	}
	return j.datasync()
}

// done marks the journal whose lines are lines as carried out. It is not
// synced: a done journal lost in a crash is replayed, which removes nothing
// (the files are gone, and a file that took one of their names has another
// inode), and Restore, which brings files back, clears it synced first.
func (j *journalFile) done(lines []byte) error {
	return j.pwrite(headerFor(stateDone, lines), 0)
}

// clear makes the file read as no journal, synced.
func (j *journalFile) clear() error {
	if err := j.pwrite(make([]byte, journalHeader), 0); err != nil {
		return err
	}
	return j.datasync()
}

// shrink cuts a file that a large commit grew back to the reserve.
func (j *journalFile) shrink() {
	if j.size > journalSize && syscall.Ftruncate(j.fd, journalSize) == nil {
		j.size = journalSize
	}
}

// noSpace reports whether err says that the disk, or the user's quota, is
// full.
func noSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// reserveJournal makes the journal's reserve in the Maildir dir, if it is
// not there yet, under the maildrop lock so that no commit writes the file
// meanwhile; while a session holds the lock, its Open has done it.
func reserveJournal(dir string) error {
	if fi, err := os.Lstat(filepath.Join(dir, expungeFile)); err == nil && fi.Size() >= journalSize {
		return nil
	}
	lock, err := lockMaildrop(dir)
	if errors.Is(err, store.ErrLocked) {
		return nil
	}
	if err != nil {
		return err
	}
	defer lock.Close()
	j, err := openJournal(dir)
	if err != nil {
		return err
	}
	defer j.Close()
	data, err := j.read()
	if err != nil {
		return err
	}
	if len(data) > 0 && data[0] != 0 && !bytes.HasPrefix(data, []byte(journalMagic)) {
		return nil // a pending journal of an earlier version: Open replays it first
	}
	return j.reserve()
}
