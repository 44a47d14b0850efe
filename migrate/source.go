package migrate

import (
	"cmp"
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

	"github.com/pouchmail/pouch/store/maildir"
)

// DefaultFormat is Dovecot's default pop3_uidl_format: the IMAP UID and
// the UIDVALIDITY, each as 8 lower-case hex digits.
const DefaultFormat = "%08Xu%08Xv"

// Where a source's UIDLs come from.
const (
	FromDovecot  = "dovecot-uidlist"
	FromCourier  = "courierpop3dsizelist"
	FromNames    = "file names"
	uidListFile  = "dovecot-uidlist"
	sizeListFile = "courierpop3dsizelist"
)

// uidlKeys are the variables of pop3_uidl_format.
var uidlKeys = map[byte]string{'u': "uid", 'v': "uidvalidity", 'm': "md5", 'f': "filename", 'g': "guid"}

// ParseFormat checks a pop3_uidl_format as Dovecot does: known variables
// only, and at least one of them.
func ParseFormat(format string) (varFormat, error) {
	f, err := parseVars(format, uidlKeys)
	if err != nil {
		return nil, fmt.Errorf("--uidl-format %q: %v", format, err)
	}
	if !slices.ContainsFunc(f, func(p varPart) bool { return p.key != 0 }) {
		return nil, fmt.Errorf("--uidl-format %q has no variable", format)
	}
	return f, nil
}

// Message is one message of a source Maildir, as the old server listed it.
type Message struct {
	maildir.ImportMessage
	// Listed says that the old server gave the message its UIDL already
	// (a client may have seen it); the others arrived after its last
	// session, and their UIDL is new to every client.
	Listed bool
	// OldSize is the size the old server listed (LIST), or -1 where it
	// is not known without asking it.
	OldSize int64
}

// Skip is a message left out, and why.
type Skip struct {
	Path   string
	Reason string
}

// Source is another server's Maildir, read for import.
type Source struct {
	Dir string
	// From says where the UIDLs come from: FromDovecot, FromCourier or
	// FromNames.
	From string
	// Messages are in the order the old server listed them.
	Messages []Message
	Skipped  []Skip
	// Hidden counts the messages left behind because they carry the
	// keyword of Options.DeletedFlag.
	Hidden int
	// bases holds the base name of every file of new/ and cur/, skipped
	// or not, but those hidden by Options.DeletedFlag.
	bases map[string]bool
}

// Options say how to read a source.
type Options struct {
	// Format is Dovecot's pop3_uidl_format; empty for DefaultFormat.
	Format string
	// Control is the directory holding dovecot-uidlist, when it is not
	// the Maildir (Dovecot's CONTROL=).
	Control string
	// DeletedFlag is Dovecot's pop3_deleted_flag: the keyword with which
	// Dovecot marks, instead of expunging, messages that POP3 clients
	// deleted, and hides them from POP3. Such messages are left behind.
	DeletedFlag string
	// Now bounds the first retrievals read from the source; zero for
	// time.Now.
	Now time.Time
}

