// Package oauth signs a pouch fetch account in to its mail provider with
// OAuth 2.0 and keeps it signed in: the authorization-code flow with PKCE
// through a loopback redirect (RFC 8252, RFC 7636), the device
// authorization grant (RFC 8628), and a token file per account in the state
// directory that is refreshed before the access token expires. The
// providers are Gmail, Microsoft (Outlook.com and Microsoft 365) and any
// other by its endpoints or its OIDC discovery document.
package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/oauth2"
)

// Providers.
const (
	Gmail     = "gmail"
	Microsoft = "microsoft"
	Custom    = "custom"
)

// Default scopes: Gmail's full mail scope is the only one that covers POP
// (Gmail's XOAUTH2 page), and Microsoft's POP scope plus offline_access for
// a refresh token (Exchange Online's OAuth page for IMAP, POP and SMTP).
var (
	GmailScopes     = []string{"https://mail.google.com/"}
	MicrosoftScopes = []string{"https://outlook.office.com/POP.AccessAsUser.All", "offline_access"}
)

// Client ids a distributor registered for Pouch may be built in, with
//
//	go build -ldflags "-X github.com/pouchmail/pouch/fetch/oauth.gmailClientID=ID ..."
//
// (gmailClientSecret, microsoftClientID likewise). Pouch's sources carry
// none: see docs/fetch-oauth.md for why, and how to register an app.
var (
	gmailClientID     string
	gmailClientSecret string
	microsoftClientID string
)

// Config is one account's OAuth settings, as the account's configuration
// gives them. Only Account and Provider are always required; the rest have
// per-provider defaults.
type Config struct {
	Account  string // the account's name; its token file is named after it
	Provider string // "gmail", "microsoft" or "custom"

	ClientID     string
	ClientSecret string   // "" for a public client
	Scopes       []string // nil: the provider's default

	// Tenant is Microsoft's directory: "common" (the default: work,
	// school and personal accounts), "consumers" (Outlook.com),
	// "organizations" (Microsoft 365), or a tenant id or domain for an app
	// registered in one directory only.
	Tenant string

	// Endpoints. For custom, Issuer finds them by discovery; any set here
	// wins over discovered and built-in ones.
	Issuer    string
	AuthURL   string
	TokenURL  string
	DeviceURL string
	RevokeURL string

	// RedirectPort is the loopback port of the browser flow; 0 picks a free
	// one (RFC 8252 §7.3). A fixed port lets the redirect travel through
	// an SSH tunnel to a machine without a browser.
	RedirectPort int

	// LoginHint is the address to sign in as; the provider then preselects
	// that account (OIDC Core §3.1.2.1 login_hint).
	LoginHint string

	// HTTPClient is used for every request to the provider; nil means a
	// client with a 30-second timeout.
	HTTPClient *http.Client `json:"-"`
}

