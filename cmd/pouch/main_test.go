package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/auth"
)

// pouch runs the command in-process and returns its output and exit
// status, with the error written as main writes it.
func pouch(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(args, strings.NewReader(stdin), &out, &errb)
	if err != nil {
		code = 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		errb.WriteString("pouch: " + plainMessage(err.Error()) + "\n")
		if ee != nil && ee.hint != "" {
			errb.WriteString(ee.hint + "\n")
		}
	}
	return out.String(), errb.String(), code
}

func TestUserCommands(t *testing.T) {
	data := t.TempDir()
	if _, e, code := pouch(t, "first Passw0rd-long\n", "user", "add", "--data", data, "alice"); code != 0 {
		t.Fatalf("add: %d %s", code, e)
	}
	if fi, err := os.Stat(filepath.Join(data, "mail", "alice", "new")); err != nil || !fi.IsDir() {
		t.Fatalf("user add did not make the Maildir: %v", err)
	}
	// Flags may follow the name.
	if _, e, code := pouch(t, "bobs Passw0rd-long\r\n", "user", "add", "bob", "--data", data); code != 0 {
		t.Fatalf("add: %d %s", code, e)
	}
	if out, _, _ := pouch(t, "", "user", "list", "--data", data); out != "alice\nbob\n" {
		t.Fatalf("list = %q", out)
	}
	users, _ := os.ReadFile(filepath.Join(data, "users"))
	if !strings.HasPrefix(string(users), "alice:{ARGON2ID}$argon2id$") {
		t.Fatalf("users file: %q", users)
	}
	if fi, _ := os.Stat(filepath.Join(data, "users")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("users file mode %v", fi.Mode())
	}
	for _, tc := range []struct {
		stdin string
		args  []string
		code  int
		msg   string
	}{
		{"x\n", []string{"user", "add", "--data", data, "alice"}, 1, `user "alice" already exists`},
		{"x\n", []string{"user", "add", "--data", data, "../evil"}, 2, "user add:"},
		{"", []string{"user", "add", "--data", data, "carol"}, 1, "no password on standard input"},
		{"\n", []string{"user", "add", "--data", data, "carol"}, 1, "user add:"},
		{"short\n", []string{"user", "add", "--data", data, "carol"}, 1, "the password is too short"},
		{"aaaaaaaaaaaaaaaaaaaa\n", []string{"user", "add", "--data", data, "carol"}, 1, "too predictable"},
		{"x\n", []string{"user", "passwd", "--data", data, "nobody"}, 1, `no user "nobody"`},
		{"", []string{"user", "del", "--data", data, "nobody"}, 1, `no user "nobody"`},
		{"", []string{"user", "frob", "--data", data, "alice"}, 2, "unknown action"},
		{"", []string{"user", "add", "--data", data}, 2, "exactly one user name"},
		{"", []string{"user"}, 2, "say add, passwd, del, disable, enable or list"},
		{"", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
	} {
		_, e, code := pouch(t, tc.stdin, tc.args...)
		if code != tc.code || !strings.Contains(e, tc.msg) {
			t.Errorf("pouch %v: exit %d, %q; want exit %d with %q", tc.args, code, e, tc.code, tc.msg)
		}
		if strings.Count(strings.TrimSpace(e), "\n") > 0 && tc.code == 1 {
			t.Errorf("pouch %v: more than one line of error: %q", tc.args, e)
		}
	}
	if _, e, code := pouch(t, "second Passw0rd-long\n", "user", "passwd", "--data", data, "alice"); code != 0 {
		t.Fatalf("passwd: %d %s", code, e)
	}
	if _, e, code := pouch(t, "", "user", "del", "--data", data, "bob"); code != 0 {
		t.Fatalf("del: %d %s", code, e)
	}
	if out, _, _ := pouch(t, "", "user", "list", "--data", data); out != "alice\n" {
		t.Fatalf("list after del = %q", out)
	}
	if _, e, code := pouch(t, "", "user", "disable", "--data", data, "alice"); code != 0 {
		t.Fatalf("disable: %d %s", code, e)
	}
	users, _ = os.ReadFile(filepath.Join(data, "users"))
	if !strings.Contains(string(users), " nologin") {
		t.Fatalf("disable did not set nologin: %q", users)
	}
	if _, e, code := pouch(t, "", "user", "enable", "--data", data, "alice"); code != 0 {
		t.Fatalf("enable: %d %s", code, e)
	}
	users, _ = os.ReadFile(filepath.Join(data, "users"))
	if strings.Contains(string(users), "nologin") {
		t.Fatalf("enable did not clear nologin: %q", users)
	}
	auditLog, _ := os.ReadFile(filepath.Join(data, "audit.log"))
	for _, ev := range []string{"user_add", "user_passwd", "user_del", "user_disable", "user_enable"} {
		if !strings.Contains(string(auditLog), `"event":"`+ev+`"`) {
			t.Errorf("audit log lacks %s: %s", ev, auditLog)
		}
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "pouch.toml")
	os.WriteFile(cfgPath, []byte(`
data = "/srv/mail"
pop3 = ""
idle-timeout = "15m"
max-bad-commands = 3
`), 0o600)
	fs, c := serveFlags(&bytes.Buffer{})
	if _, err := loadServeConfig(fs, c, []string{"--config", cfgPath, "--max-bad-commands", "7"}); err != nil {
		t.Fatal(err)
	}
	if c.Data != "/srv/mail" || c.POP3 != "" || time.Duration(c.IdleTimeout) != 15*time.Minute {
		t.Errorf("config not applied: %+v", c)
	}
	if c.MaxBadCommands != 7 {
		t.Errorf("max-bad-commands = %d; the flag must win over the file", c.MaxBadCommands)
	}

	for content, want := range map[string]string{
		"colour = \"blue\"\n":          `unknown key "colour"`,
		"idle-timeout = \"soon\"\n":    `key "idle-timeout"`,
		"data = \n":                    cfgPath,
		"max-bad-commands = \"x\"\n":   `key "max-bad-commands"`,
		"config = \"other.toml\"\n":    `unknown key "config"`,
		"pop3 = [\"a\", \"b\"]\nx=1\n": `unknown key "x"`,
	} {
		os.WriteFile(cfgPath, []byte(content), 0o600)
		_, err := readServeConfig(cfgPath)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), cfgPath) {
			t.Errorf("config %q: error %v, want one naming %s and %q", content, err, cfgPath, want)
		}
	}
}

