package maildir

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/store"
)

// settle shortens the trust margin for the test and waits it out, so that
// the directories' last changes are old enough to be recorded.
func settle(t *testing.T) {
	t.Helper()
	old := trustMargin
	trustMargin = 30 * time.Millisecond
	t.Cleanup(func() { trustMargin = old })
	time.Sleep(40 * time.Millisecond)
}

// openListed opens user's maildrop and reports how many directories the
// Open listed.
func openListed(t *testing.T, s *Store, user string) (store.Maildrop, int) {
	t.Helper()
	before := listings.Load()
	m := openT(t, s, user)
	return m, int(listings.Load() - before)
}

func uidList(m store.Maildrop) []string {
	var out []string
	for _, msg := range m.Messages() {
		out = append(out, msg.UID)
	}
	return out
}

func indexHead(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, indexFile))
	if err != nil {
		t.Fatal(err)
	}
	head, _, _ := strings.Cut(string(b), "\n")
	return head
}

// TestIndexTrusted checks that an Open after nothing changed reads no
// directory, and that every kind of change is seen at the next Open.
func TestIndexTrusted(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	put(t, dir, "new", "1700000000.M1P1.a", "one\n")
	put(t, dir, "cur", "1700000001.M1P1.b:2,S", "two\n")
	s := New(root)

	// Changed just now: listed, and the index must not vouch for it.
	m, listed := openListed(t, s, "u")
	m.Close()
	if listed != 2 {
		t.Fatalf("first Open listed %d directories, want 2", listed)
	}
	if h := indexHead(t, dir); h != indexVersion {
		t.Fatalf("index of directories changed just now has header %q, want %q", h, indexVersion)
	}
	settle(t)
	m, listed = openListed(t, s, "u")
	m.Close()
	if listed != 2 || !strings.HasPrefix(indexHead(t, dir), indexVersion+" cur=") {
		t.Fatalf("settled Open: listed %v, header %q", listed, indexHead(t, dir))
	}
	stats := dirStats.Load()
	m, listed = openListed(t, s, "u")
	if listed != 0 {
		t.Fatalf("Open listed %d directories although nothing changed", listed)
	}
	// tmp/, new/ and cur/ exist, and new/ and cur/ did not change: one stat
	// of each tells both.
	if n := dirStats.Load() - stats; n != 3 {
		t.Fatalf("Open took %d stats of the Maildir's directories, want 3", n)
	}
	if got, want := uidList(m), []string{"1700000000.M1P1.a", "1700000001.M1P1.b"}; !slices.Equal(got, want) {
		t.Fatalf("UIDs %v, want %v", got, want)
	}
	if got := body(t, m, 1); got != "two\r\n" {
		t.Fatalf("message 2 = %q", got)
	}
	m.Close()

	changes := []struct {
		name   string
		change func()
		listed int // the directories that changed
	}{
		{"delivery", func() {
			if err := s.Deliver(context.Background(), "u", strings.NewReader("three\n")); err != nil {
				t.Fatal(err)
			}
		}, 1},
		{"move to cur", func() {
			os.Rename(filepath.Join(dir, "new", "1700000000.M1P1.a"), filepath.Join(dir, "cur", "1700000000.M1P1.a:2,S"))
		}, 2},
		{"flags", func() {
			os.Rename(filepath.Join(dir, "cur", "1700000001.M1P1.b:2,S"), filepath.Join(dir, "cur", "1700000001.M1P1.b:2,RS"))
		}, 1},
		{"removal", func() { os.Remove(filepath.Join(dir, "cur", "1700000001.M1P1.b:2,RS")) }, 1},
	}
	for _, c := range changes {
		m, _ = openListed(t, s, "u")
		before := uidList(m)
		m.Close()
		settle(t)
		m, _ = openListed(t, s, "u") // makes the index trusted again
		m.Close()
		c.change()
		m, listed = openListed(t, s, "u")
		if listed != c.listed {
			t.Fatalf("%s: Open listed %d directories, want %d", c.name, listed, c.listed)
		}
		switch c.name {
		case "delivery":
			if len(uidList(m)) != len(before)+1 {
				t.Fatalf("%s: %v after %v", c.name, uidList(m), before)
			}
		case "removal":
			if len(uidList(m)) != len(before)-1 {
				t.Fatalf("%s: %v after %v", c.name, uidList(m), before)
			}
		default:
			if !slices.Equal(uidList(m), before) {
				t.Fatalf("%s: %v, want %v", c.name, uidList(m), before)
			}
		}
		for i := range m.Messages() {
			body(t, m, i)
		}
		m.Close()
	}
}

