package oauth

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/pouchmail/pouch/internal/oauthtest"
	"github.com/pouchmail/pouch/internal/testkit"
)

// The whole browser flow: discovery, the authorization request with PKCE,
// the redirect to the loopback listener (after a stray request that must
// not end the wait), the code exchange, the token file, and the listener
// closed afterwards.
func TestBrowserLoginWithPKCE(t *testing.T) {
	for _, secret := range []string{"", "s3cret-client"} {
		name := "public client"
		if secret != "" {
			name = "confidential client"
		}
		t.Run(name, func(t *testing.T) {
			srv := oauthtest.New(t, oauthtest.Options{ClientSecret: secret})
			store := NewStore(t.TempDir(), nil)
			cfg := customConfig(srv, secret)
			cfg.LoginHint = "alice@example.org"
			b := newBrowser()
			var redirect string
			b.tamper = func(u *url.URL) {
				redirect = u.Scheme + "://" + u.Host + "/"
				// A stray request first (a browser's favicon): ignored.
				resp, err := http.Get(redirect + "favicon.ico")
				if err != nil || resp.StatusCode != http.StatusNotFound {
					t.Errorf("favicon: %v %v", resp, err)
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
			out := &testkit.SyncBuffer{}
			v, err := loginBrowser(t, cfg, store, b, out)
			if err != nil {
				t.Fatalf("login: %v\n%s", err, out)
			}
			if v.status != http.StatusOK || !contains(v.page, "Pouch is signed in to account work") {
				t.Fatalf("the browser saw %d %q", v.status, v.page)
			}
			u, _ := url.Parse(v.location)
			if u.Hostname() != "127.0.0.1" || u.Path != "/" || u.Query().Get("state") == "" {
				t.Fatalf("redirect %s: not http://127.0.0.1:PORT/ with a state", v.location)
			}
			if !contains(out.String(), "open this address in a web browser") || !contains(out.String(), "code_challenge_method=S256") ||
				!contains(out.String(), "login_hint=alice%40example.org") {
				t.Fatalf("instructions:\n%s", out)
			}
			if srv.Count("authorization_code") != 1 {
				t.Fatalf("%d code exchanges", srv.Count("authorization_code"))
			}
			// RFC 8252 §7.3: the listener is gone once the redirect came.
			if c, err := net.DialTimeout("tcp", u.Host, time.Second); err == nil {
				c.Close()
				t.Fatalf("the loopback listener %s is still open", u.Host)
			}
			src, err := TokenSource(cfg, store)
			if err != nil {
				t.Fatal(err)
			}
			tok, err := src.Token()
			if err != nil {
				t.Fatal(err)
			}
			if user, err := srv.Verify(tok.AccessToken); err != nil || user != "alice@example.org" {
				t.Fatalf("the stored access token: %q, %v", user, err)
			}
			if tok.RefreshToken != "" {
				t.Fatal("the source hands out the refresh token")
			}
			if srv.Count("refresh_token") != 0 {
				t.Fatal("a fresh token was refreshed")
			}
			if v := srv.Violations(); len(v) > 0 {
				t.Fatal(v)
			}
		})
	}
}

func TestBrowserLoginDeclined(t *testing.T) {
	srv := oauthtest.New(t, oauthtest.Options{})
	srv.Deny(true)
	store := NewStore(t.TempDir(), nil)
	v, err := loginBrowser(t, customConfig(srv, ""), store, newBrowser(), io.Discard)
	var pe *ProviderError
	if !errors.As(err, &pe) || pe.Code != "access_denied" || !contains(err.Error(), "the sign-in was declined") {
		t.Fatalf("got %v", err)
	}
	if v.status != http.StatusBadRequest || !contains(v.page, "The sign-in was declined.") {
		t.Fatalf("the browser saw %d %q", v.status, v.page)
	}
	if _, err := os.Stat(store.Path("work")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a token file after a declined sign-in: %v", err)
	}
}

// RFC 6749 §10.12: a redirect with another state is refused, code or not.
func TestBrowserLoginChecksState(t *testing.T) {
	srv := oauthtest.New(t, oauthtest.Options{})
	store := NewStore(t.TempDir(), nil)
	b := newBrowser()
	b.tamper = func(u *url.URL) {
		q := u.Query()
		q.Set("state", "forged")
		u.RawQuery = q.Encode()
	}
	v, err := loginBrowser(t, customConfig(srv, ""), store, b, io.Discard)
	if err == nil || !contains(err.Error(), "its state differs") {
		t.Fatalf("got %v", err)
	}
	if v.status != http.StatusBadRequest {
		t.Fatalf("the browser saw %d", v.status)
	}
	if srv.Count("authorization_code") != 0 {
		t.Fatal("the code was exchanged")
	}
	if _, err := os.Stat(store.Path("work")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a token file after a forged redirect")
	}
}

// A browser on another machine: the user pastes the address it was sent to.
func TestBrowserLoginPastedAddress(t *testing.T) {
	srv := oauthtest.New(t, oauthtest.Options{})
	store := NewStore(t.TempDir(), nil)
	b := newBrowser()
	b.stop = true
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		v := <-b.visits
		if v.location == "" {
			pw.CloseWithError(errors.New("no redirect"))
			return
		}
		io.WriteString(pw, "not an address\n")
		io.WriteString(pw, v.location+"\n")
	}()
	out := &testkit.SyncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Login(ctx, customConfig(srv, ""), store, LoginOptions{Mode: Browser, Out: out, In: pr, OpenBrowser: b.open})
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !contains(out.String(), "paste here the address") || !contains(out.String(), "That is not the address") {
		t.Fatalf("instructions:\n%s", out)
	}
	if _, err := os.Stat(store.Path("work")); err != nil {
		t.Fatal(err)
	}
}

func TestBrowserLoginFixedPortInUse(t *testing.T) {
	srv := oauthtest.New(t, oauthtest.Options{})
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := customConfig(srv, "")
	cfg.RedirectPort = ln.Addr().(*net.TCPAddr).Port
	err = Login(context.Background(), cfg, NewStore(t.TempDir(), nil), LoginOptions{Mode: Browser, Out: io.Discard})
	if err == nil || !contains(err.Error(), "cannot listen on redirect-port") {
		t.Fatalf("got %v", err)
	}
}

// deviceLogin signs in with the device flow on a fake clock; onSleep plays
// the user between polls.
func deviceLoginFake(t *testing.T, srv *oauthtest.Server, clk *fakeClock, out *testkit.SyncBuffer) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return Login(ctx, customConfig(srv, ""), NewStore(t.TempDir(), nil), LoginOptions{Mode: Device, Out: out, clock: clk})
}

