package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// deliverData makes a data directory with a users file: alice without quota,
// bob with a storage quota of 100 octets, carol with one message at most.
func deliverData(t *testing.T) string {
	t.Helper()
	data := t.TempDir()
	users := "alice:{PLAIN}x::::::\nbob:{PLAIN}x::::::quota_storage=100\ncarol:{PLAIN}x::::::quota_messages=1\n"
	if err := os.WriteFile(filepath.Join(data, "users"), []byte(users), 0o600); err != nil {
		t.Fatal(err)
	}
	return data
}

// deliveredTo returns the messages in user's new/.
func deliveredTo(t *testing.T, data, user string) []string {
	t.Helper()
	dir := filepath.Join(data, "mail", user, "new")
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

func TestDeliverCommand(t *testing.T) {
	data := deliverData(t)
	lf := "From: a@example.net\nSubject: lf\n\n8-bit \xe9\n.leading dot\n"
	if _, e, code := pouch(t, lf, "deliver", "--data", data, "-f", "a@example.net", "alice"); code != 0 {
		t.Fatalf("deliver: exit %d, %s", code, e)
	}
	want := "Return-Path: <a@example.net>\nDelivered-To: alice\n" + lf
	if got := deliveredTo(t, data, "alice"); len(got) != 1 || got[0] != want {
		t.Fatalf("stored %q, want %q", got, want)
	}
	// CRLF stays CRLF; user@domain names the user and is the Delivered-To;
	// without -f there is no Return-Path; flags may follow the user.
	crlf := "Subject: crlf\r\n\r\nbody\r\n"
	if _, e, code := pouch(t, crlf, "deliver", "ALICE@Example.org", "--data", data); code != 0 {
		t.Fatalf("deliver: exit %d, %s", code, e)
	}
	got := deliveredTo(t, data, "alice")
	if len(got) != 2 || (got[0] != "Delivered-To: ALICE@Example.org\r\n"+crlf && got[1] != "Delivered-To: ALICE@Example.org\r\n"+crlf) {
		t.Fatalf("stored %q", got)
	}
	// -f "" is the null sender.
	if _, e, code := pouch(t, "Subject: bounce\n\n", "deliver", "--data", data, "-f", "", "carol"); code != 0 {
		t.Fatalf("deliver: exit %d, %s", code, e)
	}
	if got := deliveredTo(t, data, "carol"); len(got) != 1 || !strings.HasPrefix(got[0], "Return-Path: <>\nDelivered-To: carol\n") {
		t.Fatalf("stored %q", got)
	}

	big := strings.Repeat("x", 200) + "\n"
	missing := filepath.Join(t.TempDir(), "nowhere")
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		msg   string
	}{
		{"unknown user", "x\n", []string{"deliver", "--data", data, "nobody"}, 67, `there is no user "nobody"`},
		{"over storage quota", big, []string{"deliver", "--data", data, "bob"}, 73, "the mailbox of bob is full (storage limit of 100)"},
		{"over quota, temporary", big, []string{"deliver", "--data", data, "--quota-temporary", "bob"}, 75, "the mailbox of bob is full"},
		{"over message quota", "x\n", []string{"deliver", "--data", data, "carol"}, 73, "limit of 1 messages"},
		{"default quota", big, []string{"deliver", "--data", data, "--quota-storage", "1K", "--quota-messages", "2", "alice"}, 73, "limit of 2 messages"},
		{"too big", big, []string{"deliver", "--data", data, "--max-message-size", "100", "alice"}, 73, "larger than the limit"},
		{"no users file", "x\n", []string{"deliver", "--data", missing, "alice"}, 75, "no users file"},
		{"no user given", "x\n", []string{"deliver", "--data", data}, 75, "exactly one user name"},
		{"two users", "x\n", []string{"deliver", "--data", data, "alice", "bob"}, 75, "exactly one user name"},
		{"bad flag", "x\n", []string{"deliver", "--data", data, "--frob", "alice"}, 75, "frob"},
		{"bad size", "x\n", []string{"deliver", "--data", data, "--max-message-size", "big", "alice"}, 75, "max-message-size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(deliveredTo(t, data, "alice")) + len(deliveredTo(t, data, "bob"))
			_, e, code := pouch(t, tc.stdin, tc.args...)
			if code != tc.code || !strings.Contains(e, tc.msg) {
				t.Errorf("exit %d, %q; want exit %d with %q", code, e, tc.code, tc.msg)
			}
			if lines := strings.Count(strings.TrimSpace(e), "\n"); lines > 0 {
				t.Errorf("more than one line on stderr: %q", e)
			}
			if after := len(deliveredTo(t, data, "alice")) + len(deliveredTo(t, data, "bob")); after != before {
				t.Errorf("a failed delivery stored something")
			}
		})
	}

	// A read error on standard input: temporary, nothing stored.
	var errb bytes.Buffer
	err := run([]string{"deliver", "--data", data, "alice"}, io.MultiReader(strings.NewReader("Subject: partial\n"), deliverStdinError{}), io.Discard, &errb)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 75 || !strings.Contains(ee.msg, "reading the message from standard input failed") {
		t.Fatalf("stdin failing: %v", err)
	}
	if n := len(deliveredTo(t, data, "alice")); n != 2 {
		t.Fatalf("alice has %d messages after a failed read, want 2", n)
	}
	if tmp, _ := os.ReadDir(filepath.Join(data, "mail", "alice", "tmp")); len(tmp) != 0 {
		t.Fatalf("tmp/ holds %d files after a failed read", len(tmp))
	}
}

