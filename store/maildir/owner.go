package maildir

import (
	"os"
	"path/filepath"
	"syscall"
)

// adopt gives path, just created by this process, the owner and group of
// the directory that holds it, when this process runs as root and that
// directory belongs to someone else. So an operator's command run as root
// (pouch mailbox hold, pouch user add, pouch deliver) leaves files that a
// server running as its service user can still read, lock and rename.
// Failures are ignored: the file stays root's, as without adopt.
func adopt(path string) {
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
