// Package oauthtest runs an OAuth 2.0 authorization server on 127.0.0.1 for
// tests: the authorization endpoint (RFC 6749 §4.1, approving at once and
// redirecting to a loopback URI as RFC 8252 §7.3 allows), the token endpoint
// (authorization_code with PKCE S256 per RFC 7636, refresh_token with
// rotation, and the device_code grant), the device authorization endpoint
// (RFC 8628), revocation (RFC 7009), and OIDC discovery and RFC 8414
// metadata. Access tokens are JWTs signed with a key published at /jwks, so
// Pouch's own server can verify them.
package oauthtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Options configure a Server; the zero value of each field has a default.
type Options struct {
	ClientID     string        // default "pouch-test-client"
	ClientSecret string        // "": a public client (RFC 6749 §2.1), authenticated by client_id alone
	User         string        // the signed-in user, the tokens' "sub" and "email"; default "alice@example.org"
	Audience     string        // the access tokens' "aud"; default the client id
	AccessTTL    time.Duration // access token lifetime; default one hour
	NoRefresh    bool          // issue no refresh tokens
	NoRotation   bool          // keep a refresh token when it is used, instead of replacing it
	// DeviceInterval is the polling interval advertised, in seconds
	// (default 5, RFC 8628 §3.2); DeviceTTL is the device code's lifetime
	// (default ten minutes).
	DeviceInterval int
	DeviceTTL      time.Duration
	// Now is the server's clock; tests of polling share a fake one with
	// the client. Default time.Now.
	Now func() time.Time
	// EchoSecrets makes every token endpoint error repeat the code or
	// token it was sent in its error_description, as a careless provider
	// might: clients must not pass that on.
	EchoSecrets bool
}

// Server is a running authorization server. Its methods are safe for
// concurrent use.
type Server struct {
	URL  string // the issuer, http://127.0.0.1:PORT
	opts Options
	key  *ecdsa.PrivateKey
	hs   *httptest.Server

	mu         sync.Mutex
	codes      map[string]*authCode
	refresh    map[string]*family // live refresh tokens
	used       map[string]*family // refresh tokens already rotated away
	devices    map[string]*device // by device_code
	userCodes  map[string]*device
	revokedJTI map[string]bool
	families   []*family
	counts     map[string]int
	violations []string
	deny       bool
	slowDowns  int
	failNext   int
	secrets    []string
}

type authCode struct {
	redirectURI, challenge, scope string
	expires                       time.Time
	used                          bool
	family                        *family
}

// family is one grant: the refresh tokens that descend from one login, and
// the access tokens issued on it (RFC 9700 §4.14.2 revokes them together).
type family struct {
	scope   string
	revoked bool
	jtis    []string
}

type device struct {
	code, userCode, scope  string
	expires                time.Time
	interval               time.Duration // what the client must keep to now
	lastPoll               time.Time
	approved, denied, done bool
}

