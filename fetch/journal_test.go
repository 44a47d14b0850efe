package fetch

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"
)

// A Q record makes a UIDL suspect until a later downloaded line; it
// survives a compaction, and is forgotten when the UIDL leaves the server.
func TestJournalSuspectRecords(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x.journal"), []byte(journalHeader+"100 a\nQ a\nQ b\nQ c\n200 c\n"), 0o600)
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	if !j.Suspect("a") || !j.Suspect("b") || j.Suspect("c") || len(j.Warnings()) != 0 {
		t.Fatalf("suspect a %v b %v c %v, warnings %q", j.Suspect("a"), j.Suspect("b"), j.Suspect("c"), j.Warnings())
	}
	if _, seen := j.Seen("a"); !seen {
		t.Fatal("a's downloaded line lost")
	}
	// Compacting keeps the Q after a's downloaded line.
	if err := j.rewrite(); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j, err = OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	if !j.Suspect("a") || !j.Suspect("b") || j.Suspect("c") {
		t.Fatal("suspects changed by the compaction")
	}
	// Downloading b again (--retry-quarantined) clears it.
	j.Add("b", time.Unix(300, 0))
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	if j.Suspect("b") {
		t.Fatal("b still suspect after a downloaded line")
	}
	// a left the server: its suspect record goes, its downloaded one becomes
	// a tombstone.
	if err := prune(j, "b", "c"); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j, err = OpenJournal(dir, "x", true)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if j.Suspect("a") || !j.Tombstoned("a") || j.Suspect("b") || j.Len() != 2 {
		t.Fatalf("after prune: a suspect %v tomb %v, b suspect %v, len %d", j.Suspect("a"), j.Tombstoned("a"), j.Suspect("b"), j.Len())
	}
}

// A version 2 journal is read and rewritten as version 3 at the first
// writable open (so that an older pouch refuses it rather than skip Q
// lines); Q lines are not part of version 2.
func TestJournalUpgradeFromV2(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.journal")
	os.WriteFile(path, []byte(journalHeaderV2+"100 a\nP b\nT 50 c\nQ d\nM 10 /m\n"), 0o600)
	j, err := OpenJournal(dir, "x", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Warnings()) != 1 || j.Suspect("d") {
		t.Fatalf("warnings %q", j.Warnings())
	}
	j.Close()
	if b, _ := os.ReadFile(path); !strings.HasPrefix(string(b), journalHeaderV2) {
		t.Fatal("a read-only open rewrote the journal")
	}
	j, err = OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
	b, _ := os.ReadFile(path)
	if string(b) != journalHeader+"100 a\nP b\nT 50 c\nM 10 /m\n" {
		t.Fatalf("%q", b)
	}
}

// The table finds every UIDL it holds across growth, and nothing else.
func TestUIDTable(t *testing.T) {
	tab := newUIDTable()
	var refs []ref
	for i := range 100000 {
		r, err := tab.InsertString(strings.Repeat("x", i%70) + string(rune('a'+i%26)) + strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		tab.SetTime(r, int64(i))
		tab.Set(r, uint8(i))
		refs = append(refs, r)
	}
	if tab.Len() != 100000 {
		t.Fatalf("len %d", tab.Len())
	}
	for i, r := range refs {
		uid := strings.Repeat("x", i%70) + string(rune('a'+i%26)) + strconv.Itoa(i)
		if got := tab.FindString(uid); got != r || tab.Find([]byte(uid)) != r || tab.UID(r) != uid || tab.Time(r) != int64(i) || tab.Flags(r) != uint8(i) {
			t.Fatalf("entry %d: ref %d/%d uid %q time %d", i, got, r, tab.UID(r), tab.Time(r))
		}
		if again, _ := tab.InsertString(uid); again != r {
			t.Fatalf("entry %d inserted twice", i)
		}
	}
	if tab.FindString("absent") != 0 {
		t.Fatal("found an absent UIDL")
	}
	n := 0
	tab.Each(func(r ref) {
		if r != refs[n] {
			t.Fatalf("Each: entry %d is %d, want %d", n, r, refs[n])
		}
		n++
	})
}

// Pending records past spillSize are written out before Sync (without an
// fsync), so that millions of them are not held in memory; a failed write
// of them fails the next Sync.
func TestJournalSpillsPending(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	n := spillSize/20 + 10
	for i := range n {
		j.AddPending(fmt.Sprintf("uid-%015d", i))
	}
	if len(j.buf) >= spillSize {
		t.Fatalf("%d octets buffered", len(j.buf))
	}
	if fi, _ := os.Stat(filepath.Join(dir, "x.journal")); fi.Size() < spillSize {
		t.Fatalf("journal has %d octets before Sync", fi.Size())
	}
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j, err = OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if !j.Pending("uid-000000000000000") || !j.Pending(fmt.Sprintf("uid-%015d", n-1)) {
		t.Fatal("pending records lost")
	}
	journalWrite = func(*os.File, []byte) (int, error) { return 0, syscall.ENOSPC }
	for i := range n {
		j.AddPending(fmt.Sprintf("new-%015d", i))
	}
	journalWrite = (*os.File).Write
	if err := j.Sync(); err == nil {
		t.Fatal("a failed spill went unnoticed")
	}
}

// The size check counts CRLF pairs split between reads, accepts the CRLF
// and the LF count of LIST, and refuses anything else and empty bodies.
func TestCheckReader(t *testing.T) {
	body := "a\r\nbb\r\n\r\nc\r\n"
	for want, ok := range map[int64]bool{12: true, 8: true, 13: false, 11: false, 9: false, 0: false} {
		c := &checkReader{r: iotest.OneByteReader(strings.NewReader(body)), want: want, tee: &teeSpool{}}
		got, err := io.ReadAll(c)
		if ok != (err == nil) || string(got) != body || c.crlf != 4 {
			t.Errorf("LIST %d: %v, %d CRLF", want, err, c.crlf)
		}
	}
	c := &checkReader{r: strings.NewReader(""), tee: &teeSpool{}}
	if _, err := io.ReadAll(c); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty body: %v", err)
	}
}
