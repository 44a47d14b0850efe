package owner

import (
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

func TestAdopt(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: only root can give a file away")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	dir := filepath.Join(t.TempDir(), "data")
	os.Mkdir(dir, 0o700)
	p := filepath.Join(dir, "f")
	os.WriteFile(p, nil, 0o600)
	Adopt(p) // the directory is root's: nothing changes
	if st := stat(t, p); st.Uid != 0 {
		t.Fatalf("owner %d, want root", st.Uid)
	}
	os.Chown(dir, uid, gid)
	Adopt(p)
	if st := stat(t, p); int(st.Uid) != uid || int(st.Gid) != gid {
		t.Fatalf("owner %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
	}
}

func stat(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}