// userVisits plays the user who opens the address with the code in it.
func userVisits(t *testing.T, out *testkit.SyncBuffer, deny bool) {
	t.Helper()
	const intro = "Or open this address, which has the code in it:"
	i := strings.Index(out.String(), intro)
	if i < 0 {
		t.Error("no verification_uri_complete shown")
		return
	}
	addr := strings.Fields(out.String()[i+len(intro):])[0]
	if deny {
		addr += "&deny=1"
	}
	resp, err := http.Get(addr)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("verification page: %v %v", resp, err)
		return
	}
	resp.Body.Close()
}

func sleepsEqual(got []time.Duration, want ...int) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != time.Duration(want[i])*time.Second {
			return false
		}
	}
	return true
}

func TestDeviceLoginPending(t *testing.T) {
	clk := newFakeClock()
	srv := oauthtest.New(t, oauthtest.Options{Now: clk.Now, DeviceInterval: 3})
	out := &testkit.SyncBuffer{}
	clk.onSleep = func(n int) {
		if n == 3 {
			userVisits(t, out, false)
		}
	}
	if err := deviceLoginFake(t, srv, clk, out); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// Two polls answered authorization_pending, the third the token.
	if s := clk.Sleeps(); !sleepsEqual(s, 3, 3, 3) {
		t.Fatalf("waited %v", s)
	}
	if srv.Count("device_poll") != 3 || srv.Count("device_code") != 1 {
		t.Fatalf("%d polls, %d tokens", srv.Count("device_poll"), srv.Count("device_code"))
	}
	if !contains(out.String(), "enter the code") || !contains(out.String(), "The code is good for 10m0s") {
		t.Fatalf("instructions:\n%s", out)
	}
	if v := srv.Violations(); len(v) > 0 {
		t.Fatal(v)
	}
}

// RFC 8628 §3.5: each slow_down adds five seconds to this and every later
// interval; the server counts a poll that comes sooner as a violation.
func TestDeviceLoginSlowDown(t *testing.T) {
	clk := newFakeClock()
	srv := oauthtest.New(t, oauthtest.Options{Now: clk.Now})
	srv.SlowDown(2)
	out := &testkit.SyncBuffer{}
	clk.onSleep = func(n int) {
		if n == 3 {
			userVisits(t, out, false)
		}
	}
	if err := deviceLoginFake(t, srv, clk, out); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if s := clk.Sleeps(); !sleepsEqual(s, 5, 10, 15) {
		t.Fatalf("waited %v", s)
	}
	if v := srv.Violations(); len(v) > 0 {
		t.Fatal(v)
	}
}