func TestServeRefusesBadSettings(t *testing.T) {
	data := t.TempDir()
	open := t.TempDir()
	os.Chmod(open, 0o777)
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"serve", "--data", data, "--pop3", "", "--pop3s", ""}, 2, "nothing to serve"},
		{[]string{"serve", "--data", data, "--pop3", "127.0.0.1:notaport", "--pop3s", ""}, 1, "listen pop3 on 127.0.0.1:notaport"},
		{[]string{"serve", "--data", data, "--log-level", "loud"}, 2, `log level "loud"`},
		{[]string{"serve", "--data", data, "--pop3", "", "--tls-cert", "/nonexistent.pem"}, 1, "certificate"},
		{[]string{"serve", "extra"}, 2, "serve takes no arguments"},
		{[]string{"serve", "--data", data, "--deny-country", "RU"}, 2, "need --geoip-db"},
		{[]string{"serve", "--data", data, "--allow-ip", "10.0.0.0/8,x"}, 2, "--allow-ip"},
		{[]string{"serve", "--data", data, "--password-max-age", "soon"}, 2, "--password-max-age"},
		{[]string{"serve", "--data", data, "--run-as", "no-such-user-here"}, 1, "--run-as"},
		{[]string{"serve", "--data", open, "--pop3", "127.0.0.1:0", "--pop3s", ""}, 1, "writable by group or others"},
		{[]string{"serve", "--data", data, "--insecure-auth-networks", "10.0.0.0/33"}, 2, `"10.0.0.0/33" is not a network`},
		{[]string{"serve", "--data", data, "--oauth-issuer", "https://id.example"}, 1, "OAuth needs an issuer, an audience and a key set"},
		{[]string{"serve", "--data", data, "--tls-client-ca", "/nonexistent"}, 1, "client CA"},
		{[]string{"serve", "--no-such-flag"}, 2, "no-such-flag"},
	} {
		args := tc.args
		if len(args) > 1 && !strings.Contains(strings.Join(args, " "), "--pop3") {
			// Never bind the default ports (110 and 995 when root).
			args = append(append([]string{}, args...), "--pop3", "127.0.0.1:0", "--pop3s", "")
		}
		_, e, code := pouch(t, "", args...)
		if code != tc.code || !strings.Contains(e, tc.msg) {
			t.Errorf("pouch %v: exit %d, %q; want exit %d with %q", tc.args, code, e, tc.code, tc.msg)
		}
	}
}