// TestIndexStaleName opens a message whose file was renamed although the
// index is trusted (it cannot happen without a change of the directory's
// times, but Open must cope anyway).
func TestIndexStaleName(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	put(t, dir, "new", "1700000000.M1P1.a", "one\n")
	s := New(root)
	openT(t, s, "u").Close()
	os.Rename(filepath.Join(dir, "new", "1700000000.M1P1.a"), filepath.Join(dir, "cur", "1700000000.M1P1.a:2,S"))
	settle(t)
	st, err := statDirs(dir)
	if err != nil {
		t.Fatal(err)
	}
	// An index that says the file is still in new/, with the current stamps.
	stale := []entry{{base: "1700000000.M1P1.a", sub: "new", name: "1700000000.M1P1.a", raw: 4, wire: 5}}
	if err := storeIndex(dir, stale, &st); err != nil {
		t.Fatal(err)
	}
	m, listed := openListed(t, s, "u")
	if listed != 0 {
		t.Fatal("Open listed the directories")
	}
	if got := body(t, m, 0); got != "one\r\n" {
		t.Fatalf("message 1 = %q", got)
	}
}

// TestIndexCarriedOver checks that rewriting the index with the same files
// keeps it trusted, and with other files does not.
func TestIndexCarriedOver(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	put(t, dir, "new", "1700000000.M1P1.a", "one\n")
	put(t, dir, "new", "1700000001.M1P1.b", "two\n")
	settle(t)
	s := New(root)
	m := openT(t, s, "u").(*maildrop)
	entries := slices.Clone(m.entries)
	m.Close()
	trusted := indexHead(t, dir)
	if !strings.Contains(trusted, " cur=") {
		t.Fatalf("header %q", trusted)
	}
	entries[0].seen = 1700000100
	if err := writeIndex(dir, entries); err != nil {
		t.Fatal(err)
	}
	if h := indexHead(t, dir); h != trusted {
		t.Fatalf("after a new retrieval time, header %q, want %q", h, trusted)
	}
	if _, listed := openListed(t, s, "u"); listed != 0 {
		t.Fatal("Open listed the directories")
	}
	if err := writeIndex(dir, entries[1:]); err != nil {
		t.Fatal(err)
	}
	// Both files were in new/: only cur/'s stamp (no files) still holds.
	if h := indexHead(t, dir); strings.Contains(h, "new=") || !strings.Contains(h, "cur=") {
		t.Fatalf("after dropping a file, header %q", h)
	}
}