type deliverStdinError struct{}

func (deliverStdinError) Read([]byte) (int, error) { return 0, errors.New("pipe broken") }

// pouch deliver --config takes --data and the limits from pouch serve's TOML
// file; its own flags win.
func TestDeliverConfig(t *testing.T) {
	data := deliverData(t)
	cfg := filepath.Join(t.TempDir(), "pouch.toml")
	os.WriteFile(cfg, []byte("data = \""+data+"\"\nquota-messages = 1\nmax-message-size = \"1K\"\nlmtp = \"127.0.0.1:2424\"\n"), 0o600)
	if _, e, code := pouch(t, "one\n", "deliver", "--config", cfg, "alice"); code != 0 {
		t.Fatalf("first: exit %d %s", code, e)
	}
	if _, e, code := pouch(t, "two\n", "deliver", "--config", cfg, "alice"); code != 73 || !strings.Contains(e, "limit of 1 messages") {
		t.Fatalf("second: exit %d %s; want 73 for the quota from the file", code, e)
	}
	if _, e, code := pouch(t, "two\n", "deliver", "--config", cfg, "--quota-messages", "0", "alice"); code != 0 {
		t.Fatalf("with the quota lifted on the command line: exit %d %s", code, e)
	}
	if _, e, code := pouch(t, strings.Repeat("z", 2000), "deliver", "--config", cfg, "alice"); code != 73 {
		t.Fatalf("over the size limit from the file: exit %d %s", code, e)
	}
	os.WriteFile(cfg, []byte("colour = \"blue\"\n"), 0o600)
	if _, e, code := pouch(t, "x\n", "deliver", "--config", cfg, "alice"); code != 75 || !strings.Contains(e, `unknown key "colour"`) {
		t.Fatalf("a bad config file: exit %d %s; want 75", code, e)
	}
}

func TestServeLMTPSettings(t *testing.T) {
	data := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"serve", "--data", data, "--pop3", "", "--pop3s", "", "--lmtp", ""}, 2, "nothing to serve"},
		{[]string{"serve", "--data", data, "--pop3", "", "--pop3s", "", "--lmtp", "127.0.0.1:notaport"}, 1, "listen lmtp on 127.0.0.1:notaport"},
		{[]string{"serve", "--data", data, "--pop3", "", "--pop3s", "", "--lmtp", "unix:"}, 1, "listen lmtp"},
		{[]string{"serve", "--data", data, "--quota-storage", "5X"}, 2, "quota-storage"},
		{[]string{"serve", "--data", data, "--pop3", "", "--pop3s", "", "--lmtp", "127.0.0.1:0", "--quota-messages", "-1"}, 2, "quota-messages"},
	} {
		_, e, code := pouch(t, "", tc.args...)
		if code != tc.code || !strings.Contains(e, tc.msg) {
			t.Errorf("pouch %v: exit %d, %q; want exit %d with %q", tc.args, code, e, tc.code, tc.msg)
		}
	}
	fs, c := serveFlags(io.Discard)
	cfg := filepath.Join(t.TempDir(), "pouch.toml")
	os.WriteFile(cfg, []byte("lmtp = \"unix:/run/pouch/lmtp\"\nlmtp-domains = [\"a.org\", \"b.org\"]\nquota-storage = \"2G\"\nquota-temporary = true\nmax-message-size = 1048576\n"), 0o600)
	if err := applyConfigFile(fs, cfg); err != nil {
		t.Fatal(err)
	}
	l := c.lmtp
	if l.addr != "unix:/run/pouch/lmtp" || l.domains != "a.org,b.org" || l.quotaStorage != 2<<30 || !l.quotaTemporary || l.maxMessageSize != 1<<20 {
		t.Errorf("config file not applied: %+v", l)
	}
}
