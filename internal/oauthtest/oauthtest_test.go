package oauthtest

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/auth"
)

// These check the server against the RFCs with plain HTTP, so that the
// client's tests stand on a server that refuses what it must.

var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

const verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk" // RFC 7636 Appendix B

func challenge(v string) string {
	s := sha256.Sum256([]byte(v))
	return base64.RawURLEncoding.EncodeToString(s[:])
}

// authorize runs the authorization request and returns the redirect's query.
func authorize(t *testing.T, s *Server, q url.Values) (int, url.Values) {
	t.Helper()
	resp, err := noRedirect.Get(s.AuthURL() + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return resp.StatusCode, nil
	}
	loc, _ := url.Parse(resp.Header.Get("Location"))
	return resp.StatusCode, loc.Query()
}

func authQuery(s *Server) url.Values {
	return url.Values{"client_id": {s.ClientID()}, "response_type": {"code"}, "state": {"xyz"},
		"redirect_uri": {"http://127.0.0.1:4242/"}, "code_challenge": {challenge(verifier)},
		"code_challenge_method": {"S256"}, "scope": {"pop offline_access"}}
}

func post(t *testing.T, endpoint string, v url.Values) (int, map[string]any) {
	t.Helper()
	resp, err := http.PostForm(endpoint, v)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

func codeGrant(s *Server, code, v string) url.Values {
	return url.Values{"grant_type": {"authorization_code"}, "code": {code}, "client_id": {s.ClientID()},
		"redirect_uri": {"http://127.0.0.1:4242/"}, "code_verifier": {v}}
}

func TestAuthorizationCodeWithPKCE(t *testing.T) {
	s := New(t, Options{})
	_, q := authorize(t, s, authQuery(s))
	if q.Get("state") != "xyz" || q.Get("code") == "" {
		t.Fatalf("redirect %v", q)
	}
	// A wrong verifier fails (RFC 7636 §4.6), and does not use the code up.
	if st, m := post(t, s.TokenURL(), codeGrant(s, q.Get("code"), strings.Repeat("a", 43))); st != 400 || m["error"] != "invalid_grant" {
		t.Fatalf("wrong verifier: %d %v", st, m)
	}
	st, m := post(t, s.TokenURL(), codeGrant(s, q.Get("code"), verifier))
	if st != 200 || m["access_token"] == nil || m["refresh_token"] == nil || m["token_type"] != "Bearer" {
		t.Fatalf("exchange: %d %v", st, m)
	}
	if user, err := s.Verify(m["access_token"].(string)); err != nil || user != "alice@example.org" {
		t.Fatalf("verify: %q %v", user, err)
	}
	// A code used twice is refused and revokes what it gave (RFC 6749 §4.1.2).
	if st, m := post(t, s.TokenURL(), codeGrant(s, q.Get("code"), verifier)); st != 400 || m["error"] != "invalid_grant" {
		t.Fatalf("reuse: %d %v", st, m)
	}
	if _, err := s.Verify(m["access_token"].(string)); err == nil {
		t.Fatal("the access token of a reused code still verifies")
	}
}

func TestAuthorizeRefusals(t *testing.T) {
	s := New(t, Options{})
	for _, tc := range []struct {
		change func(url.Values)
		status int
		err    string
	}{
		{func(q url.Values) { q.Set("client_id", "other") }, 400, ""},
		{func(q url.Values) { q.Set("redirect_uri", "https://evil.example/") }, 400, ""},
		{func(q url.Values) { q.Set("redirect_uri", "http://192.168.1.2:80/") }, 400, ""},
		{func(q url.Values) { q.Del("code_challenge") }, 302, "invalid_request"},
		{func(q url.Values) { q.Set("code_challenge_method", "plain") }, 302, "invalid_request"},
		{func(q url.Values) { q.Set("response_type", "token") }, 302, "unsupported_response_type"},
	} {
		q := authQuery(s)
		tc.change(q)
		st, back := authorize(t, s, q)
		if st != tc.status || (tc.err != "" && (back.Get("error") != tc.err || back.Get("state") != "xyz")) {
			t.Errorf("%v: %d %v", q, st, back)
		}
	}
	// RFC 8252 §7.3: any port on a loopback address.
	for _, r := range []string{"http://127.0.0.1:1/", "http://[::1]:65000/cb", "http://localhost:8080/"} {
		q := authQuery(s)
		q.Set("redirect_uri", r)
		if st, back := authorize(t, s, q); st != 302 || back.Get("code") == "" {
			t.Errorf("%s: %d %v", r, st, back)
		}
	}
	s.Deny(true)
	if _, back := authorize(t, s, authQuery(s)); back.Get("error") != "access_denied" {
		t.Errorf("deny: %v", back)
	}
}

func TestClientAuthentication(t *testing.T) {
	s := New(t, Options{ClientSecret: "sekrit"})
	_, q := authorize(t, s, authQuery(s))
	v := codeGrant(s, q.Get("code"), verifier)
	if st, m := post(t, s.TokenURL(), v); st != 401 || m["error"] != "invalid_client" {
		t.Fatalf("no secret: %d %v", st, m)
	}
	v.Set("client_secret", "sekrit")
	if st, m := post(t, s.TokenURL(), v); st != 200 {
		t.Fatalf("secret in the body: %d %v", st, m)
	}
}

func TestRefreshRotation(t *testing.T) {
	s := New(t, Options{})
	_, q := authorize(t, s, authQuery(s))
	_, m := post(t, s.TokenURL(), codeGrant(s, q.Get("code"), verifier))
	rt1 := m["refresh_token"].(string)
	refresh := func(rt string) (int, map[string]any) {
		return post(t, s.TokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {s.ClientID()}})
	}
	st, m2 := refresh(rt1)
	rt2, _ := m2["refresh_token"].(string)
	if st != 200 || rt2 == "" || rt2 == rt1 {
		t.Fatalf("refresh: %d %v", st, m2)
	}
	// The rotated-away token revokes the grant (RFC 9700 §4.14.2).
	if st, m := refresh(rt1); st != 400 || m["error"] != "invalid_grant" {
		t.Fatalf("old token: %d %v", st, m)
	}
	if st, _ := refresh(rt2); st != 400 {
		t.Fatal("the grant survived a replayed refresh token")
	}
	if len(s.Violations()) != 1 {
		t.Fatalf("violations %v", s.Violations())
	}
	// More scope than granted is refused.
	_, q = authorize(t, s, authQuery(s))
	_, m = post(t, s.TokenURL(), codeGrant(s, q.Get("code"), verifier))
	v := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {m["refresh_token"].(string)}, "client_id": {s.ClientID()}, "scope": {"admin"}}
	if st, m := post(t, s.TokenURL(), v); st != 400 || m["error"] != "invalid_scope" {
		t.Fatalf("scope: %d %v", st, m)
	}
}

