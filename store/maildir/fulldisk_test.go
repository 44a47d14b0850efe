package maildir

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/audit"
	"github.com/pouchmail/pouch/client"
	"github.com/pouchmail/pouch/internal/testkit"
	"github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/server/servertest"
	"github.com/pouchmail/pouch/store"
)

// smallDisk mounts a tmpfs of size octets on a new directory for the test.
// Mounting needs root: without it the test is skipped, unless
// POUCH_REQUIRE_INTEROP=1.
func smallDisk(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		testkit.SkipOrFail(t, "cannot mount a tmpfs (needs root): %v", err)
	}
	// Cleanups run last first: unmounted before TempDir removes dir.
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fillDisk writes a file in dir until the disk is full, to the last octet.
func fillDisk(t *testing.T, dir string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "filler"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, chunk := range []int{64 << 10, 4 << 10, 1} {
		buf := make([]byte, chunk)
		for {
			_, err := f.Write(buf)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	// A block ext4 keeps for the filler's own extent tree is reported free
	// but cannot take the filler's data: small files take it.
	for i := 0; freeSpace(t, dir) != 0 && i < 64; i++ {
		err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("filler-%d", i)), make([]byte, 4096), 0o600)
		if err != nil && !errors.Is(err, syscall.ENOSPC) {
			t.Fatal(err)
		}
	}
	if free := freeSpace(t, dir); free != 0 {
		t.Fatalf("%d octets still free", free)
	}
}

// freeSpace returns the octets free on dir's filesystem.
func freeSpace(t *testing.T, dir string) uint64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Bavail * uint64(st.Bsize)
}

// fullMaildrop delivers n messages to u under disk/mail and fills the disk.
func fullMaildrop(t *testing.T, disk string, n int) *Store {
	t.Helper()
	s := New(filepath.Join(disk, "mail"))
	for i := range n {
		if err := s.Deliver(context.Background(), "u", strings.NewReader(fmt.Sprintf("m%d\r\n", i))); err != nil {
			t.Fatal(err)
		}
	}
	fillDisk(t, disk)
	if err := s.Deliver(context.Background(), "u", strings.NewReader("one more\r\n")); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("delivery to a full disk: %v, want ENOSPC", err)
	}
	return s
}

// On a full disk, a login (whose index write fails), the recording of
// retrievals (which fails) and a commit that removes mail all go through,
// and the commit frees the space. A commit too large for the journal's
// reserve goes in batches; one that moves the messages into the holding
// area needs no space on tmpfs either.
func TestDeleteOnFullDisk(t *testing.T) {
	for _, tc := range []struct {
		name   string
		n      int
		delete int // the first delete messages
		window time.Duration
	}{
		{"some", 12, 5, 0},
		{"all", 12, 12, 0},
		{"more than the reserve holds", 300, 300, 0},
		{"into the deletion window", 12, 5, time.Hour},
		{"more than the reserve holds, into the deletion window", 300, 250, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := smallDisk(t, 2<<20)
			s := fullMaildrop(t, disk, tc.n)
			if tc.window > 0 {
				s.SetPolicy(policyOf(store.Policy{Window: tc.window}))
			}
			before := uids(t, s) // the login on the full disk
			md := openT(t, s, "u")
			var del []int
			for i := range tc.delete {
				del = append(del, i)
			}
			if err := md.(*maildrop).Retrieved(del, time.Now()); !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("recording retrievals on a full disk: %v, want ENOSPC", err)
			}
			if err := md.Commit(del); err != nil {
				t.Fatalf("commit on a full disk: %v", err)
			}
			md.Close()
			free := freeSpace(t, disk)
			if got := uids(t, s); !slices.Equal(got, before[tc.delete:]) {
				t.Fatalf("left %d messages, want %d", len(got), tc.n-tc.delete)
			}
			dir := filepath.Join(disk, "mail", "u")
			if journalPending(t, dir) {
				t.Fatal("journal still pending")
			}
			if fi, err := os.Stat(filepath.Join(dir, expungeFile)); err != nil || fi.Size() != journalSize {
				t.Fatalf("journal after the commit: %v, %v; want %d octets", fi, err, journalSize)
			}
			st, err := s.Stats(context.Background(), "u")
			if err != nil {
				t.Fatal(err)
			}
			if tc.window > 0 {
				if st.Held != tc.delete {
					t.Fatalf("%d held, want %d", st.Held, tc.delete)
				}
				return
			}
			// Each message took a page of the tmpfs.
			if free < uint64(tc.delete)*4096 {
				t.Fatalf("%d octets free after deleting %d messages", free, tc.delete)
			}
		})
	}
}

