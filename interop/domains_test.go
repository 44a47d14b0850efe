package interop_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Two people called alice in two domains, added with pouch user add and
// given mail by pouch deliver, each get their own message with real clients
// logging in by full address: curl as alice@example.org, mpop as
// alice@example.net; their Maildirs are DATA/mail/DOMAIN/alice.
func TestVirtualDomainsRealClients(t *testing.T) {
	t.Parallel()
	requireTool(t, "curl")
	requireTool(t, "mpop")
	data := t.TempDir()
	pw := map[string]string{"alice@example.org": "Tidy-Walrus-87-kettle", "alice@example.net": "Brisk-Otter-42-lantern"}
	for _, who := range []string{"alice@example.org", "alice@example.net"} {
		pouch(t, pw[who]+"\n", "user", "add", "--data", data, who)
		msg := fmt.Sprintf("From: sender@example.com\nTo: %s\nSubject: for %s\n\nonly %s reads this\n", who, who, who)
		pouch(t, msg, "deliver", "--data", data, who)
		if ents, err := os.ReadDir(filepath.Join(data, "mail", strings.Split(who, "@")[1], "alice", "new")); err != nil || len(ents) != 1 {
			t.Fatalf("Maildir of %s: %d messages, %v", who, len(ents), err)
		}
	}
	s := startServer(t, data)

	// curl, with the address as the user name.
	dir, home := clientDir(t)
	got := mustClient(t, dir, home, nil, "curl", "-sS", "--max-time", "30",
		"-u", "alice@example.org:"+pw["alice@example.org"], "pop3://"+s.addr+"/1")
	if !strings.Contains(got, "only alice@example.org reads this") {
		t.Errorf("curl as alice@example.org got:\n%s", got)
	}

	// mpop, over TLS, with the other alice's address.
	dir, home = clientDir(t)
	md := filepath.Join(dir, "md")
	for _, sub := range []string{"new", "cur", "tmp"} {
		if err := os.MkdirAll(filepath.Join(md, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf("account default\nhost localhost\nport %s\ntls on\ntls_starttls off\ntls_trust_file %s\n"+
		"user alice@example.net\npassword %s\nauth plain\ndelivery maildir %s\nkeep on\nreceived_header off\n",
		s.tlsPort(), caFile(data), pw["alice@example.net"], md)
	writeFile(t, filepath.Join(home, ".mpoprc"), conf, 0o600)
	mustClient(t, dir, home, nil, "mpop", "--quiet", "-C", filepath.Join(home, ".mpoprc"))
	ents, err := os.ReadDir(filepath.Join(md, "new"))
	if err != nil || len(ents) != 1 {
		t.Fatalf("mpop fetched %d messages, %v", len(ents), err)
	}
	b, err := os.ReadFile(filepath.Join(md, "new", ents[0].Name()))
	if err != nil || !strings.Contains(string(b), "only alice@example.net reads this") {
		t.Errorf("mpop as alice@example.net got:\n%s", b)
	}
	if log := s.logText(); !strings.Contains(log, "user=alice@example.org method=") || !strings.Contains(log, "user=alice@example.net method=\"AUTH PLAIN\"") {
		t.Errorf("log:\n%s", log)
	}
}
