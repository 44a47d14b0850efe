package maildir

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/store"
)

// clock is a settable time for the policy tests.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock                   { return &clock{t: time.Unix(1_800_000_000, 0)} }
func policyOf(p store.Policy) func(string) store.Policy {
	return func(string) store.Policy { return p }
}

// clocked returns a Store for the policy tests with the policy p for every
// user, and the clock it runs on.
func clocked(t *testing.T, p store.Policy) (*Store, *clock) {
	c := newClock()
	s := New(t.TempDir())
	s.SetClock(c.now)
	s.SetPolicy(policyOf(p))
	return s, c
}

// fill delivers n messages "m0".."m(n-1)" to u, one second apart on c if
// it is not nil.
func fill(t *testing.T, s *Store, c *clock, n int) {
	t.Helper()
	for i := range n {
		if err := s.Deliver(context.Background(), "u", strings.NewReader(fmt.Sprintf("m%d\r\n", i))); err != nil {
			t.Fatal(err)
		}
		if c != nil {
			c.advance(time.Second)
		}
	}
}

func uids(t *testing.T, s *Store) []string {
	t.Helper()
	m, err := s.Open(context.Background(), "u")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var out []string
	for _, msg := range m.Messages() {
		out = append(out, msg.UID)
	}
	return out
}

func commit(t *testing.T, s *Store, del ...int) {
	t.Helper()
	m, err := s.Open(context.Background(), "u")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Commit(del); err != nil {
		t.Fatal(err)
	}
}

func TestDeletionWindowAndRestore(t *testing.T) {
	ctx := context.Background()
	s, c := clocked(t, store.Policy{Window: time.Hour})
	fill(t, s, c, 4)
	before := uids(t, s)
	commit(t, s, 1, 2)
	if got := uids(t, s); !slices.Equal(got, []string{before[0], before[3]}) {
		t.Fatalf("after deleting 2 and 3: %v", got)
	}
	st, err := s.Stats(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 2 || st.Held != 2 || st.HeldOctets != 8 || !st.OldestDeleted.Equal(c.now()) {
		t.Fatalf("stats = %+v", st)
	}
	// A sweep within the window purges nothing.
	c.advance(59 * time.Minute)
	res, err := s.Sweep(ctx, "u", store.Policy{Window: time.Hour}, c.now())
	if err != nil || len(res.Purged)+len(res.Expired) != 0 {
		t.Fatalf("sweep inside the window: %+v, %v", res, err)
	}
	// Restore puts them back under their original UIDs.
	restored, err := s.Restore(ctx, "u", time.Time{}, false)
	if err != nil || len(restored) != 2 {
		t.Fatalf("restore: %v, %v", restored, err)
	}
	got := uids(t, s)
	slices.Sort(got)
	want := slices.Clone(before)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("after restore: %v, want %v", got, want)
	}
	// Deleted again, restored as new: new UIDs, same contents.
	commit(t, s, 0)
	restored, err = s.Restore(ctx, "u", time.Time{}, true)
	if err != nil || len(restored) != 1 || restored[0].UID == before[0] {
		t.Fatalf("restore --as-new: %+v, %v", restored, err)
	}
	m := openT(t, s, "u")
	var bodies []string
	for i, msg := range m.Messages() {
		if msg.UID == before[0] {
			t.Errorf("old UID %s still listed", msg.UID)
		}
		bodies = append(bodies, body(t, m, i))
	}
	m.Close()
	slices.Sort(bodies)
	if strings.Join(bodies, "") != "m0\r\nm1\r\nm2\r\nm3\r\n" {
		t.Fatalf("bodies after restore: %q", bodies)
	}
}

func TestRestoreSince(t *testing.T) {
	ctx := context.Background()
	s, c := clocked(t, store.Policy{Window: 24 * time.Hour})
	fill(t, s, c, 3)
	all := uids(t, s)
	commit(t, s, 0)
	c.advance(time.Hour)
	cut := c.now()
	commit(t, s, 0) // the second message, now first
	restored, err := s.Restore(ctx, "u", cut, false)
	if err != nil || len(restored) != 1 || restored[0].UID != all[1] {
		t.Fatalf("restore since: %+v, %v", restored, err)
	}
	if got := uids(t, s); len(got) != 2 || slices.Contains(got, all[0]) {
		t.Fatalf("after restore since: %v", got)
	}
}