// Scan reads the Maildir dir (its INBOX: new/ and cur/, which is what POP3
// shows) and gives every message the UIDL the old server showed: from
// dovecot-uidlist (a saved P UIDL wins; otherwise Options.Format), or else
// from Courier's courierpop3dsizelist, or else the file name (Dovecot's
// %f). Messages that the old server had not listed yet get their file
// name as UIDL. The retrieved state is the Maildir flag S, whose time is
// the file's change time: the moment the old server renamed the file to
// set the flag, on or after the first retrieval, so that a policy counted
// from retrieval never removes mail early.
func Scan(dir string, opt Options) (*Source, error) {
	format, err := ParseFormat(cmp.Or(opt.Format, DefaultFormat))
	if err != nil {
		return nil, err
	}
	now := opt.Now
	if now.IsZero() {
		now = time.Now()
	}
	src := &Source{Dir: dir, bases: map[string]bool{}}
	files, err := listMaildir(dir, src)
	if err != nil {
		return nil, err
	}
	uids, err := readUIDList(filepath.Join(cmp.Or(opt.Control, dir), uidListFile))
	if err != nil {
		return nil, err
	}
	var hiddenBy byte // the letter of DeletedFlag in the file names' flags
	if opt.DeletedFlag != "" {
		if hiddenBy, err = keywordLetter(cmp.Or(opt.Control, dir), opt.DeletedFlag); err != nil {
			return nil, err
		}
	}
	var sizes *sizeList
	if uids == nil {
		if sizes, err = readSizeList(filepath.Join(dir, sizeListFile)); err != nil {
			return nil, err
		}
	}
	switch {
	case uids != nil:
		src.From = FromDovecot
	case sizes != nil:
		src.From = FromCourier
	default:
		src.From = FromNames
	}
	type keyed struct {
		m     Message
		order uint64 // Dovecot's POP3 order, then its UID
		uid   uint32
	}
	var listed, fresh []keyed
	for _, f := range files {
		if flags, ok := strings.CutPrefix(f.Info, "2,"); ok && hiddenBy != 0 && strings.IndexByte(flags, hiddenBy) >= 0 {
			// Deleted by a POP3 client: to Prune, as gone as a file
			// that the old server removed.
			src.Hidden++
			delete(src.bases, f.Source)
			continue
		}
		m := Message{ImportMessage: f, OldSize: -1}
		m.Seen = seenTime(f, now)
		k := keyed{order: 1<<32 - 1}
		switch {
		case uids != nil:
			rec := uids.recs[f.Source]
			if rec != nil {
				m.Listed = true
				k.uid = rec.uid
				if o, err := strconv.ParseUint(rec.ext['O'], 10, 32); err == nil {
					k.order = o
				}
				if w, ok := sizeField(f.Source, rec); ok {
					m.OldSize = w
				}
			}
			if p, saved := rec.saved(); saved {
				m.UID = cmp.Or(p, f.Source)
				break
			}
			if rec == nil && (format.uses('u') || format.uses('v')) {
				m.UID = f.Source // no UID yet: new to clients, any UIDL will do
				break
			}
			vals := map[byte]string{'f': f.Source, 'g': f.Source}
			if rec != nil {
				vals['u'] = strconv.FormatUint(uint64(rec.uid), 10)
				vals['v'] = strconv.FormatUint(uint64(uids.uidValidity), 10)
				if g := rec.ext['G']; g != "" {
					vals['g'] = g
				}
			}
			if format.uses('m') {
				if vals['m'], err = fileHeaderMD5(f.Path); err != nil {
					if gone(err) {
						src.Skipped = append(src.Skipped, Skip{f.Path, "it disappeared while the import read the Maildir"})
						continue
					}
					return nil, err
				}
			}
			m.UID = format.expand(vals)
		case sizes != nil:
			if rec, ok := sizes.recs[f.Source]; ok {
				m.Listed, m.UID, m.OldSize = true, rec.uid, rec.size
			} else {
				m.UID = f.Source
			}
		default:
			m.UID, m.Listed = f.Source, true
		}
		if m.Listed && uids != nil {
			listed = append(listed, keyed{m, k.order, k.uid})
		} else {
			fresh = append(fresh, keyed{m: m})
		}
	}
	// Dovecot lists by POP3 order (messages without one after those with
	// one), then UID; it numbers new files, and Courier orders all, by
	// the time in their names, then the rest of the names.
	slices.SortFunc(listed, func(a, b keyed) int { return cmp.Or(cmp.Compare(a.order, b.order), cmp.Compare(a.uid, b.uid)) })
	slices.SortFunc(fresh, func(a, b keyed) int { return nameOrder(a.m.Source, b.m.Source) })
	for _, k := range append(listed, fresh...) {
		src.Messages = append(src.Messages, k.m)
	}
	return src, nil
}

// keywordLetter is the letter that stands for keyword in the flags of the
// file names of the Maildir whose dovecot-keywords is in dir ("N KEYWORD"
// lines: letter 'a'+N); 0 if it has none, so no message carries it.
func keywordLetter(dir, keyword string) (byte, error) {
	data, err := os.ReadFile(filepath.Join(dir, "dovecot-keywords"))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		num, name, ok := strings.Cut(line, " ")
		n, err := strconv.Atoi(num)
		if ok && err == nil && n >= 0 && n < 26 && strings.EqualFold(name, keyword) {
			return byte('a' + n), nil
		}
	}
	return 0, nil
}

// saved returns the UIDL that Dovecot saved for the message (P), if any.
func (r *uidRec) saved() (string, bool) {
	if r == nil {
		return "", false
	}
	p, ok := r.ext['P']
	return p, ok
}

