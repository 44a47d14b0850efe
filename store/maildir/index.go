package maildir

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// The index, pouch-index, is a cache of what Open would otherwise learn from
// the directories and the files:
//
//	#pouch-index 3 cur=MTIME,CTIME,INODE,HASH new=MTIME,CTIME,INODE,HASH
//	BASE RAW WIRE SEEN LOC [MORE...]
//
// One line per message, in arrival order: the base name, the stored and wire
// sizes, the first retrieval (unix seconds, 0 for never), and LOC, where the
// file is: its directory and the rest of its name after BASE ("cur:2,S",
// "new"). Columns after LOC are kept as they are when the index is rewritten.
// In BASE and LOC, the octets a file name may hold that would break a line
// into other columns or lines (0x00-0x20, "%" and 0x7F) are written "%XX",
// two upper-case hex digits.
//
// A directory's stamp is its modification and change times (nanoseconds)
// and inode number when it was listed for the lines below, and HASH
// identifies the lines of that directory. Creating, renaming or removing a
// file in a directory changes both its times, and a change time cannot be
// set back, so while a directory still has its recorded stamp the lines
// are still its listing, and Open takes them without reading it: opening a
// maildrop whose directories did not change reads no directory, and after a
// delivery, which changes only new/, Open reads only new/, however many
// files cur/ holds. A stamp is recorded only when the directory's times are
// more than trustMargin older than the moment the listing began, so that a
// change made during the listing, within the same tick of the filesystem's
// clock, cannot leave the times as recorded. A directory without a stamp is
// listed at every Open.
//
// Version 2 ("#pouch-index 2") is the same without the %XX encoding: its
// names are read as written, and a line whose name holds a space is split
// at its last four columns. An index without a header, as earlier versions
// wrote it, has lines "BASE RAW WIRE" or "BASE RAW WIRE SEEN". Either is
// read, checked against the directories where their stamps say so, and
// replaced by a version 3 index the next time the index is written. An
// index of a later version reads as missing, and is rebuilt.

const (
	indexVersion  = "#pouch-index 3"
	indexVersion2 = "#pouch-index 2"
)

// trustMargin is how much older than the listing a directory's times must
// be for the index to record them: at least the granularity of the
// timestamps of any filesystem a Maildir lives on (2 s on FAT, a clock tick
// or less elsewhere). Only a system clock set back by more than this, on a
// filesystem with coarse timestamps, could give a later change the very
// times recorded. Tests shorten it.
var trustMargin = 2 * time.Second

// listings counts the directories that Opens listed, and dirStats the
// directories of a Maildir they stat, for tests.
var listings, dirStats atomic.Int64

// dirStamp is what changes when a directory's entries change, and the
// listHash of its lines in the index.
type dirStamp struct {
	mtime, ctime int64 // nanoseconds since 1970
	ino          uint64
	set          uint64
}

func (d dirStamp) valid() bool { return d.ino != 0 }

// same reports whether d and e are the same state of a directory.
func (d dirStamp) same(e dirStamp) bool {
	return d.valid() && d.mtime == e.mtime && d.ctime == e.ctime && d.ino == e.ino
}

// settled reports whether the directory last changed more than trustMargin
// before t.
func (d dirStamp) settled(t time.Time) bool {
	limit := t.Add(-trustMargin).UnixNano()
	return d.valid() && d.mtime < limit && d.ctime < limit
}

// stamps are cur/'s and new/'s; a zero dirStamp is "none".
type stamps struct{ cur, new dirStamp }

// of returns the stamp of sub ("cur" or "new").
func (s *stamps) of(sub string) *dirStamp {
	if sub == "cur" {
		return &s.cur
	}
	return &s.new
}

// subdirs are the directories of a snapshot, in the order they are listed:
// a base name in both is taken from cur/.
var subdirs = [2]string{"cur", "new"}

// statDirs returns the stamps of dir's cur/ and new/, without hashes.
func statDirs(dir string) (stamps, error) {
	var s stamps
	for _, sub := range subdirs {
		var st syscall.Stat_t
		path := filepath.Join(dir, sub)
		dirStats.Add(1)
		if err := syscall.Stat(path, &st); err != nil {
			return stamps{}, &fs.PathError{Op: "stat", Path: path, Err: err}
		}
		*s.of(sub) = dirStamp{mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(), ino: st.Ino}
	}
	return s, nil
}

// indexHeader is what the first line of an index says: a zero stamp means
// that directory's lines must be checked against it.
type indexHeader struct {
	stamps  stamps
	version int // 3 or 2, or 0 for an index without a header
}

