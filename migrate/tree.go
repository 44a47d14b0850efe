package migrate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/pouchmail/pouch/store/maildir"
)

// Location is where a Dovecot site keeps its users' Maildirs: its
// mail_location ("maildir:/var/vmail/%d/%n", with or without "maildir:",
// and with its ":KEY=VALUE" options), whose variables are the user's:
// %u the user name, %n its part before "@", %d the part after it (and
// their long names %{user}, %{username}, %{domain}), with Dovecot's
// modifiers and widths (%Ln, %1n). CONTROL= says where dovecot-uidlist
// is, INBOX= where the INBOX is when it is not the Maildir's root; the
// other options do not matter to POP3.
type Location struct {
	text    string
	dir     []varFormat // the INBOX's path, one format a path component
	control varFormat   // nil: dovecot-uidlist is in the Maildir
	// bindable holds the keys that a component of dir gives as they are
	// (plain), or lower- or upper-cased when no part has them plain.
	bindable map[byte]bool
}

var locationKeys = map[byte]string{'u': "user", 'n': "username", 'd': "domain"}

// ParseLocation parses a mail_location.
func ParseLocation(s string) (*Location, error) {
	text := s
	if kind, rest, ok := strings.Cut(s, ":"); ok && !strings.Contains(kind, "/") && !strings.Contains(kind, "%") {
		if kind != "maildir" {
			return nil, fmt.Errorf("--layout %q: only Maildir locations can be imported (not %s)", text, kind)
		}
		s = rest
	}
	parts := strings.Split(s, ":")
	path, inbox, control := parts[0], "", ""
	for _, opt := range parts[1:] {
		k, v, _ := strings.Cut(opt, "=")
		switch strings.ToUpper(k) {
		case "CONTROL":
			control = v
		case "INBOX":
			inbox = v
		}
	}
	if inbox != "" {
		path = inbox
	}
	if path == "" {
		return nil, fmt.Errorf("--layout %q names no directory", text)
	}
	if strings.HasPrefix(path, "~") || strings.HasPrefix(control, "~") {
		return nil, fmt.Errorf("--layout %q: ~ stands for the home directories, which the import does not know; write them out with %%u, %%n or %%d", text)
	}
	l := &Location{text: text, bindable: map[byte]bool{}}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	var plain [256]bool
	var all []varPart
	for _, comp := range strings.Split(strings.TrimPrefix(abs, "/"), "/") {
		f, err := parseVars(comp, locationKeys)
		if err != nil {
			return nil, fmt.Errorf("--layout %q: %v", text, err)
		}
		l.dir = append(l.dir, f)
		for _, p := range f {
			if p.key != 0 {
				plain[p.key] = plain[p.key] || p.plain()
				all = append(all, p)
			}
		}
	}
	for _, p := range all {
		if plain[p.key] || p.width == 0 && p.offset == 0 && strings.Trim(p.mods, "LU") == "" {
			l.bindable[p.key] = true
		}
	}
	if !l.bindable['u'] && !l.bindable['n'] {
		return nil, fmt.Errorf("--layout %q: the path needs %%u or %%n, whole, to tell the users apart", text)
	}
	for _, p := range all {
		// The user name comes from %n (and %d); %n and %d from %u.
		from := 'n'
		if p.key != 'u' {
			from = 'u'
		}
		if !l.bindable[p.key] && !l.bindable[byte(from)] {
			return nil, fmt.Errorf("--layout %q: %%%c appears only cut or hashed; the path needs it whole too", text, p.key)
		}
	}
	if control != "" {
		if l.control, err = parseVars(control, locationKeys); err != nil {
			return nil, fmt.Errorf("--layout %q: CONTROL: %v", text, err)
		}
	}
	return l, nil
}

// Mailbox is one user's Maildir found by a Location.
type Mailbox struct {
	User    string
	Dir     string
	Control string // where dovecot-uidlist is; empty for Dir
}