func TestWindowPurge(t *testing.T) {
	ctx := context.Background()
	p := store.Policy{Window: 10 * time.Second}
	s, c := clocked(t, p)
	fill(t, s, c, 3)
	commit(t, s, 0, 1)
	c.advance(10 * time.Second)
	res, err := s.Sweep(ctx, "u", p, c.now())
	if err != nil || len(res.Purged) != 2 || len(res.Expired) != 0 {
		t.Fatalf("sweep after the window: %+v, %v", res, err)
	}
	if st, _ := s.Stats(ctx, "u"); st.Held != 0 || st.Messages != 1 {
		t.Fatalf("stats after purge: %+v", st)
	}
	if r, err := s.Restore(ctx, "u", time.Time{}, false); err != nil || len(r) != 0 {
		t.Fatalf("restore after purge: %v, %v", r, err)
	}
}

func TestZeroWindowDeletesAtOnce(t *testing.T) {
	s, c := clocked(t, store.Policy{})
	fill(t, s, c, 2)
	commit(t, s, 0)
	if st, _ := s.Stats(context.Background(), "u"); st.Held != 0 || st.Messages != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestExpireFromDelivery(t *testing.T) {
	ctx := context.Background()
	s, c := clocked(t, store.Policy{})
	fill(t, s, c, 3) // delivered at t0, t0+1s, t0+2s; now t0+3s
	p := store.Policy{Expire: 5 * time.Second}
	c.advance(time.Second) // t0+4s: nothing is 5 s old
	if res, err := s.Sweep(ctx, "u", p, c.now()); err != nil || len(res.Expired) != 0 {
		t.Fatalf("early sweep: %+v, %v", res, err)
	}
	c.advance(2 * time.Second) // t0+6s: the first two are
	all := uids(t, s)
	res, err := s.Sweep(ctx, "u", p, c.now())
	if err != nil || len(res.Expired) != 2 || res.Expired[0].UID != all[0] || len(res.Purged) != 0 {
		t.Fatalf("sweep: %+v, %v", res, err)
	}
	if got := uids(t, s); !slices.Equal(got, all[2:]) {
		t.Fatalf("left %v, want %v", got, all[2:])
	}
	if st, _ := s.Stats(ctx, "u"); st.Held != 0 {
		t.Fatalf("expired without a window but held: %+v", st)
	}
}

func TestExpireIntoWindow(t *testing.T) {
	ctx := context.Background()
	s, c := clocked(t, store.Policy{})
	fill(t, s, c, 2)
	p := store.Policy{Expire: time.Second, Window: time.Minute}
	res, err := s.Sweep(ctx, "u", p, c.now())
	if err != nil || len(res.Expired) != 2 || len(res.Purged) != 0 {
		t.Fatalf("sweep: %+v, %v", res, err)
	}
	if st, _ := s.Stats(ctx, "u"); st.Held != 2 || st.Messages != 0 {
		t.Fatalf("stats: %+v", st)
	}
	c.advance(time.Minute)
	if res, err = s.Sweep(ctx, "u", p, c.now()); err != nil || len(res.Purged) != 2 {
		t.Fatalf("purge: %+v, %v", res, err)
	}
}

func TestExpireFromRetrieval(t *testing.T) {
	ctx := context.Background()
	s, c := clocked(t, store.Policy{})
	fill(t, s, c, 3)
	all := uids(t, s)
	p := store.Policy{Expire: 10 * time.Second, FromRetrieval: true}
	c.advance(time.Hour)
	if res, err := s.Sweep(ctx, "u", p, c.now()); err != nil || len(res.Expired) != 0 {
		t.Fatalf("never retrieved, yet expired: %+v, %v", res, err)
	}
	// A session retrieves the second message.
	m, err := s.Open(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.(store.RetrievalRecorder).Retrieved([]int{1}, c.now()); err != nil {
		t.Fatal(err)
	}
	m.Close()
	// A later retrieval does not restart the clock.
	c.advance(5 * time.Second)
	m, _ = s.Open(ctx, "u")
	m.(store.RetrievalRecorder).Retrieved([]int{1}, c.now())
	m.Close()
	if st, _ := s.Stats(ctx, "u"); st.Retrieved != 1 {
		t.Fatalf("retrieved = %d, want 1", st.Retrieved)
	}
	c.advance(4 * time.Second)
	if res, _ := s.Sweep(ctx, "u", p, c.now()); len(res.Expired) != 0 {
		t.Fatalf("expired 9 s after retrieval: %+v", res)
	}
	c.advance(time.Second)
	res, err := s.Sweep(ctx, "u", p, c.now())
	if err != nil || len(res.Expired) != 1 || res.Expired[0].UID != all[1] {
		t.Fatalf("sweep: %+v, %v", res, err)
	}
}

func TestSweepSkipsOpenMaildrop(t *testing.T) {
	s, c := clocked(t, store.Policy{})
	fill(t, s, c, 2)
	m := openT(t, s, "u")
	_, err := s.Sweep(context.Background(), "u", store.Policy{Expire: time.Nanosecond}, c.now().Add(time.Hour))
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("sweep during a session: %v, want ErrLocked", err)
	}
	if _, err := s.Restore(context.Background(), "u", time.Time{}, false); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("restore during a session: %v, want ErrLocked", err)
	}
	m.Close()
	if got := uids(t, s); len(got) != 2 {
		t.Fatalf("%d messages left", len(got))
	}
}

