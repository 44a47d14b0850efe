package auth

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xdg-go/scram"
)

// Test vectors, made with real tools (never computed by this package):
// doveadm pw (Dovecot 2.3), perl's crypt (libxcrypt), openssl passwd -6, and
// the examples of Drepper's SHA-crypt specification.
const (
	// doveadm pw -s ARGON2ID -p 'correct horse'
	vecArgon2Dovecot = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$IXIj2NuzFa76EZB9kiyT+g$YUQT7hLEP7oWQid2WOM+vqMDj96/hajjXiAMTNsk7zk"
	// Made by HashPassword("pouch pass"); doveadm pw -t verified it.
	vecArgon2Pouch = "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$TwcwxmM4Xe+GiygpkZ+Vcg$LuXn/EgwqfNTJhn6LkgBUwJYT1WILHbx6n/WjG0bcCc"
	// doveadm pw -s BLF-CRYPT -p 'bcrypt pass'
	vecBcrypt2y = "{BLF-CRYPT}$2y$05$QUem9ObjPUppboktss0r4OjIkvnKdAgmpN4B2I0boq.GaNuiUQ9Yq"
	// perl -e 'print crypt("b pass", q{$2b$04$abcdefghijklmnopqrstuu})'
	vecBcrypt2b = "$2b$04$abcdefghijklmnopqrstuu6nBDBr3af7g9pejmTXqBRgApBb1Elfy"
	// perl -e 'print crypt("a pass", q{$2a$04$ABCDEFGHIJKLMNOPQRSTUu})'
	vecBcrypt2a = "$2a$04$ABCDEFGHIJKLMNOPQRSTUuXp.Ij5oCmssf9AAuYa4x91Vr2K7HqXC"
	// doveadm pw -s SHA512-CRYPT -p 'sha pass'
	vecSHA512Dovecot = "{SHA512-CRYPT}$6$AODy/KxyPFD6MCGW$kIyhBNPh6J3ycw0np8DdFQMw50hCpnKYj4Hx3nVQM.yHH8zZ82RbEo1zhgePRyet/oukzMvcGfrar4Xhe1SnF0"
	// doveadm pw -s SHA512-CRYPT -r 10000 -p 'sha pass'
	vecSHA512DovecotRounds = "{SHA512-CRYPT}$6$rounds=10000$01tWhpN8Z0rCNK4z$iXyW8/.j1rh5Iq9as0IHRv/809YXsjk.nzZ29hslz01RbCy5XO3Ww9HXd9O.1mmJZU2Z.9QIYWhMlExHAAxza0"
	// perl -e 'print crypt("roundspass", q{$6$rounds=5000$short$})': a salt
	// shorter than 16 after rounds=.
	vecSHA512ShortSalt = "$6$rounds=5000$short$p1.QNDvxZ1nHq8/N/iexeFWPkhUtYRCmJK97tUCvBFj5yUZ9GLfhA3ZMxPP8alSzUlqtXQg76aoXASwuzrY481"
	// openssl passwd -6 -salt saltsalt 'openssl pass'
	vecSHA512OpenSSL = "$6$saltsalt$iNztyCs.QhRxvMcZ3WtMY8gPRjfjEX.2u3pZt61DphNDlDZQmHl3iIHzbMOJj0jgC6c0CYN6XqXmdNAI5sF6l."
	// Drepper's SHA-crypt specification, "Hello world!".
	vecSHA512Drepper       = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
	vecSHA512DrepperRounds = "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."
	// Drepper's specification: a text longer than the 64-byte digest.
	vecSHA512DrepperLong = "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"
	textDrepperLong      = "a very much longer text to encrypt.  This one even stretches over morethan one line."
	// doveadm pw -s MD5-CRYPT -p md5: a scheme Pouch does not support.
	vecMD5Crypt = "{MD5-CRYPT}$1$UgV67Z.g$YwRUHMTimI3E.IT8Ra0e0."
)

