package migrate

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pouchmail/pouch/store/maildir"
)

func TestExpandLikeDovecot(t *testing.T) {
	vals := map[byte]string{'u': "1234", 'v': "1751000000", 'f': "1751.M1P2.Host,S=9", 'g': "G", 'm': "abc"}
	for _, tc := range []struct{ format, want string }{
		{"%08Xu%08Xv", "000004d2685e23c0"},
		{"%u.%v", "1234.1751000000"},
		{"%Lf", "1751.m1p2.host,s=9"},
		{"%Uf", "1751.M1P2.HOST,S=9"},
		{"%3f", "175"},
		{"%-3f", "175"},
		{"%2.3f", "51."},
		{"%-3.f", "S=9"},
		{"%.-2f", "1751.M1P2.Host,S"},
		{"%06u", "001234"},
		{"%02u", "1234"},
		{"%Rg%%", "G%"},
		{"%Mu", "81dc9bdb52d04dc20036dbd8313ed055"},
		{"%Xf", "0"},
		{"%{uid}/%{filename}", "1234/1751.M1P2.Host,S=9"},
		{"a%", "a"},
	} {
		f, err := parseVars(tc.format, uidlKeys)
		if err != nil {
			t.Errorf("%q: %v", tc.format, err)
			continue
		}
		if got := f.expand(vals); got != tc.want {
			t.Errorf("%q = %q, want %q", tc.format, got, tc.want)
		}
	}
	for _, bad := range []string{"%x", "%Hu", "%{nope}", "%{uid"} {
		if _, err := parseVars(bad, uidlKeys); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestHeaderMD5ReadsLongLinesInPieces(t *testing.T) {
	long := "Received: from " + strings.Repeat("x", 200000) + "\r\n\tby y\r\nDate: d\r\n\r\nbody"
	whole, err := HeaderMD5(strings.NewReader(long))
	if err != nil {
		t.Fatal(err)
	}
	// The same header, read one octet at a time, and as one hash input.
	pieces, err := HeaderMD5(iotest.OneByteReader(strings.NewReader(long)))
	if err != nil || pieces != whole {
		t.Fatalf("one octet at a time: %s, %v; want %s", pieces, err, whole)
	}
	short, _ := HeaderMD5(strings.NewReader("Received: from " + strings.Repeat("x", 200000) + "\n\tby y\nDate: d\n\n"))
	if short != whole {
		t.Errorf("CRLF and LF differ: %s %s", short, whole)
	}
	// A header without an end, and one cut inside a CR LF.
	for _, m := range []string{"Date: a", "Date: a\r", "Date: a\r\n"} {
		if _, err := HeaderMD5(strings.NewReader(m)); err != nil {
			t.Errorf("%q: %v", m, err)
		}
	}
	a, _ := HeaderMD5(strings.NewReader("Date: a\r"))
	b, _ := HeaderMD5(strings.NewReader("Date: a"))
	if a == b {
		t.Errorf("a CR at the end of the message is part of the value, as for Dovecot")
	}
}

func TestCourierSizeList(t *testing.T) {
	dir := t.TempDir()
	for _, sub := range []string{"new", "cur", "tmp"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o700)
	}
	files := []string{
		"1751000002.M2P1.host:2,S",
		"1751000001.M1P1.host with space:2,",
		"1751000003.M3P1.h'o\"s+t:2,",
		"1751000000.M0P1.host:2,", // not listed
	}
	for _, f := range files {
		os.WriteFile(filepath.Join(dir, "cur", f), []byte("Subject: x\n\nx\n"), 0o600)
	}
	list := "/2 4 1751000000\n" +
		files[0] + " 16 2:1751000000\n" +
		files[1] + " 16 1:0\n" +
		files[2] + " 16 0:0\n" +
		"garbage\n"
	os.WriteFile(filepath.Join(dir, "courierpop3dsizelist"), []byte(list), 0o600)
	src, err := Scan(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range src.Messages {
		got = append(got, fmt.Sprintf("%s %v %d", m.UID, m.Listed, m.OldSize))
	}
	want := []string{
		"1751000000.M0P1.host false -1",
		"UID1 true 16",
		"UID2-1751000000 true 16",
		"1751000003.M3P1.h+27o+22s+2Bt true 16",
	}
	if src.From != FromCourier || !slices.Equal(got, want) {
		t.Errorf("from %s:\n%q\nwant\n%q", src.From, got, want)
	}
	if src.Messages[2].Seen.IsZero() || !src.Messages[1].Seen.IsZero() {
		t.Errorf("retrieved state: %v", src.Messages)
	}
	// A list of a version Courier does not read: file names.
	os.WriteFile(filepath.Join(dir, "courierpop3dsizelist"), []byte("/9 4 1\n"), 0o600)
	if src, _ := Scan(dir, Options{}); src.From != FromNames {
		t.Errorf("unknown version: from %s", src.From)
	}
}

func TestUIDListDamage(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "cur"), 0o700)
	for _, tc := range []struct{ list, msg string }{
		{"2 1 2\n", "not version 1 or 3"},
		{"3 N5\n", "no UIDVALIDITY"},
		{"3 V1 N5\nx :a\n", "line 2: no UID"},
		{"3 V1 N5\n2 :a\n1 :b\n", "line 3: UIDs out of order"},
		{"3 V1 N5\n1 P\n", "line 2: no file name"},
	} {
		os.WriteFile(filepath.Join(dir, "dovecot-uidlist"), []byte(tc.list), 0o600)
		if _, err := Scan(dir, Options{}); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: %v, want %q", tc.list, err, tc.msg)
		}
	}
	// Version 1, and the control directory elsewhere.
	ctl := t.TempDir()
	os.WriteFile(filepath.Join(dir, "cur", "1.M1P1.h:2,"), []byte("x\n"), 0o600)
	os.WriteFile(filepath.Join(ctl, "dovecot-uidlist"), []byte("1 16 3\n2 1.M1P1.h:2,\n"), 0o600)
	src, err := Scan(dir, Options{Control: ctl, Format: "%u-%v"})
	if err != nil || len(src.Messages) != 1 || src.Messages[0].UID != "2-16" {
		t.Errorf("version 1 in CONTROL: %+v %v", src, err)
	}
}

