package fetch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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
	j.sys.write = func(*os.File, []byte) (int, error) { return 0, syscall.ENOSPC }
	for i := range n {
		j.AddPending(fmt.Sprintf("new-%015d", i))
	}
	j.sys.write = osCalls.write
	if err := j.Sync(); err == nil {
		t.Fatal("a failed spill went unnoticed")
	}
}

func TestPruneEmptyListKeepsJournal(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	j.Add("a", time.Now())
	j.Add("b", time.Now())
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := pruneKeep(j, &Account{KeepForever: true}); err != nil {
		t.Fatal(err)
	}
	if j.Len() != 2 || len(j.Warnings()) != 1 {
		t.Fatalf("empty LIST pruned the journal: %d, warnings %q", j.Len(), j.Warnings())
	}
	// A partial LIST prunes b into a tombstone, which survives a reopen.
	if err := prune(j, "a"); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j, err = OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, ok := j.Seen("b"); ok || j.Len() != 1 || !j.Tombstoned("b") {
		t.Fatalf("b: len %d tomb %v", j.Len(), j.Tombstoned("b"))
	}
	// Tombstones expire after 30 days.
	j.ids.SetTime(j.ids.FindString("b"), time.Now().Add(-31*24*time.Hour).Unix())
	if err := prune(j, "a"); err != nil {
		t.Fatal(err)
	}
	if j.Tombstoned("b") {
		t.Fatal("old tombstone kept")
	}
}

func TestJournalPartialWriteThenRetry(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	j.Add("a", time.Unix(100, 0))
	j.sys.write = func(f *os.File, b []byte) (int, error) {
		n, _ := f.Write(b[:len(b)/2])
		return n, syscall.ENOSPC
	}
	err = j.Sync()
	j.sys.write = osCalls.write
	if err == nil {
		t.Fatal("sync succeeded")
	}
	if _, ok := j.Seen("a"); ok {
		t.Fatal("a failed write is seen")
	}
	j.Add("b", time.Unix(200, 0))
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j, err = OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, ok := j.Seen("b"); !ok || j.Len() != 1 {
		t.Fatalf("after retry: %d downloaded", j.Len())
	}
}

func TestJournalFdatasyncErrorSticky(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	j.Add("a", time.Unix(100, 0))
	j.sys.fdatasync = func(*os.File) error { return syscall.EIO }
	err = j.Sync()
	j.sys.fdatasync = osCalls.fdatasync
	if err == nil {
		t.Fatal("sync succeeded")
	}
	j.Add("b", time.Unix(200, 0))
	if err := j.Sync(); err == nil {
		t.Fatal("journal usable after a failed fdatasync")
	}
}

func TestJournalValidatesLines(t *testing.T) {
	dir := t.TempDir()
	bad := "pouch-fetch-journal 1\n100 a\n100 b c\n100 " + strings.Repeat("u", 71) + "\nxx y\n100 \x01\n200 d\n"
	os.WriteFile(filepath.Join(dir, "x.journal"), []byte(bad), 0o600)
	j, err := OpenJournal(dir, "x", true)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if j.Len() != 2 || len(j.Warnings()) != 4 {
		t.Fatalf("len %d warnings %q", j.Len(), j.Warnings())
	}
}

func TestJournalOpenCleansAndSyncsParent(t *testing.T) {
	dir := t.TempDir()
	// As this version names them, and as earlier ones did.
	strays := []string{filepath.Join(dir, ".x.journal.tmp12345"), filepath.Join(dir, "x.journal.tmp12345")}
	others := []string{filepath.Join(dir, ".y.journal.tmp1"), filepath.Join(dir, "y.journal.tmp1")}
	for _, p := range append(strays, others...) {
		os.WriteFile(p, []byte("junk"), 0o600)
	}
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
	for _, p := range strays {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stray temporary journal %s left", p)
		}
	}
	for _, p := range others {
		if _, err := os.Stat(p); err != nil {
			t.Fatal("another account's file removed")
		}
	}
	var synced []string
	sys := osCalls
	sys.syncDir = func(d string) error { synced = append(synced, d); return osCalls.syncDir(d) }
	sub := filepath.Join(dir, "a", "state")
	j, err = openJournal(sub, "x", false, sys)
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
	if !strings.Contains(strings.Join(synced, ","), filepath.Join(dir, "a")+",") && !strings.HasSuffix(strings.Join(synced, ","), filepath.Join(dir, "a")) {
		t.Fatalf("parent not synced: %q", synced)
	}
}