// writeFile writes a users file in a fresh directory and returns its path.
func writeFile(t *testing.T, lines ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func openUsers(t *testing.T, path string) *Users {
	t.Helper()
	u, err := OpenUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestSecrets(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, field, password string
	}{
		{"argon2-dovecot", vecArgon2Dovecot, "correct horse"},
		{"argon2-pouch", vecArgon2Pouch, "pouch pass"},
		{"bcrypt-2y", vecBcrypt2y, "bcrypt pass"},
		{"bcrypt-2y-bare", strings.TrimPrefix(vecBcrypt2y, "{BLF-CRYPT}"), "bcrypt pass"},
		{"bcrypt-2b", vecBcrypt2b, "b pass"},
		{"bcrypt-2b-blf", "{BLF-CRYPT}" + vecBcrypt2b, "b pass"},
		{"bcrypt-2a", "{CRYPT}" + vecBcrypt2a, "a pass"},
		{"sha512-dovecot", vecSHA512Dovecot, "sha pass"},
		{"sha512-dovecot-rounds", vecSHA512DovecotRounds, "sha pass"},
		{"sha512-short-salt", vecSHA512ShortSalt, "roundspass"},
		{"sha512-openssl", "{CRYPT}" + vecSHA512OpenSSL, "openssl pass"},
		{"sha512-drepper", vecSHA512Drepper, "Hello world!"},
		{"sha512-drepper-rounds", "{SHA512-CRYPT}" + vecSHA512DrepperRounds, "Hello world!"},
		{"sha512-drepper-long", vecSHA512DrepperLong, textDrepperLong},
		{"plain", "{PLAIN}plain pass", "plain pass"},
		{"cleartext", "{CLEARTEXT}clear pass", "clear pass"},
		{"clear-lowercase", "{clear}lower pass", "lower pass"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sec, err := parseSecret(tt.field)
			if err != nil {
				t.Fatal(err)
			}
			if !sec.verify(tt.password) {
				t.Errorf("the password does not verify")
			}
			if sec.verify(tt.password + "x") {
				t.Errorf("a wrong password verifies")
			}
		})
	}
}

// TestCryptPrefixes checks that {CRYPT} and a bare crypt string parse like
// their explicit schemes (which TestSecrets verifies).
func TestCryptPrefixes(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ field, same string }{
		{"{CRYPT}" + vecArgon2Pouch[len("{ARGON2ID}"):], vecArgon2Pouch},
		{vecArgon2Pouch[len("{ARGON2ID}"):], vecArgon2Pouch},
		{"{crypt}" + vecBcrypt2y[len("{BLF-CRYPT}"):], vecBcrypt2y},
		{vecSHA512Dovecot[len("{SHA512-CRYPT}"):], vecSHA512Dovecot},
	} {
		got, err1 := parseSecret(tt.field)
		want, err2 := parseSecret(tt.same)
		if err1 != nil || err2 != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("parseSecret(%q) = %#v, %v; want %#v, %v", tt.field, got, err1, want, err2)
		}
	}
}