// trusted reports, for cur/ and new/, whether the lines of idx are still
// the directory's listing: it has the recorded stamp now (st), and the lines
// are the ones the stamp was recorded with.
func (h indexHeader) trusted(st stamps, idx []entry) (cur, new bool) {
	if !located(idx) {
		return false, false
	}
	ok := func(sub string) bool {
		rec := h.stamps.of(sub)
		return rec.same(*st.of(sub)) && rec.set == listHash(idx, sub)
	}
	return ok("cur"), ok("new")
}

// listHash identifies the listing of sub in entries: the names of the
// entries in sub, in order.
func listHash(entries []entry, sub string) uint64 {
	h := fnv.New64a()
	for _, e := range entries {
		if e.sub == sub {
			h.Write([]byte(e.name))
			h.Write([]byte{'\n'})
		}
	}
	return h.Sum64()
}

// located reports whether every entry knows its file (an index written with
// LOC columns).
func located(entries []entry) bool {
	for _, e := range entries {
		if e.sub == "" {
			return false
		}
	}
	return true
}

// parseHeader parses the first line of a version 2 or 3 index.
func parseHeader(line []byte) (indexHeader, bool) {
	var h indexHeader
	rest, ok := bytes.CutPrefix(line, []byte(indexVersion))
	h.version = 3
	if !ok {
		rest, ok = bytes.CutPrefix(line, []byte(indexVersion2))
		h.version = 2
	}
	if !ok || len(rest) > 0 && rest[0] != ' ' {
		return indexHeader{}, false
	}
	for _, field := range bytes.Fields(rest) {
		key, v, _ := bytes.Cut(field, []byte("="))
		if string(key) != "cur" && string(key) != "new" {
			return indexHeader{}, false
		}
		parts := bytes.Split(v, []byte(","))
		if len(parts) != 4 {
			return indexHeader{}, false
		}
		m, err1 := strconv.ParseInt(string(parts[0]), 10, 64)
		c, err2 := strconv.ParseInt(string(parts[1]), 10, 64)
		ino, err3 := strconv.ParseUint(string(parts[2]), 10, 64)
		set, err4 := strconv.ParseUint(string(parts[3]), 16, 64)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || ino == 0 {
			return indexHeader{}, false
		}
		*h.stamps.of(string(key)) = dirStamp{mtime: m, ctime: c, ino: ino, set: set}
	}
	return h, true
}

// loadIndex reads an index. A missing, damaged or unknown index reads as
// empty, with no stamps: it is rebuilt from the files.
func loadIndex(path string) ([]entry, indexHeader, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, indexHeader{}, nil
	}
	if err != nil {
		return nil, indexHeader{}, err
	}
	defer f.Close()
	var (
		out []entry
		hdr indexHeader
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	for first := true; sc.Scan(); first = false {
		line := sc.Bytes()
		if first && len(line) > 0 && line[0] == '#' {
			var ok bool
			if hdr, ok = parseHeader(line); !ok {
				return nil, indexHeader{}, nil
			}
			if fi, err := f.Stat(); err == nil {
				out = make([]entry, 0, fi.Size()/48) // about the size of a line
			}
			continue
		}
		// Parsed in place: an entry is large to copy, and there can be
		// 100,000 lines.
		out = append(out, entry{})
		e := &out[len(out)-1]
		ok := parseEntry(e, line, hdr.version)
		if !ok && hdr.version == 2 {
			*e = entry{}
			ok = parseSpaced(e, line)
		}
		if !ok {
			return nil, indexHeader{}, nil
		}
	}
	if sc.Err() != nil {
		return nil, indexHeader{}, nil
	}
	return out, hdr, nil
}

// parseEntry parses one line: "BASE RAW WIRE SEEN LOC [MORE...]" in an
// index of version 2 or 3, "BASE RAW WIRE [SEEN]" in an earlier one (version
// 0).
func parseEntry(e *entry, line []byte, version int) bool {
	var cols [5][]byte
	n := 0
	rest := line
	for n < len(cols) {
		i := bytes.IndexByte(rest, ' ')
		if i < 0 {
			cols[n] = rest
			rest = nil
			n++
			break
		}
		cols[n] = rest[:i]
		rest = rest[i+1:]
		n++
	}
	if n == len(cols) && rest != nil && len(rest) == 0 {
		return false // a trailing space
	}
	located := version >= 2
	switch {
	case located && n != 5, !located && (n < 3 || n > 4 || rest != nil):
		return false
	}
	if !located {
		cols[4] = nil
	}
	if !makeEntry(e, cols[0], cols[1], cols[2], cols[3], cols[4], version) {
		return false
	}
	if rest != nil {
		e.extra = string(rest)
	}
	return true
}