func TestDeviceLoginDeclined(t *testing.T) {
	clk := newFakeClock()
	srv := oauthtest.New(t, oauthtest.Options{Now: clk.Now})
	out := &testkit.SyncBuffer{}
	clk.onSleep = func(n int) {
		if n == 2 {
			userVisits(t, out, true)
		}
	}
	err := deviceLoginFake(t, srv, clk, out)
	if err == nil || !contains(err.Error(), "the sign-in was declined") {
		t.Fatalf("got %v", err)
	}
	if srv.Count("device_poll") != 2 {
		t.Fatalf("%d polls", srv.Count("device_poll"))
	}
}

// The client stops at expires_in without polling past it.
func TestDeviceLoginExpires(t *testing.T) {
	clk := newFakeClock()
	srv := oauthtest.New(t, oauthtest.Options{Now: clk.Now, DeviceTTL: 12 * time.Second})
	out := &testkit.SyncBuffer{}
	err := deviceLoginFake(t, srv, clk, out)
	if err == nil || !contains(err.Error(), "the code expired before the sign-in was finished; run the login again") {
		t.Fatalf("got %v", err)
	}
	if srv.Count("device_poll") != 2 {
		t.Fatalf("%d polls in 12 s at 5 s", srv.Count("device_poll"))
	}
}