// New starts a server on 127.0.0.1:0; it stops when the test ends.
func New(t testing.TB, o Options) *Server {
	t.Helper()
	if o.ClientID == "" {
		o.ClientID = "pouch-test-client"
	}
	if o.User == "" {
		o.User = "alice@example.org"
	}
	if o.Audience == "" {
		o.Audience = o.ClientID
	}
	if o.AccessTTL == 0 {
		o.AccessTTL = time.Hour
	}
	if o.DeviceInterval == 0 {
		o.DeviceInterval = 5
	}
	if o.DeviceTTL == 0 {
		o.DeviceTTL = 10 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{opts: o, key: key,
		codes: map[string]*authCode{}, refresh: map[string]*family{}, used: map[string]*family{},
		devices: map[string]*device{}, userCodes: map[string]*device{}, revokedJTI: map[string]bool{},
		counts: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", s.metadata)
	mux.HandleFunc("GET /.well-known/oauth-authorization-server", s.metadata)
	mux.HandleFunc("GET /jwks", s.jwks)
	mux.HandleFunc("GET /authorize", s.authorize)
	mux.HandleFunc("POST /token", s.token)
	mux.HandleFunc("POST /device_authorization", s.deviceAuthorization)
	mux.HandleFunc("GET /device", s.deviceVerify)
	mux.HandleFunc("POST /revoke", s.revoke)
	hs := httptest.NewUnstartedServer(mux)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs.Listener = ln
	hs.Start()
	s.hs = hs
	s.URL = hs.URL
	t.Cleanup(hs.Close)
	return s
}

// Endpoints, for configuring a client without discovery.
func (s *Server) AuthURL() string   { return s.URL + "/authorize" }
func (s *Server) TokenURL() string  { return s.URL + "/token" }
func (s *Server) DeviceURL() string { return s.URL + "/device_authorization" }
func (s *Server) RevokeURL() string { return s.URL + "/revoke" }
func (s *Server) JWKSURL() string   { return s.URL + "/jwks" }

// ClientID is the client the server knows.
func (s *Server) ClientID() string { return s.opts.ClientID }

// Deny makes the user decline at the authorization endpoint from now on
// (the redirect carries error=access_denied, RFC 6749 §4.1.2.1).
func (s *Server) Deny(deny bool) {
	s.mu.Lock()
	s.deny = deny
	s.mu.Unlock()
}

// SlowDown answers the next n device-code polls with slow_down, as a
// loaded server does; each raises the interval the client must keep by five
// seconds (RFC 8628 §3.5).
func (s *Server) SlowDown(n int) {
	s.mu.Lock()
	s.slowDowns = n
	s.mu.Unlock()
}

// FailNext makes the token endpoint answer the next n requests with 503
// and an HTML page, as a provider's front end does when it is down.
func (s *Server) FailNext(n int) {
	s.mu.Lock()
	s.failNext = n
	s.mu.Unlock()
}

// RevokeAll revokes every grant, as a user does on the provider's security
// page: every refresh token gets invalid_grant from now on.
func (s *Server) RevokeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.families {
		s.revokeFamily(f)
	}
}

// Count says how many successful token responses the server gave for a
// grant type ("authorization_code", "refresh_token", "device_code"), or how
// many device-code polls it answered ("device_poll").
func (s *Server) Count(kind string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[kind]
}

// Violations lists what clients did against the RFCs: polls sooner than
// the interval, a refresh token used after rotation.
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.violations)
}

// Secrets lists every secret the server issued or was sent: the client
// secret, codes, PKCE verifiers, device codes, access and refresh tokens.
// Tests look for them where they must not be.
func (s *Server) Secrets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.secrets)
	if s.opts.ClientSecret != "" {
		out = append(out, s.opts.ClientSecret)
	}
	return out
}

// Approve plays the user who enters userCode at the verification page and
// agrees (or, with deny, declines).
func (s *Server) Approve(userCode string, deny bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.userCodes[normalUserCode(userCode)]
	if d == nil || s.opts.Now().After(d.expires) {
		return fmt.Errorf("oauthtest: no pending device code %q", userCode)
	}
	d.approved, d.denied = !deny, deny
	return nil
}

// Verify checks an access token as a resource server would: signature,
// issuer, audience, expiry, and that its grant was not revoked. It returns
// the user.
func (s *Server) Verify(token string) (string, error) {
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return "", err
	}
	var c jwt.Claims
	var extra struct {
		Email string `json:"email"`
	}
	if err := tok.Claims(&s.key.PublicKey, &c, &extra); err != nil {
		return "", err
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Issuer: s.URL, AnyAudience: jwt.Audience{s.opts.Audience}, Time: s.opts.Now()}, 0); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.revokedJTI[c.ID] {
		return "", fmt.Errorf("oauthtest: token revoked")
	}
	return extra.Email, nil
}

func (s *Server) metadata(w http.ResponseWriter, r *http.Request) {
	// OpenID Connect Discovery 1.0 §3 and RFC 8414 §2.
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                s.URL,
		"authorization_endpoint":                s.AuthURL(),
		"token_endpoint":                        s.TokenURL(),
		"device_authorization_endpoint":         s.DeviceURL(),
		"revocation_endpoint":                   s.RevokeURL(),
		"jwks_uri":                              s.JWKSURL(),
		"response_types_supported":              []string{"code"},
		"grant_types_supported":                 []string{"authorization_code", "refresh_token", deviceGrant},
		"code_challenge_methods_supported":      []string{"S256"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post", "none"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": []string{"ES256"},
	})
}

func (s *Server) jwks(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{
		Key: &s.key.PublicKey, KeyID: "k1", Algorithm: string(jose.ES256), Use: "sig"}}})
}

// loopbackRedirect reports whether uri is a loopback redirect of a native
// app (RFC 8252 §7.3): http, a loopback host, any port.
func loopbackRedirect(uri string) bool {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "http" || u.Fragment != "" {
		return false
	}
	h := u.Hostname()
	return h == "127.0.0.1" || h == "::1" || h == "localhost"
}

