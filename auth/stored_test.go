package auth

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// What NewStoredPassword makes is what the users file holds for the
// password: written into a line, it logs in, with SCRAM keys; and
// ParseUserLine reads such a line back into the same parts.
func TestStoredPassword(t *testing.T) {
	stored, fields, err := NewStoredPassword("correct horse battery staple")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stored, "{ARGON2ID}") || fields[FieldSCRAM] == "" || fields[FieldPasswordChanged] == "" {
		t.Fatalf("stored %q, fields %v", stored, fields)
	}
	fields["nologin"] = ""
	var extra []string
	for k, v := range fields {
		if v == "" {
			extra = append(extra, k)
		} else {
			extra = append(extra, k+"="+v)
		}
	}
	sort.Strings(extra)
	line := "alice@example.org:" + stored + "::::::" + strings.Join(extra, " ")
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	u, err := OpenUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	if !u.Verify("alice@example.org", "correct horse battery staple") {
		t.Fatal("the stored password does not verify")
	}
	if _, ok := u.SCRAMCredentials("alice@example.org"); !ok {
		t.Fatal("no SCRAM keys")
	}
	l, ok := ParseUserLine(line)
	if !ok || l.Name != "alice@example.org" || l.Password != stored || len(l.Fields) != len(fields) || l.Fields["nologin"] != "" {
		t.Fatalf("ParseUserLine: %+v, %v", l, ok)
	}
	for _, bad := range []string{"", "# comment", "no colon"} {
		if _, ok := ParseUserLine(bad); ok {
			t.Errorf("ParseUserLine(%q) took it", bad)
		}
	}
	if CheckField("quota_messages", "many") == nil || CheckField("quota_messages", "5") != nil {
		t.Error("CheckField")
	}
}