// parseSpaced parses a line of a version 2 index whose base name holds
// spaces: "BASE RAW WIRE SEEN LOC", split at its last four spaces (the
// version that wrote it wrote no further columns).
func parseSpaced(e *entry, line []byte) bool {
	var cols [4][]byte
	rest := line
	for k := len(cols) - 1; k >= 0; k-- {
		i := bytes.LastIndexByte(rest, ' ')
		if i < 0 {
			return false
		}
		cols[k] = rest[i+1:]
		rest = rest[:i]
	}
	return makeEntry(e, rest, cols[0], cols[1], cols[2], cols[3], 2)
}

// makeEntry fills in e from the columns of a line; loc is nil in an index
// of version 0, and base and loc are encoded in version 3.
func makeEntry(e *entry, base, raw, wire, seen, loc []byte, version int) bool {
	var ok bool
	if e.raw, ok = parseCount(raw); !ok {
		return false
	}
	if e.wire, ok = parseCount(wire); !ok {
		return false
	}
	if seen != nil {
		// The first retrieval, for EXPIRE counted from it; an index
		// written before it existed has three columns.
		if e.seen, ok = parseCount(seen); !ok {
			return false
		}
	}
	if version >= 3 {
		if base, ok = unescape(base); !ok {
			return false
		}
		if loc, ok = unescape(loc); !ok {
			return false
		}
	}
	// Names starting with "." are not messages (list), and "." and ".."
	// would name the directories.
	if len(base) == 0 || base[0] == '.' {
		return false
	}
	if loc == nil {
		e.base = string(base)
		return true
	}
	if len(loc) < 3 {
		return false
	}
	switch string(loc[:3]) {
	case "cur":
		e.sub = "cur"
	case "new":
		e.sub = "new"
	default:
		return false
	}
	suffix := loc[3:]
	if len(suffix) > 0 && suffix[0] != ':' || bytes.IndexByte(base, ':') >= 0 {
		return false
	}
	// One allocation: the base is the front of the name.
	name := make([]byte, 0, len(base)+len(suffix))
	name = append(append(name, base...), suffix...)
	e.name = string(name)
	e.base = e.name[:len(base)]
	return true
}

// escaped reports whether c is written "%XX" in a version 3 index.
func escaped(c byte) bool { return c <= ' ' || c == '%' || c == 0x7f }

// appendEscaped appends s to b with the octets that escaped reports written
// "%XX".
func appendEscaped(b []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	run := 0 // s[run:i] is still to be appended as it is
	for i := 0; i < len(s); i++ {
		if c := s[i]; escaped(c) {
			b = append(b, s[run:i]...)
			b = append(b, '%', hex[c>>4], hex[c&0xf])
			run = i + 1
		}
	}
	return append(b, s[run:]...)
}

