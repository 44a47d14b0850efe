package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/server"
)

// The data directory check covers the mail directories and every file that
// holds a secret, naming the path and the fix.
func TestCheckDataDirCoversSecretsAndMail(t *testing.T) {
	setup := func(t *testing.T) string {
		data := t.TempDir()
		for _, d := range []string{"mail/alice/new", "mail/alice/cur", "mail/alice/tmp", "tls"} {
			if err := os.MkdirAll(filepath.Join(data, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		for _, f := range []string{"users", "secret.key", "bans.json", "audit.log", "tls/key.pem", "tls/cert.pem", "other.pem"} {
			if err := os.WriteFile(filepath.Join(data, f), []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		os.Chmod(filepath.Join(data, "tls", "cert.pem"), 0o644) // a certificate is public
		return data
	}
	if _, err := checkDataDir(setup(t)); err != nil {
		t.Fatalf("a safe data directory is refused: %v", err)
	}
	for _, tc := range []struct {
		path string
		mode os.FileMode
		keys []string
		want string
	}{
		{"mail", 0o777, nil, "chmod go-w "},
		{"mail/alice", 0o777, nil, "chmod go-w "},
		{"mail/alice", 0o775, nil, "chmod go-w "},
		{"secret.key", 0o644, nil, "chmod 600 "},
		{"bans.json", 0o644, nil, "chmod 600 "},
		{"audit.log", 0o640, nil, "chmod 600 "},
		{"tls/key.pem", 0o666, nil, "chmod 600 "},
		{"users", 0o644, nil, "chmod 600 "},
		{"other.pem", 0o644, []string{"other.pem"}, "chmod 600 "},
	} {
		data := setup(t)
		p := filepath.Join(data, tc.path)
		os.Chmod(p, tc.mode)
		var keys []string
		for _, k := range tc.keys {
			keys = append(keys, filepath.Join(data, k))
		}
		_, err := checkDataDir(data, keys...)
		if err == nil || !strings.Contains(err.Error(), tc.want+p) || strings.Count(err.Error(), ". ") > 0 {
			t.Errorf("%s mode %04o: %v; want one sentence with %q", tc.path, tc.mode, err, tc.want+p)
		}
	}
	// A key outside the data directory is the operator's business.
	data := setup(t)
	outside := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(outside, []byte("x"), 0o644)
	if _, err := checkDataDir(data, outside); err != nil {
		t.Errorf("a key outside the data directory is refused: %v", err)
	}
	// pouch serve refuses to start.
	data = setup(t)
	os.Chmod(filepath.Join(data, "secret.key"), 0o644)
	_, e, code := pouch(t, "", "serve", "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "")
	if code != 1 || !strings.Contains(e, "chmod 600 "+filepath.Join(data, "secret.key")) {
		t.Fatalf("serve with a readable secret key: exit %d, %s", code, e)
	}
}

// Started as root without --run-as, pouch serve warns.
func TestRootWarning(t *testing.T) {
	if rootWarning(0, "") == "" || rootWarning(0, "pouch") != "" || rootWarning(1000, "") != "" {
		t.Fatal("rootWarning warns for the wrong cases")
	}
	if os.Geteuid() != 0 {
		return
	}
	var log bytes.Buffer
	cfg := server.Config{Logger: slog.New(slog.NewTextHandler(&log, nil))}
	d := defenceSettings{guard: guard.Config{MaxFailures: 10}}
	closers, err := d.open(&cfg, configSource{}, t.TempDir(), storeSettings{})
	for _, c := range closers {
		c()
	}
	if err != nil || !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "--run-as") {
		t.Fatalf("apply as root without --run-as: %v, log %q", err, log.String())
	}
}

// Accounts refused for settings that cannot be read are reported, naming
// the user, the line and each field.
func TestRefusedAccountsNamed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	os.WriteFile(path, []byte("alice:{PLAIN}x::::::allow_nets=10.0.0.0/33 login_delay=abc password_max_age=ninety\n"+
		"bob:{PLAIN}y::::::allow_nets=10.0.0.0/8 login_delay=60 password_max_age=90d\n"), 0o600)
	users, err := auth.OpenUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	got := refusedAccounts(users)
	text := strings.Join(got, "\n")
	if len(got) != 1 || strings.Contains(text, "bob") {
		t.Fatalf("warnings: %q", got)
	}
	for _, want := range []string{path + ":1: account alice refused", "login_delay: ", "password_max_age: ", "allow_nets: ", "cannot log in, and mail for the user waits"} {
		if !strings.Contains(text, want) {
			t.Errorf("warnings lack %q: %q", want, got)
		}
	}
}

// ban del ADDR lifts every ban holding the address (an automatic ban of an
// IPv6 source is of its /64); ban del NETWORK lifts exactly that ban.
func TestBanDelAddress(t *testing.T) {
	data := t.TempDir()
	g, err := guard.New(guard.Config{StatePath: filepath.Join(data, "bans.json")})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 { // failures for 10 names ban the source
		a, _, _, err := g.Attempt(context.Background(), netip.MustParseAddr("::1"), fmt.Sprint("user", i))
		if err != nil {
			t.Fatal(err)
		}
		a.Failure()
	}
	if _, e, code := pouch(t, "", "ban", "del", "--data", data, "::1/128"); code != 1 || !strings.Contains(e, "no ban of ::1/128") {
		t.Fatalf("ban del ::1/128: exit %d, %s", code, e)
	}
	_, e, code := pouch(t, "", "ban", "del", "--data", data, "::1")
	if code != 0 || !strings.Contains(e, "lifted the ban of ::/64") {
		t.Fatalf("ban del ::1: exit %d, %s", code, e)
	}
	if out, _, _ := pouch(t, "", "ban", "list", "--data", data); out != "" {
		t.Fatalf("bans left: %q", out)
	}
	pouch(t, "", "ban", "add", "--data", data, "2001:db8::/32")
	if _, e, code := pouch(t, "", "ban", "del", "--data", data, "2001:db8::/32"); code != 0 || !strings.Contains(e, "lifted the ban of 2001:db8::/32") {
		t.Fatalf("ban del 2001:db8::/32: exit %d, %s", code, e)
	}
}

// Changes made with pouch user and pouch ban name who made them; an audit
// log that cannot be written is reported.
func TestAuditActor(t *testing.T) {
	data := t.TempDir()
	me := "uid " + strconv.Itoa(os.Geteuid())
	if u, err := user.LookupId(strconv.Itoa(os.Geteuid())); err == nil {
		me = u.Username
	}
	t.Setenv("SUDO_USER", "")
	if _, e, code := pouch(t, "Kq7-vTz2-mW9p-hx\n", "user", "add", "--data", data, "alice"); code != 0 {
		t.Fatalf("user add: %s", e)
	}
	t.Setenv("SUDO_USER", "operator7")
	if _, e, code := pouch(t, "", "ban", "add", "--data", data, "198.51.100.7"); code != 0 {
		t.Fatalf("ban add: %s", e)
	}
	if _, e, code := pouch(t, "", "ban", "del", "--data", data, "198.51.100.7"); code != 0 {
		t.Fatalf("ban del: %s", e)
	}
	raw, _ := os.ReadFile(filepath.Join(data, "audit.log"))
	var actors []string
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatal(err)
		}
		actors = append(actors, fmt.Sprintf("%v:%v", e["event"], e["actor"]))
	}
	if got, want := strings.Join(actors, " "), "user_add:"+me+" ban:operator7 unban:operator7"; got != want {
		t.Fatalf("audit events %q, want %q", got, want)
	}
	// An audit log that cannot be opened: the ban is made, and the
	// failure to record it said.
	os.Remove(filepath.Join(data, "audit.log"))
	os.Mkdir(filepath.Join(data, "audit.log"), 0o700)
	if _, e, code := pouch(t, "", "ban", "add", "--data", data, "198.51.100.8"); code != 0 || !strings.Contains(e, "warning: audit log") {
		t.Fatalf("ban add with a broken audit log: exit %d, %s", code, e)
	}
}

// The new password check knows the user name.
func TestUserAddRefusesUserName(t *testing.T) {
	data := t.TempDir()
	_, e, code := pouch(t, "alicealice2024\n", "user", "add", "--data", data, "alice")
	if code != 1 || !strings.Contains(e, "built from the user name repeated") {
		t.Fatalf("user add with the user name as password: exit %d, %s", code, e)
	}
}
