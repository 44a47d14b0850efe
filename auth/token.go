package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TokenVerifier checks OAuth 2.0 bearer tokens that are JWTs (RFC 7519)
// signed by one issuer, for the OAUTHBEARER (RFC 7628) and XOAUTH2 SASL
// mechanisms: the signature against the issuer's JSON Web Key Set, the
// issuer, the audience, and the expiry. It is safe for concurrent use.
type TokenVerifier struct {
	issuer, audience, userClaim string
	jwks                        string // a file or an http(s) URL

	mu       sync.Mutex
	keys     *jose.JSONWebKeySet
	fetched  time.Time
	fetchErr error // why the last fetch of the key set failed, or nil

	now func() time.Time
}

// tokenAlgorithms are the signature algorithms accepted; "none" and the
// HMAC algorithms (which would need a shared secret) never are.
var tokenAlgorithms = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
}

// refetchInterval is the least time between two loads of the key set when
// a token names a key that is not in it (the issuer rotated its keys).
const refetchInterval = time.Minute

// NewTokenVerifier returns a verifier for tokens from issuer (the "iss"
// claim), meant for audience (one of the "aud" claim), whose user name is the
// claim userClaim (for instance "email" or "sub"). jwks is a file or an
// http(s) URL holding the issuer's JSON Web Key Set; it is loaded now.
func NewTokenVerifier(issuer, audience, jwks, userClaim string) (*TokenVerifier, error) {
	if issuer == "" || audience == "" || jwks == "" {
		return nil, errors.New("auth: OAuth needs an issuer, an audience and a key set")
	}
	if userClaim == "" {
		userClaim = "email"
	}
	v := &TokenVerifier{issuer: issuer, audience: audience, userClaim: userClaim, jwks: jwks, now: time.Now}
	if err := v.Reload(); err != nil {
		return nil, err
	}
	return v, nil
}

// Reload loads the key set again.
func (v *TokenVerifier) Reload() error {
	keys, err := loadKeySet(v.jwks)
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.keys, v.fetched = keys, time.Now()
	v.mu.Unlock()
	return nil
}

func loadKeySet(source string) (*jose.JSONWebKeySet, error) {
	var r io.ReadCloser
	if strings.HasPrefix(source, "http://") && !loopbackURL(source) {
		return nil, fmt.Errorf("auth: the OAuth key set must come over https, not %s", source)
	}
	if strings.HasPrefix(source, "https://") || strings.HasPrefix(source, "http://") {
		client := &http.Client{Timeout: 10 * time.Second}
		resp, err := client.Get(source)
		if err != nil {
			return nil, fmt.Errorf("auth: fetching the OAuth key set: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, fmt.Errorf("auth: fetching the OAuth key set: %s", resp.Status)
		}
		r = resp.Body
	} else {
		f, err := os.Open(source)
		if err != nil {
			return nil, fmt.Errorf("auth: OAuth key set: %w", err)
		}
		r = f
	}
	defer r.Close()
	var keys jose.JSONWebKeySet
	if err := json.NewDecoder(io.LimitReader(r, 1<<20)).Decode(&keys); err != nil {
		return nil, fmt.Errorf("auth: OAuth key set %s: %w", source, err)
	}
	if len(keys.Keys) == 0 {
		return nil, fmt.Errorf("auth: OAuth key set %s has no keys", source)
	}
	return &keys, nil
}

// loopbackURL reports whether an http URL points at this machine, where
// plain http cannot be intercepted.
func loopbackURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	if u.Hostname() == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(u.Hostname())
	return err == nil && ip.IsLoopback()
}

// VerifyToken checks token and returns the user it was issued for.
func (v *TokenVerifier) VerifyToken(token string) (string, error) {
	tok, err := jwt.ParseSigned(token, tokenAlgorithms)
	if err != nil {
		return "", fmt.Errorf("auth: malformed token: %w", err)
	}
	var std jwt.Claims
	var extra map[string]any
	keys, err := v.keySet(tok)
	if err != nil {
		return "", err
	}
	if err := tok.Claims(keys, &std, &extra); err != nil {
		return "", fmt.Errorf("auth: token signature: %w", err)
	}
	if std.Expiry == nil {
		return "", errors.New("auth: token has no expiry")
	}
	if err := std.ValidateWithLeeway(jwt.Expected{
		Issuer:      v.issuer,
		AnyAudience: jwt.Audience{v.audience},
		Time:        v.now(),
	}, 30*time.Second); err != nil {
		return "", fmt.Errorf("auth: token claims: %w", err)
	}
	user, _ := extra[v.userClaim].(string)
	if user == "" {
		return "", fmt.Errorf("auth: token has no %q claim", v.userClaim)
	}
	return user, nil
}

// keySet returns the key set to check tok with. When tok names a key the set
// does not have (the issuer rotated its keys), the set is fetched again — by
// one caller at a time, and at most once per refetchInterval whether the
// fetch worked or not, so that forged tokens cannot make Pouch hammer the
// issuer. While the last fetch failed, a token naming a key the set lacks
// cannot be checked: that is an error wrapping ErrUnavailable, so that a
// good token of a rotated key is deferred, not refused as a bad signature.
func (v *TokenVerifier) keySet(tok *jwt.JSONWebToken) (*jose.JSONWebKeySet, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	kid := ""
	if len(tok.Headers) > 0 {
		kid = tok.Headers[0].KeyID
	}
	if kid == "" || len(v.keys.Key(kid)) > 0 {
		return v.keys, nil
	}
	if time.Since(v.fetched) >= refetchInterval {
		v.fetched = time.Now()
		keys, err := loadKeySet(v.jwks)
		if err == nil {
			v.keys = keys
		}
		v.fetchErr = err
	}
	if v.fetchErr != nil && len(v.keys.Key(kid)) == 0 {
		return nil, fmt.Errorf("%w: the OAuth key set could not be fetched to check key %q: %v", ErrUnavailable, kid, v.fetchErr)
	}
	return v.keys, nil
}
