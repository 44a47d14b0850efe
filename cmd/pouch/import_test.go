package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/store/maildir"
)

// oldMaildir writes a Maildir as Dovecot leaves it: messages in cur/ and
// a dovecot-uidlist (UIDVALIDITY uidv) listing them, the first retrieved.
func oldMaildir(t *testing.T, dir string, uidv int, bodies ...string) {
	t.Helper()
	for _, sub := range []string{"new", "cur", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	list := fmt.Sprintf("3 V%d N%d G%032x\n", uidv, len(bodies)+1, uidv)
	for i, b := range bodies {
		name := fmt.Sprintf("%d.M%dP%d.old", 1751000000+i, i, uidv)
		flags := ":2,"
		if i == 0 {
			flags += "S"
		}
		if err := os.WriteFile(filepath.Join(dir, "cur", name+flags), []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
		list += fmt.Sprintf("%d :%s\n", i+1, name)
	}
	if err := os.WriteFile(filepath.Join(dir, "dovecot-uidlist"), []byte(list), 0o600); err != nil {
		t.Fatal(err)
	}
}

func uidlsOf(t *testing.T, data, user string) []string {
	t.Helper()
	m, err := maildir.New(filepath.Join(data, "mail")).Open(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var out []string
	for _, msg := range m.Messages() {
		out = append(out, msg.UID)
	}
	return out
}

func TestImportTree(t *testing.T) {
	root, data := t.TempDir(), t.TempDir()
	vmail := filepath.Join(root, "vmail")
	oldMaildir(t, filepath.Join(vmail, "example.org", "alice", "Maildir"), 1751000001, "Subject: a1\n\n1\n", "Subject: a2\n\n2\n")
	oldMaildir(t, filepath.Join(vmail, "example.org", "bob", "Maildir"), 1751000002, "Subject: b1\n\n1\n")
	oldMaildir(t, filepath.Join(vmail, "example.net", "carol", "Maildir"), 1751000003, "Subject: c1\n\n1\n", "Subject: c2\n\n2\n")
	// Not a message: skipped. And a directory that is no Maildir.
	bobCur := filepath.Join(vmail, "example.org", "bob", "Maildir", "cur")
	if err := os.Symlink("/etc/passwd", filepath.Join(bobCur, "1751000009.M9P9.old:2,")); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(vmail, "example.net", "nobody", "notmail"), 0o700)
	// carol's maildrop on Pouch has a message whose name is the UIDL of
	// her second old one already.
	clash := fmt.Sprintf("%08x%08x", 2, 1751000003)
	carol := filepath.Join(data, "mail", "carol@example.net")
	for _, sub := range []string{"new", "cur", "tmp"} {
		os.MkdirAll(filepath.Join(carol, sub), 0o700)
	}
	os.WriteFile(filepath.Join(carol, "new", clash), []byte("Subject: mine\n\nx\n"), 0o600)
	if err := auth.AddUser(filepath.Join(data, "users"), "alice@example.org", "a long Passw0rd here"); err != nil {
		t.Fatal(err)
	}

	layout := "maildir:" + vmail + "/%d/%n/Maildir:LAYOUT=fs"
	out, e, code := pouch(t, "", "import", "--data", data, "--layout", layout)
	if code != 1 {
		t.Fatalf("import with a skip: exit %d, want 1\n%s%s", code, out, e)
	}
	for _, want := range []string{
		"import: 3 users, 6 messages: 4 imported",
		"4 under the UIDLs their clients know",
		"skipped " + bobCur + "/1751000009.M9P9.old:2,: it is not a regular file",
		fmt.Sprintf("UIDL %q is that of message 1 of the maildrop (new/%s) already", clash, clash),
		"warning: 2 maildrops have no account",
		"bob@example.org carol@example.net",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(e, "import: 2 messages were skipped; see the summary") {
		t.Errorf("error: %s", e)
	}
	want := []string{fmt.Sprintf("%08x%08x", 1, 1751000001), fmt.Sprintf("%08x%08x", 2, 1751000001)}
	if got := uidlsOf(t, data, "alice@example.org"); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("alice's UIDLs %q, want %q", got, want)
	}

	// The operator clears up, and runs it again: only what is left comes.
	os.Remove(filepath.Join(bobCur, "1751000009.M9P9.old:2,"))
	os.Remove(filepath.Join(carol, "new", clash))
	out, e, code = pouch(t, "", "import", "--data", data, "--layout", layout)
	if code != 0 || !strings.Contains(out, "import: 3 users, 5 messages: 1 imported") || !strings.Contains(out, "4 imported before") {
		t.Fatalf("second run: exit %d\n%s%s", code, out, e)
	}
	if got := uidlsOf(t, data, "carol@example.net"); len(got) != 2 || got[1] != clash {
		t.Errorf("carol's UIDLs %q", got)
	}
	// Stats count the retrieved message (S) of each user.
	st, err := maildir.New(filepath.Join(data, "mail")).Stats(context.Background(), "alice@example.org")
	if err != nil || st.Retrieved != 1 || st.Messages != 2 {
		t.Errorf("alice's stats %+v %v", st, err)
	}
}

func TestImportCommandLine(t *testing.T) {
	data, old := t.TempDir(), t.TempDir()
	oldMaildir(t, old, 1751000001, "Subject: a\n\n1\n")
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"import"}, 2, "say maildir, users, or give --layout"},
		{[]string{"import", "mailbox", "x", "y"}, 2, `unknown action "mailbox"`},
		{[]string{"import", "maildir", "alice"}, 2, "takes a user name and a Maildir"},
		{[]string{"import", "maildir", "--uidl-format", "%x", "alice", old}, 2, "unknown variable %x"},
		{[]string{"import", "maildir", "--uidl-format", "plain", "alice", old}, 2, "has no variable"},
		{[]string{"import", "maildir", "alice", data}, 1, "is not a Maildir"},
		{[]string{"import", "maildir", ".alice", old}, 2, "starts with '.'"},
		{[]string{"import", "--layout", "/var/vmail/static"}, 2, "needs %u or %n"},
		{[]string{"import", "--layout", "mbox:~/mail"}, 2, "only Maildir locations"},
		{[]string{"import", "--layout", "~/Maildir"}, 2, "home directories"},
		{[]string{"import", "--layout", "/v/%1n/x"}, 2, "needs %u or %n"},
		{[]string{"import", "--layout", "/v/%d/%n", "--control", "/c"}, 2, ":CONTROL="},
	} {
		_, e, code := pouch(t, "", append(tc.args, "--data", data)...)
		if code != tc.code || !strings.Contains(e, tc.msg) {
			t.Errorf("%q: exit %d, %q; want %d, %q", tc.args, code, e, tc.code, tc.msg)
		}
	}
	// A maildrop in a session is not imported; the run says so.
	m, err := maildir.New(filepath.Join(data, "mail")).Open(context.Background(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	out, _, code := pouch(t, "", "import", "maildir", "--data", data, "alice", old)
	m.Close()
	if code != 1 || !strings.Contains(out, "alice has a POP3 session open") {
		t.Errorf("locked: exit %d\n%s", code, out)
	}
	out, _, code = pouch(t, "", "import", "maildir", "--data", data, "alice", old)
	if code != 0 || !strings.Contains(out, "1 imported") || !strings.Contains(out, "warning: alice has no account") {
		t.Errorf("import: exit %d\n%s", code, out)
	}
	// A client deleted the message on the old server: the final run with
	// --prune removes it; without, it stays.
	names, _ := filepath.Glob(filepath.Join(old, "cur", "*"))
	os.Remove(names[0])
	if out, _, code = pouch(t, "", "import", "maildir", "--data", data, "alice", old); code != 0 || len(uidlsOf(t, data, "alice")) != 1 {
		t.Errorf("without --prune: exit %d\n%s", code, out)
	}
	out, _, code = pouch(t, "", "import", "maildir", "--prune", "--data", data, "alice", old)
	if code != 0 || !strings.Contains(out, "1 removed: clients deleted them on the old server") || len(uidlsOf(t, data, "alice")) != 0 {
		t.Errorf("--prune: exit %d\n%s", code, out)
	}
	if _, e, code := pouch(t, "", "import", "maildir", "--prune", "--move", "--data", data, "alice", old); code != 2 || !strings.Contains(e, "--prune is for copies") {
		t.Errorf("--prune --move: exit %d %s", code, e)
	}
}

func TestImportUsers(t *testing.T) {
	data := t.TempDir()
	src := filepath.Join(t.TempDir(), "passwd")
	lines := []string{
		"alice@example.org:{PLAIN}alice's secret::::::userdb_mail=maildir:/v/x",
		"bob@example.org:{CRAM-MD5}26b7a6d2e9c2c6f1c2f0aa5c3f23d3b0f1ba0f6bd4c4bc9ab7b2ed16e6a1ef5c:1000:1000::/home/bob::",
		"# a comment",
		"carol@example.org:$6$saltsalt$" + strings.Repeat("x", 86),
		"dave@example.org:{SSHA}abcdefgh",
		":no name",
	}
	os.WriteFile(src, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
	// A maildrop with no account.
	os.MkdirAll(filepath.Join(data, "mail", "ghost", "cur"), 0o700)
	out, e, code := pouch(t, "", "import", "users", "--data", data, src)
	if code != 1 {
		t.Fatalf("exit %d\n%s%s", code, out, e)
	}
	for _, want := range []string{
		"import users: 4 users in " + src + ": 4 added",
		"bob@example.org: Pouch cannot check this password ({CRAM-MD5}: unsupported password scheme {CRAM-MD5}); reset it before the switch: pouch user passwd bob@example.org",
		"dave@example.org: Pouch cannot check this password ({SSHA}",
		"skipped " + src + ":6:",
		"1 maildrops have no account in " + filepath.Join(data, "users") + ": ghost",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	users, err := auth.OpenUsers(filepath.Join(data, "users"))
	if err != nil {
		t.Fatal(err)
	}
	if !users.Verify("alice@example.org", "alice's secret") || !users.Exists("bob@example.org") {
		t.Errorf("imported users do not work")
	}
	// Again, with alice's password changed on the old server meanwhile.
	lines[0] = "alice@example.org:{PLAIN}a new secret"
	os.WriteFile(src, []byte(strings.Join(lines[:1], "\n")+"\n"), 0o600)
	os.RemoveAll(filepath.Join(data, "mail", "ghost"))
	out, _, code = pouch(t, "", "import", "users", "--data", data, src)
	if code != 1 || !strings.Contains(out, "alice@example.org: in "+filepath.Join(data, "users")+" already with another password") {
		t.Errorf("changed password: exit %d\n%s", code, out)
	}
	out, _, code = pouch(t, "", "import", "users", "--data", data, "--replace", src)
	if code != 0 || !strings.Contains(out, "1 passwords replaced") || !strings.Contains(out, "every one of the 0 maildrops has an account") {
		t.Errorf("--replace: exit %d\n%s", code, out)
	}
	users.Reload()
	if !users.Verify("alice@example.org", "a new secret") {
		t.Errorf("the replaced password does not work")
	}
}

// pouch import users adds no account that could not have its Maildir: in
// the domains layout, one named as a domain whose directory is there, or
// as one of an account added in the same run; the users file gets the
// others.
func TestImportUsersRefusesNamesOfDomains(t *testing.T) {
	data := t.TempDir()
	if _, e, code := pouch(t, "tidy-Walrus-87-kettle\n", "user", "add", "--data", data, "bob@example.org"); code != 0 {
		t.Fatalf("add: %d %s", code, e)
	}
	src := filepath.Join(t.TempDir(), "passwd")
	os.WriteFile(src, []byte("example.org:{PLAIN}secret-one\nann@example.com:{PLAIN}secret-two\nexample.com:{PLAIN}secret-three\nzed:{PLAIN}secret-four\n"), 0o600)
	out, e, code := pouch(t, "", "import", "users", "--data", data, src)
	if code != 1 {
		t.Fatalf("exit %d\n%s%s", code, out, e)
	}
	for _, want := range []string{
		"skipped example.org cannot have a Maildir: " + filepath.Join(data, "mail", "example.org") + " holds the Maildirs of the domain example.org",
		"skipped example.com cannot have a Maildir: " + filepath.Join(data, "mail", "example.com") + " is to hold the Maildir of ann@example.com",
		"import users: 4 users in " + src + ": 2 added, 0 there already, 0 passwords replaced, 0 left with another password, 2 skipped",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if list, _, _ := pouch(t, "", "user", "list", "--data", data); list != "bob@example.org\nann@example.com\nzed\n" {
		t.Errorf("users = %q", list)
	}
}

// A users file that cannot be read is said to be so, not taken for one
// that lists nobody (or everybody).
func TestImportUnreadableUsersFile(t *testing.T) {
	root, data := t.TempDir(), t.TempDir()
	oldMaildir(t, filepath.Join(root, "alice"), 1751000001, "Subject: a\n\n1\n")
	if err := os.Mkdir(filepath.Join(data, "users"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"maildir", "alice", filepath.Join(root, "alice")},
		{"--layout", filepath.Join(root, "%n")},
	} {
		out, e, code := pouch(t, "", append(append([]string{"import"}, args...), "--data", data)...)
		if code != 0 || !strings.Contains(out, "warning: cannot tell which maildrops have an account") ||
			!strings.Contains(out, "is a directory") || strings.Contains(out, "no account") {
			t.Errorf("import %q: exit %d\n%s%s", args, code, out, e)
		}
	}
}