// authorize is RFC 6749 §4.1.1–4.1.2 with PKCE required (RFC 7636 §4.4.1).
// Errors about the client or the redirect URI are shown, not redirected
// (§4.1.2.1); the rest go back to the client.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != s.opts.ClientID {
		http.Error(w, "unknown client_id", http.StatusBadRequest)
		return
	}
	redirect := q.Get("redirect_uri")
	if !loopbackRedirect(redirect) {
		http.Error(w, "redirect_uri is not a loopback http URI", http.StatusBadRequest)
		return
	}
	back := func(v url.Values) {
		if st := q.Get("state"); st != "" {
			v.Set("state", st)
		}
		u, _ := url.Parse(redirect)
		qq := u.Query()
		for k, vs := range v {
			qq[k] = vs
		}
		u.RawQuery = qq.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
	}
	fail := func(code, desc string) {
		back(url.Values{"error": {code}, "error_description": {desc}})
	}
	switch {
	case q.Get("response_type") != "code":
		fail("unsupported_response_type", "only the code flow is offered")
		return
	case q.Get("code_challenge") == "":
		fail("invalid_request", "PKCE is required")
		return
	case q.Get("code_challenge_method") != "S256":
		fail("invalid_request", "code_challenge_method must be S256")
		return
	}
	code := random()
	s.mu.Lock()
	deny := s.deny
	if !deny {
		s.codes[code] = &authCode{redirectURI: redirect, challenge: q.Get("code_challenge"),
			scope: q.Get("scope"), expires: s.opts.Now().Add(time.Minute)}
	}
	s.mu.Unlock()
	if deny {
		fail("access_denied", "the user declined")
		return
	}
	s.mu.Lock()
	s.secrets = append(s.secrets, code)
	s.mu.Unlock()
	back(url.Values{"code": {code}})
}

const deviceGrant = "urn:ietf:params:oauth:grant-type:device_code"

// tokenError is an RFC 6749 §5.2 error response.
func tokenError(w http.ResponseWriter, status int, code, desc string) {
	if e, ok := w.(echoWriter); ok {
		desc += " (you sent " + e.echo + ")"
	}
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

// echoWriter marks a response whose errors repeat what was sent.
type echoWriter struct {
	http.ResponseWriter
	echo string
}

// clientAuth checks the client (RFC 6749 §2.3.1): HTTP Basic or the body's
// client_id/client_secret, never both; a public client sends client_id.
func (s *Server) clientAuth(w http.ResponseWriter, r *http.Request) bool {
	id, secret, basic := r.BasicAuth()
	if basic {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
		if r.PostForm.Has("client_secret") {
			tokenError(w, http.StatusBadRequest, "invalid_request", "client credentials in two places")
			return false
		}
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	ok := id == s.opts.ClientID &&
		subtle.ConstantTimeCompare([]byte(secret), []byte(s.opts.ClientSecret)) == 1
	if !ok {
		if basic {
			w.Header().Set("WWW-Authenticate", `Basic realm="oauthtest"`)
		}
		tokenError(w, http.StatusUnauthorized, "invalid_client", "client authentication failed")
	}
	return ok
}

func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.failNext > 0 {
		s.failNext--
		s.mu.Unlock()
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, "<html><body>Service Unavailable</body></html>")
		return
	}
	s.mu.Unlock()
	if err := r.ParseForm(); err != nil || len(r.URL.Query()) > 0 {
		tokenError(w, http.StatusBadRequest, "invalid_request", "parameters belong in the form body")
		return
	}
	if !s.clientAuth(w, r) {
		return
	}
	f := r.PostForm
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range []string{"code", "code_verifier", "refresh_token", "device_code"} {
		if v := f.Get(k); v != "" {
			s.secrets = append(s.secrets, v)
		}
	}
	if s.opts.EchoSecrets {
		w = echoWriter{w, f.Get("code") + f.Get("refresh_token") + f.Get("device_code")}
	}
	switch f.Get("grant_type") {
	case "authorization_code":
		s.exchangeCode(w, f)
	case "refresh_token":
		s.refreshGrant(w, f)
	case deviceGrant:
		s.devicePoll(w, f)
	default:
		tokenError(w, http.StatusBadRequest, "unsupported_grant_type", "")
	}
}

var verifierForm = regexp.MustCompile(`^[A-Za-z0-9._~-]{43,128}$`)