// validTenant is a tenant Microsoft's endpoints take in their path.
var validTenant = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9.-]{0,99}$`)

// Validate reports the first thing wrong with c, as a sentence that names
// the setting to fix.
func (c Config) Validate() error {
	if c.Account == "" {
		return errors.New("oauth: the account has no name")
	}
	if strings.ContainsAny(c.Account, "/\x00") || c.Account == "." || c.Account == ".." {
		return fmt.Errorf("oauth: account name %q cannot name a token file", c.Account)
	}
	fail := func(format string, a ...any) error {
		return fmt.Errorf("account %s: "+format, append([]any{c.Account}, a...)...)
	}
	switch c.Provider {
	case Gmail:
		if c.clientID() == "" || c.clientSecret() == "" {
			return fail(`provider "gmail" needs client-id and client-secret from a Google Cloud "Desktop app" client; docs/fetch-oauth.md says how to make one`)
		}
	case Microsoft:
		if c.clientID() == "" {
			return fail(`provider "microsoft" needs client-id from a Microsoft Entra app registration; docs/fetch-oauth.md says how to make one`)
		}
		if c.Tenant != "" && !validTenant.MatchString(c.Tenant) {
			return fail("tenant %q is not common, consumers, organizations, a tenant id or a domain", c.Tenant)
		}
	case Custom:
		if c.ClientID == "" {
			return fail(`provider "custom" needs client-id`)
		}
		if c.Issuer == "" && c.TokenURL == "" {
			return fail(`provider "custom" needs issuer (for discovery) or token-url with auth-url or device-url`)
		}
		if c.Issuer == "" && c.AuthURL == "" && c.DeviceURL == "" {
			return fail(`provider "custom" needs auth-url (browser sign-in) or device-url (device sign-in)`)
		}
	case "":
		return fail(`no provider: set provider = "gmail", "microsoft" or "custom"`)
	default:
		return fail(`unknown provider %q: use "gmail", "microsoft" or "custom"`, c.Provider)
	}
	for name, u := range map[string]string{"issuer": c.Issuer, "auth-url": c.AuthURL,
		"token-url": c.TokenURL, "device-url": c.DeviceURL, "revoke-url": c.RevokeURL} {
		if u == "" {
			continue
		}
		if err := checkEndpoint(u); err != nil {
			return fail("%s: %v", name, err)
		}
	}
	if c.RedirectPort < 0 || c.RedirectPort > 65535 {
		return fail("redirect-port %d is not a port", c.RedirectPort)
	}
	return nil
}

// checkEndpoint requires https, or http to this machine, where nobody can
// read the codes and secrets on the way.
func checkEndpoint(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not an absolute URL", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if u.Hostname() == "localhost" {
			return nil
		}
		if ip, err := netip.ParseAddr(u.Hostname()); err == nil && ip.IsLoopback() {
			return nil
		}
	}
	return fmt.Errorf("%s must use https", u.Redacted())
}

func (c Config) clientID() string {
	switch {
	case c.ClientID != "":
		return c.ClientID
	case c.Provider == Gmail:
		return gmailClientID
	case c.Provider == Microsoft:
		return microsoftClientID
	}
	return ""
}

func (c Config) clientSecret() string {
	if c.ClientSecret == "" && c.ClientID == "" && c.Provider == Gmail {
		return gmailClientSecret
	}
	return c.ClientSecret
}

// scopes returns the scopes to ask for.
func (c Config) scopes() []string {
	switch {
	case c.Scopes != nil:
		return c.Scopes
	case c.Provider == Gmail:
		return GmailScopes
	case c.Provider == Microsoft:
		return MicrosoftScopes
	}
	return nil
}

func (c Config) httpClient() *http.Client {
	if c.HTTPClient != nil {
		return c.HTTPClient
	}
	return &http.Client{Timeout: 30 * time.Second}
}

// provider is a Config made ready for requests: the endpoints found.
type provider struct {
	cfg          Config
	oauth        oauth2.Config
	deviceURL    string
	revokeURL    string
	redirectHost string // the host written in the redirect URI
	authParams   []oauth2.AuthCodeOption
	client       *http.Client
}

// resolve finds c's endpoints: built in for gmail and microsoft, by
// discovery for custom with an issuer, and from c where it sets them.
func (c Config) resolve(ctx context.Context) (*provider, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	p := &provider{cfg: c, redirectHost: "127.0.0.1", client: c.httpClient()}
	var auth, token string
	switch c.Provider {
	case Gmail:
		// Google's OAuth 2.0 for installed apps. Its device flow does
		// not take the mail scope, so there is no device URL; a refresh
		// token comes only with access_type=offline, and again on a
		// second sign-in only with prompt=consent.
		auth, token = "https://accounts.google.com/o/oauth2/v2/auth", "https://oauth2.googleapis.com/token"
		p.revokeURL = "https://oauth2.googleapis.com/revoke"
		p.authParams = []oauth2.AuthCodeOption{oauth2.AccessTypeOffline, oauth2.SetAuthURLParam("prompt", "consent")}
	case Microsoft:
		t := c.Tenant
		if t == "" {
			t = "common"
		}
		base := "https://login.microsoftonline.com/" + t + "/oauth2/v2.0/"
		auth, token, p.deviceURL = base+"authorize", base+"token", base+"devicecode"
		// Entra ID registers a desktop app's loopback redirect as
		// http://localhost and then takes any port with it.
		p.redirectHost = "localhost"
	case Custom:
		if c.Issuer != "" {
			m, err := discover(ctx, p.client, c.Issuer)
			if err != nil {
				return nil, fmt.Errorf("account %s: %w", c.Account, err)
			}
			auth, token, p.deviceURL, p.revokeURL = m.AuthorizationEndpoint, m.TokenEndpoint, m.DeviceAuthorizationEndpoint, m.RevocationEndpoint
		}
	}
	for _, o := range []struct {
		dst *string
		v   string
	}{
		{&auth, c.AuthURL}, {&token, c.TokenURL}, {&p.deviceURL, c.DeviceURL}, {&p.revokeURL, c.RevokeURL},
	} {
		if o.v != "" {
			*o.dst = o.v
		}
	}
	if token == "" {
		return nil, fmt.Errorf("account %s: the provider names no token endpoint", c.Account)
	}
	for _, u := range []string{auth, token, p.deviceURL, p.revokeURL} {
		if u == "" {
			continue
		}
		if err := checkEndpoint(u); err != nil {
			return nil, fmt.Errorf("account %s: discovered endpoint: %v", c.Account, err)
		}
	}
	// A public client names itself in the body (RFC 6749 §3.2.1); a
	// confidential one uses HTTP Basic, which every server must take
	// (§2.3.1) — except Google's and Microsoft's, documented with the body.
	// Probing both (x/oauth2's default) would poll the device endpoint
	// twice.
	style := oauth2.AuthStyleInParams
	if c.Provider == Custom && c.ClientSecret != "" {
		style = oauth2.AuthStyleInHeader
	}
	p.oauth = oauth2.Config{
		ClientID:     c.clientID(),
		ClientSecret: c.clientSecret(),
		Scopes:       c.scopes(),
		Endpoint:     oauth2.Endpoint{AuthURL: auth, TokenURL: token, DeviceAuthURL: p.deviceURL, AuthStyle: style},
	}
	if c.LoginHint != "" {
		p.authParams = append(p.authParams, oauth2.SetAuthURLParam("login_hint", c.LoginHint))
	}
	return p, nil
}

// ctx carries the HTTP client to x/oauth2.
func (p *provider) ctx(ctx context.Context) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, p.client)
}

// metadata is the part of an OIDC discovery document (OpenID Connect
// Discovery 1.0 §3) or RFC 8414 metadata that Pouch uses.
type metadata struct {
	Issuer                      string `json:"issuer"`
	AuthorizationEndpoint       string `json:"authorization_endpoint"`
	TokenEndpoint               string `json:"token_endpoint"`
	DeviceAuthorizationEndpoint string `json:"device_authorization_endpoint"`
	RevocationEndpoint          string `json:"revocation_endpoint"`
}

// discover fetches issuer's metadata: OIDC's
// ISSUER/.well-known/openid-configuration (Discovery §4.1), then RFC 8414's
// https://HOST/.well-known/oauth-authorization-server/PATH (§3.1). The
// document must name the same issuer (Discovery §4.3, RFC 8414 §3.3).
func discover(ctx context.Context, client *http.Client, issuer string) (*metadata, error) {
	u, err := url.Parse(issuer)
	if err != nil {
		return nil, fmt.Errorf("issuer %q is not a URL", issuer)
	}
	oidc := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	rfc8414 := (&url.URL{Scheme: u.Scheme, Host: u.Host,
		Path: "/.well-known/oauth-authorization-server" + strings.TrimSuffix(u.Path, "/")}).String()
	var errs []error
	for _, where := range []string{oidc, rfc8414} {
		m, err := fetchMetadata(ctx, client, where)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if strings.TrimSuffix(m.Issuer, "/") != strings.TrimSuffix(issuer, "/") {
			return nil, fmt.Errorf("discovery: %s names issuer %q, not %q", where, m.Issuer, issuer)
		}
		return m, nil
	}
	return nil, fmt.Errorf("discovery for issuer %s failed: %w", issuer, errors.Join(errs...))
}

func fetchMetadata(ctx context.Context, client *http.Client, where string) (*metadata, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, where, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", where, resp.Status)
	}
	var m metadata
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&m); err != nil {
		return nil, fmt.Errorf("%s: not a metadata document: %v", where, err)
	}
	return &m, nil
}

// sameScopes reports whether a and b hold the same scopes in any order.
func sameScopes(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}
