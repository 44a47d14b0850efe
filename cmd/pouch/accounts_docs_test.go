package main

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/ldaptest"
	"github.com/pouchmail/pouch/internal/mariadbtest"
	"github.com/pouchmail/pouch/internal/pgtest"
)

var exampleRE = regexp.MustCompile("(?s)<!-- example: ([a-z-]+) -->\n```[a-z]*\n(.*?)```")

// docExamples returns the code blocks of a page of docs/ that follow an
// "example: NAME" comment, by name: what a reader pastes.
func docExamples(t *testing.T, page string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", page))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range exampleRE.FindAllStringSubmatch(string(b), -1) {
		out[m[1]] = m[2]
	}
	return out
}

// setKey replaces the line of a TOML text that sets key, or adds one.
func setKey(toml, key, value string) string {
	re := regexp.MustCompile(`(?m)^` + key + ` = .*$`)
	line := key + " = " + value
	if re.MatchString(toml) {
		return re.ReplaceAllLiteralString(toml, line)
	}
	return toml + line + "\n"
}

// checkExample writes a configuration, checks it with check-config
// --check-user, and logs each user in through the source it names, as
// pouch serve does.
func checkExample(t *testing.T, toml string, logins map[string]string, wantOut ...string) {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "pouch.toml")
	writeFile(t, conf, toml)
	c, err := readServeConfig(conf)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.validate(0)
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for user := range logins {
		_, e, code := pouch(t, "", "check-config", "--config", conf, "--data", dir, "--check-user", user)
		name := auth.AccountName(user, s.accounts.defaultDomain)
		if code != 0 || !strings.Contains(e, "check-user "+name+": found") {
			t.Fatalf("check-config --check-user %s: exit %d\n%s", user, code, e)
		}
		all.WriteString(e)
	}
	for _, w := range wantOut {
		if !strings.Contains(all.String(), w) {
			t.Errorf("check-config says no %q:\n%s", w, all.String())
		}
	}
	a, err := openAccounts(s.accounts, dir, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	for user, pw := range logins {
		name := auth.AccountName(user, s.accounts.defaultDomain)
		if ok, err := a.remote.Check(name, pw); !ok || err != nil {
			t.Errorf("%s with %q: %v, %v", user, pw, ok, err)
		}
		if ok, _ := a.remote.Check(name, pw+"x"); ok {
			t.Errorf("%s logs in with a wrong password", user)
		}
	}
}

var docLogins = map[string]string{"alice@example.org": "Correct-Horse-42", "alice@example.net": "Battery-Staple-17"}

// The PostgreSQL example of docs/accounts-sql.md works as written.
func TestDocsPostgresExample(t *testing.T) {
	ex := docExamples(t, "accounts-sql.md")
	url := pgtest.Get(t).Schema(t)
	db := openPgx(t, url)
	if _, err := db.Exec(ex["postgres-schema"]); err != nil {
		t.Fatalf("the schema: %v", err)
	}
	pwFile := filepath.Join(t.TempDir(), "db.pw")
	writeFile(t, pwFile, "unused with trust\n")
	toml := setKey(setKey(ex["postgres-toml"], "dsn", fmt.Sprintf("%q", url)), "password_file", fmt.Sprintf("%q", pwFile))
	checkExample(t, toml, docLogins, "accounts: 2 listed", "domain example.org: mail is taken")
	// The bare name takes the default domain.
	checkExample(t, toml, map[string]string{"alice": "Correct-Horse-42"}, "quota: 1G")
}

// The MariaDB example of docs/accounts-sql.md works as written.
func TestDocsMariaDBExample(t *testing.T) {
	ex := docExamples(t, "accounts-sql.md")
	d := mariadbtest.Get(t).Database(t)
	if _, err := d.Root.Exec(ex["mariadb-schema"]); err != nil {
		t.Fatalf("the schema: %v", err)
	}
	pwFile := filepath.Join(t.TempDir(), "db.pw")
	writeFile(t, pwFile, d.Password+"\n")
	dsn := fmt.Sprintf("%s@tcp(127.0.0.1:%d)/%s", d.User, mariadbtest.Get(t).Port(), d.Name)
	toml := setKey(setKey(ex["mariadb-toml"], "dsn", fmt.Sprintf("%q", dsn)), "password_file", fmt.Sprintf("%q", pwFile))
	checkExample(t, toml, docLogins, "accounts: 2 listed")
}

// The OpenLDAP example of docs/accounts-ldap.md works as written, in both
// modes.
func TestDocsLDAPExample(t *testing.T) {
	ex := docExamples(t, "accounts-ldap.md")
	s := ldaptest.Start(t)
	s.Add(t, ex["ldap-ldif"])
	bind := setKey(setKey(ex["ldap-toml-bind"], "url", fmt.Sprintf("%q", s.URL)), "tls_ca_file", fmt.Sprintf("%q", s.CAFile))
	checkExample(t, bind, docLogins, "accounts: 2 listed", "password: checked by binding as uid=alice,ou=people,dc=example,dc=org")
	pwFile := filepath.Join(t.TempDir(), "ldap.pw")
	writeFile(t, pwFile, "choose-one\n")
	search := setKey(setKey(setKey(ex["ldap-toml-search"], "url", fmt.Sprintf("%q", s.LDAPS)),
		"tls_ca_file", fmt.Sprintf("%q", s.CAFile)), "bind_password_file", fmt.Sprintf("%q", pwFile))
	checkExample(t, search, docLogins, "password: {CRYPT}, usable for password")
}

func openPgx(t *testing.T, url string) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