func TestUnusableSecrets(t *testing.T) {
	t.Parallel()
	for name, field := range map[string]string{
		"md5crypt":    vecMD5Crypt,
		"ssha":        "{SSHA256}hSjo0F+oPE34tyELYsz9A/uHXprtvRZiJFmdOElcCPPvc9OV",
		"des":         "abJnggxhB/yWI",
		"locked":      "!",
		"star":        "*",
		"empty":       "",
		"empty-plain": "{PLAIN}",
		"brace":       "{PLAIN",
		"argon2i":     "{ARGON2I}$argon2i$v=19$m=65536,t=3,p=1$c29tZXNhbHQ$aGFzaA",
		"argon-v":     "{ARGON2ID}$argon2id$v=16$m=65536,t=3,p=1$IXIj2NuzFa76EZB9kiyT+g$YUQT7hLEP7oWQid2WOM+vqMDj96/hajjXiAMTNsk7zk",
		"argon-m":     "{ARGON2ID}$argon2id$v=19$m=4294967295,t=3,p=1$IXIj2NuzFa76EZB9kiyT+g$YUQT7hLEP7oWQid2WOM+vqMDj96/hajjXiAMTNsk7zk",
		"argon-t":     "{ARGON2ID}$argon2id$v=19$m=65536,t=0,p=1$IXIj2NuzFa76EZB9kiyT+g$YUQT7hLEP7oWQid2WOM+vqMDj96/hajjXiAMTNsk7zk",
		"argon-b64":   "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$!!!!$YUQT7hLEP7oWQid2WOM+vqMDj96/hajjXiAMTNsk7zk",
		"argon-salt":  "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$YUQT7hLEP7oWQid2WOM+vqMDj96/hajjXiAMTNsk7zk",
		"bcrypt-2x":   "{BLF-CRYPT}$2x$05$QUem9ObjPUppboktss0r4OjIkvnKdAgmpN4B2I0boq.GaNuiUQ9Yq",
		"bcrypt-cut":  "{BLF-CRYPT}$2y$05$QUem9ObjPUppboktss0r4OjIkvnKdAgmpN4B2I0boq.GaNuiUQ9Y",
		"sha-rounds":  "$6$rounds=999$saltsalt$iNztyCs.QhRxvMcZ3WtMY8gPRjfjEX.2u3pZt61DphNDlDZQmHl3iIHzbMOJj0jgC6c0CYN6XqXmdNAI5sF6l.",
		"sha-cut":     "$6$saltsalt$iNztyCs.QhRxvMcZ3WtMY8gPRjfjEX.2u3pZt61DphNDlDZQmHl3iIHzbMOJj0jgC6c0CYN6XqXmdNAI5sF6l",
		"sha-salt":    "$6$saltsaltsaltsalts$iNztyCs.QhRxvMcZ3WtMY8gPRjfjEX.2u3pZt61DphNDlDZQmHl3iIHzbMOJj0jgC6c0CYN6XqXmdNAI5sF6l.",
		"wrong-tag":   "{SHA512-CRYPT}" + vecBcrypt2b,
	} {
		if sec, err := parseSecret(field); sec != nil || err == nil {
			t.Errorf("%s: parseSecret(%q) = %v, %v; want an error", name, field, sec, err)
		}
	}
}

// TestUsersVerify checks Verify, Exists and the warnings for users who can
// and cannot log in.
func TestUsersVerify(t *testing.T) {
	t.Parallel()
	u := openUsers(t, writeFile(t,
		"argon:"+vecArgon2Pouch+"::::::",
		"blf:"+vecBcrypt2y,
		"sha:"+vecSHA512Dovecot+":1000:1000::/home/sha::",
		"plain:{PLAIN}plain pass",
		"md5:"+vecMD5Crypt,
	))
	for _, tt := range []struct {
		name, password string
		want           bool
	}{
		{"argon", "pouch pass", true},
		{"argon", "pouch", false},
		{"blf", "bcrypt pass", true},
		{"sha", "sha pass", true},
		{"plain", "plain pass", true},
		{"plain", "plain", false},
		{"md5", "md5", false},
		{"nobody", "", false},
	} {
		if got := u.Verify(tt.name, tt.password); got != tt.want {
			t.Errorf("Verify(%q, %q) = %v, want %v", tt.name, tt.password, got, tt.want)
		}
	}
	if !u.Exists("md5") || u.Exists("nobody") || u.Exists("Argon") {
		t.Error("Exists is wrong")
	}
	w := u.Warnings()
	if len(w) != 1 || !strings.Contains(w[0], ":5: user md5 cannot log in: unsupported password scheme {MD5-CRYPT}") {
		t.Errorf("Warnings() = %q", w)
	}
}

func TestAPOPSecret(t *testing.T) {
	t.Parallel()
	u := openUsers(t, writeFile(t,
		"p:{PLAIN}s3cret:::",
		"c:{CLEARTEXT}cl:ear",
		"e:{PLAIN}",
		"h:"+vecArgon2Pouch,
		"x:"+vecMD5Crypt,
	))
	for _, tt := range []struct {
		name, secret string
		ok           bool
	}{
		{"p", "s3cret", true},
		{"c", "cl", true},
		{"e", "", false},
		{"h", "", false},
		{"x", "", false},
		{"nobody", "", false},
	} {
		if s, ok := u.APOPSecret(tt.name); s != tt.secret || ok != tt.ok {
			t.Errorf("APOPSecret(%q) = %q, %v; want %q, %v", tt.name, s, ok, tt.secret, tt.ok)
		}
	}
	if !u.Summary().APOP {
		t.Error("Summary().APOP is false with {PLAIN} users")
	}
	if openUsers(t, writeFile(t, "h:"+vecArgon2Pouch, "e:{PLAIN}")).Summary().APOP {
		t.Error("Summary().APOP is true without a usable cleartext secret")
	}
}