// An empty listing forgets nothing, with a warning that counts them, while
// the journal expects messages on the server: kept by the policy or by
// --mark-existing, quarantined, or about to be downloaded. Downloaded
// messages due for deletion were deleted by pouch fetch (or are at its next
// QUIT): without others, an empty listing prunes them silently into
// tombstones.
func TestPruneEmptyListExpected(t *testing.T) {
	now := time.Now().Unix()
	hourAgo, twoHoursAgo := now-3600, now-2*3600
	for _, tc := range []struct {
		name, journal string
		a             Account
		expects       int      // 0: no warning, and the downloaded ones pruned
		seen          []string // still recorded as downloaded afterwards
	}{
		{name: "deleted", journal: fmt.Sprintf("%d a\n%d b\nT %d c\n", hourAgo, now, now), seen: nil},
		{name: "kept forever", journal: fmt.Sprintf("%d a\n%d b\n", hourAgo, now), a: Account{KeepForever: true}, expects: 2, seen: []string{"a", "b"}},
		{name: "keep 90m", journal: fmt.Sprintf("%d a\n%d b\n%d c\n", twoHoursAgo, hourAgo, now), a: Account{Keep: 90 * time.Minute}, expects: 2, seen: []string{"a", "b", "c"}},
		{name: "keep 90m, all due", journal: fmt.Sprintf("%d a\n%d b\n", twoHoursAgo, twoHoursAgo), a: Account{Keep: 90 * time.Minute}, seen: nil},
		{name: "pending", journal: fmt.Sprintf("%d a\nP b\nP a\n", hourAgo), expects: 1, seen: []string{"a"}},
		{name: "quarantined", journal: fmt.Sprintf("%d a\nQ b\n%d c\nQ c\n", hourAgo, hourAgo), expects: 2, seen: []string{"a", "c"}},
		{name: "marked existing", journal: fmt.Sprintf("%d a\nE %d b\n", hourAgo, hourAgo), expects: 1, seen: []string{"a", "b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "x.journal"), []byte(journalHeader+tc.journal), 0o600)
			j, err := OpenJournal(dir, "x", false)
			if err != nil {
				t.Fatal(err)
			}
			if err := pruneKeep(j, &tc.a); err != nil {
				t.Fatal(err)
			}
			w := j.Warnings()
			switch {
			case tc.expects == 0 && len(w) != 0:
				t.Fatalf("warnings %q", w)
			case tc.expects > 0 && (len(w) != 1 || !strings.Contains(w[0], fmt.Sprintf("lists no messages, but the journal expects %d there", tc.expects))):
				t.Fatalf("warnings %q, want one that counts %d", w, tc.expects)
			}
			j.Close()
			j, err = OpenJournal(dir, "x", true)
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			if j.Len() != len(tc.seen) {
				t.Fatalf("%d recorded as downloaded, want %v", j.Len(), tc.seen)
			}
			for _, u := range tc.seen {
				if _, ok := j.Seen(u); !ok {
					t.Fatalf("%s forgotten", u)
				}
			}
			if tc.expects == 0 {
				for _, u := range []string{"a", "b"} {
					if !j.Tombstoned(u) {
						t.Fatalf("%s is no tombstone", u)
					}
				}
			} else if n := tombstones(j); n != 0 {
				t.Fatalf("%d tombstones", n)
			}
		})
	}
}
