package maildir

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// A Delivery's file moves from tmp/ into new/ under a name with its sizes
// and the caller's fields; an aborted or failed one leaves nothing.
func TestDelivery(t *testing.T) {
	dir := t.TempDir()
	if err := ensure(dir); err != nil {
		t.Fatal(err)
	}
	d, err := NewDelivery(dir, time.Unix(1700000000, 123456789), ",PA=x")
	if err != nil {
		t.Fatal(err)
	}
	tmp, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	if len(tmp) != 1 || !strings.HasSuffix(tmp[0].Name(), ",PA=x") || !strings.HasPrefix(tmp[0].Name(), "1700000000.M123456P") {
		t.Fatalf("tmp/: %v", tmp)
	}
	d.Write([]byte("a\nb\n"))
	name, err := d.Commit(",PF=k")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^1700000000\.M123456P\d+Q\d+\.[^/:,]+,S=4,W=6,PF=k$`).MatchString(name) {
		t.Fatalf("name %q", name)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "new", name)); err != nil || string(b) != "a\nb\n" {
		t.Fatalf("%q %v", b, err)
	}
	if err := SyncNew(dir); err != nil {
		t.Fatal(err)
	}
	d.Abort() // after Commit: nothing
	if _, err := os.Stat(filepath.Join(dir, "new", name)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Commit(""); err == nil {
		t.Fatal("a second commit succeeded")
	}

	d, _ = NewDelivery(dir, time.Now(), "")
	d.Write([]byte("x"))
	d.Abort()
	// A commit that cannot rename removes the file.
	d2, _ := NewDelivery(dir, time.Now(), "")
	os.Rename(filepath.Join(dir, "new"), filepath.Join(dir, "new.away"))
	if _, err := d2.Commit(""); err == nil {
		t.Fatal("commit without new/ succeeded")
	}
	if tmp, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(tmp) != 0 {
		t.Fatalf("left in tmp/: %v", tmp)
	}
}

// Two names made at the same moment differ.
func TestUniqueName(t *testing.T) {
	at := time.Now()
	if a, b := UniqueName(at), UniqueName(at); a == b {
		t.Fatalf("%q twice", a)
	}
}
