package maildir

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/store"
)

// snapshot returns user u's messages as UID → body.
func snapshot(t *testing.T, s *Store) map[string]string {
	t.Helper()
	m := openT(t, s, "u")
	defer m.Close()
	out := map[string]string{}
	for i, msg := range m.Messages() {
		if _, dup := out[msg.UID]; dup {
			t.Fatalf("UID %s listed twice", msg.UID)
		}
		out[msg.UID] = body(t, m, i)
	}
	return out
}

// uidOfBody returns the UID of the message with body b in snap.
func uidOfBody(t *testing.T, snap map[string]string, b string) string {
	t.Helper()
	for uid, got := range snap {
		if got == b {
			return uid
		}
	}
	t.Fatalf("no message %q in %v", b, snap)
	return ""
}

// Two files with one base name are two messages: the name stays with one,
// the other is renamed aside with a warning, and each keeps its UID in
// every later session; deleting one leaves the other.
func TestTwinsListedApart(t *testing.T) {
	const x = "1700000001.M1P1.mx"
	for _, tc := range []struct {
		name      string
		make      func(t *testing.T, dir string)
		keeper    string // the body that keeps the name
		twinBody  string
		twinFlags string // the renamed file's info part
	}{
		{"new and cur", func(t *testing.T, dir string) {
			put(t, dir, "new", x, "in new\n")
			put(t, dir, "cur", x+":2,S", "in cur\n")
		}, "in cur\r\n", "in new\r\n", ""},
		{"two in cur", func(t *testing.T, dir string) {
			put(t, dir, "cur", x+":2,S", "seen\n")
			put(t, dir, "cur", x+":2,RS", "replied\n")
		}, "replied\r\n", "seen\r\n", ":2,S"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "u")
			tc.make(t, dir)
			var logs bytes.Buffer
			s := New(root)
			s.SetLogger(slog.New(slog.NewTextHandler(&logs, nil)))
			first := snapshot(t, s)
			if len(first) != 2 {
				t.Fatalf("%d messages, want 2: %v", len(first), first)
			}
			if first[x] != tc.keeper {
				t.Fatalf("%s is %q, want %q", x, first[x], tc.keeper)
			}
			var twin string
			for uid := range first {
				if uid != x {
					twin = uid
				}
			}
			if first[twin] != tc.twinBody || !ownName(twin) {
				t.Fatalf("the other is %s: %q", twin, first[twin])
			}
			if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), twin) {
				t.Fatalf("no warning naming the new name: %s", logs.String())
			}
			if _, err := os.Stat(filepath.Join(dir, subOf(tc.twinFlags), twin+tc.twinFlags)); err != nil {
				t.Fatalf("renamed file: %v", err)
			}
			// The same in the next sessions, with and without the index.
			for _, drop := range []bool{false, true} {
				if drop {
					os.Remove(filepath.Join(dir, indexFile))
				}
				if got := snapshot(t, s); !mapsEqual(got, first) {
					t.Fatalf("next session: %v, want %v", got, first)
				}
			}
			// Deleting one leaves the other, under its UID.
			m := openT(t, s, "u")
			i := slices.IndexFunc(m.Messages(), func(msg store.Message) bool { return msg.UID == x })
			if err := m.Commit([]int{i}); err != nil {
				t.Fatal(err)
			}
			m.Close()
			if got := snapshot(t, s); len(got) != 1 || got[twin] != tc.twinBody {
				t.Fatalf("after deleting %s: %v", x, got)
			}
		})
	}
}

func subOf(info string) string {
	if info == "" {
		return "new"
	}
	return "cur"
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Two names of one file (hard links, as a move made with link and unlink
// leaves them when it is interrupted) are one message, listed once, and
// its commit removes every name, also one linked during the session, and
// also when the commit is killed after its first unlink.
func TestHardLinkTwin(t *testing.T) {
	for _, tc := range []struct {
		name   string
		during bool   // linked during the session, not before
		point  string // kill the commit here
	}{
		{"before", false, ""},
		{"during", true, ""},
		{"before, killed", false, "maildir.commit.first-unlinked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "u")
			const x = "1700000001.M1P1.mx"
			put(t, dir, "new", x, "linked\n")
			put(t, dir, "new", "1700000002.M1P1.mx", "other\n")
			link := func() {
				if err := os.Link(filepath.Join(dir, "new", x), filepath.Join(dir, "cur", x+":2,S")); err != nil {
					t.Fatal(err)
				}
			}
			if !tc.during {
				link()
			}
			s := New(root)
			if got := snapshot(t, s); len(got) != 2 || got[x] != "linked\r\n" {
				t.Fatalf("listed %v", got)
			}
			if tc.point != "" {
				runCrash(t, root, tc.point, "POUCH_CRASH_DELETE=0")
			} else {
				m := openT(t, s, "u")
				if tc.during {
					link()
				}
				if err := m.Commit([]int{0}); err != nil {
					t.Fatal(err)
				}
				m.Close()
			}
			if got := snapshot(t, s); len(got) != 1 || got["1700000002.M1P1.mx"] != "other\r\n" {
				t.Fatalf("after deleting it: %v", got)
			}
			if names, _ := fsx.Names(filepath.Join(dir, "cur")); len(names) != 0 {
				t.Fatalf("cur/ holds %v", names)
			}
		})
	}
}

// The file that the index knew under the name keeps it, whether or not
// its directory changed since: a twin that appears later is the new one.
func TestTwinAfterIndex(t *testing.T) {
	const x = "1700000001.M1P1.mx"
	for _, trusted := range []bool{true, false} {
		t.Run(map[bool]string{true: "new unchanged", false: "both changed"}[trusted], func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "u")
			put(t, dir, "new", x, "original\n")
			put(t, dir, "new", "1700000000.M1P1.mx", "other\n")
			s := New(root)
			if trusted {
				settle(t)
			}
			snapshot(t, s) // the index now has new/x
			if !trusted {
				// Something else changes in new/, so both are listed.
				put(t, dir, "new", "1700000002.M1P1.mx", "third\n")
			}
			put(t, dir, "cur", x+":2,S", "copy\n")
			before := listings.Load()
			got := snapshot(t, s)
			if n := listings.Load() - before; trusted && n != 1 {
				t.Fatalf("%d directories listed, want cur/ alone", n)
			}
			if got[x] != "original\r\n" {
				t.Fatalf("%s is %q, want the original: %v", x, got[x], got)
			}
			if uid := uidOfBody(t, got, "copy\r\n"); uid == x {
				t.Fatal("the copy has the original's UID")
			}
		})
	}
}

