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

// OpenFile creates a missing file with its mode and opens one that is there
// as it is; as root, a file it creates goes to the directory's owner and one
// that was there keeps its owner.
func TestOpenFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	os.Mkdir(dir, 0o700)
	p := filepath.Join(dir, "log")
	f, err := OpenFile(p, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("one\n")
	f.Close()
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %04o, want 0600", fi.Mode().Perm())
	}
	f, err = OpenFile(p, os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("two\n")
	f.Close()
	if b, _ := os.ReadFile(p); string(b) != "one\ntwo\n" {
		t.Fatalf("contents %q", b)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode of a file that was there changed to %04o", fi.Mode().Perm())
	}
	if _, err := OpenFile(filepath.Join(dir, "missing", "f"), os.O_RDWR, 0o600); err == nil {
		t.Fatal("a file in a missing directory opened")
	}

	if os.Geteuid() != 0 {
		t.Skip("the owners need root: only root can give a file away")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	os.Chown(dir, uid, gid)
	f, err = OpenFile(p, os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if st := stat(t, p); st.Uid != 0 {
		t.Fatalf("a file that was there went to %d", st.Uid)
	}
	q := filepath.Join(dir, "lock")
	f, err = OpenFile(q, os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if st := stat(t, q); int(st.Uid) != uid || int(st.Gid) != gid {
		t.Fatalf("owner %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
	}
}
