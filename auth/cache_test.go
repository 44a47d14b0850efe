package auth

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func writeUsers(t testing.TB, dir, content string) string {
	t.Helper()
	p := filepath.Join(dir, "users")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// BenchmarkVerifyRepeat is a mail client logging in again and again with the
// same (right) password: the case the cache of verified credentials serves.
func BenchmarkVerifyRepeat(b *testing.B) {
	hash, err := HashPassword("secret")
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct{ name, line string }{
		{"plain", "alice:{PLAIN}secret\n"},
		{"argon2id", "alice:" + hash + "\n"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			u, err := OpenUsers(writeUsers(b, b.TempDir(), tc.line))
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if !u.Verify("alice", "secret") {
					b.Fatal("rejected")
				}
			}
		})
	}
}

func TestVerifyCache(t *testing.T) {
	dir := t.TempDir()
	p := writeUsers(t, dir, "alice:{PLAIN}secret\nbob:{PLAIN}other\n")
	u, err := OpenUsers(p)
	if err != nil {
		t.Fatal(err)
	}
	if u.VerifyCached("alice", "secret") {
		t.Fatal("cached before any Verify")
	}
	if u.Verify("alice", "wrong") || u.VerifyCached("alice", "wrong") {
		t.Fatal("wrong password accepted or cached")
	}
	if !u.Verify("alice", "secret") || !u.VerifyCached("alice", "secret") {
		t.Fatal("right password not cached")
	}
	if u.VerifyCached("alice", "secreT") || u.VerifyCached("bob", "secret") {
		t.Fatal("cache hit for other credentials")
	}
	// A password change (a new file stamp) forgets everything verified.
	writeUsers(t, dir, "alice:{PLAIN}new-secret\nbob:{PLAIN}other\n")
	if u.VerifyCached("alice", "secret") || u.Verify("alice", "secret") {
		t.Fatal("old password still accepted after the change")
	}
	if !u.Verify("alice", "new-secret") {
		t.Fatal("new password refused")
	}
	// Disabling a user (no usable secret) ends cached logins too.
	writeUsers(t, dir, "alice:\nbob:{PLAIN}other\n")
	if u.VerifyCached("alice", "new-secret") || u.Verify("alice", "new-secret") {
		t.Fatal("disabled user still accepted")
	}
}

func TestCredCacheBounded(t *testing.T) {
	var c credCache
	for i := range cacheEntries + 10 {
		c.add(cacheKey("u", string(rune(i))))
	}
	if len(c.m) > cacheEntries {
		t.Fatalf("%d entries", len(c.m))
	}
	k := cacheKey("x", "y")
	c.add(k)
	c.m[k] = time.Now().Add(-cacheTTL)
	if c.hit(k) {
		t.Fatal("expired entry hit")
	}
}