// A kill during a commit on a full disk leaves each message in the
// maildrop or removed as the journal decided; a commit in batches is all
// or nothing batch by batch.
func TestCrashDuringFullDiskCommit(t *testing.T) {
	for _, tc := range []struct {
		point string
		n     int
		left  int // messages left; -1: the first batch is removed, the others stay
	}{
		{"maildir.commit.before-journal", 12, 12},
		{"maildir.commit.journaled", 12, 0},
		{"maildir.commit.first-unlinked", 12, 0},
		{"maildir.commit.disposed", 12, 0},
		{"maildir.commit.batch-done", 300, -1},
	} {
		t.Run(tc.point, func(t *testing.T) {
			disk := smallDisk(t, 2<<20)
			s := fullMaildrop(t, disk, tc.n)
			all := uids(t, s)
			del := make([]string, tc.n)
			for i := range del {
				del[i] = strconv.Itoa(i)
			}
			root := filepath.Join(disk, "mail")
			runCrash(t, root, tc.point, "POUCH_CRASH_DELETE="+strings.Join(del, ","))
			got := uids(t, s)
			left := tc.left
			if left < 0 {
				left = len(got)
				if left == 0 || left == tc.n {
					t.Fatalf("%d of %d left after the first batch", left, tc.n)
				}
			}
			if want := all[tc.n-left:]; !slices.Equal(got, want) {
				t.Fatalf("%d left after the crash, want %d: the last ones", len(got), len(want))
			}
			if journalPending(t, filepath.Join(root, "u")) {
				t.Fatal("journal still pending after the next Open")
			}
		})
	}
}

