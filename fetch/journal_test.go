package fetch

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
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