func TestFileParsing(t *testing.T) {
	t.Parallel()
	path := writeFile(t,
		"# comment:{PLAIN}x",
		"",
		"   ",
		"alice:{PLAIN}first",
		"bob:{PLAIN}bob\r",
		"alice:{PLAIN}second",
		"no colon here",
		"bad name:{PLAIN}x",
		":{PLAIN}anonymous",
		"Alice:{PLAIN}upper",
		"short:{PLAIN}two-fields",
	)
	u := openUsers(t, path)
	// APOPSecret shows which line counts, without hashing anything.
	for _, tt := range []struct {
		name, secret string
	}{
		{"alice", "first"},
		{"Alice", "upper"},
		{"ALICE", ""},
		{"bob", "bob"},
		{"short", "two-fields"},
		{"", ""},
		{"# comment", ""},
		{"bad name", ""},
	} {
		if got, _ := u.APOPSecret(tt.name); got != tt.secret {
			t.Errorf("APOPSecret(%q) = %q, want %q", tt.name, got, tt.secret)
		}
	}
	want := []string{"alice", "bob", "Alice", "short"}
	got, err := ListUsers(path)
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("ListUsers = %q, %v; want %q", got, err, want)
	}
	w := strings.Join(u.Warnings(), "\n")
	for _, s := range []string{
		path + ":6: user alice listed again",
		path + ":7: line skipped: no ':'",
		path + ":8: line skipped: auth: user name \"bad name\" contains white space",
		path + ":9: line skipped: auth: empty user name",
	} {
		if !strings.Contains(w, s) {
			t.Errorf("warnings lack %q:\n%s", s, w)
		}
	}
	if n := len(u.Warnings()); n != 4 {
		t.Errorf("%d warnings, want 4:\n%s", n, w)
	}
	// Lines that name no user make the file damaged: a fault, whose good
	// lines are used when nothing better was ever loaded.
	if err := u.Fault(); err == nil || !strings.Contains(err.Error(), "is damaged: 3 lines name no user (the first, line 7: no ':'") {
		t.Errorf("Fault() = %v", err)
	}
}

func TestMissingFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "missing", "users")
	u := openUsers(t, path)
	if u.Exists("alice") || u.Verify("alice", "x") || len(u.Warnings()) != 0 {
		t.Error("a missing file is not an empty database")
	}
	if names, err := ListUsers(path); err != nil || len(names) != 0 {
		t.Errorf("ListUsers = %q, %v; want none", names, err)
	}
	if err := SetPassword(path, "alice", "pw"); !errors.Is(err, ErrNoSuchUser) {
		t.Errorf("SetPassword = %v, want ErrNoSuchUser", err)
	}
	if err := DeleteUser(path, "alice"); !errors.Is(err, ErrNoSuchUser) {
		t.Errorf("DeleteUser = %v, want ErrNoSuchUser", err)
	}
	if _, err := os.Stat(filepath.Dir(path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("SetPassword or DeleteUser created the directory: %v", err)
	}
	if err := AddUser(path, "alice", "pw"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Dir(path))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("directory: %v, %v; want mode 0700", fi.Mode(), err)
	}
	if !u.Verify("alice", "pw") {
		t.Error("the new file was not loaded")
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	// Once the file had users, its removal is a fault: they stay.
	if !u.Exists("alice") || u.Fault() == nil {
		t.Error("a removed file that had users is taken for no users")
	}
}

func TestHashPassword(t *testing.T) {
	t.Parallel()
	format := regexp.MustCompile(`^\{ARGON2ID\}\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`)
	h1, err := HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	h2, err := HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	if !format.MatchString(h1) {
		t.Errorf("HashPassword = %q, not in the expected form", h1)
	}
	if h1 == h2 {
		t.Error("two hashes of one password are equal: the salt is not random")
	}
	sec, err := parseSecret(h1)
	if err != nil || !sec.verify("pw") || sec.verify("pW") {
		t.Errorf("the hash does not verify: %v", err)
	}
	if _, err := HashPassword(""); err == nil {
		t.Error("HashPassword accepted an empty password")
	}
}

