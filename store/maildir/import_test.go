package maildir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/store"
)

// importFixture is another server's Maildir, in the order that server
// listed it (not the order of the times in the names).
type fixtureMsg struct {
	File string // under the Maildir: "cur/NAME:2,S", "new/NAME"
	UID  string // the UIDL the old server showed
	Body string
	Seen int64 // first retrieval, unix seconds
}

func importFixture() []fixtureMsg {
	six := "Subject: six\n\nsixth\n"
	var c store.SizeCounter
	c.Write([]byte(six))
	sixName := fmt.Sprintf("1700000005.M5P1.old,S=%d,W=%d", c.Raw(), c.Wire())
	return []fixtureMsg{
		{"cur/1700000001.M1P1.old:2,S", "00000001656b6a80", "Subject: one\n\nfirst\n", 1700000100},
		{"cur/1700000002.M2P1.old:2,", "a/b+c==", "Subject: two\r\n\r\nsecond\r\n", 0},
		{"new/1700000003.M3P1.old", ".hidden", "Subject: three\n\nno final line end", 0},
		{"cur/1700000004.M4P1.old:2,S", "x,S=3,W=999", "Subject: four\n\n.dot\n", 1700000200},
		{"cur/1700000000.M0P1.old:2,S", strings.Repeat("L", 71), "Subject: five\n\nlong UIDL\n", 1700000300},
		{"cur/" + sixName + ":2,", sixName, six, 0},
		{"cur/1700000006.M6P1.old:2,", "%2Fpct:colon", "Subject: seven\n\n%\n", 0},
	}
}