func TestLocationFind(t *testing.T) {
	root := t.TempDir()
	mk := func(parts ...string) {
		os.MkdirAll(filepath.Join(append(append([]string{root}, parts...), "cur")...), 0o700)
	}
	mk("a", "alice", "Maildir")
	mk("b", "bob", "Maildir")
	mk("x", "carol", "Maildir") // the hash does not fit carol
	mk("a", ".hidden", "Maildir")
	os.MkdirAll(filepath.Join(root, "b", "bert", "notmail"), 0o700)
	loc, err := ParseLocation("maildir:" + root + "/%1n/%n/Maildir:LAYOUT=fs:CONTROL=/ctl/%n")
	if err != nil {
		t.Fatal(err)
	}
	boxes, err := loc.Find()
	if err != nil {
		t.Fatal(err)
	}
	want := []Mailbox{{"alice", root + "/a/alice/Maildir", "/ctl/alice"}, {"bob", root + "/b/bob/Maildir", "/ctl/bob"}}
	if !slices.Equal(boxes, want) {
		t.Errorf("found %+v, want %+v", boxes, want)
	}
	mk("example.org", "Dave")
	mk("example.org", "eve")
	loc, _ = ParseLocation(root + "/%d/%Ln")
	boxes, _ = loc.Find()
	if len(boxes) != 1 || boxes[0].User != "eve@example.org" {
		t.Errorf("lower-case layout: %+v", boxes)
	}
	mk("users", "frank@example.net", "Maildir")
	loc, _ = ParseLocation(root + "/users/%u/Maildir")
	boxes, _ = loc.Find()
	if len(boxes) != 1 || boxes[0].User != "frank@example.net" {
		t.Errorf("%%u layout: %+v", boxes)
	}
	loc, _ = ParseLocation("maildir:" + root + "/none/%n:INBOX=" + root + "/users/%n@%d/Maildir")
	boxes, _ = loc.Find()
	if len(boxes) != 1 || boxes[0].User != "frank@example.net" {
		t.Errorf("INBOX= layout: %+v", boxes)
	}
}

// TestLocationFindKeepsUnreadable: a Maildir whose cur/ cannot be looked
// at (here a symbolic link to itself: ELOOP) is found all the same, so
// that its import's report says why nothing came of it, rather than the
// user going missing from the import.
func TestLocationFindKeepsUnreadable(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "alice", "cur"), 0o700)
	os.MkdirAll(filepath.Join(root, "bob"), 0o700)
	if err := os.Symlink("cur", filepath.Join(root, "bob", "cur")); err != nil {
		t.Fatal(err)
	}
	loc, err := ParseLocation(root + "/%n")
	if err != nil {
		t.Fatal(err)
	}
	boxes, err := loc.Find()
	if err != nil || len(boxes) != 2 || boxes[1].User != "bob" {
		t.Fatalf("found %+v, %v; want alice and bob", boxes, err)
	}
	rep := ImportMaildir(context.Background(), maildir.New(t.TempDir()), "bob", boxes[1].Dir, ImportOptions{})
	if rep.Err == nil {
		t.Errorf("import of bob's Maildir: %+v, want an error", rep)
	}
}

