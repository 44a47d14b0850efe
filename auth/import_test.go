package auth

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestImportUsersKeepsLinesAndReplacesOnlyPasswords(t *testing.T) {
	dir := t.TempDir()
	src, path := filepath.Join(dir, "dovecot-users"), filepath.Join(dir, "pouch", "users")
	if err := AddUser(path, "alice", "a long Passw0rd here"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(src, []byte("alice:{PLAIN}old server's\r\nbob:{PLAIN}bob's:1:2:Bob:/home/bob:/bin/sh:nologin userdb_quota=1G\nbob:{PLAIN}second line\n"), 0o600)
	users, bad, err := ReadPasswdFile(src)
	if err != nil || len(bad) != 0 || len(users) != 2 || users[1].Line != "bob:{PLAIN}bob's:1:2:Bob:/home/bob:/bin/sh:nologin userdb_quota=1G" {
		t.Fatalf("%+v %v %v", users, bad, err)
	}
	out, err := ImportUsers(path, users, false)
	if err != nil || out["alice"] != UserDiffers || out["bob"] != UserAdded {
		t.Fatalf("%v %v", out, err)
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), "\n"+users[1].Line+"\n") || !strings.Contains(string(data), scramField) {
		t.Errorf("users file:\n%s", data)
	}
	out, err = ImportUsers(path, users, true)
	if err != nil || out["alice"] != UserUpdated || out["bob"] != UserUnchanged {
		t.Fatalf("%v %v", out, err)
	}
	data, _ = os.ReadFile(path)
	if strings.Contains(string(data), scramField) || strings.Contains(string(data), fieldPasswordChanged) ||
		!strings.HasPrefix(string(data), "alice:{PLAIN}old server's:") {
		t.Errorf("after replacing alice's password:\n%s", data)
	}
	u, _ := OpenUsers(path)
	if !u.Verify("alice", "old server's") || u.Verify("alice", "a long Passw0rd here") {
		t.Errorf("alice's password was not replaced")
	}
}

// An import of a site's users is one pass over the users file, not one
// for each user.
func BenchmarkImportUsers(b *testing.B) {
	var users []ForeignUser
	for i := range 5000 {
		name := fmt.Sprintf("user%d@example.org", i)
		users = append(users, ForeignUser{Name: name,
			Line: name + ":{SHA512-CRYPT}$6$AODy/KxyPFD6MCGW$kIyhBNPh6J3ycw0np8DdFQMw50hCpnKYj4Hx3nVQM.yHH8zZ82RbEo1zhgePRyet/oukzMvcGfrar4Xhe1SnF0"})
	}
	dir := b.TempDir()
	for i := 0; b.Loop(); i++ {
		if _, err := ImportUsers(filepath.Join(dir, fmt.Sprint(i)), users, false); err != nil {
			b.Fatal(err)
		}
	}
}