// writeFixture makes the source Maildir and its manifest (read by
// importHelper), with modification times that are not in the old order.
func writeFixture(t *testing.T, dir string, msgs []fixtureMsg) {
	t.Helper()
	for _, sub := range []string{"cur", "new", "tmp"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o700)
	}
	for i, m := range msgs {
		p := filepath.Join(dir, m.File)
		if err := os.WriteFile(p, []byte(m.Body), 0o600); err != nil {
			t.Fatal(err)
		}
		mt := time.Unix(1600000000+int64(len(msgs)-i)*60, 0)
		os.Chtimes(p, mt, mt)
	}
	b, _ := json.Marshal(msgs)
	if err := os.WriteFile(filepath.Join(dir, "manifest"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func fixtureMessages(src string, msgs []fixtureMsg) []ImportMessage {
	var out []ImportMessage
	for _, m := range msgs {
		sub, name, _ := strings.Cut(m.File, "/")
		base, info, _ := strings.Cut(name, ":")
		im := ImportMessage{UID: m.UID, Path: filepath.Join(src, m.File), Source: base, New: sub == "new", Info: info}
		if m.Seen != 0 {
			im.Seen = time.Unix(m.Seen, 0)
		}
		out = append(out, im)
	}
	return out
}

func runImport(s *Store, user, src string, msgs []fixtureMsg, move bool) ([]ImportResult, error) {
	im, err := s.BeginImport(context.Background(), user)
	if err != nil {
		return nil, err
	}
	res, err := im.Add(context.Background(), fixtureMessages(src, msgs), move)
	if cerr := im.Close(); err == nil {
		err = cerr
	}
	return res, err
}

const importHelperEnv = "POUCH_MAILDIR_CRASH_IMPORT"

// importHelper imports the fixture at src into user u, in the child
// process of a crash test (TestMain runs it).
func importHelper(root, src string) {
	var msgs []fixtureMsg
	b, _ := os.ReadFile(filepath.Join(src, "manifest"))
	json.Unmarshal(b, &msgs)
	im, err := New(root).BeginImport(context.Background(), "u")
	if err == nil && os.Getenv("POUCH_CRASH_IMPORT_PRUNE") != "" {
		_, err = im.Prune(src, func(base string) bool {
			for _, m := range msgs {
				if sub, name, _ := strings.Cut(m.File, "/"); baseName(name) == base {
					_, serr := os.Stat(filepath.Join(src, sub, name))
					return serr == nil
				}
			}
			return false
		})
		if cerr := im.Close(); err == nil {
			err = cerr
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err == nil {
		if os.Getenv("POUCH_CRASH_IMPORT_LINK") != "" {
			// A filesystem without RENAME_NOREPLACE.
			im.rename = func(string, string) error { return syscall.EINVAL }
		}
		if os.Getenv("POUCH_CRASH_IMPORT_CLASH") != "" {
			// Another program writes a file of the first message's name
			// just before it is placed.
			first := true
			im.rename = func(from, dest string) error {
				if first {
					first = false
					if err := os.WriteFile(dest, []byte("Subject: other\n\n"), 0o600); err != nil {
						panic(err)
					}
				}
				return renameNoReplace(from, dest)
			}
		}
		if n, _ := strconv.ParseUint(os.Getenv("POUCH_CRASH_IMPORT_FSIZE"), 10, 64); n > 0 {
			// No file may grow past n octets (EFBIG; Go ignores SIGXFSZ):
			// the journal's append is cut short part way, as a full disk
			// cuts it.
			var lim syscall.Rlimit
			syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim)
			lim.Cur = n
			if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
				panic(err)
			}
		}
		_, err = im.Add(context.Background(), fixtureMessages(src, msgs), os.Getenv("POUCH_CRASH_IMPORT_MOVE") != "")
		if cerr := im.Close(); err == nil {
			err = cerr
		}
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(2)
}

// checkImported checks that the maildrop of u holds the fixture's messages
// exactly once, in the old order, with the UIDLs kept (where valid), the
// sizes of their wire form and the first retrievals.
func checkImported(t *testing.T, s *Store, msgs []fixtureMsg) {
	t.Helper()
	md, err := s.Open(context.Background(), "u")
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	m := md
	got := m.Messages()
	if len(got) != len(msgs) {
		t.Fatalf("%d messages, want %d: %v", len(got), len(msgs), got)
	}
	for i, f := range msgs {
		want := f.UID
		if !store.ValidUID(want) {
			if got[i].UID == f.UID || !store.ValidUID(got[i].UID) {
				t.Errorf("message %d: UIDL %q for an invalid old one", i+1, got[i].UID)
			}
			want = got[i].UID
		}
		if got[i].UID != want {
			t.Errorf("message %d: UIDL %q, want %q", i+1, got[i].UID, want)
		}
		w := wireOf(f.Body)
		if got[i].Size != int64(len(w)) {
			t.Errorf("message %d: size %d, want %d", i+1, got[i].Size, len(w))
		}
		if b := body(t, m, i); b != w {
			t.Errorf("message %d: body %q, want %q", i+1, b, w)
		}
		if seen := m.(*maildrop).entries[i].seen; seen != f.Seen {
			t.Errorf("message %d: first retrieval %d, want %d", i+1, seen, f.Seen)
		}
	}
}

// wireOf is a message in wire form.
func wireOf(s string) string {
	b, _ := io.ReadAll(store.NewCanonicalReader(strings.NewReader(s)))
	return string(b)
}

func TestImportKeepsUIDLsOrderSizesAndRetrievals(t *testing.T) {
	root, src := t.TempDir(), t.TempDir()
	msgs := importFixture()
	writeFixture(t, src, msgs)
	s := New(root)
	s.Deliver(context.Background(), "u", strings.NewReader("Subject: before\n\nalready here\n"))
	res, err := runImport(s, "u", src, msgs, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		want := Imported
		if !store.ValidUID(msgs[i].UID) {
			want = ImportedNewUID
		}
		if r.Status != want || r.Err != nil {
			t.Errorf("message %d: %+v, want status %d", i+1, r, want)
		}
	}
	// The message delivered before stays first.
	m := openT(t, s, "u")
	if n := len(m.Messages()); n != len(msgs)+1 {
		t.Fatalf("%d messages, want %d", n, len(msgs)+1)
	}
	first := m.Messages()[0]
	m.Commit([]int{0})
	m.Close()
	checkImported(t, s, msgs)

	// The index is a cache: rebuilt, it gives the same UIDLs, order and
	// first retrievals.
	os.Remove(filepath.Join(root, "u", indexFile))
	checkImported(t, s, msgs)
	// A damaged index too.
	os.WriteFile(filepath.Join(root, "u", indexFile), []byte("#pouch-index 3\ngarbage\n"), 0o600)
	checkImported(t, s, msgs)

	// The source is as it was.
	for _, f := range msgs {
		if b, err := os.ReadFile(filepath.Join(src, f.File)); err != nil || string(b) != f.Body {
			t.Errorf("source %s: %q %v", f.File, b, err)
		}
	}
	// Mail delivered after the import gets UIDLs of its own, after the
	// imported messages.
	s.Deliver(context.Background(), "u", strings.NewReader("Subject: after\n\nnew\n"))
	m = openT(t, s, "u")
	got := m.Messages()
	last := got[len(got)-1]
	if len(got) != len(msgs)+1 || last.UID == first.UID || slices.ContainsFunc(msgs, func(f fixtureMsg) bool { return f.UID == last.UID }) {
		t.Fatalf("after a delivery: %v", got)
	}
}

func TestImportRerunImportsNothingTwice(t *testing.T) {
	root, src := t.TempDir(), t.TempDir()
	msgs := importFixture()
	writeFixture(t, src, msgs)
	s := New(root)
	if _, err := runImport(s, "u", src, msgs[:3], false); err != nil {
		t.Fatal(err)
	}
	// A client deletes the first imported message.
	m := openT(t, s, "u")
	if err := m.Commit([]int{0}); err != nil {
		t.Fatal(err)
	}
	m.Close()
	res, err := runImport(s, "u", src, msgs, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		want := Imported
		switch {
		case i < 3:
			want = AlreadyImported
		case !store.ValidUID(msgs[i].UID):
			want = ImportedNewUID
		}
		if r.Status != want {
			t.Errorf("message %d: %+v, want %d", i+1, r, want)
		}
	}
	checkImported(t, s, msgs[1:])
	res, err = runImport(s, "u", src, msgs, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Status != AlreadyImported {
			t.Errorf("third run, message %d: %+v", i+1, r)
		}
	}
	checkImported(t, s, msgs[1:])
}

func TestImportRefusesClashingUIDLs(t *testing.T) {
	root, src := t.TempDir(), t.TempDir()
	msgs := importFixture()[:2]
	// The maildrop has a message named like the first UIDL already, and
	// the source gives the second UIDL twice.
	put(t, filepath.Join(root, "u"), "new", msgs[0].UID, "Subject: mine\n\nx\n")
	dup := msgs[1]
	dup.File = "cur/1700000009.M9P1.old:2,"
	msgs = append(msgs, dup)
	writeFixture(t, src, msgs)
	s := New(root)
	res, err := runImport(s, "u", src, msgs, false)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != Refused || !errors.Is(res[0].Err, ErrUIDInUse) || !strings.Contains(res[0].Err.Error(), "message 1") {
		t.Errorf("clash with the maildrop: %+v", res[0])
	}
	if res[1].Status != Imported {
		t.Errorf("second: %+v", res[1])
	}
	if res[2].Status != Refused || !errors.Is(res[2].Err, ErrUIDInUse) {
		t.Errorf("the same UIDL twice: %+v", res[2])
	}
	// Run again: the refusal stands, the other is already there, and the
	// repeated UIDL is refused for the other message it was imported for.
	res, err = runImport(s, "u", src, msgs, false)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Status != Refused || res[1].Status != AlreadyImported || res[2].Status != Refused {
		t.Errorf("second run: %+v", res)
	}
	m := openT(t, s, "u")
	if n := len(m.Messages()); n != 2 {
		t.Errorf("%d messages, want 2", n)
	}
	m.Close()
	// A UIDL of the form of Pouch's delivery names with a time to come
	// could be the name of mail delivered later.
	future := fmt.Sprintf("%d.M000001P1Q1.host,S=5,W=6", time.Now().Add(time.Hour).Unix())
	src2 := t.TempDir()
	f := []fixtureMsg{{"cur/1.M1P1.x:2,", future, "Subj\n", 0}}
	writeFixture(t, src2, f)
	res, err = runImport(s, "u", src2, f, false)
	if err != nil || res[0].Status != Refused || !strings.Contains(res[0].Err.Error(), "not yet past") {
		t.Errorf("a UIDL like Pouch's names to come: %+v %v", res, err)
	}
}

func TestImportMove(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "old")
	msgs := importFixture()
	writeFixture(t, src, msgs)
	s := New(filepath.Join(root, "mail"))
	res, err := runImport(s, "u", src, msgs, true)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Status != Imported && r.Status != ImportedNewUID {
			t.Errorf("message %d: %+v", i+1, r)
		}
	}
	for _, f := range msgs {
		if _, err := os.Stat(filepath.Join(src, f.File)); !os.IsNotExist(err) {
			t.Errorf("%s left in the source: %v", f.File, err)
		}
	}
	checkImported(t, s, msgs)
	// Another file system: refused, nothing moved.
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		other, err := os.MkdirTemp("/dev/shm", "pouch-import-")
		if err != nil {
			t.Skip(err)
		}
		defer os.RemoveAll(other)
		var a, b syscall.Stat_t
		syscall.Stat(other, &a)
		syscall.Stat(root, &b)
		if a.Dev == b.Dev {
			t.Skip("/dev/shm is on the same file system")
		}
		f := []fixtureMsg{{"cur/1.M1P1.x:2,", "elsewhere", "Subj\n", 0}}
		writeFixture(t, other, f)
		res, err := runImport(s, "v", other, f, true)
		if err != nil || res[0].Status != Refused || !errors.Is(res[0].Err, ErrCrossDevice) {
			t.Errorf("a move across file systems: %+v %v", res, err)
		}
		if _, err := os.Stat(filepath.Join(other, f[0].File)); err != nil {
			t.Errorf("the source lost its file: %v", err)
		}
	}
}