func TestLegalHold(t *testing.T) {
	ctx := context.Background()
	s, c := clocked(t, store.Policy{})
	fill(t, s, c, 3)
	if err := s.SetHold(ctx, "u", store.Hold{Set: true, Reason: "case 4711"}); err != nil {
		t.Fatal(err)
	}
	h, err := s.Hold(ctx, "u")
	if err != nil || !h.Set || h.Reason != "case 4711" || !h.Since.Equal(c.now()) {
		t.Fatalf("hold = %+v, %v", h, err)
	}
	// No window, but the hold keeps a client's deletion in the holding area.
	commit(t, s, 0)
	harsh := store.Policy{Expire: time.Nanosecond}
	for range 3 {
		c.advance(24 * time.Hour)
		res, err := s.Sweep(ctx, "u", harsh, c.now())
		if err != nil || len(res.Expired)+len(res.Purged) != 0 {
			t.Fatalf("sweep under hold: %+v, %v", res, err)
		}
	}
	if st, _ := s.Stats(ctx, "u"); st.Messages != 2 || st.Held != 1 || !st.Hold.Set {
		t.Fatalf("stats under hold: %+v", st)
	}
	// Released: the next sweep applies the policy again.
	if err := s.SetHold(ctx, "u", store.Hold{}); err != nil {
		t.Fatal(err)
	}
	res, err := s.Sweep(ctx, "u", harsh, c.now())
	if err != nil || len(res.Expired) != 2 || len(res.Purged) != 1 {
		t.Fatalf("sweep after release: %+v, %v", res, err)
	}
}

func TestUsers(t *testing.T) {
	root := t.TempDir()
	s := New(root)
	for _, u := range []string{"bob", "alice"} {
		if err := s.Create(u); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "stray"), nil, 0o600)
	os.Mkdir(filepath.Join(root, ".hidden"), 0o700)
	got, err := s.Users(context.Background())
	slices.Sort(got)
	if err != nil || !slices.Equal(got, []string{"alice", "bob"}) {
		t.Fatalf("users = %v, %v", got, err)
	}
}

func TestCrashDuringHeldCommit(t *testing.T) {
	for _, point := range []string{"maildir.commit.journaled", "maildir.commit.first-unlinked"} {
		t.Run(point, func(t *testing.T) {
			root := t.TempDir()
			s := New(root)
			fill(t, s, nil, 4)
			all := uids(t, s)
			runCrash(t, root, point, "POUCH_CRASH_DELETE=0,2", "POUCH_CRASH_WINDOW=1h")
			// The next Open finishes the commit as decided: into the holding area.
			if got := uids(t, s); !slices.Equal(got, []string{all[1], all[3]}) {
				t.Fatalf("after crash: %v", got)
			}
			st, _ := s.Stats(context.Background(), "u")
			if st.Held != 2 {
				t.Fatalf("held = %d, want 2 (stats %+v)", st.Held, st)
			}
			if _, err := s.Restore(context.Background(), "u", time.Time{}, false); err != nil {
				t.Fatal(err)
			}
			got := uids(t, s)
			slices.Sort(got)
			if !slices.Equal(got, all) {
				t.Fatalf("after restore: %v, want %v", got, all)
			}
		})
	}
}