func TestBanCommands(t *testing.T) {
	data := t.TempDir()
	if _, e, code := pouch(t, "", "ban", "add", "--data", data, "203.0.113.0/24", "--for", "1h", "--reason", "scanner"); code != 0 {
		t.Fatalf("ban add: %d %s", code, e)
	}
	if _, e, code := pouch(t, "", "ban", "add", "--data", data, "198.51.100.7"); code != 0 {
		t.Fatalf("ban add: %d %s", code, e)
	}
	out, _, _ := pouch(t, "", "ban", "list", "--data", data)
	if !strings.Contains(out, "203.0.113.0/24") || !strings.Contains(out, "scanner") || !strings.Contains(out, "198.51.100.7/32") {
		t.Fatalf("ban list: %q", out)
	}
	if _, e, code := pouch(t, "", "ban", "del", "--data", data, "198.51.100.7"); code != 0 {
		t.Fatalf("ban del: %d %s", code, e)
	}
	if out, _, _ := pouch(t, "", "ban", "list", "--data", data); strings.Contains(out, "198.51.100.7") {
		t.Fatalf("ban list after del: %q", out)
	}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"ban", "del", "--data", data, "192.0.2.1"}, 1, "is not banned"},
		{[]string{"ban", "add", "--data", data, "not-a-net"}, 2, "is not an address or a network"},
		{[]string{"ban", "frob", "--data", data}, 2, "unknown action"},
		{[]string{"ban"}, 2, "say list, add or del"},
		{[]string{"ban", "add", "--data", filepath.Join(data, "nonexistent"), "192.0.2.1"}, 1, "ban: there is no data directory " + filepath.Join(data, "nonexistent") + ": give pouch serve's with --data"},
	} {
		_, e, code := pouch(t, "", tc.args...)
		if code != tc.code || !strings.Contains(e, tc.msg) {
			t.Errorf("pouch %v: exit %d, %q; want exit %d with %q", tc.args, code, e, tc.code, tc.msg)
		}
	}
	audit, _ := os.ReadFile(filepath.Join(data, "audit.log"))
	if !strings.Contains(string(audit), `"event":"ban"`) || !strings.Contains(string(audit), `"event":"unban"`) {
		t.Errorf("audit log: %s", audit)
	}
}

