package maildir

import (
	"context"
	"strings"
	"testing"
)

func TestUsage(t *testing.T) {
	root := t.TempDir()
	s := New(root)
	if n, b, err := s.Usage("nobody-yet"); n != 0 || b != 0 || err != nil {
		t.Fatalf("Usage of a missing Maildir = %d, %d, %v; want 0, 0, nil", n, b, err)
	}
	if _, _, err := s.Usage("../escape"); err == nil {
		t.Fatal("Usage accepted a user name that leaves the root")
	}
	// Pouch's own deliveries carry S=; Dovecot's too; Postfix's names carry
	// nothing and are measured by stat (or found in the index).
	if err := s.Deliver(context.Background(), "u", strings.NewReader("hello\n")); err != nil {
		t.Fatal(err)
	}
	dir := root + "/u"
	put(t, dir, "cur", "1700000001.M5P6.mx,S=20,W=22:2,S", "Subject: dovecot\n\nx\n")
	put(t, dir, "new", "1700000002.V801I2M3.mx", "Subject: postfix\n\nlf body\n")
	put(t, dir, "new", ".hidden", "not a message")
	want := int64(len("hello\n") + 20 + len("Subject: postfix\n\nlf body\n"))

	// It works while a POP3 session holds the lock, and its answer does not
	// depend on whether the index exists yet.
	m := openT(t, s, "u")
	n, b, err := s.Usage("u")
	if n != 3 || b != want || err != nil {
		t.Fatalf("Usage = %d, %d, %v; want 3, %d, nil", n, b, err, want)
	}
	m.Close()
	n, b, err = s.Usage("u")
	if n != 3 || b != want || err != nil {
		t.Fatalf("Usage with an index = %d, %d, %v; want 3, %d, nil", n, b, err, want)
	}
}
