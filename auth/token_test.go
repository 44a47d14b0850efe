package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

type testIssuer struct {
	key *ecdsa.PrivateKey
	kid string
}

func newIssuer(t *testing.T, kid string) testIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return testIssuer{key, kid}
}

func (i testIssuer) jwks(t *testing.T) []byte {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &i.key.PublicKey, KeyID: i.kid, Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (i testIssuer) token(t *testing.T, claims map[string]any) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: i.key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", i.kid))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func claims(mod func(map[string]any)) map[string]any {
	c := map[string]any{
		"iss":   "https://id.example.org",
		"aud":   []string{"pouch", "other"},
		"exp":   time.Now().Add(time.Hour).Unix(),
		"iat":   time.Now().Unix(),
		"email": "alice@example.org",
		"sub":   "1234",
	}
	if mod != nil {
		mod(c)
	}
	return c
}

func TestTokenVerifier(t *testing.T) {
	t.Parallel()
	iss := newIssuer(t, "k1")
	path := filepath.Join(t.TempDir(), "jwks.json")
	os.WriteFile(path, iss.jwks(t), 0o600)
	v, err := NewTokenVerifier("https://id.example.org", "pouch", path, "")
	if err != nil {
		t.Fatal(err)
	}
	if user, err := v.VerifyToken(iss.token(t, claims(nil))); err != nil || user != "alice@example.org" {
		t.Fatalf("valid token: %q, %v", user, err)
	}
	other := newIssuer(t, "k1")
	for name, tok := range map[string]string{
		"expired":        iss.token(t, claims(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() })),
		"no expiry":      iss.token(t, claims(func(c map[string]any) { delete(c, "exp") })),
		"wrong audience": iss.token(t, claims(func(c map[string]any) { c["aud"] = "someone-else" })),
		"wrong issuer":   iss.token(t, claims(func(c map[string]any) { c["iss"] = "https://evil.example" })),
		"not yet valid":  iss.token(t, claims(func(c map[string]any) { c["nbf"] = time.Now().Add(time.Hour).Unix() })),
		"no user claim":  iss.token(t, claims(func(c map[string]any) { delete(c, "email") })),
		"other key":      other.token(t, claims(nil)),
		"garbage":        "not.a.token",
		"alg none":       "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + strings.Split(iss.token(t, claims(nil)), ".")[1] + ".",
	} {
		if user, err := v.VerifyToken(tok); err == nil {
			t.Errorf("%s: accepted for %q", name, user)
		}
	}
	v2, err := NewTokenVerifier("https://id.example.org", "pouch", path, "sub")
	if err != nil {
		t.Fatal(err)
	}
	if user, err := v2.VerifyToken(iss.token(t, claims(nil))); err != nil || user != "1234" {
		t.Fatalf("user claim sub: %q, %v", user, err)
	}
	if _, err := NewTokenVerifier("https://id.example.org", "pouch", filepath.Join(t.TempDir(), "missing"), ""); err == nil {
		t.Error("a missing key set was accepted")
	}
	if _, err := NewTokenVerifier("https://id.example.org", "pouch", "http://id.example.org/jwks", ""); err == nil || !strings.Contains(err.Error(), "https") {
		t.Errorf("a key set over plain http from elsewhere: %v", err)
	}
}

func TestTokenVerifierKeyRotation(t *testing.T) {
	t.Parallel()
	old, fresh := newIssuer(t, "old"), newIssuer(t, "new")
	var current atomic.Value
	var fetches atomic.Int32
	var failing atomic.Bool
	current.Store(old.jwks(t))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if failing.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Write(current.Load().([]byte))
	}))
	defer srv.Close()
	v, err := NewTokenVerifier("https://id.example.org", "pouch", srv.URL, "")
	if err != nil {
		t.Fatal(err)
	}
	ago := func() {
		v.mu.Lock()
		v.fetched = time.Now().Add(-2 * refetchInterval)
		v.mu.Unlock()
	}
	current.Store(fresh.jwks(t))
	tok := fresh.token(t, claims(nil))
	// Within the refetch interval an unknown key is simply refused…
	if _, err := v.VerifyToken(tok); err == nil {
		t.Fatal("token of an unknown key accepted before refetching")
	}
	// …a forged token naming a known key never causes a fetch…
	ago()
	forged := newIssuer(t, "old").token(t, claims(nil))
	if _, err := v.VerifyToken(forged); err == nil || fetches.Load() != 1 {
		t.Fatalf("forged token: %v, %d fetches", err, fetches.Load())
	}
	// …and after the interval the set is fetched again, once.
	if _, err := v.VerifyToken(tok); err != nil {
		t.Fatalf("token of the rotated key: %v", err)
	}
	unknown := newIssuer(t, "other").token(t, claims(nil))
	v.VerifyToken(unknown)
	v.VerifyToken(unknown)
	if n := fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2 (one at start, one after the rotation)", n)
	}
	// While the issuer's key set cannot be fetched, a token of a key not
	// known yet cannot be checked: a temporary failure, not a bad
	// signature; a token of a known key is checked as before.
	failing.Store(true)
	newer := newIssuer(t, "newer")
	current.Store(newer.jwks(t))
	ago()
	if _, err := v.VerifyToken(newer.token(t, claims(nil))); !errors.Is(err, ErrUnavailable) {
		t.Errorf("token of a new key while the key set is down: %v; want ErrUnavailable", err)
	}
	if _, err := v.VerifyToken(newer.token(t, claims(nil))); !errors.Is(err, ErrUnavailable) {
		t.Errorf("again within the refetch interval: %v; want ErrUnavailable", err)
	}
	if _, err := v.VerifyToken(tok); err != nil {
		t.Errorf("token of a known key while the key set is down: %v", err)
	}
	failing.Store(false)
	ago()
	if _, err := v.VerifyToken(newer.token(t, claims(nil))); err != nil {
		t.Errorf("token of the new key once the key set is back: %v", err)
	}
}
