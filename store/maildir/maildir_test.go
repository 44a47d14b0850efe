package maildir

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Backend { return New(t.TempDir()) })
}

// put writes a file into a Maildir the way another MDA would.
func put(t *testing.T, dir, sub, name, content string) {
	t.Helper()
	if err := ensure(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, sub, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func openT(t *testing.T, s *Store, user string) store.Maildrop {
	t.Helper()
	m, err := s.Open(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func body(t *testing.T, m store.Maildrop, i int) string {
	t.Helper()
	r, err := m.Open(i)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestForeignFiles(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	// Written by Postfix (no size fields), Dovecot (S= and W=), and one with flags in cur/.
	put(t, dir, "new", "1700000002.V801I2M3.mx", "Subject: postfix\n\nlf body\n")
	put(t, dir, "cur", "1700000001.M5P6.mx,S=20,W=22:2,S", "Subject: dovecot\n\nx\n")
	put(t, dir, "new", "1700000003.M1P1.mx,S=4", "abc\n")
	put(t, dir, "new", ".hidden", "not a message")
	m := openT(t, New(root), "u")
	msgs := m.Messages()
	if len(msgs) != 3 {
		t.Fatalf("%d messages, want 3", len(msgs))
	}
	wantUIDs := []string{"1700000001.M5P6.mx,S=20,W=22", "1700000002.V801I2M3.mx", "1700000003.M1P1.mx,S=4"}
	wantSizes := []int64{22, 29, 5}
	for i := range msgs {
		if msgs[i].UID != wantUIDs[i] || msgs[i].Size != wantSizes[i] {
			t.Errorf("message %d = %+v, want %s size %d", i+1, msgs[i], wantUIDs[i], wantSizes[i])
		}
	}
	if got := body(t, m, 1); got != "Subject: postfix\r\n\r\nlf body\r\n" {
		t.Errorf("body %q", got)
	}
}

func TestUIDStableAcrossRenames(t *testing.T) {
	root := t.TempDir()
	s := New(root)
	if err := s.Deliver(context.Background(), "u", strings.NewReader("hello\r\n")); err != nil {
		t.Fatal(err)
	}
	m := openT(t, s, "u")
	uid := m.Messages()[0].UID
	m.Close()

	// Another program moves it to cur/ and sets a flag, between sessions.
	dir := filepath.Join(root, "u")
	names, _ := fsx.Names(filepath.Join(dir, "new"))
	if err := os.Rename(filepath.Join(dir, "new", names[0]), filepath.Join(dir, "cur", names[0]+":2,S")); err != nil {
		t.Fatal(err)
	}
	m = openT(t, s, "u")
	if got := m.Messages()[0].UID; got != uid {
		t.Fatalf("UID after rename %q, want %q", got, uid)
	}
	// And again during a session: the message is still readable and deletable.
	if err := os.Rename(filepath.Join(dir, "cur", names[0]+":2,S"), filepath.Join(dir, "cur", names[0]+":2,RS")); err != nil {
		t.Fatal(err)
	}
	if got := body(t, m, 0); got != "hello\r\n" {
		t.Fatalf("body after rename %q", got)
	}
	if err := m.Commit([]int{0}); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if n := len(openT(t, s, "u").Messages()); n != 0 {
		t.Fatalf("%d messages after delete, want 0", n)
	}
}

func TestLongNameGetsDigestUID(t *testing.T) {
	root := t.TempDir()
	long := "1700000000.M1P1." + strings.Repeat("h", 80)
	put(t, filepath.Join(root, "u"), "new", long, "x\r\n")
	put(t, filepath.Join(root, "u"), "new", "1700000001.sp ace", "y\r\n")
	m := openT(t, New(root), "u")
	for _, msg := range m.Messages() {
		if len(msg.UID) > 70 || strings.ContainsAny(msg.UID, " ") {
			t.Errorf("UID %q not valid", msg.UID)
		}
	}
	if m.Messages()[0].UID == m.Messages()[1].UID {
		t.Error("digest UIDs collide")
	}
}

func TestIndexRebuiltAndPruned(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	for i := range 5 {
		put(t, dir, "new", fmt.Sprintf("170000000%d.M1P1.mx", i), fmt.Sprintf("m%d\n", i))
	}
	s := New(root)
	m := openT(t, s, "u")
	first := m.Messages()
	m.Close()
	idx, err := os.ReadFile(filepath.Join(dir, indexFile))
	if err != nil || bytes.Count(idx, []byte("\n")) != 6 { // a header and five lines
		t.Fatalf("index %q, %v", idx, err)
	}
	// A damaged index is rebuilt with the same answers.
	os.WriteFile(filepath.Join(dir, indexFile), []byte("garbage\n"), 0o600)
	m = openT(t, s, "u")
	for i, msg := range m.Messages() {
		if msg != first[i] {
			t.Errorf("after rebuild message %d = %+v, want %+v", i+1, msg, first[i])
		}
	}
	m.Close()
	// A file removed behind our back is pruned from the index.
	os.Remove(filepath.Join(dir, "new", "1700000002.M1P1.mx"))
	m = openT(t, s, "u")
	if n := len(m.Messages()); n != 4 {
		t.Fatalf("%d messages, want 4", n)
	}
	m.Close()
	idx, _ = os.ReadFile(filepath.Join(dir, indexFile))
	if bytes.Contains(idx, []byte("1700000002")) {
		t.Errorf("index still lists a removed message: %q", idx)
	}
}

func TestIndexKeepsArrivalOrder(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	put(t, dir, "new", "1700000005.M1P1.mx", "late\n")
	s := New(root)
	openT(t, s, "u").Close()
	// A file with an older time that shows up later is still newer for POP3.
	put(t, dir, "new", "1600000000.M1P1.mx", "early\n")
	m := openT(t, s, "u")
	if got := body(t, m, 1); got != "early\r\n" {
		t.Fatalf("message 2 = %q, want the later arrival", got)
	}
}

func TestMessageGoneDuringSession(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	put(t, dir, "new", "1700000000.M1P1.mx", "x\n")
	m := openT(t, New(root), "u")
	os.Remove(filepath.Join(dir, "new", "1700000000.M1P1.mx"))
	if _, err := m.Open(0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Open of a vanished message: %v, want ErrNotFound", err)
	}
	if err := m.Commit([]int{0}); err != nil {
		t.Fatalf("Commit of a vanished message: %v", err)
	}
}

func TestDeliverLeavesNothingOnError(t *testing.T) {
	root := t.TempDir()
	s := New(root)
	err := s.Deliver(context.Background(), "u", io.MultiReader(strings.NewReader("partial"), errReader{}))
	if err == nil {
		t.Fatal("Deliver succeeded with a failing reader")
	}
	for _, sub := range []string{"tmp", "new", "cur"} {
		if names, _ := fsx.Names(filepath.Join(root, "u", sub)); len(names) != 0 {
			t.Errorf("%s/ holds %v after a failed delivery", sub, names)
		}
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection lost") }

// The crash tests run a child process (this test binary) that opens a maildrop
// and commits deletions with POUCH_CRASHPOINT set, so that it is SIGKILLed at that
// moment. The parent then checks that the next Open sees all or none.
const helperEnv = "POUCH_MAILDIR_CRASH_ROOT"

func TestMain(m *testing.M) {
	if root := os.Getenv(helperEnv); root != "" {
		crashHelper(root)
		return
	}
	os.Exit(m.Run())
}

func crashHelper(root string) {
	if src := os.Getenv(importHelperEnv); src != "" {
		importHelper(root, src) // import_test.go
	}
	if user := os.Getenv("POUCH_CRASH_DELIVER"); user != "" {
		New(root).Deliver(context.Background(), user, strings.NewReader("crash delivery\r\n"))
		os.Exit(0)
	}
	s := New(root)
	if w := os.Getenv("POUCH_CRASH_WINDOW"); w != "" {
		d, _ := time.ParseDuration(w)
		s.SetPolicy(func(string) store.Policy { return store.Policy{Window: d} })
	}
	if os.Getenv("POUCH_CRASH_PURGE") != "" {
		_, err := s.Sweep(context.Background(), "u", store.Policy{}, time.Now())
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if os.Getenv("POUCH_CRASH_EXPIRE") != "" {
		_, err := s.Sweep(context.Background(), "u", store.Policy{Expire: time.Nanosecond, Window: time.Hour}, time.Now())
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if os.Getenv("POUCH_CRASH_RESTORE") != "" {
		_, err := s.Restore(context.Background(), "u", time.Time{}, os.Getenv("POUCH_CRASH_RESTORE") == "as-new")
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	md, err := s.Open(context.Background(), "u")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if twin := os.Getenv("POUCH_CRASH_TWIN"); twin != "" {
		// Another program makes a file of the same base name meanwhile.
		if err := os.WriteFile(filepath.Join(root, "u", twin), []byte("twin\n"), 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	var del []int
	for _, s := range strings.Split(os.Getenv("POUCH_CRASH_DELETE"), ",") {
		if s == "" {
			continue
		}
		n, _ := strconv.Atoi(s)
		del = append(del, n)
	}
	if err := md.Commit(del); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Exit(0)
}

// journalPending reports whether the Maildir dir's expunge journal has a
// commit to finish.
func journalPending(t *testing.T, dir string) bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, expungeFile))
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	j, err := parseJournal(data, expungeFile)
	if err != nil {
		t.Fatal(err)
	}
	return j != nil && j.pending
}

// crashCommand is the helper process, to be killed at point.
func crashCommand(root, point string, env ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+root, crashpoint.Env+"="+point)
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

func runCrash(t *testing.T, root, point string, env ...string) {
	t.Helper()
	out, err := crashCommand(root, point, env...).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper was not killed at %s: %v\n%s", point, err, out)
	}
}

func TestCrashDuringCommit(t *testing.T) {
	for _, tc := range []struct {
		point    string
		wantLeft int
	}{
		{"maildir.commit.before-journal", 6}, // nothing decided yet: nothing removed
		{"maildir.commit.journaled", 3},      // decided: the next Open finishes it
		{"maildir.commit.first-unlinked", 3}, // half done: the next Open finishes it
	} {
		t.Run(tc.point, func(t *testing.T) {
			root := t.TempDir()
			s := New(root)
			fill(t, s, nil, 6)
			runCrash(t, root, tc.point, "POUCH_CRASH_DELETE=0,2,4")
			m := openT(t, s, "u")
			msgs := m.Messages()
			if len(msgs) != tc.wantLeft {
				t.Fatalf("%d messages after crash, want %d", len(msgs), tc.wantLeft)
			}
			for i := range msgs {
				want := fmt.Sprintf("m%d\r\n", i)
				if tc.wantLeft == 3 {
					want = fmt.Sprintf("m%d\r\n", 2*i+1)
				}
				if got := body(t, m, i); got != want {
					t.Errorf("message %d = %q, want %q", i+1, got, want)
				}
			}
			if journalPending(t, filepath.Join(root, "u")) {
				t.Error("expunge journal still pending")
			}
		})
	}
}

func TestCrashDuringDelivery(t *testing.T) {
	root := t.TempDir()
	runCrash(t, root, "maildir.deliver.synced", "POUCH_CRASH_DELIVER=u")
	// Not acknowledged, so not delivered: nothing in new/ or cur/.
	if n := len(openT(t, New(root), "u").Messages()); n != 0 {
		t.Fatalf("%d messages after a crash before the rename, want 0", n)
	}
}

func TestLockReleasedWhenProcessDies(t *testing.T) {
	root := t.TempDir()
	s := New(root)
	s.Deliver(context.Background(), "u", strings.NewReader("x\r\n"))
	runCrash(t, root, "maildir.commit.journaled", "POUCH_CRASH_DELETE=0")
	m, err := s.Open(context.Background(), "u")
	if err != nil {
		t.Fatalf("Open after the holder died: %v", err)
	}
	m.Close()
}

// TestExpungeJournalFormats replays journals as a crash leaves them: of
// this version (names encoded as in the index, so that a name holding a
// line end is one name), of the previous one (names as they are), and
// damaged, which removes nothing.
func TestExpungeJournalFormats(t *testing.T) {
	names := []string{"1700000001.M1P1.a", "1700000002.M1P1.b", "1700000001.M1P1.a\n1700000002.M1P1.b"}
	for _, tc := range []struct {
		name, journal string
		left          []string // UIDs left after the replay; nil: Open fails
		held          int
	}{
		{"version 2", journalVersion + "\n1700000001.M1P1.a%0A1700000002.M1P1.b\n",
			[]string{names[0], names[1]}, 0},
		{"version 2, held", journalVersion + "\n#hold 1700000100\n1700000002.M1P1.b\n",
			[]string{names[0], uidOf(names[2])}, 1},
		{"version 1", "1700000001.M1P1.a\n", []string{names[1], uidOf(names[2])}, 0},
		{"version 1, held", "#hold 1700000100\n1700000001.M1P1.a\n1700000002.M1P1.b\n",
			[]string{uidOf(names[2])}, 2},
		{"damaged", journalVersion + "\n1700000001.M1P1.a%ZZ\n", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "u")
			for _, n := range names {
				put(t, dir, "new", n, "x\n")
			}
			if err := os.WriteFile(filepath.Join(dir, expungeFile), []byte(tc.journal), 0o600); err != nil {
				t.Fatal(err)
			}
			s := New(root)
			m, err := s.Open(context.Background(), "u")
			if tc.left == nil {
				if err == nil {
					m.Close()
					t.Fatal("Open replayed a damaged journal")
				}
				if got, _ := fsx.Names(filepath.Join(dir, "new")); len(got) != len(names) {
					t.Fatalf("a damaged journal removed messages: %q left", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, msg := range m.Messages() {
				got = append(got, msg.UID)
			}
			m.Close()
			slices.Sort(got)
			want := slices.Sorted(slices.Values(tc.left))
			if !slices.Equal(got, want) {
				t.Fatalf("left %q, want %q", got, want)
			}
			if st, err := s.Stats(context.Background(), "u"); err != nil || st.Held != tc.held {
				t.Fatalf("held %d, want %d (%v)", st.Held, tc.held, err)
			}
			if journalPending(t, dir) {
				t.Fatal("journal still pending")
			}
		})
	}
}

// TestCrashDuringReplay kills the Open that replays a journal after its
// first unlink or move: the journal stays, and the next Open finishes the
// commit as it was decided.
func TestCrashDuringReplay(t *testing.T) {
	for _, window := range []string{"", "1h"} {
		t.Run("window="+window, func(t *testing.T) {
			root := t.TempDir()
			s := New(root)
			fill(t, s, nil, 6)
			all := uids(t, s)
			env := []string{"POUCH_CRASH_DELETE=0,2,4"}
			if window != "" {
				env = append(env, "POUCH_CRASH_WINDOW="+window)
			}
			runCrash(t, root, "maildir.commit.journaled", env...)
			runCrash(t, root, "maildir.replay.disposed", env...)
			if !journalPending(t, filepath.Join(root, "u")) {
				t.Fatal("journal not pending after a crash during its replay")
			}
			if got := uids(t, s); !slices.Equal(got, []string{all[1], all[3], all[5]}) {
				t.Fatalf("after the replay: %v", got)
			}
			want := 0
			if window != "" {
				want = 3
			}
			if st, _ := s.Stats(context.Background(), "u"); st.Held != want {
				t.Fatalf("held %d, want %d", st.Held, want)
			}
			if journalPending(t, filepath.Join(root, "u")) {
				t.Fatal("journal still pending")
			}
		})
	}
}

// TestJournalReplay replays journals of this version as a crash can leave
// them: pending, which removes the files it names by base name and inode
// only; done, or torn by the crash, or the reserve's zeros, which remove
// nothing. Every Open succeeds. A file left with a base name that the
// journal names is another message than the one removed, and gets a new
// name.
func TestJournalReplay(t *testing.T) {
	const a, b = "1700000001.M1P1.a", "1700000002.M1P1.b"
	renamed := "renamed"
	for _, tc := range []struct {
		name    string
		journal func(inoA, inoB uint64) []byte
		left    []string
	}{
		{"reserve", func(uint64, uint64) []byte { return nil }, []string{a, b}},
		{"pending", func(inoA, _ uint64) []byte {
			lines := journalLines(false, time.Time{}, []doomed{{a, inoA}})
			return append(headerFor(statePending, lines), lines...)
		}, []string{b}},
		{"pending, another inode", func(inoA, _ uint64) []byte {
			lines := journalLines(false, time.Time{}, []doomed{{a, inoA + 1000}})
			return append(headerFor(statePending, lines), lines...)
		}, []string{b, renamed}},
		{"done", func(inoA, _ uint64) []byte {
			lines := journalLines(false, time.Time{}, []doomed{{a, inoA}})
			return append(headerFor(stateDone, lines), lines...)
		}, []string{b, renamed}},
		{"torn lines", func(inoA, inoB uint64) []byte {
			lines := journalLines(false, time.Time{}, []doomed{{a, inoA}, {b, inoB}})
			h := headerFor(statePending, lines)
			return append(h, lines[:len(lines)/2]...)
		}, []string{a, b}},
		{"torn header", func(inoA, _ uint64) []byte {
			lines := journalLines(false, time.Time{}, []doomed{{a, inoA}})
			return append(headerFor(statePending, lines)[:30], lines...)
		}, []string{a, b}},
		{"length past the end", func(inoA, _ uint64) []byte {
			lines := journalLines(false, time.Time{}, []doomed{{a, inoA}})
			h := headerFor(statePending, append(lines, make([]byte, journalSize)...))
			return append(h, lines...)
		}, []string{a, b}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "u")
			put(t, dir, "new", a, "a\n")
			put(t, dir, "cur", b+":2,S", "b\n")
			inoA, _ := inodeOf(dir, "new", a)
			inoB, _ := inodeOf(dir, "cur", b+":2,S")
			data := make([]byte, journalSize)
			copy(data, tc.journal(inoA, inoB))
			if err := os.WriteFile(filepath.Join(dir, expungeFile), data, 0o600); err != nil {
				t.Fatal(err)
			}
			got := uids(t, New(root))
			if len(got) == 2 && got[1] != a && ownName(got[1]) {
				got[1] = renamed
			}
			if !slices.Equal(got, tc.left) {
				t.Fatalf("left %q, want %q", got, tc.left)
			}
			if journalPending(t, dir) {
				t.Fatal("journal still pending")
			}
		})
	}
}

// The journal's reserve is made with the Maildir, written and of its full
// size, and an Open makes it where it is missing or short; a commit too
// large for it grows it and cuts it back.
func TestJournalReserve(t *testing.T) {
	root := t.TempDir()
	s := New(root)
	fill(t, s, nil, 150)
	dir := filepath.Join(root, "u")
	size := func() int64 {
		t.Helper()
		fi, err := os.Stat(filepath.Join(dir, expungeFile))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	if n := size(); n != journalSize {
		t.Fatalf("reserve of %d octets after the first delivery, want %d", n, journalSize)
	}
	var st syscall.Stat_t
	syscall.Stat(filepath.Join(dir, expungeFile), &st)
	if st.Blocks*512 < journalSize {
		t.Fatalf("reserve has %d octets of blocks, want %d", st.Blocks*512, journalSize)
	}
	os.Truncate(filepath.Join(dir, expungeFile), 100)
	openT(t, s, "u").Close()
	if n := size(); n != journalSize {
		t.Fatalf("reserve of %d octets after an Open, want %d", n, journalSize)
	}
	os.Remove(filepath.Join(dir, expungeFile))
	all := uids(t, s)
	if n := size(); n != journalSize {
		t.Fatalf("reserve of %d octets after an Open, want %d", n, journalSize)
	}
	del := make([]int, 140) // more than the reserve holds
	for i := range del {
		del[i] = i
	}
	commit(t, s, del...)
	if n := size(); n != journalSize {
		t.Fatalf("journal of %d octets after a large commit, want %d", n, journalSize)
	}
	if got := uids(t, s); !slices.Equal(got, all[140:]) {
		t.Fatalf("left %d, want 10", len(got))
	}
}

// A Maildir that another program made gets its journal's reserve from the
// retention sweep, before any session opens it.
func TestSweepReservesJournal(t *testing.T) {
	root := t.TempDir()
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(root, "u", sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := New(root).Sweep(context.Background(), "u", store.Policy{}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(root, "u", expungeFile)); err != nil || fi.Size() != journalSize {
		t.Fatalf("journal after a sweep: %v, %v", fi, err)
	}
}

// FuzzJournal reads arbitrary journal files: never a panic, and a journal
// of this version that reads as one is the one its lines encode.
func FuzzJournal(f *testing.F) {
	lines := journalLines(true, time.Unix(1700000000, 0), []doomed{{"1700000001.M1P1.a", 12}, {"sp ace\n", 7}})
	f.Add(append(headerFor(statePending, lines), lines...))
	f.Add(append(headerFor(stateDone, lines), lines...))
	f.Add([]byte(journalVersion + "\n1700000001.M1P1.a%0A\n"))
	f.Add([]byte("#hold 1\nname\n"))
	f.Add(make([]byte, journalSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := parseJournal(data, expungeFile)
		if err != nil || j == nil || j.legacy {
			return
		}
		if got := journalLines(j.keep, j.at, j.files); !bytes.Equal(got, j.lines) {
			t.Fatalf("lines %q read as %+v, which encodes as %q", j.lines, j, got)
		}
	})
}
