package oauth

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/pouchmail/pouch/internal/oauthtest"
)

func TestValidate(t *testing.T) {
	ok := []Config{
		{Account: "g", Provider: Gmail, ClientID: "id", ClientSecret: "s"},
		{Account: "m", Provider: Microsoft, ClientID: "id"},
		{Account: "m", Provider: Microsoft, ClientID: "id", Tenant: "consumers"},
		{Account: "m", Provider: Microsoft, ClientID: "id", Tenant: "8eaef023-2b34-4da1-9baa-8bc8c9d6a490"},
		{Account: "c", Provider: Custom, ClientID: "id", Issuer: "https://id.example.org"},
		{Account: "c", Provider: Custom, ClientID: "id", TokenURL: "http://127.0.0.1:8080/t", DeviceURL: "http://localhost/d"},
	}
	for _, c := range ok {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{Provider: Gmail}, "the account has no name"},
		{Config{Account: "a/b", Provider: Gmail}, "cannot name a token file"},
		{Config{Account: "a"}, `no provider: set provider = "gmail", "microsoft" or "custom"`},
		{Config{Account: "a", Provider: "yahoo"}, `unknown provider "yahoo"`},
		{Config{Account: "a", Provider: Gmail, ClientID: "id"}, `needs client-id and client-secret from a Google Cloud "Desktop app" client; docs/fetch-oauth.md`},
		{Config{Account: "a", Provider: Microsoft}, "needs client-id from a Microsoft Entra app registration"},
		{Config{Account: "a", Provider: Microsoft, ClientID: "id", Tenant: "../evil"}, `tenant "../evil" is not`},
		{Config{Account: "a", Provider: Custom, ClientID: "id"}, "needs issuer (for discovery) or token-url"},
		{Config{Account: "a", Provider: Custom, ClientID: "id", TokenURL: "https://x/t"}, "needs auth-url (browser sign-in) or device-url"},
		{Config{Account: "a", Provider: Custom, Issuer: "https://x"}, `provider "custom" needs client-id`},
		{Config{Account: "a", Provider: Custom, ClientID: "id", Issuer: "http://id.example.org"}, "issuer: http://id.example.org must use https"},
		{Config{Account: "a", Provider: Custom, ClientID: "id", Issuer: "id.example.org"}, "is not an absolute URL"},
		{Config{Account: "a", Provider: Gmail, ClientID: "id", ClientSecret: "s", RedirectPort: 70000}, "redirect-port 70000"},
	} {
		err := tc.c.Validate()
		if err == nil || !contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.c, err, tc.want)
		}
	}
}