// TestIndexFormats reads indexes of earlier versions and checks that their
// sizes and retrieval times are used, and that unknown columns survive.
func TestIndexFormats(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "u")
	put(t, dir, "new", "1700000000.M1P1.a", "one\n")
	put(t, dir, "cur", "1700000001.M1P1.b:2,S", "two\n")
	s := New(root)
	for _, tc := range []struct {
		name, index string
		sizes       []int64
		seen        int64
		extra       string
	}{
		{"three columns", "1700000000.M1P1.a 4 55\n1700000001.M1P1.b 4 66\n", []int64{55, 66}, 0, ""},
		{"four columns", "1700000000.M1P1.a 4 55 0\n1700000001.M1P1.b 4 66 1700000009\n", []int64{55, 66}, 1700000009, ""},
		{"version 2, more columns", indexVersion2 + "\n1700000000.M1P1.a 4 55 0 new\n1700000001.M1P1.b 4 66 1700000009 cur:2,S x=1 y\n", []int64{55, 66}, 1700000009, "x=1 y"},
		{"version 2, stale location", indexVersion2 + "\n1700000000.M1P1.a 4 55 0 cur:2,T\n1700000001.M1P1.b 4 66 0 new\n", []int64{55, 66}, 0, ""},
		{"damaged location", indexVersion2 + "\n1700000000.M1P1.a 4 55 0 tmp\n1700000001.M1P1.b 4 66 0 new\n", []int64{5, 5}, 0, ""},
		{"unknown version", "#pouch-index 9\n1700000000.M1P1.a 4 55 0 new\n", []int64{5, 5}, 0, ""},
		{"trailing space", "1700000000.M1P1.a 4 55 \n", []int64{5, 5}, 0, ""},
	} {
		if err := os.WriteFile(filepath.Join(dir, indexFile), []byte(tc.index), 0o600); err != nil {
			t.Fatal(err)
		}
		m := openT(t, s, "u").(*maildrop)
		var sizes []int64
		for _, msg := range m.Messages() {
			sizes = append(sizes, msg.Size)
		}
		if !slices.Equal(sizes, tc.sizes) || m.entries[1].seen != tc.seen || m.entries[1].extra != tc.extra {
			t.Errorf("%s: sizes %v seen %d extra %q; want %v %d %q", tc.name, sizes, m.entries[1].seen, m.entries[1].extra, tc.sizes, tc.seen, tc.extra)
		}
		if body(t, m, 0) != "one\r\n" || body(t, m, 1) != "two\r\n" {
			t.Errorf("%s: bodies differ", tc.name)
		}
		m.Close()
		idx, _ := os.ReadFile(filepath.Join(dir, indexFile))
		if !bytes.HasPrefix(idx, []byte(indexVersion)) || !bytes.Contains(idx, []byte(" 0 new\n")) ||
			!bytes.Contains(idx, []byte(" cur:2,S")) || (tc.extra != "" && !bytes.Contains(idx, []byte("cur:2,S "+tc.extra+"\n"))) {
			t.Errorf("%s: rewritten index %q", tc.name, idx)
		}
	}
}

