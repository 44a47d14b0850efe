package auth

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// jörg composed (NFC) and decomposed (NFD: o and a combining diaeresis).
const (
	jorgNFC = "j\u00f6rg"
	jorgNFD = "jo\u0308rg"
)

func TestNormalizeName(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"alice":              "alice",
		"alice@example.org":  "alice@example.org",
		"Alice@Example.ORG":  "Alice@example.org", // the domain only
		"alice@example.org.": "alice@example.org",
		"a@b@Example.org":    "a@b@example.org", // the last '@' counts
		"alice@":             "alice@",
		jorgNFD:              jorgNFC,
		jorgNFC:              jorgNFC,
		"\uff41\uff4c\uff49": "ali",       // full-width letters
		"two words":          "two words", // refused by the profile: as given
	} {
		if got := NormalizeName(in); got != want {
			t.Errorf("NormalizeName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAccountName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, def, want string }{
		{"alice", "", "alice"},
		{"alice", "Example.org", "alice@example.org"},
		{"alice@example.net", "example.org", "alice@example.net"},
		{"Alice@EXAMPLE.net", "example.org", "Alice@example.net"},
		{jorgNFD, "example.org", jorgNFC + "@example.org"},
	} {
		if got := AccountName(tc.in, tc.def); got != tc.want {
			t.Errorf("AccountName(%q, %q) = %q, want %q", tc.in, tc.def, got, tc.want)
		}
	}
}

// A name added in either form is one user, stored and found in NFC.
func TestAdminNormalizesNames(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "# users")
	const pw = "Vexed-Quokka-4417-lantern"
	if err := AddUser(path, jorgNFD, pw); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if !strings.Contains(string(data), "\n"+jorgNFC+":") || strings.Contains(string(data), jorgNFD) {
		t.Fatalf("users file:\n%s\nwant the name in NFC", data)
	}
	if err := AddUser(path, jorgNFC, pw); !errors.Is(err, ErrUserExists) {
		t.Errorf("AddUser of the NFC name after the NFD one = %v, want ErrUserExists", err)
	}
	u := openUsers(t, path)
	if !u.Verify(jorgNFC, pw) {
		t.Error("Verify of the NFC name fails")
	}
	if names, err := ListUsers(path); err != nil || !slices.Equal(names, []string{jorgNFC}) {
		t.Errorf("ListUsers = %q, %v", names, err)
	}
	const pw2 = "Brittle-Heron-0932-saddle"
	if err := SetPassword(path, jorgNFD, pw2); err != nil {
		t.Fatal(err)
	}
	if !u.Verify(jorgNFC, pw2) {
		t.Error("SetPassword with the NFD name did not change the password")
	}
	if err := DeleteUser(path, jorgNFD); err != nil {
		t.Fatal(err)
	}
	if u.Exists(jorgNFC) {
		t.Error("user still there after DeleteUser with the NFD name")
	}
}

// A line written by hand (or by an older Pouch) in NFD is found under the
// NFC name; loading it rewrites nothing.
func TestLoadNormalizesNames(t *testing.T) {
	t.Parallel()
	const pw = "Quiet-Marmot-5820-window"
	hash, err := HashPassword(pw)
	if err != nil {
		t.Fatal(err)
	}
	path := writeFile(t, jorgNFD+":"+hash+"::::::login_delay=30", jorgNFC+":{PLAIN}another-one-77")
	before, _ := os.ReadFile(path)
	u := openUsers(t, path)
	if !u.Exists(jorgNFC) || !u.Verify(jorgNFC, pw) {
		t.Error("the NFD line is not found under the NFC name")
	}
	if a, err := u.Account(jorgNFC); err != nil || a.LoginDelay != Own(30*time.Second) || a.Name != jorgNFC {
		t.Errorf("Account(NFC) = %+v, %v", a, err)
	}
	if w := u.Warnings(); len(w) != 1 || !strings.Contains(w[0], "listed again") {
		t.Errorf("Warnings = %q, want one for the second form of the name", w)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Errorf("loading changed the users file:\n%s", after)
	}
	// The administration functions find the line and keep its form.
	if err := SetFields(path, jorgNFC, map[string]*string{"nologin": new(string)}); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(path); !strings.HasPrefix(string(after), jorgNFD+":") {
		t.Errorf("SetFields rewrote the name:\n%s", after)
	}
}

// PRECIS OpaqueString allows emoji, SCRAM's SASLprep does not: such a
// password is stored without SCRAM keys and works for the other logins.
func TestPasswordWithoutSCRAM(t *testing.T) {
	t.Parallel()
	const cat = "purring \U0001F408 on the windowsill 73"
	const plain = "Ragged-Pelican-6612-mortar"
	if SCRAMUsable(cat) == nil {
		t.Fatal("SCRAMUsable accepts a password with an emoji")
	}
	if err := SCRAMUsable(plain); err != nil {
		t.Fatalf("SCRAMUsable(%q) = %v", plain, err)
	}
	path := writeFile(t, "# users")
	if err := AddUser(path, "cat", cat); err != nil {
		t.Fatal(err)
	}
	if err := AddUser(path, "dog", plain); err != nil {
		t.Fatal(err)
	}
	u := openUsers(t, path)
	if !u.Verify("cat", cat) {
		t.Error("Verify fails for a password with an emoji")
	}
	if _, ok := u.SCRAMCredentials("cat"); ok {
		t.Error("SCRAM credentials stored for a password SCRAM cannot use")
	}
	// Changing to such a password drops the old SCRAM keys, which would
	// still let the old password in.
	if err := SetPassword(path, "dog", cat); err != nil {
		t.Fatal(err)
	}
	if _, ok := u.SCRAMCredentials("dog"); ok {
		t.Error("the old SCRAM keys survived SetPassword")
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), scramField) {
		t.Errorf("users file:\n%s", data)
	}
	if !u.Verify("dog", cat) || u.Verify("dog", plain) {
		t.Error("Verify after SetPassword is wrong")
	}
	if err := SetPassword(path, "dog", plain); err != nil {
		t.Fatal(err)
	}
	if _, ok := u.SCRAMCredentials("dog"); !ok {
		t.Error("no SCRAM credentials after changing back to a plain password")
	}
}

// A users file of addresses takes mail for their domains only; one with a
// name without a domain (a user from before domains), or with no users,
// for any domain. Names are found with their domain in lower case, however
// the line writes it.
func TestUsersHasDomain(t *testing.T) {
	t.Parallel()
	u := openUsers(t, writeFile(t, "alice@Example.ORG:{PLAIN}a", "bob@example.net:{PLAIN}b"))
	for d, want := range map[string]bool{"example.org": true, "EXAMPLE.NET": true, "example.com": false} {
		if got, err := u.HasDomain(d); got != want || err != nil {
			t.Errorf("HasDomain(%q) = %v, %v; want %v", d, got, err, want)
		}
	}
	if !u.Verify("alice@example.org", "a") {
		t.Error("alice@Example.ORG is not found as alice@example.org")
	}
	u = openUsers(t, writeFile(t, "alice@example.org:{PLAIN}a", "carol:{PLAIN}c"))
	if got, _ := u.HasDomain("example.com"); !got {
		t.Error("a user without a domain does not take mail at every domain")
	}
	u = openUsers(t, writeFile(t, "# nobody yet"))
	if got, _ := u.HasDomain("example.com"); !got {
		t.Error("a file with no users refuses a domain")
	}
}
