package auth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckStrength(t *testing.T) {
	list := filepath.Join(t.TempDir(), "breached.txt")
	// A plaintext entry and a SHA-1 entry (of "Summer2024Summer!") in HIBP form.
	os.WriteFile(list, []byte("Winter2024Winter!\nA2B3F8F2D4F8B84D2E9C3A1F1C0E8E5B7E6D6C5A:12\n"+
		"2E1B6F3C3EB7E9ED8C1C1A8F0D5C0E2F3F4A9B8C\n"), 0o600)
	for pw, want := range map[string]string{
		"short":                             "too short",
		"aaaaaaaaaaaaaaaa":                  "too predictable",
		"abcdefghijklmnop":                  "too predictable",
		"1234567890123456":                  "too predictable",
		"Password1234":                      "most common",
		"Winter2024Winter!":                 "breached",
		"correct horse battery staple":      "",
		"Tr0ub4dor&3xyz":                    "",
		"gr\u00fcne S\u00e4ulen tr\u00e4gt": "",
	} {
		err := CheckStrength(pw, list)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("CheckStrength(%q) = %v, want %q", pw, err, want)
		}
	}
	if err := CheckStrength("correct horse battery staple", filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing breached list is ignored")
	}
}

func TestBreachedSHA1(t *testing.T) {
	list := filepath.Join(t.TempDir(), "hibp.txt")
	// SHA-1("correct horse battery staple"), upper case, with a count.
	os.WriteFile(list, []byte("ABF7AAD6438836DBE526AA231ABDE2D0EEF74D42:3\n"), 0o600)
	if err := CheckStrength("correct horse battery staple", list); err == nil || !strings.Contains(err.Error(), "breached") {
		t.Fatalf("a password listed by its SHA-1 passed: %v", err)
	}
}