func TestKeptUID(t *testing.T) {
	for _, tc := range []struct {
		base, uid string
		ok        bool
	}{
		{"1700000000.M000001P1Q1.host,S=1,W=2,U=YS9i", "a/b", true},
		{"1700000000.M000001P1Q1.host,S=1,W=2,U=YS9i,X=1", "a/b", true},
		{"1700000000.M000001P1Q1.host,S=1,W=2,U=YS9i=", "", false}, // padded: not the form written
		{"1700000000.M000001P1Q1.host,S=1,W=2,U=", "", false},
		{"1700000000.M000001P1Q1.host,S=1,W=2,U=AAE", "", false}, // decodes to octets outside 0x21-0x7E
		{"1700000000.M1P1.host,U=YS9i", "", false},               // not Pouch's form
		{"other,U=YS9i", "", false},
	} {
		uid, ok := keptUID(tc.base)
		if uid != tc.uid || ok != tc.ok {
			t.Errorf("keptUID(%q) = %q, %v; want %q, %v", tc.base, uid, ok, tc.uid, tc.ok)
		}
		if !ok && uidOf(tc.base) == tc.uid {
			t.Errorf("uidOf(%q) decoded", tc.base)
		}
	}
}

func TestImportJournalDamage(t *testing.T) {
	root, src := t.TempDir(), t.TempDir()
	msgs := importFixture()[:2]
	writeFixture(t, src, msgs)
	s := New(root)
	if _, err := runImport(s, "u", src, msgs[:1], false); err != nil {
		t.Fatal(err)
	}
	// A line cut short by a crash is dropped, and the next run works.
	j := filepath.Join(root, "u", importJournalFile)
	f, _ := os.OpenFile(j, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("+ half 0 x cur/")
	f.Close()
	if _, err := runImport(s, "u", src, msgs, false); err != nil {
		t.Fatal(err)
	}
	checkImported(t, s, msgs)
	// A damaged line in the middle stops an import with a clear error,
	// and sessions go on.
	data, _ := os.ReadFile(j)
	os.WriteFile(j, append([]byte("#pouch-imported 1\nnonsense\n"), data[len(importJournalHead)+1:]...), 0o600)
	_, err := runImport(s, "u", src, msgs, false)
	if err == nil || !strings.Contains(err.Error(), "damaged at line 2") {
		t.Fatalf("damaged journal: %v", err)
	}
	checkImported(t, s, msgs)
}

// TestCrashDuringImport kills an import at each step, copying and moving,
// and checks that the maildrop is consistent meanwhile and that a second
// run completes it: every message exactly once, in the old order, and none
// lost from the source.
func TestCrashDuringImport(t *testing.T) {
	for _, mode := range []string{"copy", "move", "link"} {
		move := mode == "move"
		points := []string{"maildir.import.staged", "maildir.import.journaled",
			"maildir.import.first-placed", "maildir.import.placed", "maildir.import.before-index"}
		if mode == "link" {
			// A filesystem without RENAME_NOREPLACE: link, then unlink.
			points = []string{"maildir.import.linked"}
		}
		for _, point := range points {
			name := mode + "/" + point
			t.Run(name, func(t *testing.T) {
				root := t.TempDir()
				src := filepath.Join(root, "old")
				msgs := importFixture()
				writeFixture(t, src, msgs)
				env := []string{importHelperEnv + "=" + src}
				if move {
					env = append(env, "POUCH_CRASH_IMPORT_MOVE=1")
				}
				if mode == "link" {
					env = append(env, "POUCH_CRASH_IMPORT_LINK=1")
				}
				mail := filepath.Join(root, "mail")
				runCrash(t, mail, point, env...)
				s := New(mail)
				// Meanwhile: no message twice, none half there; with a
				// move, each is in the maildrop or in the source.
				m := openT(t, s, "u")
				bodies := map[string]int{}
				for i := range m.Messages() {
					bodies[body(t, m, i)]++
				}
				m.Close()
				if point == "maildir.import.placed" || point == "maildir.import.before-index" {
					// All placed: in the old order, before any rerun.
					checkImported(t, s, msgs)
				}
				for _, f := range msgs {
					n := bodies[wireOf(f.Body)]
					_, err := os.Stat(filepath.Join(src, f.File))
					if inSource := err == nil; n > 1 || move && (n == 1) == inSource {
						t.Errorf("after the crash %s: %d in the maildrop, in the source: %v", f.File, n, inSource)
					}
				}
				res, err := runImport(s, "u", src, msgs, move)
				if err != nil {
					t.Fatal(err)
				}
				for i, r := range res {
					if r.Status == Refused {
						t.Errorf("second run, message %d: %+v", i+1, r)
					}
				}
				checkImported(t, s, msgs)
				for _, f := range msgs {
					_, err := os.Stat(filepath.Join(src, f.File))
					if move != os.IsNotExist(err) {
						t.Errorf("source %s after the second run: %v", f.File, err)
					}
				}
				if names, _ := os.ReadDir(filepath.Join(mail, "u", importStagingDir)); len(names) > 0 {
					t.Errorf("staging directory not cleaned: %v", names)
				}
			})
		}
	}
}

// TestImportJournalCutShort makes the journal's append of a batch fail
// part way, as a full disk does, after some of its intents reached the
// file: the next run must place those messages, not take them for
// imported.
func TestImportJournalCutShort(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "old")
	msgs := importFixture()
	writeFixture(t, src, msgs)
	mail := filepath.Join(root, "mail")
	// An intent is 100 to 250 octets and the source's path: room for two
	// or more of the seven, not all.
	limit := len(importJournalHead) + 1 + 2*(250+len(src))
	out, err := crashCommand(mail, "", importHelperEnv+"="+src, fmt.Sprintf("POUCH_CRASH_IMPORT_FSIZE=%d", limit)).CombinedOutput()
	if !strings.Contains(string(out), "file too large") {
		t.Fatalf("the import did not fail writing its journal: %v\n%s", err, out)
	}
	recs, err := readImportJournal(filepath.Join(mail, "u"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 || len(recs) == len(msgs) {
		t.Fatalf("%d intents in the journal, want some but not all of %d", len(recs), len(msgs))
	}
	s := New(mail)
	res, err := runImport(s, "u", src, msgs, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Status == Refused {
			t.Errorf("second run, message %d: %+v", i+1, r)
		}
	}
	checkImported(t, s, msgs)
}

// TestCrashAfterImportClash kills an import after a file of a message's
// name appeared in the maildrop while it was placed, before the journal
// says so: the next run must still find the message not imported, and
// refuse its UIDL, never count it as imported.
func TestCrashAfterImportClash(t *testing.T) {
	for _, point := range []string{"", "maildir.import.placed"} {
		t.Run("crash="+point, func(t *testing.T) {
			root := t.TempDir()
			src := filepath.Join(root, "old")
			msgs := importFixture()
			writeFixture(t, src, msgs)
			mail := filepath.Join(root, "mail")
			env := []string{importHelperEnv + "=" + src, "POUCH_CRASH_IMPORT_CLASH=1"}
			if point == "" {
				crashCommand(mail, "", env...).Run()
			} else {
				runCrash(t, mail, point, env...)
			}
			res, err := runImport(New(mail), "u", src, msgs, false)
			if err != nil {
				t.Fatal(err)
			}
			if res[0].Status != Refused || !errors.Is(res[0].Err, ErrUIDInUse) {
				t.Errorf("message 1, whose name was taken: %+v, want refused for its UIDL", res[0])
			}
			if names, _ := os.ReadDir(filepath.Join(mail, "u", importStagingDir)); len(names) > 0 {
				t.Errorf("staging directory not cleaned: %v", names)
			}
		})
	}
}

// TestCrashDuringPrune kills a prune at each step of its commit: the
// message deleted on the old server is gone from the maildrop after the
// next Open or not yet (before the journal), and nothing else is.
func TestCrashDuringPrune(t *testing.T) {
	for _, tc := range []struct {
		point  string
		pruned bool
	}{
		{"maildir.commit.before-journal", false},
		{"maildir.commit.journaled", true},
		{"maildir.commit.first-unlinked", true},
		{"maildir.commit.disposed", true},
		{"maildir.import.before-index", true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			root := t.TempDir()
			src := filepath.Join(root, "old")
			msgs := importFixture()
			writeFixture(t, src, msgs)
			mail := filepath.Join(root, "mail")
			s := New(mail)
			if _, err := runImport(s, "u", src, msgs, false); err != nil {
				t.Fatal(err)
			}
			// A client deleted the second message on the old server.
			os.Remove(filepath.Join(src, msgs[1].File))
			runCrash(t, mail, tc.point, importHelperEnv+"="+src, "POUCH_CRASH_IMPORT_PRUNE=1")
			want := msgs
			if tc.pruned {
				want = slices.Delete(slices.Clone(msgs), 1, 2)
			}
			checkImported(t, New(mail), want)
			// A run that finishes prunes what is left to prune, and no more.
			im, err := New(mail).BeginImport(context.Background(), "u")
			if err != nil {
				t.Fatal(err)
			}
			n, err := im.Prune(src, func(base string) bool { return base != baseName(msgs[1].File[4:]) })
			if cerr := im.Close(); err == nil {
				err = cerr
			}
			if err != nil || n != 1 && !tc.pruned || n != 0 && tc.pruned {
				t.Fatalf("prune after the crash: %d, %v", n, err)
			}
			checkImported(t, New(mail), slices.Delete(slices.Clone(msgs), 1, 2))
		})
	}
}

func TestImportPrune(t *testing.T) {
	root, src, other := t.TempDir(), t.TempDir(), t.TempDir()
	msgs := importFixture()[:3]
	writeFixture(t, src, msgs)
	more := []fixtureMsg{{"cur/1800000000.M1P1.x:2,", "from-elsewhere", "Subject: x\n\ny\n", 0}}
	writeFixture(t, other, more)
	s := New(root)
	if _, err := runImport(s, "u", src, msgs, false); err != nil {
		t.Fatal(err)
	}
	if _, err := runImport(s, "u", other, more, false); err != nil {
		t.Fatal(err)
	}
	// A client deleted the second message on the old server.
	os.Remove(filepath.Join(src, msgs[1].File))
	prune := func(dir string, present func(string) bool) int {
		im, err := s.BeginImport(context.Background(), "u")
		if err != nil {
			t.Fatal(err)
		}
		n, err := im.Prune(dir, present)
		if err != nil {
			t.Fatal(err)
		}
		if err := im.Close(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	inSrc := func(base string) bool {
		for _, m := range msgs {
			if strings.HasPrefix(m.File[4:], base) {
				_, err := os.Stat(filepath.Join(src, m.File))
				return err == nil
			}
		}
		return false
	}
	if n := prune(src, inSrc); n != 1 {
		t.Fatalf("pruned %d, want 1", n)
	}
	checkImported(t, s, []fixtureMsg{msgs[0], msgs[2], more[0]})
	// Nothing more, and the other source's message stays.
	if n := prune(src, inSrc); n != 0 {
		t.Fatalf("pruned %d again", n)
	}
	// Under legal hold, a pruned message goes to the holding area.
	s.SetHold(context.Background(), "u", store.Hold{Set: true})
	if n := prune(other, func(string) bool { return false }); n != 1 {
		t.Fatalf("pruned %d of the other source", n)
	}
	if held, _ := listHolding(filepath.Join(root, "u")); len(held) != 1 {
		t.Errorf("%d messages in the holding area, want 1", len(held))
	}
	// Messages moved in are never pruned: their source is gone by design.
	src2 := filepath.Join(root, "moved")
	m2 := []fixtureMsg{{"cur/1900000000.M1P1.x:2,", "moved-in", "Subject: m\n\nm\n", 0}}
	writeFixture(t, src2, m2)
	if _, err := runImport(s, "u", src2, m2, true); err != nil {
		t.Fatal(err)
	}
	if n := prune(src2, func(string) bool { return false }); n != 0 {
		t.Errorf("pruned %d moved messages", n)
	}
}