// A ban without --for lasts until pouch ban del, and ban list says so (not
// a date a hundred years on); the audit log says "forever". --for takes
// at most ten years.
func TestBanUntilRemoved(t *testing.T) {
	data := t.TempDir()
	if _, e, code := pouch(t, "", "ban", "add", "--data", data, "198.51.100.7"); code != 0 {
		t.Fatalf("ban add: %d %s", code, e)
	}
	if _, e, code := pouch(t, "", "ban", "add", "--data", data, "--for", "3650d", "203.0.113.0/24"); code != 0 {
		t.Fatalf("ban add --for 3650d: %d %s", code, e)
	}
	out, _, _ := pouch(t, "", "ban", "list", "--data", data)
	lines := map[string][]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		lines[f[0]] = f
	}
	if f := lines["198.51.100.7/32"]; len(f) < 3 || f[1] != "until" || f[2] != "removed" {
		t.Errorf("ban list shows the ban without an end as %q:\n%s", f, out)
	}
	if f := lines["203.0.113.0/24"]; len(f) < 3 || f[1] != "until" {
		t.Errorf("ban list: %q", out)
	} else if until, err := time.Parse(time.RFC3339, f[2]); err != nil || time.Until(until) < 3649*24*time.Hour {
		t.Errorf("ban list shows the ten-year ban as until %q (%v)", f[2], err)
	}
	audit, _ := os.ReadFile(filepath.Join(data, "audit.log"))
	if !strings.Contains(string(audit), `"for":"forever"`) || strings.Contains(string(audit), `"for":"0s"`) {
		t.Errorf("audit log: %s", audit)
	}
	_, e, code := pouch(t, "", "ban", "add", "--data", data, "--for", "3651d", "192.0.2.1")
	if code != 2 || !strings.Contains(e, "--for 3651d is too long: a ban lasts at most 3650d; leave out --for to ban until removed") {
		t.Errorf("ban add --for 3651d: exit %d, %q", code, e)
	}
	if _, e, _ := pouch(t, "", "ban", "del", "--data", data, "198.51.100.7"); !strings.Contains(e, "lifted the ban of 198.51.100.7/32 (until removed, banned by hand)") {
		t.Errorf("ban del: %q", e)
	}
}

func TestCheckConfigAndVersion(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pouch.toml")
	os.WriteFile(cfg, []byte("data = \""+dir+"\"\npop3 = \"127.0.0.1:1110\"\nidle-timeout = \"15m\"\n"), 0o600)
	out, e, code := pouch(t, "", "check-config", "--config", cfg)
	if code != 0 || !strings.Contains(out, `idle-timeout = "15m0s"`) || !strings.Contains(out, `pop3 = "127.0.0.1:1110"`) ||
		!strings.Contains(out, "max-line-length = 255") || !strings.Contains(e, "configuration OK") {
		t.Fatalf("check-config: exit %d\n%s\n%s", code, out, e)
	}
	// --check-user of a user who is not there fails: scripts ask for one.
	if _, e, code := pouch(t, "tidy-Walrus-87-kettle\n", "user", "add", "--data", dir, "alice"); code != 0 {
		t.Fatalf("user add: %d %s", code, e)
	}
	if _, e, code := pouch(t, "", "check-config", "--config", cfg, "--check-user", "alice"); code != 0 || !strings.Contains(e, "check-user alice: found") {
		t.Errorf("check-config --check-user alice: exit %d, %s", code, e)
	}
	if _, e, code := pouch(t, "", "check-config", "--config", cfg, "--check-user", "nosuch"); code != 1 ||
		!strings.Contains(e, "pouch: check-config: --check-user nosuch: no such user in the users file") || strings.Contains(e, "configuration OK") {
		t.Errorf("check-config --check-user nosuch: exit %d, %s", code, e)
	}
	os.WriteFile(cfg, []byte("pop3 = \"nonsense:port:x\"\n"), 0o600)
	if _, e, code := pouch(t, "", "check-config", "--config", cfg); code == 0 || !strings.Contains(e, cfg+`: key "pop3"`) {
		t.Fatalf("check-config of a bad address: exit %d, %s", code, e)
	}
	os.WriteFile(cfg, []byte("deny-country = \"RU\"\n"), 0o600)
	if _, e, code := pouch(t, "", "check-config", "--config", cfg); code == 0 || !strings.Contains(e, "--geoip-db") {
		t.Fatalf("check-config of country rules without a database: exit %d, %s", code, e)
	}
	if out, _, code := pouch(t, "", "version"); code != 0 || !strings.HasPrefix(out, "pouch ") {
		t.Fatalf("version: %d %q", code, out)
	}
}

