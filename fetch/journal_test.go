package fetch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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
	j.Add("b", time.Unix(300, 0), -1)
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
		j.AddPending(fmt.Sprintf("uid-%015d", i), -1)
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
		j.AddPending(fmt.Sprintf("new-%015d", i), -1)
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
	j.Add("a", time.Now(), -1)
	j.Add("b", time.Now(), -1)
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
	j.Add("a", time.Unix(100, 0), -1)
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
	j.Add("b", time.Unix(200, 0), -1)
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
	j.Add("a", time.Unix(100, 0), -1)
	j.sys.fdatasync = func(*os.File) error { return syscall.EIO }
	err = j.Sync()
	j.sys.fdatasync = osCalls.fdatasync
	if err == nil {
		t.Fatal("sync succeeded")
	}
	j.Add("b", time.Unix(200, 0), -1)
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

// A version 4 journal (no sizes) is read, its IDs keep no size, and it is
// rewritten as version 5 at the first writable open, so that an older pouch
// refuses it; a size is not part of version 4.
func TestJournalUpgradeFromV4(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.journal")
	os.WriteFile(path, []byte(journalHeaderV4+"100 a\nP b\nT 50 c\nQ d\nE 60 e\n200 f 5\nM 10 /m\n"), 0o600)
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Warnings()) != 1 || !strings.Contains(j.Warnings()[0], `"200 f 5"`) {
		t.Fatalf("warnings %q", j.Warnings())
	}
	if _, known := j.ids.Size(j.ids.FindString("a")); known {
		t.Fatal("a version 4 record has a size")
	}
	j.Close()
	b, _ := os.ReadFile(path)
	if string(b) != journalHeader+"100 a\nP b\nT 50 c\nQ d\nE 60 e\nM 10 /m\n" {
		t.Fatalf("%q", b)
	}
}

// journalState describes what j records of every entry: flags, time (of
// a downloaded message or a tombstone) and size.
func journalState(j *Journal) string {
	var out []string
	j.ids.Each(func(r ref) {
		f := j.ids.Flags(r) &^ (fListed | fDup | fStaged)
		if f&fSeen != 0 {
			f &^= fPending // only a pending record without a downloaded one counts
		}
		if f == 0 {
			return
		}
		t := int64(0)
		if f&(fSeen|fTomb) != 0 {
			t = j.ids.Time(r)
		}
		size, known := j.ids.Size(r)
		if !known {
			size = -1
		}
		out = append(out, fmt.Sprintf("%s:%08b:%d:%d", j.ids.UID(r), f, t, size))
	})
	slices.Sort(out)
	return strings.Join(out, " ")
}

// Sizes: the first downloaded line of a UIDL wins unless its size differs
// (a new message under a reused UIDL replaces the old record), a pending
// line with another size ends the downloaded record, and an unknown size
// is filled in. Compacting writes the same state back.
func TestJournalSizes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.journal")
	os.WriteFile(path, []byte(journalHeader+
		"100 same 5\n200 same 5\n"+ // first wins: 100
		"100 other 5\n200 other 9\n"+ // replaced: 200, 9
		"100 filled\n200 filled 9\n"+ // first wins, size filled in
		"100 reused 5\nP reused 9\n"+ // a crash before the new one was stored
		"100 done 5\nP done 9\n300 done 9\n"+ // stored
		"100 kept 5\nP kept 5\n"+ // same size: still downloaded
		"T 100 gone 5\nP gone 9\n"+ // left, and came back as another
		"E 100 marked 5\n200 marked 9\n"+ // replaced, no longer --mark-existing
		"P big 5000000000\n"+
		"100 bad -1\n100 bad2 x\n"), 0o600)
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Warnings()) != 2 {
		t.Fatalf("warnings %q", j.Warnings())
	}
	checks := []struct {
		uid     string
		seen    bool
		t, size int64
		pending bool
	}{
		{"same", true, 100, 5, false},
		{"other", true, 200, 9, false},
		{"filled", true, 100, 9, false},
		{"reused", false, 100, 9, true},
		{"done", true, 300, 9, false},
		{"kept", true, 100, 5, false},
		{"gone", false, 100, 9, true},
		{"marked", true, 200, 9, false},
		{"big", false, 0, 5000000000, true},
	}
	for _, c := range checks {
		r := j.ids.FindString(c.uid)
		size, _ := j.ids.Size(r)
		if seen := j.ids.Has(r, fSeen); seen != c.seen || seen && j.ids.Time(r) != c.t || size != c.size || j.Pending(c.uid) != c.pending {
			t.Errorf("%s: seen %v at %d, size %d, pending %v", c.uid, seen, j.ids.Time(r), size, j.Pending(c.uid))
		}
	}
	if j.Tombstoned("gone") || j.Existing("marked") || j.Len() != 6 {
		t.Errorf("gone tombstoned %v, marked existing %v, len %d", j.Tombstoned("gone"), j.Existing("marked"), j.Len())
	}
	want := journalState(j)
	if err := j.rewrite(); err != nil {
		t.Fatal(err)
	}
	j = reopen(t, j)
	if got := journalState(j); got != want || len(j.Warnings()) != 0 {
		t.Fatalf("after compaction %q\nwant %q", got, want)
	}
}

// In memory, a pending record with another size ends the downloaded
// record, and the downloaded record that follows is the new message's, as
// replaying the lines gives.
func TestJournalReusedInMemory(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func(){
		func() { j.Add("x", time.Unix(100, 0), 5) },
		func() { j.AddPending("x", 9) },
		func() {
			if _, ok := j.Seen("x"); ok || !j.Pending("x") {
				t.Fatal("the pending record of another size did not end the downloaded one")
			}
			j.Add("x", time.Unix(200, 0), 9)
		},
	} {
		step()
		if err := j.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	want := journalState(j)
	if at, ok := j.Seen("x"); !ok || at.Unix() != 200 {
		t.Fatalf("seen %v %v", at, ok)
	}
	if got := journalState(reopen(t, j)); got != want {
		t.Fatalf("replayed %q, in memory %q", got, want)
	}
}

// reopen closes j and opens its file again, read-only, for the rest of the
// test.
func reopen(t *testing.T, j *Journal) *Journal {
	t.Helper()
	j.Close()
	j, err := OpenJournal(j.dir, j.name, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

// A journal cut short inside its header (a crash while it was created)
// opens empty; a file with another first line is refused, not emptied.
func TestJournalHeader(t *testing.T) {
	for _, tc := range []struct {
		content string
		ok      bool
	}{
		{"", true},
		{"pouch-fetch-jour", true},
		{journalHeaderV4[:len(journalHeaderV4)-1], true},
		{"pouch-fetch-journal 9\n", false},
		{"100 a\n200 b\n300 c\n400 d\n", false},
		{"pouch-mail\n", false}, // shorter than a header, and not the start of one
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, "a.journal")
		os.WriteFile(path, []byte(tc.content), 0o600)
		j, err := OpenJournal(dir, "a", false)
		if tc.ok != (err == nil) {
			t.Fatalf("%q: %v", tc.content, err)
		}
		if err != nil {
			if b, _ := os.ReadFile(path); string(b) != tc.content {
				t.Fatalf("%q: the refused journal became %q", tc.content, b)
			}
			continue
		}
		if j.Len() != 0 {
			t.Fatalf("%q: %d entries", tc.content, j.Len())
		}
		j.Close()
		if b, _ := os.ReadFile(path); string(b) != journalHeader {
			t.Fatalf("%q: rewritten as %q", tc.content, b)
		}
	}
}
