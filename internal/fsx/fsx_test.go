package fsx

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/pouchmail/pouch/internal/crashpoint"
)

func TestWriteFileReplaces(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	for _, data := range []string{"one\n", "two, longer\n", ""} {
		if err := WriteFile(path, []byte(data), Options{Perm: 0o640}); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != data {
			t.Fatalf("got %q %v, want %q", got, err, data)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
			t.Fatalf("mode %o", fi.Mode().Perm())
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("left in the directory: %v", ents)
	}
}

// A replacement that is discarded leaves the file as it was and no
// temporary file.
func TestDiscard(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	os.WriteFile(path, []byte("old"), 0o600)
	f, err := Create(path, Options{Perm: 0o600})
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("new")
	f.Discard()
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Fatalf("got %q", got)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("left in the directory: %v", ents)
	}
	// After a commit, Discard leaves the new file alone.
	f, _ = Create(path, Options{Perm: 0o600})
	f.WriteString("new")
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	f.Discard()
	if got, _ := os.ReadFile(path); string(got) != "new" {
		t.Fatalf("got %q", got)
	}
	f.Close()
}

// A file committed stays open under its own name, for a caller that goes
// on writing.
func TestCommitKeepsFileOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	f, err := Create(path, Options{Perm: 0o600})
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("a")
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("b"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got, _ := os.ReadFile(path); string(got) != "ab" {
		t.Fatalf("got %q", got)
	}
}

func TestRemoveTemps(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a[1].json")
	left := filepath.Join(dir, TempPrefix(path)+"123")
	other := filepath.Join(dir, TempPrefix(filepath.Join(dir, "b.json"))+"123")
	for _, p := range []string{path, left, other} {
		os.WriteFile(p, nil, 0o600)
	}
	RemoveTemps(path)
	if _, err := os.Stat(left); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("temporary file left")
	}
	for _, p := range []string{path, other} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}
}

// OwnKeep keeps the owner of the file replaced; a new file gets its
// directory's (root only).
func TestOwnKeep(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving files away needs root")
	}
	dir := t.TempDir()
	if err := os.Chown(dir, 1111, 2222); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "f")
	if err := WriteFile(path, nil, Options{Perm: 0o600, Owner: OwnKeep}); err != nil {
		t.Fatal(err)
	}
	if uid, gid := ids(t, path); uid != 1111 || gid != 2222 {
		t.Fatalf("new file owned by %d:%d", uid, gid)
	}
	os.Chown(path, 4321, 8765)
	if err := WriteFile(path, []byte("x"), Options{Perm: 0o600, Owner: OwnKeep}); err != nil {
		t.Fatal(err)
	}
	if uid, gid := ids(t, path); uid != 4321 || gid != 8765 {
		t.Fatalf("replaced file owned by %d:%d", uid, gid)
	}
	if err := WriteFile(path, []byte("x"), Options{Perm: 0o600, Owner: OwnDir}); err != nil {
		t.Fatal(err)
	}
	if uid, gid := ids(t, path); uid != 1111 || gid != 2222 {
		t.Fatalf("OwnDir: owned by %d:%d", uid, gid)
	}
	if err := WriteFile(path, []byte("x"), Options{Perm: 0o600}); err != nil {
		t.Fatal(err)
	}
	if uid, _ := ids(t, path); uid != 0 {
		t.Fatalf("OwnSelf: owned by %d", uid)
	}
}

func ids(t *testing.T, path string) (uid, gid uint32) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid
}

const crashChild = "FSX_CRASH_CHILD"

func TestMain(m *testing.M) {
	if path := os.Getenv(crashChild); path != "" {
		WriteFile(path, []byte("new\n"), Options{Perm: 0o600, Synced: "fsx.synced", Renamed: "fsx.renamed"})
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A process killed in the middle of a replacement leaves the old content
// whole before the rename, the new content whole after it.
func TestCrashDuringReplace(t *testing.T) {
	for point, want := range map[string]string{"fsx.synced": "old\n", "fsx.renamed": "new\n"} {
		t.Run(point, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "f")
			os.WriteFile(path, []byte("old\n"), 0o600)
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashChild+"="+path, crashpoint.Env+"="+point)
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the child was not killed: %v", err)
			}
			if got, _ := os.ReadFile(path); string(got) != want {
				t.Fatalf("got %q, want %q", got, want)
			}
		})
	}
}
