package main

import (
	"bufio"
	"database/sql"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/ldaptest"
	"github.com/pouchmail/pouch/internal/mariadbtest"
	"github.com/pouchmail/pouch/internal/pgtest"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	mariadbtest.StopShared()
	os.Exit(code)
}

// retrieve logs in over POP3 and returns the first message, or the reply
// that refused the login.
func retrieve(t *testing.T, addr, user, pass string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	line := func() string {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("POP3: %v", err)
		}
		return strings.TrimRight(l, "\r\n")
	}
	line() // greeting
	fmt.Fprintf(c, "USER %s\r\nPASS %s\r\n", user, pass)
	line()
	if l := line(); !strings.HasPrefix(l, "+OK") {
		return "", fmt.Errorf("%s", l)
	}
	fmt.Fprintf(c, "RETR 1\r\n")
	if l := line(); !strings.HasPrefix(l, "+OK") {
		return "", fmt.Errorf("RETR: %s", l)
	}
	var msg strings.Builder
	for l := line(); l != "."; l = line() {
		msg.WriteString(l + "\n")
	}
	fmt.Fprintf(c, "QUIT\r\n")
	line()
	return msg.String(), nil
}

// deliverLMTP delivers one message for rcpt and returns the replies to RCPT
// and, when it was accepted, to the data.
func deliverLMTP(t *testing.T, addr, rcpt, subject string) (rcptReply, dataReply string) {
	t.Helper()
	l := dialLMTP(t, addr)
	if r := l.cmd("MAIL FROM:<sender@example.com>"); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("MAIL: %q", r)
	}
	rcptReply = l.cmd("RCPT TO:<" + rcpt + ">")
	if !strings.HasPrefix(rcptReply, "250 ") {
		return rcptReply, ""
	}
	l.cmd("DATA")
	return rcptReply, l.cmd("Subject: " + subject + "\r\n\r\nfor " + rcpt + "\r\n.")
}

// waitReady polls /readyz until it answers want (a change that the
// server's watch of the source makes within a second or two).
func waitReady(t *testing.T, addr string, want int) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := readyz(t, addr)
		if code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz stays %d %q, want %d", code, body, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pouch serve with its accounts in PostgreSQL: two people called alice in