// TestVerifyTiming checks, loosely, that failing for an unknown user or a
// fast scheme takes as long as an Argon2id check.
func TestVerifyTiming(t *testing.T) {
	hash, err := HashPassword("pw")
	if err != nil {
		t.Fatal(err)
	}
	u := openUsers(t, writeFile(t, "known:"+hash, "plain:{PLAIN}pw", "bad:{MD5}x"))
	timeOf := func(name string) time.Duration {
		start := time.Now()
		for range 3 {
			u.Verify(name, "wrong")
		}
		return time.Since(start)
	}
	timeOf("known") // warm up, and make the dummy hash
	known := timeOf("known")
	for _, name := range []string{"unknown", "plain", "bad"} {
		if d := timeOf(name); d < known/4 {
			t.Errorf("Verify(%q) took %v, known user %v", name, d, known)
		}
	}
}

func TestAdminRoundTrip(t *testing.T) {
	t.Parallel()
	path := writeFile(t,
		"# Pouch users",
		"",
		"carol:{PLAIN}old:1000:1000:Carol:/home/carol:/bin/sh:userdb_quota_rule=*:storage=1G",
		"dave:{PLAIN}dave",
	)
	checkMode := func() {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("mode %v, want 0600", fi.Mode().Perm())
		}
	}
	checkFile := func(want ...string) {
		t.Helper()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		if len(lines) != len(want) {
			t.Fatalf("file:\n%s\nwant %d lines", data, len(want))
		}
		for i, line := range lines {
			if !regexp.MustCompile(`^` + want[i] + `$`).MatchString(line) {
				t.Errorf("line %d = %q, want to match %q", i+1, line, want[i])
			}
		}
	}
	const hash = `\{ARGON2ID\}\$argon2id\$v=19\$m=19456,t=2,p=1\$[^$:]+\$[^$:]+`
	const scramKeys = `scram_sha_256=\{SCRAM-SHA-256\}4096,[A-Za-z0-9+/=]{24},[A-Za-z0-9+/=]{44},[A-Za-z0-9+/=]{44} password_changed=\d+`
	u := openUsers(t, path)

	if err := AddUser(path, "alice", "a1"); err != nil {
		t.Fatal(err)
	}
	checkMode()
	if err := AddUser(path, "alice", "other"); !errors.Is(err, ErrUserExists) {
		t.Errorf("AddUser of an existing user = %v, want ErrUserExists", err)
	}
	if err := AddUser(path, "bad/name", "pw"); err == nil {
		t.Error("AddUser accepted an invalid name")
	}
	if err := AddUser(path, "erin", ""); err == nil {
		t.Error("AddUser accepted an empty password")
	}
	if err := SetPassword(path, "carol", "c2"); err != nil {
		t.Fatal(err)
	}
	checkMode()
	if err := SetPassword(path, "carol", ""); err == nil {
		t.Error("SetPassword accepted an empty password")
	}
	if err := SetPassword(path, "nobody", "pw"); !errors.Is(err, ErrNoSuchUser) {
		t.Errorf("SetPassword of a missing user = %v, want ErrNoSuchUser", err)
	}
	checkFile(
		`# Pouch users`,
		``,
		`carol:`+hash+`:1000:1000:Carol:/home/carol:/bin/sh:userdb_quota_rule=\*:storage=1G `+scramKeys,
		`dave:\{PLAIN\}dave`,
		`alice:`+hash+`::::::`+scramKeys,
	)
	// A second change replaces the SCRAM keys instead of adding more.
	if err := SetPassword(path, "alice", "a1"); err != nil {
		t.Fatal(err)
	}
	if !u.Verify("carol", "c2") || u.Verify("carol", "old") || !u.Verify("alice", "a1") {
		t.Error("Verify does not see the changes")
	}

	if err := DeleteUser(path, "dave"); err != nil {
		t.Fatal(err)
	}
	checkMode()
	if err := DeleteUser(path, "dave"); !errors.Is(err, ErrNoSuchUser) {
		t.Errorf("DeleteUser of a missing user = %v, want ErrNoSuchUser", err)
	}
	if u.Exists("dave") {
		t.Error("Exists(dave) after DeleteUser")
	}
	names, err := ListUsers(path)
	if want := []string{"carol", "alice"}; err != nil || !slices.Equal(names, want) {
		t.Errorf("ListUsers = %q, %v; want %q", names, err, want)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "users" && e.Name() != "users.lock" {
			t.Errorf("stray file %s", e.Name())
		}
	}
}