// A twin that appears during a session is not removed by the session's
// commit, nor by the replay of its journal after a crash; the next Open
// lists it as a new message, not under the UID that was just deleted.
func TestCrashWithTwinDuringSession(t *testing.T) {
	for _, point := range []string{"", "maildir.commit.journaled", "maildir.commit.first-unlinked", "maildir.commit.disposed"} {
		t.Run("crash="+point, func(t *testing.T) {
			root := t.TempDir()
			s := New(root)
			fill(t, s, nil, 3)
			before := snapshot(t, s)
			x := uidOfBody(t, before, "m1\r\n")
			twin := "cur/" + x + ":2,S"
			env := []string{"POUCH_CRASH_DELETE=1", "POUCH_CRASH_TWIN=" + twin}
			if point == "" {
				cmd := crashCommand(root, "", env...)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("commit: %v\n%s", err, out)
				}
			} else {
				runCrash(t, root, point, env...)
			}
			if _, err := os.Stat(filepath.Join(root, "u", twin)); err != nil && point != "" {
				// The replay has not run yet: the twin must be there.
				t.Fatalf("twin gone after the crash: %v", err)
			}
			after := snapshot(t, s)
			if len(after) != 3 {
				t.Fatalf("%d messages, want 3: %v", len(after), after)
			}
			if _, ok := after[x]; ok {
				t.Fatalf("%s listed again after it was deleted", x)
			}
			if uid := uidOfBody(t, after, "twin\r\n"); !ownName(uid) {
				t.Fatalf("twin under %s", uid)
			}
			// Stable from then on.
			if again := snapshot(t, s); !mapsEqual(again, after) {
				t.Fatalf("next session: %v, want %v", again, after)
			}
		})
	}
}

// A twin renamed aside by an Open killed right after the rename is a
// message with its new name at the next Open, listed once.
func TestCrashRenamingTwin(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	const x = "1700000001.M1P1.mx"
	put(t, dir, "new", x, "in new\n")
	put(t, dir, "cur", x+":2,S", "in cur\n")
	runCrash(t, root, "maildir.open.twin-renamed", "POUCH_CRASH_DELETE=")
	got := snapshot(t, New(root))
	if len(got) != 2 || got[x] != "in cur\r\n" || uidOfBody(t, got, "in new\r\n") == x {
		t.Fatalf("after the crash: %v", got)
	}
}

// Restoring a message under its name, after a twin of it was renamed
// aside, gives it back its own UID.
func TestRestoreAfterTwin(t *testing.T) {
	root := t.TempDir()
	s := New(root)
	s.SetPolicy(policyOf(store.Policy{Window: time.Hour}))
	fill(t, s, nil, 2)
	before := snapshot(t, s)
	x := uidOfBody(t, before, "m0\r\n")
	commit(t, s, 0)
	put(t, filepath.Join(root, "u"), "cur", x+":2,S", "twin\n")
	if got := snapshot(t, s); len(got) != 2 || got[x] != "" {
		t.Fatalf("with the twin: %v", got)
	}
	if r, err := s.Restore(context.Background(), "u", time.Time{}, false); err != nil || len(r) != 1 {
		t.Fatalf("restore: %v, %v", r, err)
	}
	got := snapshot(t, s)
	if len(got) != 3 || got[x] != "m0\r\n" {
		t.Fatalf("after the restore: %v", got)
	}
}

// Usage counts both files of a twin.
func TestUsageCountsTwins(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	put(t, dir, "new", "1700000001.M1P1.mx,S=4", "abc\n")
	put(t, dir, "cur", "1700000001.M1P1.mx,S=4:2,S", "abc\n")
	n, octets, err := New(root).Usage("u")
	if err != nil || n != 2 || octets != 8 {
		t.Fatalf("usage %d, %d, %v; want 2, 8", n, octets, err)
	}
}