// two domains get their own mail through LMTP and POP3, with Maildirs at
// DATA/mail/DOMAIN/USER; the bare name takes the default domain. When the
// database goes away, logins it cannot check get -ERR [SYS/TEMP] and count
// for no ban, LMTP defers with 451 4.3.0 and /readyz is unready; a user
// looked up before still logs in; when it is back, all is as before.
func TestServeSQLAccounts(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	c := pgtest.Get(t)
	url := c.Schema(t)
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// The schema of docs/accounts-sql.md.
	for _, q := range []string{
		`CREATE TABLE domains (domain text PRIMARY KEY)`,
		`CREATE TABLE users (
			email text PRIMARY KEY,
			password text NOT NULL,
			active boolean NOT NULL DEFAULT true,
			quota_bytes bigint)`,
		`INSERT INTO domains VALUES ('example.org'), ('example.net')`,
		`INSERT INTO users (email, password) VALUES
			('alice@example.org', '{PLAIN}org-secret'),
			('alice@example.net', '{PLAIN}net-secret'),
			('bob@example.org', '{PLAIN}bob-secret'),
			('dave@example.org', '{PLAIN}dave-secret')`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	data := t.TempDir()
	conf := filepath.Join(t.TempDir(), "pouch.toml")
	writeFile(t, conf, fmt.Sprintf(`default-domain = "example.org"
ban-after = 3

[accounts]
source = "sql"
driver = "postgres"
dsn = %q
password_query = """
  SELECT password, NOT active AS disabled, quota_bytes AS quota_storage
  FROM users WHERE email = %%u"""
iterate_query = "SELECT email FROM users"
domain_query = "SELECT 1 FROM domains WHERE domain = %%d"
cache_ttl = "1h"
timeout = "2s"
`, url))
	if out, e, code := pouch(t, "", "check-config", "--config", conf, "--data", data, "--check-user", "alice@example.net"); code != 0 ||
		!strings.Contains(e, "check-user alice@example.net: found in password_query") || !strings.Contains(e, "accounts: 4 listed") {
		t.Fatalf("check-config: exit %d\n%s\n%s", code, out, e)
	}
	bin := lmtpTestBinary(t)
	p := startServe(t, exec.Command(bin, "serve", "--config", conf, "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "",
		"--lmtp", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--auth-fail-delay", "0"), "pop3", "lmtp", "metrics")

	for _, rcpt := range []string{"alice@example.org", "alice+news@example.net", "bob@example.org"} {
		if r, d := deliverLMTP(t, p.addrs["lmtp"], rcpt, "hello "+rcpt); !strings.HasPrefix(d, "250 2.0.0") {
			t.Errorf("LMTP to %s: %q %q", rcpt, r, d)
		}
	}
	if r, _ := deliverLMTP(t, p.addrs["lmtp"], "carol@example.org", "x"); !strings.HasPrefix(r, "550 5.1.1 ") {
		t.Errorf("RCPT for no such user: %q", r)
	}
	if r, _ := deliverLMTP(t, p.addrs["lmtp"], "alice@example.com", "x"); !strings.HasPrefix(r, "550 5.1.2 ") {
		t.Errorf("RCPT in a domain the database does not have: %q", r)
	}
	for _, tc := range []struct{ user, pass, want string }{
		{"alice@example.org", "org-secret", "for alice@example.org"},
		{"alice@example.net", "net-secret", "for alice+news@example.net"},
		{"alice", "org-secret", "for alice@example.org"}, // the default domain
	} {
		msg, err := retrieve(t, p.addrs["pop3"], tc.user, tc.pass)
		if err != nil || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: %q, %v; want the message %q", tc.user, msg, err, tc.want)
		}
	}
	if _, err := retrieve(t, p.addrs["pop3"], "alice@example.net", "org-secret"); err == nil || !strings.Contains(err.Error(), "-ERR [AUTH]") {
		t.Errorf("alice@example.net with the other alice's password: %v", err)
	}
	for _, dir := range []string{"example.org/alice/new", "example.net/alice/new", "example.org/bob/new"} {
		if ents, err := os.ReadDir(filepath.Join(data, "mail", dir)); err != nil || len(ents) == 0 {
			t.Errorf("DATA/mail/%s: %d messages, %v", dir, len(ents), err)
		}
	}
	if code, body := readyz(t, p.addrs["metrics"]); code != http.StatusOK {
		t.Fatalf("/readyz: %d %q", code, body)
	}

	// The database goes away.
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	defer c.Start()
	// dave was never looked up: more failed logins than ban-after, none
	// counted; and not one is an [AUTH].
	for range 6 {
		if _, err := retrieve(t, p.addrs["pop3"], "dave@example.org", "dave-secret"); err == nil ||
			!strings.HasPrefix(err.Error(), "-ERR [SYS/TEMP] ") {
			t.Fatalf("dave while the database is down: %v, want -ERR [SYS/TEMP]", err)
		}
	}
	if body := waitReady(t, p.addrs["metrics"], http.StatusServiceUnavailable); !strings.Contains(body, "PostgreSQL") {
		t.Errorf("/readyz while down: %q", body)
	}
	if r, _ := deliverLMTP(t, p.addrs["lmtp"], "dave@example.org", "x"); !strings.HasPrefix(r, "451 4.3.0 ") {
		t.Errorf("RCPT while the database is down: %q, want 451 4.3.0", r)
	}
	// alice@example.org was looked up: her account is used as it was.
	if _, err := retrieve(t, p.addrs["pop3"], "alice@example.org", "org-secret"); err != nil {
		t.Errorf("alice, looked up before, while down: %v", err)
	}

	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, p.addrs["metrics"], http.StatusOK)
	// No ban, no lock: dave takes mail, and logs in from the same address
	// at once.
	if r, d := deliverLMTP(t, p.addrs["lmtp"], "dave@example.org", "again"); !strings.HasPrefix(d, "250 2.0.0") {
		t.Errorf("LMTP after the database is back: %q %q", r, d)
	}
	if msg, err := retrieve(t, p.addrs["pop3"], "dave@example.org", "dave-secret"); err != nil || !strings.Contains(msg, "for dave@example.org") {
		t.Errorf("dave after the database is back: %q, %v", msg, err)
	}
	if err := p.stop(); err != nil {
		t.Errorf("pouch serve after SIGTERM: %v", err)
	}
	logs := p.logText()
	_, outage, found := strings.Cut(logs, "account source unavailable")
	if !found || !strings.Contains(outage, "account source usable again") {
		t.Fatalf("the outage is not logged:\n%s", logs)
	}
	if strings.Contains(outage, `msg="authentication failed"`) || strings.Contains(outage, "banned") {
		t.Errorf("failures counted while the database was down:\n%s", logs)
	}
}

// pouch serve with its accounts in MariaDB, a user of each scheme.
func TestServeMariaDBAccounts(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	s := mariadbtest.Get(t)
	d := s.Database(t)
	if _, err := d.Root.Exec(`CREATE TABLE mailbox (
		username VARCHAR(255) NOT NULL PRIMARY KEY,
		password VARCHAR(255) NOT NULL,
		quota BIGINT NOT NULL DEFAULT 0,
		active TINYINT(1) NOT NULL DEFAULT 1);
		INSERT INTO mailbox (username, password, active) VALUES
		('alice@example.org', '{SHA512-CRYPT}$6$AODy/KxyPFD6MCGW$kIyhBNPh6J3ycw0np8DdFQMw50hCpnKYj4Hx3nVQM.yHH8zZ82RbEo1zhgePRyet/oukzMvcGfrar4Xhe1SnF0', 1),
		('old@example.org', '{PLAIN}old-secret', 0)`); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	conf := filepath.Join(t.TempDir(), "pouch.toml")
	writeFile(t, conf, fmt.Sprintf(`[accounts]
source = "sql"
driver = "mysql"
dsn = %q
password_query = "SELECT password, active = 0 AS disabled FROM mailbox WHERE username = '%%u'"
iterate_query = "SELECT username FROM mailbox"
`, d.URL))
	bin := lmtpTestBinary(t)
	p := startServe(t, exec.Command(bin, "serve", "--config", conf, "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "",
		"--lmtp", "127.0.0.1:0", "--auth-fail-delay", "0"), "pop3", "lmtp")
	if _, dr := deliverLMTP(t, p.addrs["lmtp"], "alice@example.org", "hi"); !strings.HasPrefix(dr, "250 2.0.0") {
		t.Fatalf("LMTP: %q", dr)
	}
	if msg, err := retrieve(t, p.addrs["pop3"], "alice@example.org", "sha pass"); err != nil || !strings.Contains(msg, "for alice@example.org") {
		t.Errorf("alice: %q, %v", msg, err)
	}
	if _, err := retrieve(t, p.addrs["pop3"], "old@example.org", "old-secret"); err == nil || !strings.Contains(err.Error(), "disabled") {
		t.Errorf("a disabled account: %v", err)
	}
	if out, e, code := pouch(t, "", "user", "list", "--config", conf); code != 0 || out != "alice@example.org\nold@example.org\n" {
		t.Errorf("user list: %d %q %s", code, out, e)
	}
	if _, e, code := pouch(t, "pw\n", "user", "add", "--config", conf, "carol@example.org"); code == 0 || !strings.Contains(e, "change them there") {
		t.Errorf("user add with an SQL source: %d %s", code, e)
	}
}

// pouch serve with its accounts in OpenLDAP, binding as the user: CAPA
// offers no SCRAM and the greeting no APOP, and a log-in name made of
// filter syntax finds nobody.
func TestServeLDAPAccounts(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	s := ldaptest.Start(t)
	s.Add(t, `dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Example
mail: alice@example.org
userPassword: {CRYPT}$6$AODy/KxyPFD6MCGW$kIyhBNPh6J3ycw0np8DdFQMw50hCpnKYj4Hx3nVQM.yHH8zZ82RbEo1zhgePRyet/oukzMvcGfrar4Xhe1SnF0
`)
	data := t.TempDir()
	conf := filepath.Join(t.TempDir(), "pouch.toml")
	writeFile(t, conf, fmt.Sprintf(`[accounts]
source = "ldap"
url = %q
start_tls = true
tls_ca_file = %q
base = "ou=people,dc=example,dc=org"
filter = "(&(objectClass=inetOrgPerson)(mail=%%u))"
bind = "user"
`, s.URL, s.CAFile))
	if _, e, code := pouch(t, "", "check-config", "--config", conf, "--data", data, "--check-user", "alice@example.org"); code != 0 ||
		!strings.Contains(e, "password: checked by binding as uid=alice,ou=people,dc=example,dc=org") {
		t.Fatalf("check-config: exit %d\n%s", code, e)
	}
	bin := lmtpTestBinary(t)
	p := startServe(t, exec.Command(bin, "serve", "--config", conf, "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "",
		"--lmtp", "127.0.0.1:0", "--auth-fail-delay", "0"), "pop3", "lmtp")
	if _, dr := deliverLMTP(t, p.addrs["lmtp"], "alice@example.org", "hi"); !strings.HasPrefix(dr, "250 2.0.0") {
		t.Fatalf("LMTP: %q", dr)
	}
	if msg, err := retrieve(t, p.addrs["pop3"], "alice@example.org", "sha pass"); err != nil || !strings.Contains(msg, "for alice@example.org") {
		t.Errorf("alice: %q, %v", msg, err)
	}
	for _, name := range []string{"*)(uid=*", "*", "alice*"} {
		if _, err := retrieve(t, p.addrs["pop3"], name, "sha pass"); err == nil || !strings.Contains(err.Error(), "-ERR [AUTH]") {
			t.Errorf("%q: %v", name, err)
		}
	}
	c, err := net.Dial("tcp", p.addrs["pop3"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	greeting, _ := r.ReadString('\n')
	if strings.Contains(greeting, "<") {
		t.Errorf("APOP timestamp in the greeting of a bind source: %q", greeting)
	}
	fmt.Fprintf(c, "CAPA\r\n")
	var capa strings.Builder
	for {
		l, err := r.ReadString('\n')
		if err != nil || l == ".\r\n" {
			break
		}
		capa.WriteString(l)
	}
	if !strings.Contains(capa.String(), "SASL PLAIN LOGIN") || strings.Contains(capa.String(), "SCRAM") {
		t.Errorf("CAPA of a bind source:\n%s", capa.String())
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestHideDSNPassword(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://pouch:s3cret@127.0.0.1:5432/mail?sslmode=disable": "postgres://pouch:xxxxx@127.0.0.1:5432/mail?sslmode=disable",
		"postgres://pouch@127.0.0.1/mail":                             "postgres://pouch@127.0.0.1/mail",
		"host=db user=pouch password=s3cret dbname=mail":              "host=db user=pouch password=xxxxx dbname=mail",
		"pouch:s3cret@tcp(127.0.0.1:3306)/mail":                       "pouch:xxxxx@tcp(127.0.0.1:3306)/mail",
		"mysql://pouch:s3cret@127.0.0.1/mail":                         "mysql://pouch:xxxxx@127.0.0.1/mail",
	} {
		if got := hideDSNPassword(in); got != want {
			t.Errorf("hideDSNPassword(%q) = %q, want %q", in, got, want)
		}
	}
}

// check-config refuses the [accounts] mistakes an operator makes, naming
// the file, the table and the key, as pouch serve does.
func TestAccountsConfigProblems(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ toml, want string }{
		{"[accounts]\nsource = \"nis\"\n", `source "nis"`},
		{"[accounts]\nsource = \"sql\"\ndriver = \"postgres\"\n", "dsn is missing"},
		{"[accounts]\nsource = \"sql\"\ndriver = \"postgres\"\ndsn = \"postgres://x@127.0.0.1/db\"\npassword_query = \"SELECT password FROM u WHERE e = '%n@%d'\"\n", "inside the string literal"},
		{"[accounts]\nsource = \"sql\"\nurl = \"ldap://x\"\n", `key "url" is not for source = "sql"`},
		{"[accounts]\nsource = \"ldap\"\nurl = \"ldap://127.0.0.1\"\nbase = \"dc=x\"\nfilter = \"(mail=%u)\"\nbind_dn = \"cn=a\"\n", "bind_dn without bind_password_file"},
		{"[accounts]\nsource = \"ldap\"\nurl = \"ldap://127.0.0.1\"\nbase = \"dc=x\"\nfilter = \"(mail=%u)\"\ncache_ttl = \"soon\"\n", `key "cache_ttl"`},
		{"[accounts]\nsoruce = \"sql\"\n", `unknown key "soruce"`},
		{"default-domain = \"a@b\"\n", "is not a domain"},
	} {
		conf := filepath.Join(dir, "pouch.toml")
		writeFile(t, conf, tc.toml)
		for _, cmd := range []string{"check-config", "serve"} {
			_, e, code := pouch(t, "", cmd, "--config", conf, "--data", dir)
			if code == 0 || cmd == "serve" && code != 2 || !strings.Contains(e, tc.want) || !strings.Contains(e, conf) {
				t.Errorf("%s with %q: exit %d, %s; want a failure with %q", cmd, tc.toml, code, e, tc.want)
			}
		}
	}
}
