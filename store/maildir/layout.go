package maildir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/internal/owner"
	"github.com/pouchmail/pouch/store"
)

// Layout is where a Store keeps each user's Maildir under its root.
type Layout int

const (
	// Flat keeps the Maildir of every user at ROOT/NAME, user@domain
	// included: the layout of mail roots made before Pouch knew domains,
	// kept as it is.
	Flat Layout = iota + 1
	// Domains keeps the Maildir of user@domain at ROOT/DOMAIN/USER, and
	// that of a name without a domain at ROOT/NAME: the layout of new mail
	// roots.
	Domains
)

func (l Layout) String() string {
	switch l {
	case Flat:
		return "flat"
	case Domains:
		return "domains"
	}
	return fmt.Sprintf("Layout(%d)", int(l))
}

// layoutFile, in the mail root, says which layout it has: "flat" or
// "domains". No user's Maildir can have its name, which starts with '.'.
const layoutFile = ".pouch-layout"

// DetectLayout returns the layout of the mail root: the one its layout
// file names; else Flat for a root that holds Maildirs already (a data
// directory made before Pouch knew domains), and Domains for a new or
// empty one, or one that holds only domains' directories of Maildirs (a
// tree such as Dovecot's /var/vmail/%d/%n). It writes the layout file when there was none, so that the layout
// stays what it was found to be; a root that cannot be written to keeps
// its layout all the same.
func DetectLayout(root string) (Layout, error) {
	b, err := os.ReadFile(filepath.Join(root, layoutFile))
	switch {
	case err == nil:
		switch strings.TrimSpace(string(b)) {
		case "flat":
			return Flat, nil
		case "domains":
			return Domains, nil
		}
		return 0, fmt.Errorf("%s says %q: want flat or domains", filepath.Join(root, layoutFile), strings.TrimSpace(string(b)))
	case !errors.Is(err, fs.ErrNotExist):
		return 0, err
	}
	layout := Domains
	ents, err := os.ReadDir(root)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	for _, e := range ents {
		d := filepath.Join(root, e.Name())
		if !strings.HasPrefix(e.Name(), ".") && (e.IsDir() || e.Type()&fs.ModeSymlink != 0) && !isDomainDir(d) {
			layout = Flat // a Maildir by a user's name
			break
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		if os.MkdirAll(root, 0o700) != nil {
			return layout, nil
		}
		// Made by a command run as root, the mail root is the data
		// directory's owner's, as the Maildirs in it will be.
		owner.Adopt(root)
		fsx.SyncDir(filepath.Dir(root))
	}
	_ = writeFileAtomic(root, layoutFile, []byte(layout.String()+"\n"))
	return layout, nil
}

// Layout returns the Store's layout, found on first use (DetectLayout)
// unless NewWithLayout gave it.
func (s *Store) Layout() (Layout, error) {
	s.layoutOnce.Do(func() {
		if s.layout == 0 {
			s.layout, s.layoutErr = DetectLayout(s.root)
		}
	})
	return s.layout, s.layoutErr
}

// Dir returns the directory of user's Maildir, whether or not it exists
// yet, or store.ErrBadUser for a name that cannot have one.
func (s *Store) Dir(user string) (string, error) { return s.dir(user) }

// dir returns the user's Maildir, refusing names that could leave the root,
// and, in the Domains layout, names whose Maildir would be taken for a
// domain's directory, or the other way round.
func (s *Store) dir(user string) (string, error) {
	if err := store.CheckUser(user); err != nil {
		return "", err
	}
	layout, err := s.Layout()
	if err != nil {
		return "", err
	}
	if layout == Flat {
		return filepath.Join(s.root, user), nil
	}
	i := strings.LastIndexByte(user, '@')
	if i < 0 {
		d := filepath.Join(s.root, user)
		if isDomainDir(d) {
			return "", store.ErrBadUser // a domain's directory has this name
		}
		return d, nil
	}
	local, domain := user[:i], user[i+1:]
	if !validPart(local) || !validPart(domain) {
		return "", store.ErrBadUser
	}
	if isMaildir(filepath.Join(s.root, domain)) {
		return "", store.ErrBadUser // a user without a domain has this name
	}
	return filepath.Join(s.root, domain, local), nil
}

// validPart reports whether s can name a directory under the root: not
// empty, valid UTF-8, no '/', '\\' or NUL, and not starting with '.'.
func validPart(s string) bool {
	return s != "" && !strings.HasPrefix(s, ".") && utf8.ValidString(s) && !strings.ContainsAny(s, "/\\\x00")
}

// isMaildir reports whether d is a Maildir: one that Pouch has used (its
// journal or lock file is a regular file there, where a user of a domain
// would be a directory), or one with cur/ and new/ whose cur/ holds no
// cur/ (a domain whose users include cur and new).
func isMaildir(d string) bool {
	for _, f := range []string{expungeFile, lockFile} {
		if fi, err := os.Lstat(filepath.Join(d, f)); err == nil && fi.Mode().IsRegular() {
			return true
		}
	}
	return isDir(filepath.Join(d, "cur")) && isDir(filepath.Join(d, "new")) && !isDir(filepath.Join(d, "cur", "cur"))
}

// isDomainDir reports whether d is a domain's directory: a directory that
// is no Maildir and holds one.
func isDomainDir(d string) bool {
	if !isDir(d) || isMaildir(d) {
		return false
	}
	ents, err := os.ReadDir(d)
	if err != nil {
		return false
	}
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") && isMaildir(filepath.Join(d, e.Name())) {
			return true
		}
	}
	return false
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
