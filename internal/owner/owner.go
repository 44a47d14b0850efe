// Package owner gives files that a command run as root creates in Pouch's
// data directory the owner of the directory that holds them, so that a
// server running as its service user (--run-as) can still read, lock and
// replace them.
package owner

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Adopt gives path, just created by this process, the owner and group of
// the directory that holds it, when this process runs as root and that
// directory belongs to someone else. So an operator's command run as root
// (pouch user add, pouch ban add, pouch mailbox hold, pouch deliver) leaves
// files the server can use. Failures are ignored: the file stays root's,
// as it would without Adopt.
func Adopt(path string) {
	if os.Geteuid() != 0 {
		return
	}
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || (st.Uid == 0 && st.Gid == 0) {
		return
	}
	_ = os.Lchown(path, int(st.Uid), int(st.Gid))
}

// OpenFile opens path with flag, creating it with perm if it is missing; a
// file it creates is given to the directory's owner as Adopt does, and a
// file that was there keeps its owner. flag must not hold os.O_CREATE or
// os.O_EXCL.
func OpenFile(path string, flag int, perm os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, flag|os.O_CREATE|os.O_EXCL, perm)
	if err == nil {
		Adopt(path)
		return f, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	return os.OpenFile(path, flag, 0)
}