// exchangeCode is RFC 6749 §4.1.3 and RFC 7636 §4.6.
func (s *Server) exchangeCode(w http.ResponseWriter, f url.Values) {
	c := s.codes[f.Get("code")]
	switch {
	case c == nil || s.opts.Now().After(c.expires):
		tokenError(w, http.StatusBadRequest, "invalid_grant", "unknown or expired code")
		return
	case c.used:
		// §4.1.2: a code used twice revokes what it gave.
		if c.family != nil {
			s.revokeFamily(c.family)
		}
		s.violations = append(s.violations, "authorization code used twice")
		tokenError(w, http.StatusBadRequest, "invalid_grant", "code already used")
		return
	case f.Get("redirect_uri") != c.redirectURI:
		tokenError(w, http.StatusBadRequest, "invalid_grant", "redirect_uri differs from the authorization request")
		return
	case !verifierForm.MatchString(f.Get("code_verifier")):
		tokenError(w, http.StatusBadRequest, "invalid_request", "code_verifier missing or malformed")
		return
	}
	sum := sha256.Sum256([]byte(f.Get("code_verifier")))
	if base64.RawURLEncoding.EncodeToString(sum[:]) != c.challenge {
		tokenError(w, http.StatusBadRequest, "invalid_grant", "code_verifier does not match the code_challenge")
		return
	}
	c.used = true
	c.family = &family{scope: c.scope}
	s.families = append(s.families, c.family)
	s.counts["authorization_code"]++
	s.issue(w, c.family, true)
}

// refreshGrant is RFC 6749 §6, rotating the refresh token (RFC 9700
// §4.14.2): a rotated-away token used again revokes the whole grant.
func (s *Server) refreshGrant(w http.ResponseWriter, f url.Values) {
	rt := f.Get("refresh_token")
	fam := s.refresh[rt]
	if fam == nil {
		if old := s.used[rt]; old != nil {
			s.violations = append(s.violations, "refresh token used after rotation")
			s.revokeFamily(old)
		}
		tokenError(w, http.StatusBadRequest, "invalid_grant", "the refresh token is invalid, expired or revoked")
		return
	}
	if sc := f.Get("scope"); sc != "" {
		granted := strings.Fields(fam.scope)
		for _, x := range strings.Fields(sc) {
			if !slices.Contains(granted, x) {
				tokenError(w, http.StatusBadRequest, "invalid_scope", "more scope than was granted")
				return
			}
		}
	}
	rotate := !s.opts.NoRotation
	if rotate {
		delete(s.refresh, rt)
		s.used[rt] = fam
	}
	s.counts["refresh_token"]++
	s.issue(w, fam, rotate)
}

// devicePoll is RFC 8628 §3.4–3.5.
func (s *Server) devicePoll(w http.ResponseWriter, f url.Values) {
	d := s.devices[f.Get("device_code")]
	if d == nil || d.done {
		tokenError(w, http.StatusBadRequest, "invalid_grant", "unknown device_code")
		return
	}
	now := s.opts.Now()
	s.counts["device_poll"]++
	if now.After(d.expires) {
		tokenError(w, http.StatusBadRequest, "expired_token", "the device code expired")
		return
	}
	gap := now.Sub(d.lastPoll)
	early := gap < d.interval
	d.lastPoll = now
	switch {
	case early || s.slowDowns > 0:
		if early {
			s.violations = append(s.violations, fmt.Sprintf("device poll %v after the previous one, interval %v", gap, d.interval))
		} else {
			s.slowDowns--
		}
		// "the interval MUST be increased by 5 seconds for this and all
		// subsequent requests" (§3.5).
		d.interval += 5 * time.Second
		tokenError(w, http.StatusBadRequest, "slow_down", "")
	case d.denied:
		d.done = true
		tokenError(w, http.StatusBadRequest, "access_denied", "the user declined")
	case !d.approved:
		tokenError(w, http.StatusBadRequest, "authorization_pending", "")
	default:
		d.done = true
		fam := &family{scope: d.scope}
		s.families = append(s.families, fam)
		s.counts["device_code"]++
		s.issue(w, fam, true)
	}
}