// Through a real POP3 session: a user whose maildrop filled the disk logs
// in, downloads, deletes all but one message and quits; the server answers
// +OK, and the disk has room again. The audit log is on the same full disk, and
// the retention policy records retrievals at QUIT: neither write stops
// the deletions.
func TestPOP3DeleteOnFullDisk(t *testing.T) {
	disk := smallDisk(t, 1<<20)
	const n = 20
	s := New(filepath.Join(disk, "mail"))
	for i := range n {
		msg := fmt.Sprintf("Subject: %d\r\n\r\n%s\r\n", i, strings.Repeat("x", 10000))
		if err := s.Deliver(context.Background(), "alice", strings.NewReader(msg)); err != nil {
			t.Fatal(err)
		}
	}
	al, err := audit.Open(filepath.Join(disk, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer al.Close()
	_, addr, _ := servertest.Start(t, server.Config{
		Store: s, Auth: servertest.Users{"alice": "secret"}, Audit: al,
		Logger:        slog.New(slog.NewTextHandler(t.Output(), nil)),
		Retention:     retention{store.Policy{Expire: 30 * 24 * time.Hour, FromRetrieval: true}},
		AuthFailDelay: -1, Hostname: "localhost",
	})
	fillDisk(t, disk)
	free := freeSpace(t, disk)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addr, client.Options{TLS: client.TLSNone, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.User("alice"); err != nil {
		t.Fatal(err)
	}
	if err := c.Pass("secret"); err != nil {
		t.Fatalf("login on a full disk: %v", err)
	}
	count, _, err := c.Stat()
	if err != nil || count != n {
		t.Fatalf("STAT: %d, %v", count, err)
	}
	for i := 1; i <= 2; i++ {
		r, err := c.Retr(i)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, r)
		r.Close()
	}
	// Message 1 stays: its first retrieval is recorded at QUIT, which
	// fails on the full disk.
	for i := 2; i <= n; i++ {
		if err := c.Dele(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT on a full disk: %v", err)
	}
	// Each message took three pages of the tmpfs; the audit log's line
	// about the logout takes one of them.
	if got := freeSpace(t, disk); got < free+(n-1)*2*4096 {
		t.Fatalf("%d octets free after QUIT, want at least %d", got, free+(n-1)*2*4096)
	}
	if st, err := s.Stats(context.Background(), "alice"); err != nil || st.Messages != 1 {
		t.Fatalf("after QUIT: %+v, %v", st, err)
	}
	// The disk freed itself: mail is delivered again.
	if err := s.Deliver(context.Background(), "alice", strings.NewReader("again\r\n")); err != nil {
		t.Fatalf("delivery after QUIT: %v", err)
	}
}

type retention struct{ p store.Policy }

func (r retention) Policy(string) store.Policy  { return r.p }
func (r retention) Floor() (store.Policy, bool) { return r.p, false }

// smallExt4 mounts an ext4 filesystem of size octets, made in a file, on a
// new directory for the test. It is skipped where mkfs.ext4 or loop
// devices are missing (containers often have none).
func smallExt4(t *testing.T, size int64) string {
	t.Helper()
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		testkit.SkipOrFail(t, "mkfs.ext4 is not installed (e2fsprogs)")
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	// 4 KiB blocks as on a disk of any size, none reserved for root.
	if out, err := exec.Command(mkfs, "-q", "-F", "-b", "4096", "-m", "0", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop", img, dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount an ext4 image (needs root and loop devices): %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// On a full ext4 filesystem, where a directory that grows needs a block: a
// commit that removes mail succeeds; one that moves messages into a
// holding area that cannot be made, or whose directory has no room for
// them, fails and is undone: every message is still in the maildrop,
// nothing more is held, nothing is pending, and the same commit succeeds
// once there is space.
func TestDeleteOnFullExt4(t *testing.T) {
	for _, tc := range []struct {
		name    string
		window  time.Duration
		holding bool // the holding area exists before the disk fills
	}{
		{"unlink", 0, false},
		{"no holding area", time.Hour, false},
		{"holding area full", time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := smallExt4(t, 16<<20)
			s := New(filepath.Join(disk, "mail"))
			s.SetPolicy(policyOf(store.Policy{Window: tc.window}))
			const n = 200
			held := 0
			if tc.holding {
				held = 1
			}
			fill(t, s, nil, n+held)
			if tc.holding {
				commit(t, s, n) // the last: the others keep their numbers
			}
			fillDisk(t, disk)
			all := uids(t, s)
			del := make([]int, n)
			for i := range del {
				del[i] = i
			}
			md := openT(t, s, "u")
			err := md.Commit(del)
			md.Close()
			dir := filepath.Join(disk, "mail", "u")
			if journalPending(t, dir) {
				t.Fatal("journal pending after the commit")
			}
			if tc.window == 0 {
				if err != nil {
					t.Fatalf("commit on a full disk: %v", err)
				}
				if got := uids(t, s); len(got) != 0 {
					t.Fatalf("%d left, want 0", len(got))
				}
				return
			}
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("commit into the holding area on a full disk: %v, want ENOSPC", err)
			}
			if tc.holding != strings.Contains(err.Error(), "no space to move") {
				t.Fatalf("failed with %v", err)
			}
			if got := uids(t, s); !slices.Equal(got, all) {
				t.Fatalf("%d messages after the failed commit, want all %d", len(got), n)
			}
			if st, _ := s.Stats(context.Background(), "u"); st.Held != held {
				t.Fatalf("%d held after the failed commit, want %d", st.Held, held)
			}
			os.Remove(filepath.Join(disk, "filler"))
			commit(t, s, del...)
			if st, _ := s.Stats(context.Background(), "u"); st.Held != n+held || st.Messages != 0 {
				t.Fatalf("after the commit with space: %+v", st)
			}
		})
	}
}

// A commit into a full holding area on a full ext4 filesystem, killed after
// its journal or its first move: the next Open's replay runs out of space
// as the commit would have, undoes it, and the login succeeds with every
// message in the maildrop.
func TestCrashDuringFullExt4HeldCommit(t *testing.T) {
	for _, point := range []string{"maildir.commit.journaled", "maildir.commit.first-unlinked"} {
		t.Run(point, func(t *testing.T) {
			disk := smallExt4(t, 16<<20)
			root := filepath.Join(disk, "mail")
			s := New(root)
			s.SetPolicy(policyOf(store.Policy{Window: time.Hour}))
			const n = 200
			fill(t, s, nil, n+1)
			commit(t, s, n) // makes the holding area
			fillDisk(t, disk)
			all := uids(t, s)
			del := make([]string, n)
			for i := range del {
				del[i] = strconv.Itoa(i)
			}
			runCrash(t, root, point, "POUCH_CRASH_DELETE="+strings.Join(del, ","), "POUCH_CRASH_WINDOW=1h")
			if got := uids(t, s); !slices.Equal(got, all) {
				t.Fatalf("%d messages after the replay, want all %d", len(got), n)
			}
			if journalPending(t, filepath.Join(root, "u")) {
				t.Fatal("journal still pending")
			}
			if st, _ := s.Stats(context.Background(), "u"); st.Held != 1 {
				t.Fatalf("%d held, want 1", st.Held)
			}
		})
	}
}