// TestPruneDeletedFlag: with pop3_deleted_flag, a POP3 client's deletion
// on the old server sets the keyword and leaves the file; the final
// import's --prune removes the message all the same, as it removes one
// whose file is gone.
func TestPruneDeletedFlag(t *testing.T) {
	dir, root := t.TempDir(), t.TempDir()
	for _, sub := range []string{"new", "cur", "tmp"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o700)
	}
	os.WriteFile(filepath.Join(dir, "dovecot-keywords"), []byte("0 $Junk\n1 POP3Deleted\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "cur", "1751000000.M1P1.h:2,S"), []byte("Subject: a\n\na\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "cur", "1751000001.M2P1.h:2,S"), []byte("Subject: b\n\nb\n"), 0o600)
	st := maildir.New(root)
	opt := ImportOptions{Options: Options{DeletedFlag: "pop3deleted"}, Prune: true}
	if rep := ImportMaildir(context.Background(), st, "u", dir, opt); rep.Err != nil || rep.Imported != 2 {
		t.Fatalf("first run: %+v", rep)
	}
	// A client deletes the first message on the old server.
	os.Rename(filepath.Join(dir, "cur", "1751000000.M1P1.h:2,S"), filepath.Join(dir, "cur", "1751000000.M1P1.h:2,Sb"))
	rep := ImportMaildir(context.Background(), st, "u", dir, opt)
	if rep.Err != nil || rep.Pruned != 1 || rep.Hidden != 1 {
		t.Fatalf("final run: %+v, want 1 pruned", rep)
	}
	m, err := st.Open(context.Background(), "u")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got := m.Messages(); len(got) != 1 || got[0].UID != "1751000001.M2P1.h" {
		t.Errorf("maildrop after the final run: %+v", got)
	}
}

func TestImportMaildirReport(t *testing.T) {
	dir, root := t.TempDir(), t.TempDir()
	for _, sub := range []string{"new", "cur", "tmp"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o700)
	}
	os.WriteFile(filepath.Join(dir, "cur", "1751000000.M1P1.h:2,S"), []byte("Subject: a\n\na"), 0o600)
	os.WriteFile(filepath.Join(dir, "cur", "1751000001.M2P1.h:2,"), []byte("Subject: b\n\nb\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "new", "1751000002.M3P1.h"), []byte("Subject: c\n\nc\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "new", "1751000001.M2P1.h"), []byte("twin\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "dovecot-uidlist"), []byte("3 V7 N3\n1 P"+strings.Repeat("p", 80)+" W12 :1751000000.M1P1.h\n2 :1751000001.M2P1.h\n"), 0o600)
	st := maildir.New(root)
	var progress int
	rep := ImportMaildir(context.Background(), st, "u", dir, ImportOptions{Batch: 2, Progress: func(n int, _ int64) { progress += n }})
	if rep.Err != nil {
		t.Fatal(rep.Err)
	}
	if rep.Messages != 4 || rep.Imported != 3 || rep.Kept != 1 || rep.New != 1 || len(rep.Changed) != 1 ||
		len(rep.Skipped) != 1 || rep.SizeDiffers != 1 || progress != 3 || rep.Complete() {
		t.Errorf("report %+v, progress %d", rep, progress)
	}
	if !strings.Contains(rep.Skipped[0].Reason, "cur/ has a file of the same base name") {
		t.Errorf("skipped: %+v", rep.Skipped)
	}
	rep = ImportMaildir(context.Background(), st, "u", dir, ImportOptions{})
	if rep.Err != nil || rep.Imported != 0 || rep.Already != 3 {
		t.Errorf("second run %+v", rep)
	}
}

func TestScanRefusesSymlinkedDirectories(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(dir, "new"), 0o700)
	os.WriteFile(filepath.Join(elsewhere, "secret"), []byte("x\n"), 0o600)
	os.Symlink(elsewhere, filepath.Join(dir, "cur"))
	if _, err := Scan(dir, Options{}); err == nil || !strings.Contains(err.Error(), "is a symbolic link") {
		t.Fatalf("Scan of a Maildir whose cur/ is a link: %v", err)
	}
}