func TestDeleteDuplicates(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "a:{PLAIN}1", "b:{PLAIN}2", "a:{PLAIN}3")
	if err := SetPassword(path, "a", "new"); err != nil {
		t.Fatal(err)
	}
	u := openUsers(t, path)
	if !u.Verify("a", "new") {
		t.Error("SetPassword did not change the line that counts")
	}
	if err := DeleteUser(path, "a"); err != nil {
		t.Fatal(err)
	}
	if names, _ := ListUsers(path); !slices.Equal(names, []string{"b"}) {
		t.Errorf("after DeleteUser: %q, want [b]", names)
	}
	// Deleting the last user leaves a file that says so, which a running
	// server takes for no users, not for a fault.
	if err := DeleteUser(path, "b"); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); string(data) != noUsersLine+"\n" {
		t.Errorf("after deleting every user the file holds %q", data)
	}
	if known, err := u.Known("b"); known || err != nil {
		t.Errorf("Known(b) after deleting every user = %v, %v; want false, nil", known, err)
	}
}

func TestConcurrentAddUser(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "users")
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = AddUser(path, fmt.Sprintf("user%02d", i), "pw") })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("AddUser %d: %v", i, err)
		}
	}
	names, err := ListUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	if len(names) != n || names[0] != "user00" || names[n-1] != "user19" {
		t.Errorf("ListUsers = %q, want %d users", names, n)
	}
}

func TestAutoReload(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "old:{PLAIN}x")
	u := openUsers(t, path)
	if u.Exists("new") {
		t.Fatal("new exists before AddUser")
	}
	if err := AddUser(path, "new", "pw"); err != nil {
		t.Fatal(err)
	}
	if !u.Verify("new", "pw") || !u.Exists("old") {
		t.Error("Users did not reload after AddUser")
	}
	// A failed reload keeps the old contents and says so; a directory in
	// place of the file fails to read even for root.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if !u.Exists("new") || u.Fault() == nil {
		t.Errorf("after a failed reload: Exists(new) = %v, fault %v", u.Exists("new"), u.Fault())
	}
	var se *SourceError
	if err := u.Reload(); !errors.As(err, &se) || !strings.Contains(se.Reason, "cannot be read") {
		t.Errorf("Reload of an unreadable file: %v", err)
	}
	// The file had users: its removal is a fault too, not an empty list.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if !u.Exists("new") || u.Fault() == nil {
		t.Errorf("after removing the file: Exists(new) = %v, fault %v", u.Exists("new"), u.Fault())
	}
}

func TestKeepOwner(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("only root can give a file away")
	}
	path := writeFile(t, "a:{PLAIN}a")
	if err := os.Chown(path, 4321, 8765); err != nil {
		t.Fatal(err)
	}
	if err := DeleteUser(path, "a"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 4321 || st.Gid != 8765 {
		t.Errorf("owner %d:%d, want 4321:8765", st.Uid, st.Gid)
	}

	// A new users file gets the owner of its directory; once there, it
	// keeps its own owner, whoever owns the directory.
	dir := t.TempDir()
	if err := os.Chown(dir, 1111, 2222); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "users")
	if err := AddUser(path, "alice", "Keep-Owner-4-quartz-fig"); err != nil {
		t.Fatal(err)
	}
	owned := func(uid, gid uint32) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid || st.Gid != gid {
			t.Errorf("owner %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
		}
	}
	owned(1111, 2222)
	if err := os.Chown(path, 4321, 8765); err != nil {
		t.Fatal(err)
	}
	if err := AddUser(path, "bob", "Keep-Owner-5-walnut-sky"); err != nil {
		t.Fatal(err)
	}
	owned(4321, 8765)
}