// unescape decodes what appendEscaped wrote. It returns b itself when b
// has nothing encoded (the usual case), and false for an encoding that
// appendEscaped does not write.
func unescape(b []byte) ([]byte, bool) {
	i := bytes.IndexByte(b, '%')
	if i < 0 {
		return b, true
	}
	out := make([]byte, 0, len(b))
	for ; i >= 0; i = bytes.IndexByte(b, '%') {
		if i+2 >= len(b) {
			return nil, false
		}
		hi, ok1 := unhex(b[i+1])
		lo, ok2 := unhex(b[i+2])
		c := hi<<4 | lo
		if !ok1 || !ok2 || !escaped(c) {
			return nil, false
		}
		out = append(append(out, b[:i]...), c)
		b = b[i+3:]
	}
	return append(out, b...), true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// parseCount parses a non-negative decimal number.
func parseCount(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// storeIndex replaces the index with entries. With st, the stamps the
// directories had when the listing of entries began, it records those that
// are valid; with st nil, it keeps a directory's stamp from the index it
// replaces if the entries in that directory are still that index's listing
// of it (only sizes or retrieval times changed), and otherwise records none.
func storeIndex(dir string, entries []entry, st *stamps) error {
	var rec stamps
	if st != nil {
		rec = *st
	} else if hdr, err := readHeader(filepath.Join(dir, indexFile)); err == nil {
		rec = hdr.stamps
	}
	b := make([]byte, 0, 128+len(entries)*64)
	b = append(b, indexVersion...)
	if located(entries) {
		for _, sub := range subdirs {
			d := rec.of(sub)
			set := listHash(entries, sub)
			if !d.valid() || st == nil && d.set != set {
				continue
			}
			b = fmt.Appendf(b, " %s=%d,%d,%d,%x", sub, d.mtime, d.ctime, d.ino, set)
		}
	}
	b = append(b, '\n')
	for _, e := range entries {
		b = appendEscaped(b, e.base)
		b = append(b, ' ')
		b = strconv.AppendInt(b, e.raw, 10)
		b = append(b, ' ')
		b = strconv.AppendInt(b, e.wire, 10)
		b = append(b, ' ')
		b = strconv.AppendInt(b, e.seen, 10)
		b = append(b, ' ')
		if e.sub == "" || !strings.HasPrefix(e.name, e.base) {
			// Not known where it is (never the case after a listing); an
			// entry that says nothing makes the index read as damaged.
			b = append(b, '-')
		} else {
			b = append(b, e.sub...)
			b = appendEscaped(b, e.name[len(e.base):])
		}
		if e.extra != "" {
			b = append(b, ' ')
			b = append(b, e.extra...)
		}
		b = append(b, '\n')
	}
	return writeFileAtomic(dir, indexFile, b)
}

// readHeader reads only the first line of an index; a line that is not a
// header gives no stamps.
func readHeader(path string) (indexHeader, error) {
	f, err := os.Open(path)
	if err != nil {
		return indexHeader{}, err
	}
	defer f.Close()
	line, err := bufio.NewReaderSize(f, 512).ReadSlice('\n')
	if err != nil {
		return indexHeader{}, err
	}
	h, _ := parseHeader(bytes.TrimSuffix(line, []byte("\n")))
	return h, nil
}

// sortArrival returns entries, messages seen for the first time, in
// arrival order: by the delivery time in their names (arrival), or for a
// name without one by the modification time of the file, then by name. It
// parses each name once, not at every comparison (a first Open of 100,000
// messages), and stats only the files whose names have no time; one that
// is gone by then is left out.
func sortArrival(dir string, entries []entry) []entry {
	type key struct {
		sec, nsec int64
		i         int
	}
	keys := make([]key, 0, len(entries))
	for i := range entries {
		sec, usec, ok := arrival(entries[i].base)
		nsec := usec * 1000
		if !ok {
			var st syscall.Stat_t
			err := syscall.Lstat(filepath.Join(dir, entries[i].sub, entries[i].name), &st)
			switch {
			case err == syscall.ENOENT:
				continue
			case err != nil:
				sec, nsec = math.MaxInt64, 0 // reading it will tell what is wrong
			default:
				sec, nsec = st.Mtim.Sec, st.Mtim.Nsec
			}
		}
		keys = append(keys, key{sec, nsec, i})
	}
	slices.SortFunc(keys, func(a, b key) int {
		return cmp.Or(cmp.Compare(a.sec, b.sec), cmp.Compare(a.nsec, b.nsec),
			strings.Compare(entries[a.i].base, entries[b.i].base))
	})
	sorted := make([]entry, len(keys))
	for j, k := range keys {
		sorted[j] = entries[k.i]
	}
	return sorted
}

// list adds the message files of dir/sub to found by base name. A file
// whose base name found has already goes to twins, if twins is not nil:
// cur/ is listed first and keeps the name, and in one directory the file
// whose name sorts first. Names starting with "." are not messages. Entries
// that are not regular files are left out, and their names appended to
// skipped if it is not nil: a symbolic link is not followed, so no message
// is read from outside the Maildir.
func list(found map[string]entry, twins *[]entry, dir, sub string, skipped *[]string) error {
	path := filepath.Join(dir, sub)
	ents, err := readDir(path)
	if err != nil {
		return err
	}
	for _, d := range ents {
		name := d.name
		if name[0] == '.' {
			continue
		}
		if !d.regular(path) {
			if skipped != nil {
				*skipped = append(*skipped, sub+"/"+name)
			}
			continue
		}
		base := baseName(name)
		e := entry{base: base, sub: sub, name: name}
		if first, dup := found[base]; dup {
			if first.sub == sub && name < first.name {
				found[base], e = e, first
			}
			if twins != nil {
				*twins = append(*twins, e)
			}
			continue
		}
		found[base] = e
	}
	return nil
}