// sizeField is the virtual size Dovecot recorded for a message: its
// file name's ",W=" or its W field.
func sizeField(base string, rec *uidRec) (int64, bool) {
	for _, part := range strings.Split(base, ",")[1:] {
		if v, ok := strings.CutPrefix(part, "W="); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			return n, err == nil
		}
	}
	if w, ok := rec.ext['W']; ok {
		n, err := strconv.ParseInt(w, 10, 64)
		return n, err == nil
	}
	return 0, false
}

// listMaildir lists the message files of dir's new/ and cur/: regular
// files whose names do not start with ".". A base name in both is taken
// from cur/, and the other is skipped.
func listMaildir(dir string, src *Source) ([]maildir.ImportMessage, error) {
	var out []maildir.ImportMessage
	seen := map[string]bool{}
	for _, sub := range []string{"cur", "new"} {
		// The import runs as root: a cur/ or new/ that is a symbolic
		// link could bring in files from anywhere (a message file that
		// is one is skipped below, and opened without following one).
		if fi, err := os.Lstat(filepath.Join(dir, sub)); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			return nil, fmt.Errorf("%s is a symbolic link; a Maildir's cur/ and new/ must be directories", filepath.Join(dir, sub))
		}
		ents, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && sub == "new" {
				continue
			}
			return nil, err
		}
		for _, e := range ents {
			name := e.Name()
			if name[0] == '.' {
				continue
			}
			path := filepath.Join(dir, sub, name)
			base, info, _ := strings.Cut(name, ":")
			src.bases[base] = true
			if !e.Type().IsRegular() {
				src.Skipped = append(src.Skipped, Skip{path, "it is not a regular file"})
				continue
			}
			if seen[base] {
				src.Skipped = append(src.Skipped, Skip{path, "cur/ has a file of the same base name, which is imported"})
				continue
			}
			seen[base] = true
			out = append(out, maildir.ImportMessage{Path: path, Source: base, New: sub == "new", Info: info})
		}
	}
	return out, nil
}

// seenTime is the first retrieval of a message with the Maildir flag S (see
// Scan), or zero.
func seenTime(m maildir.ImportMessage, now time.Time) time.Time {
	flags, ok := strings.CutPrefix(m.Info, "2,")
	if !ok || !strings.Contains(flags, "S") {
		return time.Time{}
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(m.Path, &st); err != nil {
		return now
	}
	t := time.Unix(st.Ctim.Sec, 0)
	if mt := time.Unix(st.Mtim.Sec, 0); t.Before(mt) {
		t = mt
	}
	if t.After(now) {
		t = now
	}
	return t
}

// nameOrder is Dovecot's order of new Maildir files (maildir_filename_sort_cmp),
// which is Courier's as well (cmpmsgs, by seconds then name): the seconds at
// the start of the name, then the microseconds of a ".M" field, then the
// base name.
func nameOrder(a, b string) int {
	sa, ra := leadingNumber(a)
	sb, rb := leadingNumber(b)
	if c := cmp.Compare(sa, sb); c != 0 {
		return c
	}
	if ua, ok := usecs(ra); ok {
		if ub, ok := usecs(rb); ok && ua != ub {
			return cmp.Compare(ua, ub)
		}
	}
	return strings.Compare(ra, rb)
}

func leadingNumber(s string) (uint64, string) {
	i := 0
	var n uint64
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		n = n*10 + uint64(s[i]-'0')
		i++
	}
	return n, s[i:]
}

// usecs reads the microseconds after the first "M" of the unique part of
// a name (s follows the seconds), as maildir_fname_get_usecs does.
func usecs(s string) (uint64, bool) {
	rest, ok := strings.CutPrefix(s, ".")
	if !ok {
		return 0, false
	}
	for i := 0; i < len(rest) && rest[i] != '.' && rest[i] != ':'; i++ {
		if rest[i] == 'M' {
			n, _ := leadingNumber(rest[i+1:])
			return n, true
		}
	}
	return 0, false
}

// fileHeaderMD5 is HeaderMD5 of the file at path.
func fileHeaderMD5(path string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return HeaderMD5(f)
}

func gone(err error) bool { return errors.Is(err, fs.ErrNotExist) }