// A server that says expired_token (the client did not know the lifetime).
func TestDevicePollExpiredToken(t *testing.T) {
	clk := newFakeClock()
	srv := oauthtest.New(t, oauthtest.Options{Now: clk.Now, DeviceTTL: 12 * time.Second})
	p, err := customConfig(srv, "").resolve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	da, err := p.oauth.DeviceAuth(p.ctx(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.pollDevice(context.Background(), da.DeviceCode, 5*time.Second, 0, clk)
	if err == nil || !contains(err.Error(), "the code expired") {
		t.Fatalf("got %v", err)
	}
	if srv.Count("device_poll") != 3 {
		t.Fatalf("%d polls", srv.Count("device_poll"))
	}
}

// Polls that reach no answer (a 503 from the provider's front end) back off
// twice as long each time, then polling goes on at the interval.
func TestDeviceLoginBacksOff(t *testing.T) {
	clk := newFakeClock()
	srv := oauthtest.New(t, oauthtest.Options{Now: clk.Now})
	srv.FailNext(2)
	out := &testkit.SyncBuffer{}
	clk.onSleep = func(n int) {
		if n == 4 {
			userVisits(t, out, false)
		}
	}
	if err := deviceLoginFake(t, srv, clk, out); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if s := clk.Sleeps(); !sleepsEqual(s, 5, 10, 20, 5) {
		t.Fatalf("waited %v", s)
	}
}

func TestDeviceLoginCancelled(t *testing.T) {
	srv := oauthtest.New(t, oauthtest.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	clk := newFakeClock()
	clk.onSleep = func(int) { cancel() }
	err := Login(ctx, customConfig(srv, ""), NewStore(t.TempDir(), nil), LoginOptions{Mode: Device, Out: io.Discard, clock: clk})
	if !errors.Is(err, context.Canceled) || !contains(err.Error(), "sign-in abandoned") {
		t.Fatalf("got %v", err)
	}
}

func TestChooseMode(t *testing.T) {
	both := &provider{cfg: Config{Account: "a", Provider: Custom}, deviceURL: "https://x/device"}
	both.oauth.Endpoint.AuthURL = "https://x/auth"
	gmail := &provider{cfg: Config{Account: "a", Provider: Gmail}}
	gmail.oauth.Endpoint.AuthURL = "https://x/auth"
	deviceOnly := &provider{cfg: Config{Account: "a", Provider: Custom}, deviceURL: "https://x/device"}
	open := func(string) error { return nil }
	for _, tc := range []struct {
		p       *provider
		o       LoginOptions
		display bool
		want    Mode
		err     string
	}{
		{both, LoginOptions{OpenBrowser: open}, true, Browser, ""},
		{both, LoginOptions{OpenBrowser: open}, false, Device, ""},
		{both, LoginOptions{}, true, Device, ""},
		{gmail, LoginOptions{}, false, Browser, ""},
		{deviceOnly, LoginOptions{OpenBrowser: open}, true, Device, ""},
		{both, LoginOptions{Mode: Browser}, false, Browser, ""},
		{gmail, LoginOptions{Mode: Device}, true, "", "does not grant mail access"},
		{deviceOnly, LoginOptions{Mode: Browser}, true, "", "no authorization endpoint"},
		{both, LoginOptions{Mode: "carrier-pigeon"}, true, "", "unknown sign-in mode"},
	} {
		got, err := chooseMode(tc.p, tc.o, tc.display)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !contains(err.Error(), tc.err)) {
			t.Errorf("%s %+v display=%v: %q, %v", tc.p.cfg.Provider, tc.o.Mode, tc.display, got, err)
		}
	}
}

func TestLogoutRevokes(t *testing.T) {
	srv := oauthtest.New(t, oauthtest.Options{})
	store := NewStore(t.TempDir(), nil)
	cfg := customConfig(srv, "")
	if _, err := loginBrowser(t, cfg, store, newBrowser(), io.Discard); err != nil {
		t.Fatal(err)
	}
	rec, err := store.load("work")
	if err != nil {
		t.Fatal(err)
	}
	if err := Logout(context.Background(), cfg, store); err != nil {
		t.Fatal(err)
	}
	if srv.Count("revoke") != 1 {
		t.Fatalf("%d revocations", srv.Count("revoke"))
	}
	if _, err := os.Stat(store.Path("work")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the token file is still there")
	}
	// RFC 7009 §2.1: the grant's access token is revoked with it.
	if _, err := srv.Verify(rec.AccessToken); err == nil {
		t.Fatal("the access token still verifies")
	}
	src, _ := TokenSource(cfg, store)
	if _, err := src.Token(); !isLoginRequired(err) || !contains(err.Error(), "log in with: pouch fetch auth login work") {
		t.Fatalf("after logout: %v", err)
	}
	if err := Logout(context.Background(), cfg, store); err != nil {
		t.Fatalf("a second logout: %v", err)
	}
}

// Microsoft's redirect is written http://localhost:PORT/ (as Entra ID
// registers a desktop app's), and Pouch listens on both loopback addresses.
func TestMicrosoftRedirectIsLocalhost(t *testing.T) {
	srv := oauthtest.New(t, oauthtest.Options{ClientID: "ms-app"})
	cfg := Config{Account: "m365", Provider: Microsoft, ClientID: "ms-app",
		AuthURL: srv.AuthURL(), TokenURL: srv.TokenURL(), DeviceURL: srv.DeviceURL()}
	store := NewStore(t.TempDir(), nil)
	out := &testkit.SyncBuffer{}
	v, err := loginBrowser(t, cfg, store, newBrowser(), out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	u, _ := url.Parse(v.location)
	if u.Hostname() != "localhost" || v.status != http.StatusOK {
		t.Fatalf("redirect %s, page %d", v.location, v.status)
	}
	if !contains(out.String(), "scope=https%3A%2F%2Foutlook.office.com%2FPOP.AccessAsUser.All+offline_access") {
		t.Fatalf("instructions:\n%s", out)
	}
	if contains(out.String(), "Warning") {
		t.Fatalf("a warning for granted scopes:\n%s", out)
	}
}

func TestLoginAbandoned(t *testing.T) {
	srv := oauthtest.New(t, oauthtest.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	var addr string
	open := func(u string) error {
		p, _ := url.Parse(u)
		r, _ := url.Parse(p.Query().Get("redirect_uri"))
		addr = r.Host
		cancel() // the user gives up: Ctrl-C
		return nil
	}
	err := Login(ctx, customConfig(srv, ""), NewStore(t.TempDir(), nil), LoginOptions{Mode: Browser, Out: io.Discard, OpenBrowser: open})
	if !errors.Is(err, context.Canceled) || !contains(err.Error(), "sign-in abandoned") {
		t.Fatalf("got %v", err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("the loopback listener %s is still open", addr)
	}
}

func TestGrantedScopes(t *testing.T) {
	for _, tc := range []struct {
		granted, want string
		ok            bool
	}{
		{"https://outlook.office.com/POP.AccessAsUser.All", "https://outlook.office.com/POP.AccessAsUser.All", true},
		{"POP.AccessAsUser.All openid", "https://outlook.office.com/POP.AccessAsUser.All", true},
		{"https://mail.google.com/", "https://mail.google.com/", true},
		{"https://www.googleapis.com/auth/gmail.readonly", "https://mail.google.com/", false},
		{"IMAP.AccessAsUser.All", "https://outlook.office.com/POP.AccessAsUser.All", false},
	} {
		if got := grantedHas(strings.Fields(tc.granted), tc.want); got != tc.ok {
			t.Errorf("%q has %q: %v", tc.granted, tc.want, got)
		}
	}
	// A sign-in that got less than it asked for says so.
	store := NewStore(t.TempDir(), nil)
	p := &provider{cfg: Config{Account: "a", Provider: Gmail}}
	p.oauth.ClientID, p.oauth.Scopes = "id", []string{"https://mail.google.com/"}
	out := &testkit.SyncBuffer{}
	tok := (&oauth2.Token{AccessToken: "x", RefreshToken: "y"}).WithExtra(map[string]any{"scope": "https://www.googleapis.com/auth/gmail.readonly"})
	if err := store.saveLogin(p, tok, out); err != nil {
		t.Fatal(err)
	}
	if !contains(out.String(), "Warning: the provider did not grant the scope https://mail.google.com/") {
		t.Fatalf("got:\n%s", out)
	}
}