func TestRevocation(t *testing.T) {
	s := New(t, Options{})
	_, q := authorize(t, s, authQuery(s))
	_, m := post(t, s.TokenURL(), codeGrant(s, q.Get("code"), verifier))
	if st, _ := post(t, s.RevokeURL(), url.Values{"token": {"unknown"}, "client_id": {s.ClientID()}}); st != 200 {
		t.Fatalf("unknown token: %d (RFC 7009 §2.2 says 200)", st)
	}
	if st, _ := post(t, s.RevokeURL(), url.Values{"token": {m["refresh_token"].(string)}, "token_type_hint": {"refresh_token"}, "client_id": {s.ClientID()}}); st != 200 {
		t.Fatalf("revoke: %d", st)
	}
	if _, err := s.Verify(m["access_token"].(string)); err == nil {
		t.Fatal("the grant's access token survived")
	}
	if st, m := post(t, s.TokenURL(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {m["refresh_token"].(string)}, "client_id": {s.ClientID()}}); st != 400 || m["error"] != "invalid_grant" {
		t.Fatalf("refresh after revocation: %d %v", st, m)
	}
}

var time0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestDeviceGrant(t *testing.T) {
	now := time0
	s := New(t, Options{Now: func() time.Time { return now }})
	st, d := post(t, s.DeviceURL(), url.Values{"client_id": {s.ClientID()}, "scope": {"pop"}})
	if st != 200 || d["interval"].(float64) != 5 || d["expires_in"].(float64) != 600 {
		t.Fatalf("device authorization: %d %v", st, d)
	}
	poll := func() string {
		_, m := post(t, s.TokenURL(), url.Values{"grant_type": {deviceGrant}, "device_code": {d["device_code"].(string)}, "client_id": {s.ClientID()}})
		if e, ok := m["error"].(string); ok {
			return e
		}
		return "token"
	}
	now = now.Add(5 * time.Second)
	if e := poll(); e != "authorization_pending" {
		t.Fatal(e)
	}
	now = now.Add(time.Second) // too soon
	if e := poll(); e != "slow_down" || len(s.Violations()) != 1 {
		t.Fatal(e, s.Violations())
	}
	now = now.Add(10 * time.Second) // 5 + 5 now
	if err := s.Approve(strings.ToLower(d["user_code"].(string)), false); err != nil {
		t.Fatal(err)
	}
	if e := poll(); e != "token" {
		t.Fatal(e)
	}
	if e := poll(); e != "invalid_grant" {
		t.Fatalf("a used device code: %s", e)
	}
	_, d = post(t, s.DeviceURL(), url.Values{"client_id": {s.ClientID()}})
	now = now.Add(11 * time.Minute)
	if e := poll(); e != "expired_token" {
		t.Fatal(e)
	}
}

// Pouch's own server verifies the access tokens against /jwks, so the same
// server serves an OAUTHBEARER login end to end.
func TestTokensVerifyWithPouchsVerifier(t *testing.T) {
	s := New(t, Options{Audience: "pop.example.org"})
	_, q := authorize(t, s, authQuery(s))
	_, m := post(t, s.TokenURL(), codeGrant(s, q.Get("code"), verifier))
	v, err := auth.NewTokenVerifier(s.URL, "pop.example.org", s.JWKSURL(), "email")
	if err != nil {
		t.Fatal(err)
	}
	if user, err := v.VerifyToken(m["access_token"].(string)); err != nil || user != "alice@example.org" {
		t.Fatalf("%q %v", user, err)
	}
}