// issue writes a token response (RFC 6749 §5.1). Called with s.mu held.
func (s *Server) issue(w http.ResponseWriter, fam *family, newRefresh bool) {
	now := s.opts.Now()
	jti := random()
	claims := map[string]any{
		"iss": s.URL, "sub": s.opts.User, "email": s.opts.User, "aud": s.opts.Audience,
		"iat": now.Unix(), "exp": now.Add(s.opts.AccessTTL).Unix(), "jti": jti,
		"client_id": s.opts.ClientID, "scope": fam.scope,
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: s.key},
		(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", "k1"))
	if err != nil {
		tokenError(w, http.StatusInternalServerError, "server_error", "")
		return
	}
	at, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		tokenError(w, http.StatusInternalServerError, "server_error", "")
		return
	}
	fam.jtis = append(fam.jtis, jti)
	s.secrets = append(s.secrets, at)
	resp := map[string]any{"access_token": at, "token_type": "Bearer",
		"expires_in": int(s.opts.AccessTTL / time.Second), "scope": fam.scope}
	if newRefresh && !s.opts.NoRefresh {
		rt := random()
		s.refresh[rt] = fam
		s.secrets = append(s.secrets, rt)
		resp["refresh_token"] = rt
	}
	w.Header().Set("Cache-Control", "no-store") // §5.1
	writeJSON(w, http.StatusOK, resp)
}

// deviceAuthorization is RFC 8628 §3.1–3.2.
func (s *Server) deviceAuthorization(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		tokenError(w, http.StatusBadRequest, "invalid_request", "")
		return
	}
	if !s.clientAuth(w, r) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := &device{code: random(), userCode: userCode(), scope: r.PostForm.Get("scope"),
		interval: time.Duration(s.opts.DeviceInterval) * time.Second}
	d.expires = s.opts.Now().Add(s.opts.DeviceTTL)
	d.lastPoll = s.opts.Now()
	s.devices[d.code] = d
	s.secrets = append(s.secrets, d.code)
	s.userCodes[normalUserCode(d.userCode)] = d
	writeJSON(w, http.StatusOK, map[string]any{
		"device_code":               d.code,
		"user_code":                 d.userCode,
		"verification_uri":          s.URL + "/device",
		"verification_uri_complete": s.URL + "/device?user_code=" + url.QueryEscape(d.userCode),
		"expires_in":                int(s.opts.DeviceTTL / time.Second),
		"interval":                  s.opts.DeviceInterval,
	})
}

// deviceVerify is the verification page: with user_code it approves at
// once (deny=1 declines), as a user who signs in and agrees.
func (s *Server) deviceVerify(w http.ResponseWriter, r *http.Request) {
	code := r.URL.Query().Get("user_code")
	if code == "" {
		fmt.Fprint(w, "<html><body><form><input name=user_code><button>Next</button></form></body></html>")
		return
	}
	if err := s.Approve(code, r.URL.Query().Get("deny") == "1"); err != nil {
		http.Error(w, "unknown or expired code", http.StatusNotFound)
		return
	}
	fmt.Fprint(w, "<html><body>Device approved. You can close this tab.</body></html>")
}

// revoke is RFC 7009 §2: the client's own token is revoked with its whole
// grant; an unknown token is answered 200 as well (§2.2).
func (s *Server) revoke(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || r.PostForm.Get("token") == "" {
		tokenError(w, http.StatusBadRequest, "invalid_request", "")
		return
	}
	if !s.clientAuth(w, r) {
		return
	}
	tok := r.PostForm.Get("token")
	s.mu.Lock()
	defer s.mu.Unlock()
	if fam := s.refresh[tok]; fam != nil {
		s.revokeFamily(fam)
	} else if t, err := jwt.ParseSigned(tok, []jose.SignatureAlgorithm{jose.ES256}); err == nil {
		var c jwt.Claims
		if t.Claims(&s.key.PublicKey, &c) == nil {
			s.revokedJTI[c.ID] = true
		}
	}
	s.counts["revoke"]++
	w.WriteHeader(http.StatusOK)
}

// revokeFamily ends a grant. Called with s.mu held.
func (s *Server) revokeFamily(f *family) {
	f.revoked = true
	for rt, g := range s.refresh {
		if g == f {
			delete(s.refresh, rt)
		}
	}
	for _, j := range f.jtis {
		s.revokedJTI[j] = true
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func random() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// userCode is eight letters from RFC 8628 §6.1's base-20 alphabet, shown
// as XXXX-XXXX.
func userCode() string {
	const alphabet = "BCDFGHJKLMNPQRSTVWXZ"
	b := make([]byte, 8)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:4]) + "-" + string(b[4:])
}

// normalUserCode drops the dash and case (RFC 8628 §6.1).
func normalUserCode(c string) string {
	return strings.ToUpper(strings.ReplaceAll(c, "-", ""))
}