func TestBuiltInProviders(t *testing.T) {
	ctx := context.Background()
	p, err := Config{Account: "g", Provider: Gmail, ClientID: "id", ClientSecret: "s"}.resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if p.oauth.Endpoint.TokenURL != "https://oauth2.googleapis.com/token" || p.deviceURL != "" ||
		p.revokeURL != "https://oauth2.googleapis.com/revoke" || !slices.Equal(p.oauth.Scopes, []string{"https://mail.google.com/"}) {
		t.Fatalf("gmail: %+v", p)
	}
	if u := p.oauth.AuthCodeURL("st", p.authParams...); !contains(u, "access_type=offline") || !contains(u, "prompt=consent") {
		t.Fatalf("gmail asks for no refresh token: %s", u)
	}
	for tenant, base := range map[string]string{
		"":          "https://login.microsoftonline.com/common/oauth2/v2.0/",
		"consumers": "https://login.microsoftonline.com/consumers/oauth2/v2.0/",
	} {
		p, err := Config{Account: "m", Provider: Microsoft, ClientID: "id", Tenant: tenant}.resolve(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p.oauth.Endpoint.AuthURL != base+"authorize" || p.oauth.Endpoint.TokenURL != base+"token" ||
			p.deviceURL != base+"devicecode" || p.revokeURL != "" || p.redirectHost != "localhost" ||
			!slices.Equal(p.oauth.Scopes, []string{"https://outlook.office.com/POP.AccessAsUser.All", "offline_access"}) {
			t.Fatalf("microsoft %q: %+v", tenant, p)
		}
	}
	// Explicit endpoints and scopes win.
	p, err = Config{Account: "m", Provider: Microsoft, ClientID: "id", TokenURL: "https://proxy.example/token", Scopes: []string{"x"}}.resolve(ctx)
	if err != nil || p.oauth.Endpoint.TokenURL != "https://proxy.example/token" || !slices.Equal(p.oauth.Scopes, []string{"x"}) {
		t.Fatalf("override: %+v %v", p, err)
	}
}

// A client id built in with -ldflags -X serves when the config has none.
func TestBuiltInClientID(t *testing.T) {
	defer func(id, secret string) { gmailClientID, gmailClientSecret = id, secret }(gmailClientID, gmailClientSecret)
	gmailClientID, gmailClientSecret = "built-in.apps.googleusercontent.com", "built-in-secret"
	p, err := Config{Account: "g", Provider: Gmail}.resolve(context.Background())
	if err != nil || p.oauth.ClientID != "built-in.apps.googleusercontent.com" || p.oauth.ClientSecret != "built-in-secret" {
		t.Fatalf("%+v %v", p, err)
	}
	// A configured id never takes the built-in secret.
	if err := (Config{Account: "g", Provider: Gmail, ClientID: "mine"}).Validate(); err == nil {
		t.Fatal("a configured client id without its secret passed")
	}
}

func TestDiscovery(t *testing.T) {
	srv := oauthtest.New(t, oauthtest.Options{})
	p, err := customConfig(srv, "").resolve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p.oauth.Endpoint.AuthURL != srv.AuthURL() || p.oauth.Endpoint.TokenURL != srv.TokenURL() ||
		p.deviceURL != srv.DeviceURL() || p.revokeURL != srv.RevokeURL() {
		t.Fatalf("discovered %+v", p)
	}

	// RFC 8414 only, for an issuer with a path.
	var issuer string
	meta := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/oauth-authorization-server/tenant1" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"issuer": issuer,
			"authorization_endpoint": issuer + "/auth", "token_endpoint": issuer + "/token"})
	}))
	defer meta.Close()
	issuer = meta.URL + "/tenant1"
	p, err = Config{Account: "c", Provider: Custom, ClientID: "id", Issuer: issuer}.resolve(context.Background())
	if err != nil || p.oauth.Endpoint.TokenURL != issuer+"/token" {
		t.Fatalf("RFC 8414: %+v %v", p, err)
	}

	// A document naming another issuer is refused (Discovery §4.3).
	_, err = Config{Account: "c", Provider: Custom, ClientID: "id", Issuer: meta.URL + "/tenant1/"}.resolve(context.Background())
	if err != nil {
		t.Fatalf("a trailing slash: %v", err)
	}
	issuer = "https://evil.example"
	_, err = Config{Account: "c", Provider: Custom, ClientID: "id", Issuer: meta.URL + "/tenant1"}.resolve(context.Background())
	if err == nil || !contains(err.Error(), `names issuer "https://evil.example"`) {
		t.Fatalf("mismatch: %v", err)
	}

	// No metadata at all.
	_, err = Config{Account: "c", Provider: Custom, ClientID: "id", Issuer: meta.URL + "/none"}.resolve(context.Background())
	if err == nil || !contains(err.Error(), "discovery for issuer") || !contains(err.Error(), "404") {
		t.Fatalf("no metadata: %v", err)
	}
}

// Discovered endpoints must be https too, as configured ones are.
func TestDiscoveredEndpointMustBeHTTPS(t *testing.T) {
	var issuer string
	meta := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"issuer": issuer, "token_endpoint": "http://tokens.example/token",
			"authorization_endpoint": issuer + "/auth"})
	}))
	defer meta.Close()
	issuer = meta.URL
	_, err := Config{Account: "c", Provider: Custom, ClientID: "id", Issuer: issuer}.resolve(context.Background())
	if err == nil || !contains(err.Error(), "http://tokens.example/token must use https") {
		t.Fatalf("got %v", err)
	}
}

func TestLoginRequiredText(t *testing.T) {
	for _, tc := range []struct {
		e    LoginRequiredError
		want string
	}{
		{LoginRequiredError{Account: "gmail", Reason: "r"}, "account gmail: r; log in again with: pouch fetch auth login gmail"},
		{LoginRequiredError{Account: "it's", Reason: "r", First: true}, `account it's: r; log in with: pouch fetch auth login 'it'\''s'`},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}
