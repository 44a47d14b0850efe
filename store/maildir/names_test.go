package maildir

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/pop3"
	"github.com/pouchmail/pouch/store"
)

// oddNames are base names as other programs write them, with octets that
// cannot stand in an index column as they are.
var oddNames = []string{
	"procmail-odd name",
	"tab\tand\rcr",
	"new\nline",
	"per%cent",
	"looks%20escaped",
	"del\x7f and \x01",
	"utf8-\xc3\xbc",
	"trailing ",
}

// TestIndexOddNames checks that names with spaces, control octets, line
// ends and "%" are kept in the index, which is then trusted as for any
// other names: Open reads no directory and no message.
func TestIndexOddNames(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	for i, name := range oddNames {
		sub, full := "new", name
		if i%2 == 1 {
			sub, full = "cur", name+":2,S"
		}
		put(t, dir, sub, full, fmt.Sprintf("m%d\n", i))
		mtime := time.Unix(1700000000+int64(i), 0)
		os.Chtimes(filepath.Join(dir, sub, full), mtime, mtime)
	}
	s := New(root)
	m := openT(t, s, "u")
	want := uidList(m)
	if len(want) != len(oddNames) {
		t.Fatalf("%d messages, want %d", len(want), len(oddNames))
	}
	for i := range oddNames {
		if got := body(t, m, i); got != fmt.Sprintf("m%d\r\n", i) {
			t.Fatalf("message %d = %q", i+1, got)
		}
	}
	m.Close()
	settle(t)
	m, _ = openListed(t, s, "u") // records the stamps
	m.Close()
	m, listed := openListed(t, s, "u")
	if listed != 0 {
		t.Fatalf("Open listed %d directories; index %q", listed, readFile(t, filepath.Join(dir, indexFile)))
	}
	if got := uidList(m); !slices.Equal(got, want) {
		t.Fatalf("UIDs from the index %q, want %q", got, want)
	}
	for i := range oddNames {
		if got := body(t, m, i); got != fmt.Sprintf("m%d\r\n", i) {
			t.Fatalf("message %d from the index = %q", i+1, got)
		}
	}
	// A QUIT's deletion journal holds the names too: deleting the one
	// with a line end must not take "new" and "line" with it, when the
	// next Open finishes a commit that a crash cut short.
	put(t, dir, "new", "new", "not deleted\n")
	put(t, dir, "new", "line", "not deleted\n")
	del := fmt.Sprintf("%d,%d", slices.Index(want, uidOf("new\nline")), slices.Index(want, "per%cent"))
	m.Close()
	runCrash(t, root, "maildir.commit.journaled", "POUCH_CRASH_DELETE="+del)
	m = openT(t, s, "u")
	got := uidList(m)
	if len(got) != len(oddNames) || slices.Contains(got, uidOf("new\nline")) || slices.Contains(got, "per%cent") ||
		!slices.Contains(got, "new") || !slices.Contains(got, "line") {
		t.Fatalf("after deleting messages %s of %q: %q", del, want, got)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestIndexUpgrade reads indexes that the previous version wrote (version
// 2: names as they are), with and without stamps, and checks that the
// order, UIDs, sizes and retrieval times they hold are kept when the index
// is rewritten in this version's format, and then read back.
func TestIndexUpgrade(t *testing.T) {
	// name, directory, suffix, body, and what the old index says
	type msg struct {
		base, sub, suffix, body string
		raw, wire, seen         int64
	}
	msgs := []msg{ // in the order the old index has them, not the names' order
		{"1700000009.M1P1.z", "cur", ":2,S", "z\n", 2, 3, 1700000100},
		{"per%cent", "new", "", "p\n", 2, 3, 0},
		{"looks%20escaped", "cur", ":2,", "l\n", 2, 3, 1700000200},
		{"procmail-odd name", "new", "", "o\n", 2, 3, 0},
		{"1700000001.M1P1.a", "new", "", "a\n", 2, 3, 0},
	}
	for _, stamped := range []bool{false, true} {
		t.Run(fmt.Sprintf("stamps=%v", stamped), func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "u")
			for _, m := range msgs {
				put(t, dir, m.sub, m.base+m.suffix, m.body)
			}
			header := indexVersion2
			if stamped {
				settle(t)
				st, err := statDirs(dir)
				if err != nil {
					t.Fatal(err)
				}
				var entries []entry
				for _, m := range msgs {
					entries = append(entries, entry{base: m.base, sub: m.sub, name: m.base + m.suffix})
				}
				for _, sub := range subdirs {
					d := st.of(sub)
					header += fmt.Sprintf(" %s=%d,%d,%d,%x", sub, d.mtime, d.ctime, d.ino, listHash(entries, sub))
				}
			}
			old := header + "\n"
			for _, m := range msgs {
				old += fmt.Sprintf("%s %d %d %d %s%s\n", m.base, m.raw, m.wire, m.seen, m.sub, m.suffix)
			}
			if err := os.WriteFile(filepath.Join(dir, indexFile), []byte(old), 0o600); err != nil {
				t.Fatal(err)
			}
			s := New(root)
			check := func(when string) {
				t.Helper()
				md, listed := openListed(t, s, "u")
				defer md.Close()
				if stamped && listed != 0 {
					t.Errorf("%s: Open listed %d directories", when, listed)
				}
				m := md.(*maildrop)
				if len(m.entries) != len(msgs) {
					t.Fatalf("%s: %d messages, want %d", when, len(m.entries), len(msgs))
				}
				for i, want := range msgs {
					e := m.entries[i]
					if e.base != want.base || e.wire != want.wire || e.seen != want.seen || m.messages[i].UID != uidOf(want.base) {
						t.Errorf("%s: message %d = %+v, want %+v", when, i+1, e, want)
					}
					if got := body(t, md, i); got != strings.ReplaceAll(want.body, "\n", "\r\n") {
						t.Errorf("%s: message %d = %q", when, i+1, got)
					}
				}
			}
			check("version 2")
			if h := indexHead(t, dir); !strings.HasPrefix(h, indexVersion) || stamped != strings.Contains(h, "cur=") {
				t.Fatalf("index not rewritten: header %q", h)
			}
			check("version 3")
			if !strings.Contains(readFile(t, filepath.Join(dir, indexFile)), "per%25cent 2 3 0 new\n") {
				t.Fatalf("index %q", readFile(t, filepath.Join(dir, indexFile)))
			}
		})
	}
}

// TestArrivalOrder checks the order of messages that other programs put
// into new/: by the time in their names, in each program's form, or by
// the file's modification time; and that an order once given is kept.
func TestArrivalOrder(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	s := New(root)
	start := time.Now().Add(-time.Minute)
	s.SetClock(func() time.Time { return start }) // delivered a minute ago
	if err := s.Deliver(context.Background(), "u", strings.NewReader("delivered\n")); err != nil {
		t.Fatal(err)
	}
	// As docs/server.md has it: written into tmp/, then moved into new/.
	tmp := filepath.Join(dir, "tmp", "1.msg")
	if err := os.WriteFile(tmp, []byte("moved\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "new", "1.msg")); err != nil {
		t.Fatal(err)
	}
	// Postfix's names: the microseconds after the device and inode.
	put(t, dir, "new", "1700000000.V801I9M900000.mx", "postfix second\n")
	put(t, dir, "new", "1700000000.V801IaM100.mx", "postfix first\n")
	put(t, dir, "new", "1700000000.P12.host", "plain\n") // second 1700000000, no microseconds
	put(t, dir, "new", "1700000000.M50P7.dovecot", "dovecot\n")
	m := openT(t, s, "u")
	want := []string{"plain", "dovecot", "postfix first", "postfix second", "delivered", "moved"}
	var got []string
	for i := range m.Messages() {
		got = append(got, strings.TrimSpace(body(t, m, i)))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("order %q, want %q", got, want)
	}
	uids := uidList(m)
	m.Close()
	// Found later: after them, whatever their times say; the others keep
	// their numbers.
	put(t, dir, "new", "1600000000.M1P1.old", "old\n")
	put(t, dir, "cur", "0.msg:2,S", "zero\n")
	os.Chtimes(filepath.Join(dir, "cur", "0.msg:2,S"), time.Unix(1, 0), time.Unix(1, 0))
	m = openT(t, s, "u")
	got = uidList(m)
	if !slices.Equal(got[:len(uids)], uids) || !slices.Equal(got[len(uids):], []string{"0.msg", "1600000000.M1P1.old"}) {
		t.Fatalf("UIDs %q after %q", got, uids)
	}
}

// retrSize is the number of octets that RETR sends for message i before
// dot-stuffing: what the server's pop3.Writer counts from the stored form.
func retrSize(t *testing.T, m store.Maildrop, i int) (stored, canonical int64) {
	t.Helper()
	r, err := m.Open(i)
	if err != nil {
		t.Fatal(err)
	}
	n, err := pop3.NewWriter(io.Discard).WriteBody(r.(store.StoredReader).Stored(), make([]byte, 64))
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	r, _ = m.Open(i)
	defer r.Close()
	c, err := io.Copy(io.Discard, r)
	if err != nil {
		t.Fatal(err)
	}
	return n, c
}

// TestSizeMatchesRetr checks that LIST's size is what RETR sends, for
// messages with and without a final line end, stored with LF, CRLF or bare
// CRs, named with Dovecot's ",S=" and ",W=" (which count no final CRLF),
// with wrong fields, with none, and delivered by Pouch.
func TestSizeMatchesRetr(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	s := New(root)
	bodies := []string{"Subject: x", "Subject: x\n", "a\r\nb\r\n", "a\r\nb", "a\nb\n", "a\rb", "a\r", "a\n\r", "\n", "\r", "",
		".a\n..\n.", strings.Repeat("line\n", 100) + "end"}
	n := 0
	for i, b := range bodies {
		// Dovecot's virtual size: each LF without CR before it counts 2.
		w := len(b) + strings.Count(b, "\n") - strings.Count(b, "\r\n")
		for _, name := range []string{
			fmt.Sprintf("17900000%02d.M%dP1.dv,S=%d,W=%d", i, i, len(b), w),
			fmt.Sprintf("17900001%02d.M%dP1.dv,W=%d", i, i, w),
			fmt.Sprintf("17900002%02d.M%dP1.dv,S=%d,W=%d", i, i, len(b)+1, w+1), // fields that lie
			fmt.Sprintf("17900003%02d.M%dP1.dv", i, i),
		} {
			put(t, dir, "new", name, b)
			n++
		}
		if err := s.Deliver(context.Background(), "u", strings.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		n++
	}
	for _, settled := range []bool{false, true} { // measured, then from the index
		m := openT(t, s, "u")
		if len(m.Messages()) != n {
			t.Fatalf("%d messages, want %d", len(m.Messages()), n)
		}
		for i, msg := range m.Messages() {
			stored, canonical := retrSize(t, m, i)
			if msg.Size != stored || msg.Size != canonical {
				t.Errorf("%s: LIST says %d, RETR sends %d (%d through Open)", msg.UID, msg.Size, stored, canonical)
			}
		}
		m.Close()
		if !settled {
			settle(t)
		}
	}
}

// TestStrayEntries checks that what is not a regular file in new/ or cur/
// does not keep the user out: it is left out of the maildrop, a symbolic
// link is not followed, and the Store says so once per Open.
func TestStrayEntries(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	put(t, dir, "new", "1700000001.M1P1.mx", "real\n")
	outside := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(outside, []byte("not mail\n"), 0o600)
	for _, err := range []error{
		os.Mkdir(filepath.Join(dir, "new", "strayDir"), 0o700),
		os.Mkdir(filepath.Join(dir, "cur", "1700000000.M1P1.mx,S=1,W=1:2,S"), 0o700),
		os.Symlink(outside, filepath.Join(dir, "cur", "1700000002.M1P1.link:2,S")),
		os.Symlink("1700000001.M1P1.mx", filepath.Join(dir, "new", "1700000003.M1P1.inside")),
		syscall.Mkfifo(filepath.Join(dir, "new", "1700000004.M1P1.fifo"), 0o600),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	var logged bytes.Buffer
	s := New(root)
	s.SetLogger(slog.New(slog.NewTextHandler(&logged, nil)))
	m, err := s.Open(context.Background(), "u")
	if err != nil {
		t.Fatalf("Open with stray entries: %v", err)
	}
	if got := uidList(m); !slices.Equal(got, []string{"1700000001.M1P1.mx"}) {
		t.Fatalf("UIDs %q", got)
	}
	m.Close()
	if n := strings.Count(logged.String(), "level=WARN"); n != 1 || !strings.Contains(logged.String(), "count=5") ||
		!strings.Contains(logged.String(), "new/strayDir") {
		t.Fatalf("log: %s", logged.String())
	}
	st, err := s.Stats(context.Background(), "u")
	if err != nil || st.Messages != 1 {
		t.Fatalf("Stats: %+v, %v", st, err)
	}
	if n, _, err := s.Usage("u"); err != nil || n != 1 {
		t.Fatalf("Usage: %d, %v", n, err)
	}
	// A message file replaced by a link during a session is not followed.
	os.Remove(filepath.Join(dir, "new", "1700000001.M1P1.mx"))
	os.Symlink(outside, filepath.Join(dir, "new", "1700000001.M1P1.mx"))
	m = openT(t, New(root), "u")
	if len(m.Messages()) != 0 {
		t.Fatalf("a link is listed: %q", uidList(m))
	}
	if found := m.(*maildrop).relocate(&entry{base: "1700000001.M1P1.mx"}); found {
		t.Fatal("relocate found a link")
	}
	if _, err := openFile(filepath.Join(dir, "new", "1700000001.M1P1.mx")); err == nil {
		t.Fatal("openFile followed a link")
	}
}

// TestTmpCleanup checks that a sweep removes the files of tmp/ that have
// not changed for 36 hours, and only those.
func TestTmpCleanup(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	tmp := filepath.Join(dir, "tmp")
	put(t, dir, "new", "1700000001.M1P1.mx", "kept\n")
	now := time.Now()
	setup := func() {
		put(t, dir, "tmp", "killed", "partial")
		put(t, dir, "tmp", "writing", "part")
		os.Mkdir(filepath.Join(tmp, "dir"), 0o700)
		// A file copied with its times kept: its change time is now.
		old := now.Add(-40 * time.Hour)
		for _, name := range []string{"killed", "writing", "dir"} {
			os.Chtimes(filepath.Join(tmp, name), old, old)
		}
	}
	left := func() []string {
		names, _ := fsx.Names(tmp)
		slices.Sort(names)
		return names
	}
	var logged bytes.Buffer
	s := New(root)
	s.SetLogger(slog.New(slog.NewTextHandler(&logged, nil)))
	setup()
	// Changed now (the change time), whatever the modification time says.
	if _, err := s.Sweep(ctx, "u", store.Policy{}, now); err != nil {
		t.Fatal(err)
	}
	if got := left(); len(got) != 3 {
		t.Fatalf("tmp/ after a sweep now: %q", got)
	}
	// 37 hours later: the file still being written was written an hour
	// before; the killed delivery's was not touched since.
	later := now.Add(37 * time.Hour)
	writing := later.Add(-time.Hour)
	os.Chtimes(filepath.Join(tmp, "writing"), writing, writing)
	for _, p := range []store.Policy{{}, {Expire: 200000 * time.Hour}} {
		setup()
		os.Chtimes(filepath.Join(tmp, "writing"), writing, writing)
		// Not under legal hold.
		if err := s.SetHold(ctx, "u", store.Hold{Set: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Sweep(ctx, "u", p, later); err != nil {
			t.Fatal(err)
		}
		if got := left(); len(got) != 3 {
			t.Fatalf("tmp/ after a sweep under hold: %q", got)
		}
		s.SetHold(ctx, "u", store.Hold{})
		// Not while a session has the maildrop (with a policy that opens it).
		if p.Expire > 0 {
			m := openT(t, s, "u")
			if _, err := s.Sweep(ctx, "u", p, later); err == nil {
				t.Fatal("sweep of an open maildrop")
			}
			if got := left(); len(got) != 3 {
				t.Fatalf("tmp/ after a sweep of an open maildrop: %q", got)
			}
			m.Close()
		}
		logged.Reset()
		if _, err := s.Sweep(ctx, "u", p, later); err != nil {
			t.Fatal(err)
		}
		if got := left(); !slices.Equal(got, []string{"dir", "writing"}) {
			t.Fatalf("policy %+v: tmp/ after a sweep 37 hours later: %q", p, got)
		}
		if !strings.Contains(logged.String(), "count=1") {
			t.Fatalf("log: %s", logged.String())
		}
		if got := uids(t, s); len(got) != 1 {
			t.Fatalf("messages %q", got)
		}
	}
}

// TestUIDOfEmptyBase: a file named ":2,S" has an empty base name, which
// is no UIDL (RFC 1939 §7: 1 to 70 characters); it gets a digest.
func TestUIDOfEmptyBase(t *testing.T) {
	if u := uidOf(""); !store.ValidUID(u) {
		t.Errorf("uidOf(\"\") = %q, not a valid UIDL", u)
	}
}
