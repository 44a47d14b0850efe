package oauth

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/oauthtest"
	"github.com/pouchmail/pouch/internal/testkit"
)

// No token, code, verifier or secret appears in anything a user or an
// operator sees: the instructions, the browser's page, the log, the error
// texts — even from a provider whose errors repeat what it was sent.
func TestNoSecretsInLogsOrErrors(t *testing.T) {
	const secret = "client-secret-0123456789"
	srv := oauthtest.New(t, oauthtest.Options{ClientSecret: secret, EchoSecrets: true})
	logger, logs := logCapture()
	stateDir := t.TempDir()
	store := NewStore(stateDir, logger)
	cfg := customConfig(srv, secret)
	var seen []string // every text shown
	out := &testkit.SyncBuffer{}
	extra := []string{secret}

	// A sign-in.
	v, err := loginBrowser(t, cfg, store, newBrowser(), out)
	if err != nil {
		t.Fatal(err)
	}
	seen = append(seen, v.page)
	// A sign-in whose code the provider refuses, and repeats.
	b := newBrowser()
	b.tamper = func(u *url.URL) {
		q := u.Query()
		q.Set("code", "bogus-code-0123456789")
		u.RawQuery = q.Encode()
	}
	extra = append(extra, "bogus-code-0123456789")
	v, err = loginBrowser(t, cfg, store, b, out)
	if err == nil || !contains(err.Error(), "invalid_grant") {
		t.Fatalf("bogus code: %v", err)
	}
	seen = append(seen, err.Error(), v.page)

	// A refresh, then a provider that is down, then a revoked grant, and
	// a wrong client secret.
	src, _ := TokenSource(cfg, store)
	age(t, store, "work", time.Hour, -time.Minute)
	if _, err := src.Token(); err != nil {
		t.Fatal(err)
	}
	age(t, store, "work", time.Hour, -time.Minute)
	srv.FailNext(1)
	if _, err := src.Token(); err == nil || !contains(err.Error(), "HTTP 503") {
		t.Fatalf("503: %v", err)
	} else {
		seen = append(seen, err.Error())
	}
	wrong := cfg
	wrong.ClientSecret = "wrong-secret-0123456789"
	extra = append(extra, wrong.ClientSecret)
	wsrc, _ := TokenSource(wrong, NewStore(stateDir, logger))
	if _, err := wsrc.Token(); err == nil || !contains(err.Error(), "invalid_client") {
		t.Fatalf("wrong secret: %v", err)
	} else {
		seen = append(seen, err.Error())
	}
	srv.RevokeAll()
	if _, err := src.Token(); !isLoginRequired(err) {
		t.Fatalf("revoked: %v", err)
	} else {
		seen = append(seen, err.Error())
	}

	// The device flow (with a server on the fake clock), and a device code
	// the provider refuses and repeats.
	clk := newFakeClock()
	dsrv := oauthtest.New(t, oauthtest.Options{ClientSecret: secret, EchoSecrets: true, Now: clk.Now})
	dcfg := customConfig(dsrv, secret)
	dcfg.Account = "device"
	dout := &testkit.SyncBuffer{}
	clk.onSleep = func(n int) {
		if n == 2 {
			userVisits(t, dout, false)
		}
	}
	if err := Login(context.Background(), dcfg, store, LoginOptions{Mode: Device, Out: dout, clock: clk}); err != nil {
		t.Fatal(err)
	}
	seen = append(seen, dout.String())
	p, err := dcfg.resolve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.pollDevice(context.Background(), "device-code-0123456789", time.Second, 0, newFakeClock())
	if err == nil || !contains(err.Error(), "invalid_grant") {
		t.Fatalf("unknown device code: %v", err)
	}
	extra = append(extra, "device-code-0123456789")
	seen = append(seen, err.Error())

	// Logout, revoking.
	if err := Logout(context.Background(), cfg, store); err != nil {
		t.Fatal(err)
	}
	seen = append(seen, out.String(), logs.String())

	all := strings.Join(seen, "\n")
	secrets := append(append(srv.Secrets(), dsrv.Secrets()...), extra...)
	if len(secrets) < 10 {
		t.Fatalf("only %d secrets to look for", len(secrets))
	}
	for _, s := range secrets {
		if strings.Contains(all, s) {
			t.Errorf("secret %.12q… shown in:\n%s", s, all)
		}
	}
	// The log said something useful all the same.
	for _, want := range []string{"oauth token refreshed", "account=work"} {
		if !contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestRedact(t *testing.T) {
	err := redact(&ProviderError{Account: "a", Op: "refresh", Code: "invalid_grant", Description: "token abcdef123 is bad"}, "abcdef123", "", "ab")
	if err.Error() != "account a: refresh failed: the provider answered invalid_grant: token [redacted] is bad" {
		t.Fatalf("got %q", err)
	}
	var pe *ProviderError
	if !errors.As(err, &pe) || pe.Code != "invalid_grant" || contains(pe.Description, "abcdef123") {
		t.Fatalf("the redacted error: %#v", pe)
	}
	wrapped := redact(fmt.Errorf("context: %w", &ProviderError{Account: "a", Op: "x", Description: "abcdef123"}), "abcdef123")
	if !errors.As(wrapped, &pe) || contains(pe.Error(), "abcdef123") || contains(wrapped.Error(), "abcdef123") {
		t.Fatalf("wrapped: %v / %v", wrapped, pe)
	}
	if !errors.Is(redact(fmt.Errorf("abandoned abcdef123: %w", context.Canceled), "abcdef123"), context.Canceled) {
		t.Fatal("a redacted cancellation is no longer one")
	}
}