func TestCrashDuringPurge(t *testing.T) {
	root := t.TempDir()
	s := New(root)
	s.SetPolicy(policyOf(store.Policy{Window: time.Hour}))
	fill(t, s, nil, 3)
	commit(t, s, 0, 1)
	runCrash(t, root, "maildir.purge.before-unlink", "POUCH_CRASH_PURGE=1")
	// Killed before the first unlink: everything is still there, restorable,
	// and the maildrop is not locked by the dead process.
	if st, _ := s.Stats(context.Background(), "u"); st.Held != 2 || st.Messages != 1 {
		t.Fatalf("stats after crash: %+v", st)
	}
	if r, err := s.Restore(context.Background(), "u", time.Time{}, false); err != nil || len(r) != 2 {
		t.Fatalf("restore after crash: %v, %v", r, err)
	}
}

// Files that an operator's command running as root creates in a Maildir
// belong to the Maildir's owner, so that the server's service user can use
// them.
func TestRootCreatesFilesForTheOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to change owners")
	}
	ctx := context.Background()
	root := filepath.Join(t.TempDir(), "mail")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	const uid, gid = 4242, 4343
	if err := os.Chown(root, uid, gid); err != nil {
		t.Fatal(err)
	}
	s := New(root)
	if err := s.SetHold(ctx, "u", store.Hold{Set: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.Deliver(ctx, "u", strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	commit(t, s, 0) // under hold: into the holding area
	var paths []string
	filepath.Walk(filepath.Join(root, "u"), func(p string, _ os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	})
	if len(paths) < 8 {
		t.Fatalf("only %v", paths)
	}
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s belongs to %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, gid)
		}
	}
}

// A sweep killed after journaling its expiries: the next Open moves them
// into the holding area as decided, and they can be restored.
func TestCrashDuringExpiry(t *testing.T) {
	root := t.TempDir()
	s := New(root)
	fill(t, s, nil, 3)
	all := uids(t, s)
	for _, point := range []string{"maildir.commit.journaled", "maildir.commit.first-unlinked"} {
		runCrash(t, root, point, "POUCH_CRASH_EXPIRE=1")
		if got := uids(t, s); len(got) != 0 {
			t.Fatalf("%s: %d messages left after the replay, want 0", point, len(got))
		}
		if st, _ := s.Stats(context.Background(), "u"); st.Held != 3 {
			t.Fatalf("%s: %d held, want 3", point, st.Held)
		}
		if _, err := s.Restore(context.Background(), "u", time.Time{}, false); err != nil {
			t.Fatal(err)
		}
		if got := uids(t, s); !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(all))) {
			t.Fatalf("%s: after restore %v, want %v", point, got, all)
		}
	}
}

// A restore killed after its first move leaves every message exactly once,
// in the maildrop or in the holding area, and a second restore finishes it.
func TestCrashDuringRestore(t *testing.T) {
	for _, mode := range []string{"original", "as-new"} {
		t.Run(mode, func(t *testing.T) {
			root := t.TempDir()
			s := New(root)
			s.SetPolicy(policyOf(store.Policy{Window: time.Hour}))
			fill(t, s, nil, 3)
			commit(t, s, 0, 1, 2)
			runCrash(t, root, "maildir.restore.moved", "POUCH_CRASH_RESTORE="+mode)
			st, _ := s.Stats(context.Background(), "u")
			if st.Messages != 1 || st.Held != 2 {
				t.Fatalf("after the crash: %d in the maildrop, %d held; want 1 and 2", st.Messages, st.Held)
			}
			r, err := s.Restore(context.Background(), "u", time.Time{}, mode == "as-new")
			if err != nil || len(r) != 2 {
				t.Fatalf("second restore: %v, %v", r, err)
			}
			m := openT(t, s, "u")
			var bodies []string
			for i := range m.Messages() {
				bodies = append(bodies, body(t, m, i))
			}
			slices.Sort(bodies)
			if strings.Join(bodies, "") != "m0\r\nm1\r\nm2\r\n" {
				t.Fatalf("bodies after restore: %q", bodies)
			}
		})
	}
}