// Find lists the Maildirs of the location, by user name: the directories
// that fit its path (with a cur/ inside) and give its variables values
// from which the path comes out again as it is.
func (l *Location) Find() ([]Mailbox, error) {
	var out []Mailbox
	var walk func(dir string, i int, b map[byte]string) error
	walk = func(dir string, i int, b map[byte]string) error {
		if i == len(l.dir) {
			// A cur/ that cannot be looked at is found all the same: the
			// import's report says why nothing came of it, where a user
			// left out would go unnoticed.
			fi, err := os.Stat(filepath.Join(dir, "cur"))
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || err == nil && !fi.IsDir() {
				return nil
			}
			vals := fill(b)
			if l.path(vals) != dir {
				return nil
			}
			mb := Mailbox{User: vals['u'], Dir: dir}
			if l.control != nil {
				mb.Control = l.control.expand(vals)
			}
			out = append(out, mb)
			return nil
		}
		comp := l.dir[i]
		if len(comp) == 1 && comp[0].key == 0 || len(comp) == 0 {
			lit := ""
			if len(comp) == 1 {
				lit = comp[0].lit
			}
			return walk(filepath.Join(dir, lit), i+1, b)
		}
		ents, err := os.ReadDir(dir)
		if os.IsNotExist(err) && i > 0 {
			return nil
		}
		if err != nil {
			return err
		}
		re := compRegexp(comp)
		for _, e := range ents {
			if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
				continue
			}
			m := re.FindStringSubmatch(e.Name())
			if m == nil {
				continue
			}
			nb := maps(b)
			ok := true
			k := 1
			for _, p := range comp {
				if p.key == 0 {
					continue
				}
				v := m[k]
				k++
				if !l.bindable[p.key] || !(p.plain() || p.width == 0 && p.offset == 0 && strings.Trim(p.mods, "LU") == "") {
					continue
				}
				if old, bound := nb[p.key]; bound && old != v && p.plain() {
					ok = false
				} else if !bound || p.plain() {
					nb[p.key] = v
				}
			}
			if ok {
				if err := walk(filepath.Join(dir, e.Name()), i+1, nb); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk("/", 0, map[byte]string{}); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Mailbox) int { return strings.Compare(a.User, b.User) })
	return out, nil
}

// path expands the location's INBOX path.
func (l *Location) path(vals map[byte]string) string {
	p := ""
	for _, c := range l.dir {
		p += "/" + c.expand(vals)
	}
	return p
}

// fill completes the user's variables from those a path gave.
func fill(b map[byte]string) map[byte]string {
	v := maps(b)
	if u, ok := v['u']; ok {
		n, d, _ := strings.Cut(u, "@")
		if _, ok := v['n']; !ok {
			v['n'] = n
		}
		if _, ok := v['d']; !ok {
			v['d'] = d
		}
	} else if v['d'] != "" {
		v['u'] = v['n'] + "@" + v['d']
	} else {
		v['u'] = v['n']
	}
	return v
}

func maps(b map[byte]string) map[byte]string {
	c := make(map[byte]string, len(b)+3)
	for k, v := range b {
		c[k] = v
	}
	return c
}

// compRegexp matches a path component against f: each variable one group.
func compRegexp(f varFormat) *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	for _, p := range f {
		if p.key == 0 {
			b.WriteString(regexp.QuoteMeta(p.lit))
		} else {
			b.WriteString("(.+)")
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// TreeOptions say how to import a whole location.
type TreeOptions struct {
	ImportOptions
	// Known, if set, reports whether a user has an account; the summary
	// lists the maildrops of those who have none.
	Known func(user string) bool
	// Found, if set, is told the number of users and of messages before
	// the import begins.
	Found func(users, messages int)
	// UserDone, if set, is told each user's report as it ends.
	UserDone func(*Report)
}

// Summary is what a tree import did.
type Summary struct {
	Reports []*Report
	// NoAccount lists the users imported that have no account.
	NoAccount []string
}

// Complete reports whether every message of every user is in Pouch under
// the UIDL its clients know.
func (s *Summary) Complete() bool {
	for _, r := range s.Reports {
		if !r.Complete() {
			return false
		}
	}
	return true
}

// ImportTree imports the Maildir of every user of loc into st, one user
// after the other.
func ImportTree(ctx context.Context, st *maildir.Store, loc *Location, opt TreeOptions) (*Summary, error) {
	boxes, err := loc.Find()
	if err != nil {
		return nil, err
	}
	if opt.Found != nil {
		total := 0
		for _, b := range boxes {
			total += CountFiles(b.Dir)
		}
		opt.Found(len(boxes), total)
	}
	sum := &Summary{}
	for _, b := range boxes {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		o := opt.ImportOptions
		o.Control = b.Control
		r := ImportMaildir(ctx, st, b.User, b.Dir, o)
		sum.Reports = append(sum.Reports, r)
		if opt.Known != nil && !opt.Known(b.User) {
			sum.NoAccount = append(sum.NoAccount, b.User)
		}
		if opt.UserDone != nil {
			opt.UserDone(r)
		}
	}
	return sum, nil
}

// CountFiles counts the entries of the Maildir dir's cur/ and new/: about
// its messages, quickly, for a progress bar.
func CountFiles(dir string) int {
	n := 0
	for _, sub := range []string{"cur", "new"} {
		if f, err := os.Open(filepath.Join(dir, sub)); err == nil {
			names, _ := f.Readdirnames(-1)
			n += len(names)
			f.Close()
		}
	}
	return n
}