func TestValidName(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"alice", true},
		{"Alice.Smith", true},
		{"alice@example.org", true},
		{"a-b_c+d", true},
		{"josé", true},
		{"日本", true},
		{"a..b", true},
		{strings.Repeat("a", 255), true},
		{strings.Repeat("a", 256), false},
		{"", false},
		{".", false},
		{"..", false},
		{".hidden", false},
		{"a:b", false},
		{"a/b", false},
		{`a\b`, false},
		{"a b", false},
		{"a\tb", false},
		{"a\nb", false},
		{"a\x00b", false},
		{"a\x7fb", false},
		{"a\u0085b", false},
		{"a\u00a0b", false},
		{"a\xffb", false},
	} {
		if err := ValidName(tt.name); (err == nil) != tt.ok {
			t.Errorf("ValidName(%q) = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

func FuzzParseLine(f *testing.F) {
	for _, s := range []string{
		"", "#", "alice", "alice:", "alice::::::", "a:b:c",
		"alice:" + vecArgon2Dovecot, "bob:" + vecBcrypt2y + ":1:2:g:/h:/s:x=y",
		"c:" + vecSHA512DrepperRounds, "d:{PLAIN}p:", "e:{CRYPT}" + vecBcrypt2b,
		"f:{ARGON2ID}$argon2id$v=19$m=,t=,p=$$", "g:$6$rounds=$$", "h:{", "i:{}\r",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		l, sec, ok, err := parseLine(line)
		if !ok {
			if sec != nil || l != (userLine{}) {
				t.Errorf("not a user line, but parsed %+v, %v", l, sec)
			}
			return
		}
		if ValidName(l.name) != nil {
			t.Errorf("invalid name %q accepted", l.name)
		}
		if (sec == nil) == (err == nil) {
			t.Errorf("secret %v with error %v", sec, err)
		}
		if got := l.String(); got != strings.TrimSuffix(line, "\r") {
			t.Errorf("String() = %q, want %q", got, line)
		}
		if strings.Contains(l.password, ":") || (l.rest != "" && l.rest[0] != ':') {
			t.Errorf("bad split %+v", l)
		}
	})
}

func TestExtraFields(t *testing.T) {
	t.Parallel()
	u := openUsers(t, writeFile(t,
		"a:{PLAIN}x:1000:1000::/home/a:/bin/sh:quota_storage=1G nopop3 allow_nets=10.0.0.0/8,::1",
		"b:{PLAIN}y::::::",
		"c:{PLAIN}z",
	))
	// nopop3 is no field Pouch reads: it is kept and ignored.
	a, err := u.Account("a")
	want := Access{AllowNets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}}
	if err != nil || a.Name != "a" || a.Quota != (Quota{Storage: Own(int64(1 << 30))}) || !reflect.DeepEqual(a.Access, want) {
		t.Errorf("Account(a) = %+v, %v", a, err)
	}
	for _, name := range []string{"b", "c"} {
		if a, err := u.Account(name); err != nil || !reflect.DeepEqual(a, Account{Name: name, Credentials: a.Credentials}) {
			t.Errorf("Account(%s) = %+v, %v; want no settings", name, a, err)
		}
	}
	if _, err := u.Account("nobody"); !errors.Is(err, ErrNoSuchUser) || errors.Is(err, ErrUnavailable) {
		t.Errorf("Account(nobody) = %v, want ErrNoSuchUser", err)
	}
}

func TestSCRAMCredentials(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "users")
	if err := AddUser(path, "alice", "pencil"); err != nil {
		t.Fatal(err)
	}
	// RFC 7677 §3's example credentials, as Dovecot stores them.
	const rfc7677 = "{SCRAM-SHA-256}4096,W22ZaJ0SNY7soEsUEjb6gQ==,WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=,wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// doveadm pw -s SCRAM-SHA-256 -p pencil
	const doveadm = "{SCRAM-SHA-256}4096,DzyNAbrCWQKMcvyhx2CiRw==,EaTxfpkTNIftW5zyOpZ1y3XhLmYCC2Ak1lES717bw/M=,o0kQS8TQNOSMJIr0TgRoRzr42HH7dR1BoIkCITG7zzk="
	fmt.Fprintf(f, "user:%s::::::\nold:{PLAIN}x\ndv:%s\n", rfc7677, doveadm)
	f.Close()
	u := openUsers(t, path)
	if !u.Summary().SCRAM {
		t.Fatal("Summary().SCRAM is false")
	}
	for _, name := range []string{"alice", "user", "dv"} {
		creds, ok := u.SCRAMCredentials(name)
		if !ok || creds.Iters != 4096 || len(creds.StoredKey) != 32 {
			t.Fatalf("SCRAMCredentials(%s) = %+v, %v", name, creds, ok)
		}
		client, _ := scram.SHA256.NewClient(name, "pencil", "")
		if got, err := client.GetStoredCredentialsWithError(creds.KeyFactors); err != nil || !bytes.Equal(got.StoredKey, creds.StoredKey) || !bytes.Equal(got.ServerKey, creds.ServerKey) {
			t.Errorf("%s: stored keys do not come from the password", name)
		}
	}
	if _, ok := u.SCRAMCredentials("old"); ok {
		t.Error("a {PLAIN} user without SCRAM keys has SCRAM credentials")
	}
	// A {SCRAM-SHA-256} password also serves plain logins.
	if !u.Verify("user", "pencil") || u.Verify("user", "pen") {
		t.Error("Verify against {SCRAM-SHA-256} is wrong")
	}
}

