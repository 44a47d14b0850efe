// Package fsx holds the file system mechanics several packages share,
// chiefly those that make changes durable: a directory fsynced after an
// entry in it was created, renamed or removed, and a file replaced whole
// through a temporary file beside it (write, fsync, rename, fsync the
// directory), so that a crash leaves the old content or the new, never a
// mix of both, and never the old content once the replacement returned.
package fsx

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/internal/owner"
)

// SyncDir fsyncs the directory dir, making the creations, renames and
// removals of its entries durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Names returns the names of the entries of dir, unsorted: one getdents
// pass, without the sorting of os.ReadDir, for directories as large as a
// Maildir's.
func Names(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}

// Owner says whom a file that Create makes belongs to.
type Owner int

const (
	// OwnSelf leaves the file to the process that writes it.
	OwnSelf Owner = iota
	// OwnDir gives the file the owner of its directory when the process
	// runs as root (owner.Adopt), so that a server running as its service
	// user can use what an operator's command wrote.
	OwnDir
	// OwnKeep gives the file the owner and group of the file it replaces,
	// or, when there is none, those of its directory as OwnDir does. Only
	// root may give a file away: for anyone else, replacing a file that
	// another user owns fails.
	OwnKeep
)

// Options are how Create makes the replacement.
type Options struct {
	Perm  os.FileMode // the file's mode, whatever the umask
	Owner Owner
	// Synced and Renamed name crash points (internal/crashpoint) that
	// Commit hits once the temporary file is fsynced, and once it is
	// renamed over the file but the directory is not yet fsynced.
	Synced, Renamed string
}

// File is the replacement of a file, written to a temporary file named
// ".BASE.tmp" and random digits in the same directory until Commit renames
// it over the file. Write to it as to the *os.File it embeds.
type File struct {
	*os.File
	path      string
	opt       Options
	committed bool
}

// Create starts the replacement of the file at path.
func Create(path string, opt Options) (*File, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), TempPrefix(path)+"*")
	if err != nil {
		return nil, err
	}
	f := &File{File: tmp, path: path, opt: opt}
	if err := tmp.Chmod(opt.Perm); err != nil {
		f.Discard()
		return nil, err
	}
	switch opt.Owner {
	case OwnDir:
		owner.Adopt(tmp.Name())
	case OwnKeep:
		if err := keepOwner(tmp, path); err != nil {
			f.Discard()
			return nil, err
		}
	}
	return f, nil
}

// TempPrefix is how the names of the temporary files that replace path
// begin. A program that holds a lock on path can remove those a killed
// run left behind.
func TempPrefix(path string) string {
	return "." + filepath.Base(path) + ".tmp"
}

// RemoveTemps removes the temporary files a replacement of path left behind
// when its process was killed. Call it only while no one else can be
// replacing path (under the lock that orders its writers).
func RemoveTemps(path string) {
	names, _ := filepath.Glob(filepath.Join(filepath.Dir(path), globEscape(TempPrefix(path))+"*"))
	for _, n := range names {
		os.Remove(n)
	}
}

// globEscape quotes the characters filepath.Match gives a meaning.
func globEscape(s string) string {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', '\\':
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return string(b)
}

// Commit fsyncs the temporary file, renames it over the file and fsyncs the
// directory: once it returns nil the new content is the file's, durably.
// The file stays open (now under its own name) for the caller to close or
// to go on with. After a failed Commit, Discard removes the temporary file.
func (f *File) Commit() error {
	if f.committed {
		return errors.New("fsx: commit after commit")
	}
	if err := f.Sync(); err != nil {
		return err
	}
	crashpoint.Hit(f.opt.Synced)
	if err := os.Rename(f.Name(), f.path); err != nil {
		return err
	}
	f.committed = true
	crashpoint.Hit(f.opt.Renamed)
	return SyncDir(filepath.Dir(f.path))
}

// Discard closes and removes the temporary file of a replacement not
// committed; after Commit it does nothing. It suits a defer.
func (f *File) Discard() {
	if f.committed {
		return
	}
	f.Close()
	os.Remove(f.Name())
}

// WriteFile replaces the file at path with data, as Create, a write and
// Commit do, and closes it.
func WriteFile(path string, data []byte, opt Options) error {
	f, err := Create(path, opt)
	if err != nil {
		return err
	}
	defer f.Discard()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Commit(); err != nil {
		return err
	}
	return f.Close()
}

// keepOwner gives f the owner and group of the file at path, if that exists
// and they differ; a new file gets the owner of its directory (see
// owner.Adopt).
func keepOwner(f *os.File, path string) error {
	old, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		owner.Adopt(f.Name())
		return nil
	}
	if err != nil {
		return err
	}
	cur, err := f.Stat()
	if err != nil {
		return err
	}
	o, ok1 := old.Sys().(*syscall.Stat_t)
	c, ok2 := cur.Sys().(*syscall.Stat_t)
	if !ok1 || !ok2 || (o.Uid == c.Uid && o.Gid == c.Gid) {
		return nil
	}
	return f.Chown(int(o.Uid), int(o.Gid))
}