// In the domains layout, a name without a domain and a domain share a
// directory of the mail root: pouch user add refuses a name whose Maildir
// would be a domain's directory, or the other way round, before it writes
// anything, so no account is left without a Maildir (mail for it would be
// deferred for ever).
func TestUserAddRefusesNameOfDomain(t *testing.T) {
	data := t.TempDir()
	const pw = "tidy-Walrus-87-kettle\n"
	for _, name := range []string{"bob@example.org", "carol"} {
		if _, e, code := pouch(t, pw, "user", "add", "--data", data, name); code != 0 {
			t.Fatalf("add %s: %d %s", name, code, e)
		}
	}
	if _, err := os.Stat(filepath.Join(data, "mail", "example.org", "bob", "new")); err != nil {
		t.Fatalf("not the domains layout: %v", err)
	}
	// An account that has no Maildir yet (pouch import users makes none).
	if err := auth.AddUser(filepath.Join(data, "users"), "dave@example.net", "another-Walrus-88-kettle"); err != nil {
		t.Fatal(err)
	}
	usersPath := filepath.Join(data, "users")
	before, _ := os.ReadFile(usersPath)
	for name, want := range map[string]string{
		"example.org":       filepath.Join(data, "mail", "example.org") + " holds the Maildirs of the domain example.org",
		"erin@carol":        filepath.Join(data, "mail", "carol") + " is the Maildir of the user carol",
		"example.net":       filepath.Join(data, "mail", "example.net") + " is to hold the Maildir of dave@example.net",
		"frank@EXAMPLE.ORG": "", // the same domain as bob's: no clash
	} {
		_, e, code := pouch(t, pw, "user", "add", "--data", data, name)
		if want == "" {
			if code != 0 {
				t.Errorf("add %s: exit %d, %s", name, code, e)
			}
			continue
		}
		if code != 1 || !strings.Contains(e, "cannot have a Maildir: "+want) || strings.Count(e, "\n") != 1 || strings.Contains(e, "store:") {
			t.Errorf("add %s: exit %d, %q; want exit 1 and one line with %q", name, code, e, want)
		}
		if _, err := os.Stat(filepath.Join(data, "mail", name)); err == nil && name != "example.org" {
			t.Errorf("add %s made a directory", name)
		}
	}
	after, _ := os.ReadFile(usersPath)
	if want := string(before); !strings.HasPrefix(string(after), want) || strings.Count(string(after), "\n") != strings.Count(want, "\n")+1 {
		t.Errorf("the users file changed beyond the one account added:\n%s", after)
	}
	if out, _, _ := pouch(t, "", "user", "list", "--data", data); out != "bob@example.org\ncarol\ndave@example.net\nfrank@example.org\n" {
		t.Errorf("list = %q", out)
	}
	// Every account listed takes mail.
	for _, name := range []string{"bob@example.org", "carol", "frank@example.org"} {
		if _, e, code := pouch(t, "Subject: hi\n\nhi\n", "deliver", "--data", data, name); code != 0 {
			t.Errorf("deliver %s: exit %d, %s", name, code, e)
		}
	}
}

// A user added under a decomposed name gets its Maildir under the
// normalized name that logins open; a password SCRAM cannot take is stored
// with a warning.
func TestUserAddNormalizesName(t *testing.T) {
	data := t.TempDir()
	if _, e, code := pouch(t, "river Kettle-9271 \U0001F600\n", "user", "add", "--data", data, "jo\u0308rg"); code != 0 {
		t.Fatalf("add: %d %s", code, e)
	} else if !strings.Contains(e, "SCRAM-SHA-256 will not work") {
		t.Errorf("no SCRAM warning: %q", e)
	}
	if _, err := os.Stat(filepath.Join(data, "mail", "j\u00f6rg", "new")); err != nil {
		t.Fatalf("Maildir not under the normalized name: %v", err)
	}
	if out, _, _ := pouch(t, "", "user", "list", "--data", data); out != "j\u00f6rg\n" {
		t.Fatalf("list = %q", out)
	}
}