// TestArrival checks which names give their delivery time, and that
// sortArrival sorts by it, then by the file's modification time for the
// names without one, then by name.
func TestArrival(t *testing.T) {
	for _, tc := range []struct {
		name      string
		sec, usec int64
		ok        bool
	}{
		{"1700000000.M123456P42Q7.host.example,S=5,W=6", 1700000000, 123456, true}, // Pouch
		{"1700000000.M7P42.host", 1700000000, 7, true},                             // Dovecot
		{"1700000000.V801I3c0036M716893.mx.example", 1700000000, 716893, true},     // Postfix
		{"1700000000.M12P3_4.host", 1700000000, 12, true},                          // Courier
		{"1700000000.P1.b", 1700000000, 0, true},
		{"1700000000.12345.host", 1700000000, 0, true},               // qmail
		{"1700000000.12345_7.host,U=3", 1700000000, 0, true},         // mbsync
		{"1700000000_3.12345.host,U=3,FMD5=ab", 1700000000, 0, true}, // OfflineIMAP
		{"1700000000_x.12345.host", 0, 0, false},
		{"1.msg", 0, 0, false},
		{"1700000001.sp ace", 0, 0, false},
		{"99.M1", 0, 0, false},
		{"-5.M3P1.h", 0, 0, false},
		{"x", 0, 0, false},
		{"1700000000.msg.host", 0, 0, false},
		{"1700000000.M.host", 0, 0, false},
		{"procmail-odd name", 0, 0, false},
	} {
		sec, usec, ok := arrival(tc.name)
		if sec != tc.sec || usec != tc.usec || ok != tc.ok {
			t.Errorf("arrival(%q) = %d, %d, %v; want %d, %d, %v", tc.name, sec, usec, ok, tc.sec, tc.usec, tc.ok)
		}
	}

	dir := t.TempDir()
	ensure(dir)
	var entries []entry
	add := func(name string, mtime time.Time) {
		put(t, dir, "new", name, "x\n")
		if !mtime.IsZero() {
			if err := os.Chtimes(filepath.Join(dir, "new", name), mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}
		entries = append(entries, entry{base: name, name: name, sub: "new"})
	}
	add("1700000000.M2P1.a", time.Time{})
	add("late", time.Unix(1700000001, 5000))
	add("1700000000.M10P1.a", time.Time{})
	add("1700000001.V1I1M4.mx", time.Time{})
	add("early", time.Unix(1600000000, 0))
	add("tie-b", time.Unix(1700000000, 2000))
	add("tie-a", time.Unix(1700000000, 2000))
	add("1700000000.M1P1.a", time.Time{})
	entries = append(entries, entry{base: "vanished", name: "vanished", sub: "new"})
	for i := range 200 {
		add(fmt.Sprintf("%d.M%dP%d.h", 1700000100+i%7, i%13, i), time.Time{})
	}
	want := []string{"early", "1700000000.M1P1.a", "1700000000.M2P1.a", "tie-a", "tie-b",
		"1700000000.M10P1.a", "1700000001.V1I1M4.mx", "late"}
	var got []string
	for _, e := range sortArrival(dir, slices.Clone(entries)) {
		got = append(got, e.base)
	}
	if !slices.Equal(got[:len(want)], want) || len(got) != len(entries)-1 {
		t.Fatalf("sortArrival: %v..., want %v and the 200 others", got[:len(want)+1], want)
	}
	if !slices.IsSortedFunc(got[len(want):], func(a, b string) int {
		as, au, _ := arrival(a)
		bs, bu, _ := arrival(b)
		return cmp.Or(cmp.Compare(as, bs), cmp.Compare(au, bu), strings.Compare(a, b))
	}) {
		t.Fatalf("sortArrival: %v", got[len(want):])
	}
}

func FuzzIndex(f *testing.F) {
	f.Add([]byte(indexVersion + " cur=1,2,3,ff new=4,5,6,0\n1700000000.M1P1.a 4 55 0 new\nb 1 2 3 cur:2,S x\n"))
	f.Add([]byte("a 1 2\nb 3 4 5\n"))
	f.Add([]byte(indexVersion + "\n"))
	f.Add([]byte(indexVersion + "\nodd%20name%0A%25 1 2 0 cur:2,%20S\n"))
	f.Add([]byte(indexVersion2 + "\nodd name 1 2 0 new\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, indexFile)
		os.WriteFile(path, data, 0o600)
		idx, hdr, err := loadIndex(path)
		if err != nil || len(idx) == 0 {
			return
		}
		if !located(idx) {
			return // an earlier version's index is rewritten only after a listing
		}
		for _, e := range idx {
			if e.base == "" || baseName(e.name) != e.base || e.raw < 0 || e.wire < 0 || e.seen < 0 {
				t.Fatalf("bad entry %+v", e)
			}
		}
		if err := storeIndex(dir, idx, &hdr.stamps); err != nil {
			t.Fatal(err)
		}
		again, hdr2, err := loadIndex(path)
		if err != nil || !slices.Equal(again, idx) || !hdr2.stamps.cur.same(hdr.stamps.cur) && hdr.stamps.cur.valid() {
			t.Fatalf("round trip of %q: %+v %+v, want %+v %+v", data, again, hdr2, idx, hdr)
		}
	})
}

// benchMaildir writes n empty message files with ",S=" and ",W=" names into
// cur/ of a new Maildir, the way bench/gendata.py names them, and returns the
// Store and user.
func benchMaildir(b *testing.B, n int) (*Store, string) {
	root := b.TempDir()
	dir := filepath.Join(root, "u")
	if err := ensure(dir); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		name := fmt.Sprintf("%d.M%06dP1Q%d.bench,S=1000,W=1020", 1700000000+i/100, i%100, i)
		if err := os.WriteFile(filepath.Join(dir, "cur", name+":2,S"), nil, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	return New(root), "u"
}

func openCount(b *testing.B, s *Store, user string, n int) {
	m, err := s.Open(context.Background(), user)
	if err != nil {
		b.Fatal(err)
	}
	if len(m.Messages()) != n {
		b.Fatalf("%d messages, want %d", len(m.Messages()), n)
	}
	m.Close()
}

// BenchmarkOpen opens a maildrop of 10,000 and 100,000 messages whose index
// is up to date ("unchanged": nothing happened since the last session), one
// without an index ("noindex": the first Open ever, which lists the
// directories and writes the index), one whose new/ changed before every
// Open ("delivery": the files are all in cur/, so new/ is small to list), and
// one whose cur/ changed before every Open ("changed": a flag was set), which
// costs a listing of cur/.
func BenchmarkOpen(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		s, user := benchMaildir(b, n)
		openCount(b, s, user, n) // builds the index
		// The directories must look settled for the index to be trusted.
		time.Sleep(2100 * time.Millisecond)
		openCount(b, s, user, n)
		index := filepath.Join(s.root, user, indexFile)
		touch := func(sub string) func() {
			tmp := filepath.Join(s.root, user, sub, ".touch")
			return func() {
				os.WriteFile(tmp, nil, 0o600)
				os.Remove(tmp)
			}
		}
		for _, c := range []struct {
			name   string
			before func() // untimed, before every Open
		}{
			{"unchanged", nil},
			{"noindex", func() { os.Remove(index) }},
			{"delivery", touch("new")},
			{"changed", touch("cur")},
		} {
			b.Run(fmt.Sprintf("%s-%dk", c.name, n/1000), func(b *testing.B) {
				for b.Loop() {
					if c.before != nil {
						b.StopTimer()
						c.before()
						b.StartTimer()
					}
					openCount(b, s, user, n)
				}
			})
		}
	}
}

// BenchmarkCommit opens a maildrop of 1,000 messages and commits the
// deletion of 1, 10 or 1,000 of them (a QUIT: journal, unlinks, syncs),
// and BenchmarkOpen's small counterpart opens a maildrop of 10 messages
// whose index is up to date, where what an Open does besides reading the
// index shows. The messages are made again, untimed, before each commit.
func BenchmarkCommit(b *testing.B) {
	for _, del := range []int{1, 10, 1000} {
		b.Run(fmt.Sprintf("delete-%d", del), func(b *testing.B) {
			const n = 1000
			s, user := benchMaildir(b, n)
			dir := filepath.Join(s.root, user)
			made := 0
			for b.Loop() {
				b.StopTimer()
				names, _ := fsx.Names(filepath.Join(dir, "cur"))
				for i := len(names); i < n; i++ {
					made++
					name := fmt.Sprintf("%d.M%06dP2Q%d.bench,S=1000,W=1020:2,S", 1800000000+made/100, made%100, made)
					os.WriteFile(filepath.Join(dir, "cur", name), nil, 0o600)
				}
				m, err := s.Open(context.Background(), user)
				if err != nil {
					b.Fatal(err)
				}
				idx := make([]int, del)
				for i := range idx {
					idx[i] = i
				}
				b.StartTimer()
				if err := m.Commit(idx); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				m.Close()
				b.StartTimer()
			}
		})
	}
}

func BenchmarkOpenSmall(b *testing.B) {
	s, user := benchMaildir(b, 10)
	openCount(b, s, user, 10)
	settleB(b)
	openCount(b, s, user, 10)
	for b.Loop() {
		openCount(b, s, user, 10)
	}
}

// settleB waits until the directories may be recorded in the index.
func settleB(b *testing.B) {
	old := trustMargin
	trustMargin = 30 * time.Millisecond
	b.Cleanup(func() { trustMargin = old })
	time.Sleep(40 * time.Millisecond)
}
