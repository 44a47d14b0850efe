package maildir

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/pouchmail/pouch/store"
)

func TestDetectLayout(t *testing.T) {
	t.Parallel()
	// A new mail root, or an empty one, takes domains; one with Maildirs
	// (a data directory from before domains) stays flat; the layout file
	// keeps what was found.
	fresh := filepath.Join(t.TempDir(), "mail")
	if l, err := DetectLayout(fresh); l != Domains || err != nil {
		t.Errorf("new root: %v, %v", l, err)
	}
	if b, _ := os.ReadFile(filepath.Join(fresh, layoutFile)); string(b) != "domains\n" {
		t.Errorf("layout file %q", b)
	}
	old := t.TempDir()
	if err := os.MkdirAll(filepath.Join(old, "alice", "cur"), 0o700); err != nil {
		t.Fatal(err)
	}
	if l, err := DetectLayout(old); l != Flat || err != nil {
		t.Errorf("root with a Maildir: %v, %v", l, err)
	}
	// A tree of domains' directories, as Dovecot's /var/vmail/%d/%n.
	vmail := t.TempDir()
	for _, d := range []string{"example.org/alice", "example.net/alice"} {
		for _, sub := range []string{"cur", "new", "tmp"} {
			if err := os.MkdirAll(filepath.Join(vmail, d, sub), 0o700); err != nil {
				t.Fatal(err)
			}
		}
	}
	if l, err := DetectLayout(vmail); l != Domains || err != nil {
		t.Errorf("a tree of domains: %v, %v", l, err)
	}
	// Once written, the file decides, whatever the root holds.
	if err := os.MkdirAll(filepath.Join(fresh, "bob", "cur"), 0o700); err != nil {
		t.Fatal(err)
	}
	if l, _ := DetectLayout(fresh); l != Domains {
		t.Errorf("new root with a Maildir since: %v, want domains", l)
	}
	if err := os.WriteFile(filepath.Join(old, layoutFile), []byte("sideways\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := DetectLayout(old); err == nil || !strings.Contains(err.Error(), "want flat or domains") {
		t.Errorf("a bad layout file: %v", err)
	}
}

// Two users with one local part in two domains have a Maildir each, in
// their domain's directory; a name without a domain keeps ROOT/NAME.
func TestDomainsLayout(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "mail")
	s := New(root)
	ctx := context.Background()
	for _, u := range []string{"alice@example.org", "alice@example.net", "bob"} {
		if err := s.Deliver(ctx, u, strings.NewReader("Subject: for "+u+"\r\n\r\nhi\r\n")); err != nil {
			t.Fatalf("Deliver(%s): %v", u, err)
		}
	}
	for u, dir := range map[string]string{
		"alice@example.org": "example.org/alice",
		"alice@example.net": "example.net/alice",
		"bob":               "bob",
	} {
		got, err := s.Dir(u)
		if err != nil || got != filepath.Join(root, dir) {
			t.Errorf("Dir(%s) = %s, %v; want %s", u, got, err, dir)
		}
		md := openT(t, s, u)
		if n := len(md.Messages()); n != 1 {
			t.Errorf("%s has %d messages", u, n)
		}
		r, _ := md.Open(0)
		b := make([]byte, 64)
		n, _ := r.Read(b)
		r.Close()
		md.Close()
		if !strings.Contains(string(b[:n]), "for "+u) {
			t.Errorf("%s got %q", u, b[:n])
		}
	}
	users, err := s.Users(ctx)
	slices.Sort(users)
	if err != nil || !slices.Equal(users, []string{"alice@example.net", "alice@example.org", "bob"}) {
		t.Errorf("Users = %q, %v", users, err)
	}
	// A name without a domain that names a domain's directory, and an
	// address in a "domain" that is a user's Maildir, are refused.
	for _, u := range []string{"example.org", "x@bob", "@example.org", "alice@", "alice@.hidden", "../x@example.org"} {
		if _, err := s.Open(ctx, u); !errors.Is(err, store.ErrBadUser) {
			t.Errorf("Open(%q) = %v, want ErrBadUser", u, err)
		}
	}
}

// In the flat layout of existing data directories, an address is a name
// like any other: ROOT/user@domain, as before.
func TestFlatLayout(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "carol", "cur"), 0o700); err != nil {
		t.Fatal(err)
	}
	s := New(root)
	if err := s.Deliver(context.Background(), "alice@example.org", strings.NewReader("hi\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "alice@example.org", "new")); err != nil {
		t.Errorf("flat layout: %v", err)
	}
	if l, _ := s.Layout(); l != Flat {
		t.Errorf("layout %v", l)
	}
}

// TestUsersDomainUnreadable lists a mail root with a domain's directory
// that cannot be listed (here, a path too long to open: ENAMETOOLONG):
// its users must not go missing from the list without an error, or a
// migration or a sweep would leave their maildrops out as if they had none.
func TestUsersDomainUnreadable(t *testing.T) {
	t.Parallel()
	const domain = "a-long-domain-name.example"
	root := t.TempDir()
	for len(root) < syscall.PathMax-20-255 {
		root = filepath.Join(root, strings.Repeat("d", 255))
	}
	root = filepath.Join(root, strings.Repeat("d", syscall.PathMax-20-len(root)-1))
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	// root/DOMAIN is too long a path, so it is made from root's descriptor.
	fd, err := syscall.Open(root, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{domain, domain + "/alice", domain + "/alice/cur", domain + "/alice/new", domain + "/alice/tmp"} {
		if err := unix.Mkdirat(fd, p, 0o700); err != nil {
			syscall.Close(fd)
			t.Fatal(err)
		}
	}
	syscall.Close(fd)
	if err := os.MkdirAll(filepath.Join(root, "bob", "cur"), 0o700); err != nil {
		t.Fatal(err)
	}
	users, err := NewWithLayout(root, Domains).Users(context.Background())
	if err == nil {
		t.Errorf("users %v and no error, with %s unreadable", users, domain)
	}
}
