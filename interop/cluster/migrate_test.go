package cluster_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A Maildir installation moved with pouch migrate, killed twice in the
// middle (before and after a message's commit) and run again, then served
// from PostgreSQL on the same address: mpop, with the UIDLs file it kept
// from the Maildir server, downloads only the mail that arrived since, and
// nothing twice.
func TestMigrateThenMpop(t *testing.T) {
	mpop, err := exec.LookPath("mpop")
	if err != nil {
		if os.Getenv("POUCH_REQUIRE_INTEROP") == "1" {
			t.Fatal("mpop is not installed (POUCH_REQUIRE_INTEROP=1)")
		}
		t.Skip("mpop is not installed")
	}
	c := newCluster(t)
	data := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	pouch(t, password+"\n", "user", "add", "--data", data, "alice")
	var old []string
	for i := range 12 {
		msg := fmt.Sprintf("Subject: old %d\n\n%s\n", i, strings.Repeat("old mail\n", i*50))
		pouch(t, msg, "deliver", "--data", data, "alice")
		old = append(old, msg)
	}
	addr := freeAddr(t, nodeIPs[0])
	host, port, _ := net.SplitHostPort(addr)

	// mpop keeps the messages on the Maildir server, remembering their
	// UIDLs.
	dir := t.TempDir()
	md := filepath.Join(dir, "md")
	for _, sub := range []string{"new", "cur", "tmp"} {
		os.MkdirAll(filepath.Join(md, sub), 0o700)
	}
	rc := filepath.Join(dir, "mpoprc")
	conf := fmt.Sprintf("account default\nhost %s\nport %s\ntls off\nuser alice\npassword %s\nauth user\ndelivery maildir %s\n",
		host, port, password, md)
	if err := os.WriteFile(rc, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	runMpop := func(keep string) string {
		t.Helper()
		cmd := exec.Command(mpop, "-C", rc, "--timeout=30", "--received-header=off",
			"--uidls-file="+filepath.Join(dir, "uidls"), "--keep="+keep)
		cmd.Env = append(os.Environ(), "HOME="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("mpop: %v\n%s", err, out)
		}
		return string(out)
	}
	old1 := &node{t: t, name: "maildir", data: data, done: make(chan struct{})}
	old1.run("--pop3", addr)
	runMpop("on")
	if n := len(mailIn(t, md)); n != len(old) {
		t.Fatalf("mpop fetched %d messages from the Maildir server, want %d", n, len(old))
	}
	old1.stop()

	// pouch migrate, killed before and after a commit, then completed.
	for _, point := range []string{"pg.deliver.before-commit", "pg.deliver.committed"} {
		out, err := pouchErr("", []string{"POUCH_CRASHPOINT=" + point}, "migrate", "--data", data, "--to", c.url)
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != -1 {
			t.Fatalf("migrate with a crash at %s: %v\n%s", point, err, out)
		}
	}
	out := pouch(t, "", "migrate", "--data", data, "--to", c.url)
	if !strings.Contains(out, "and 1 of 1 maildrops") || !strings.Contains(out, "there already") {
		t.Fatalf("migrate: %s", out)
	}
	out = pouch(t, "", "migrate", "--data", data, "--to", c.url, "--verify")
	if !strings.Contains(out, "the users and the 1 maildrops match: 12 messages") {
		t.Fatalf("migrate --verify: %s", out)
	}

	// The same address, served from PostgreSQL; two messages arrive.
	n := &node{t: t, name: "pg", data: filepath.Join(t.TempDir(), "data"), done: make(chan struct{})}
	os.Mkdir(n.data, 0o700)
	n.run("--store", c.url, "--pop3", addr) // alice's account is in the database now
	var fresh []string
	for i := range 2 {
		msg := fmt.Sprintf("Subject: new %d\n\nnew mail\n", i)
		if r, err := n.deliver("alice", msg); !strings.HasPrefix(r, "250") {
			t.Fatalf("LMTP: %q %v", r, err)
		}
		fresh = append(fresh, msg)
	}
	out = runMpop("off")
	got := mailIn(t, md)
	if len(got) != len(old)+len(fresh) {
		t.Fatalf("after the move mpop has %d messages, want %d (the old ones once, and the 2 new)\n%s", len(got), len(old)+len(fresh), out)
	}
	// Each message once, as sent (with the Delivered-To line delivery
	// adds).
	sent := map[string]string{}
	for _, m := range append(slices.Clone(old), fresh...) {
		sent[subject(m)] = m
	}
	seen := map[string]bool{}
	for _, m := range got {
		s := subject(m)
		if seen[s] {
			t.Errorf("%q downloaded twice", s)
		}
		seen[s] = true
		if body, ok := sent[s]; !ok || !strings.HasSuffix(m, strings.TrimPrefix(body, "Subject: "+s+"\n")) {
			t.Errorf("%q: not as sent", s)
		}
	}
	// --keep=off deleted them on the server.
	p := n.session("alice")
	if ids := p.uidls(); len(ids) != 0 {
		t.Fatalf("%d messages left on the server after mpop --keep=off", len(ids))
	}
}

// subject is the value of a message's Subject line.
func subject(msg string) string {
	for _, l := range strings.Split(msg, "\n") {
		if s, ok := strings.CutPrefix(l, "Subject: "); ok {
			return s
		}
	}
	return ""
}

// mailIn reads the messages of a Maildir that mpop delivered into.
func mailIn(t *testing.T, md string) []string {
	t.Helper()
	var out []string
	for _, sub := range []string{"new", "cur"} {
		names, _ := filepath.Glob(filepath.Join(md, sub, "*"))
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, string(b))
		}
	}
	return out
}

// freeAddr returns an address on ip with a free port.
func freeAddr(t *testing.T, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