func TestPasswordNormalization(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "users")
	// "é" composed (U+00E9) when set, decomposed (e + U+0301) when typed.
	if err := AddUser(path, "zoe", "caf\u00e9 au lait"); err != nil {
		t.Fatal(err)
	}
	u := openUsers(t, path)
	if !u.Verify("zoe", "cafe\u0301 au lait") {
		t.Error("a decomposed form of the password does not verify")
	}
	if u.Verify("zoe", "cafe au lait") {
		t.Error("a different password verifies")
	}
}

func TestSetFields(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "a:{PLAIN}x:1:2:g:/h:/s:quota_storage=1G", "b:{PLAIN}y")
	empty, delay := "", "60"
	if err := SetFields(path, "a", map[string]*string{"nologin": &empty, "login_delay": &delay}); err != nil {
		t.Fatal(err)
	}
	if err := SetFields(path, "b", map[string]*string{"nologin": &empty}); err != nil {
		t.Fatal(err)
	}
	u := openUsers(t, path)
	if a, err := u.Account("a"); err != nil || a.Quota.Storage != Own(int64(1<<30)) || a.LoginDelay != Own(time.Minute) || !a.Disabled {
		t.Fatalf("account a: %+v, %v", a, err)
	}
	if b, err := u.Account("b"); err != nil || !b.Disabled {
		t.Fatalf("account b is not disabled: %+v, %v", b, err)
	}
	if err := SetFields(path, "a", map[string]*string{"nologin": nil}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), "a:{PLAIN}x:1:2:g:/h:/s:quota_storage=1G login_delay=60\n") {
		t.Fatalf("file after removing nologin:\n%s", data)
	}
	if err := SetFields(path, "nobody", map[string]*string{"nologin": &empty}); !errors.Is(err, ErrNoSuchUser) {
		t.Fatalf("SetFields of a missing user: %v", err)
	}
	bad := "a b"
	if err := SetFields(path, "a", map[string]*string{"x": &bad}); err == nil {
		t.Fatal("a value with a space was accepted")
	}
	// A value that would refuse the account is not written.
	before, _ := os.ReadFile(path)
	for k, v := range map[string]string{"login_delay": "soon", "expire": "tomorrow", "quota_storage": "lots"} {
		if err := SetFields(path, "a", map[string]*string{k: &v}); err == nil || !strings.Contains(err.Error(), k+": ") {
			t.Errorf("SetFields(%s=%s) = %v, want an error naming the field", k, v, err)
		}
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Errorf("a refused value changed the file:\n%s", after)
	}
}

func TestMaxLoginDelay(t *testing.T) {
	t.Parallel()
	u := openUsers(t, writeFile(t, "a:{PLAIN}x::::::login_delay=60", "b:{PLAIN}y::::::login_delay=900", "c:{PLAIN}z"))
	if d := u.Summary().MaxLoginDelay; d != 900*time.Second {
		t.Fatalf("Summary().MaxLoginDelay = %v", d)
	}
}
