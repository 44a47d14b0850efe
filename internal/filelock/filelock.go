// Package filelock takes exclusive flock(2) locks on lock files, for the
// writers of Pouch's shared state files (the users file, the ban list).
package filelock

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/pouchmail/pouch/internal/owner"
)

// Lock takes an exclusive flock on the file at path, creating it (mode 0600)
// if needed and waiting as long as another holder has it. The lock file is
// never removed. The returned function releases the lock; so does the death
// of the process.
func Lock(path string) (unlock func(), err error) {
	f, err := owner.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
