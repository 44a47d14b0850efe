package oauth

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"golang.org/x/oauth2"
)

const deviceGrant = "urn:ietf:params:oauth:grant-type:device_code"

// deviceLogin runs the device authorization grant (RFC 8628): the device
// authorization request through x/oauth2, then the polling here, because
// x/oauth2's DeviceAccessToken polls on the wall clock and ends an expired
// code as a bare context deadline.
func deviceLogin(ctx context.Context, p *provider, o LoginOptions) (*oauth2.Token, error) {
	acct := p.cfg.Account
	var opts []oauth2.AuthCodeOption
	if p.oauth.ClientSecret != "" {
		// §3.1: a confidential client authenticates here too.
		opts = append(opts, oauth2.SetAuthURLParam("client_secret", p.oauth.ClientSecret))
	}
	da, err := p.oauth.DeviceAuth(p.ctx(ctx), opts...)
	if err != nil {
		return nil, providerError(acct, "device authorization", err)
	}
	if da.DeviceCode == "" || da.UserCode == "" || da.VerificationURI == "" {
		return nil, fmt.Errorf("account %s: device authorization failed: the provider's answer lacks the device code, the user code or the address", acct)
	}
	lifetime := time.Until(da.Expiry)
	if da.Expiry.IsZero() {
		lifetime = 0
	}
	fmt.Fprintf(o.Out, "To sign in account %s, open %s on any device and enter the code\n\n    %s\n\n",
		acct, cleanText(da.VerificationURI, 300), cleanText(da.UserCode, 64))
	if c := da.VerificationURIComplete; c != "" {
		fmt.Fprintf(o.Out, "Or open this address, which has the code in it:\n\n    %s\n\n", cleanText(c, 400))
	}
	if lifetime > 0 {
		fmt.Fprintf(o.Out, "The code is good for %s.\n", lifetime.Round(time.Minute))
	}
	fmt.Fprintln(o.Out, "Waiting for the sign-in…")
	return p.pollDevice(ctx, da.DeviceCode, time.Duration(da.Interval)*time.Second, lifetime, o.clock)
}

// maxBackoff bounds the interval after network errors.
const maxBackoff = 5 * time.Minute

// pollDevice polls the token endpoint (RFC 8628 §3.4) until the user signs
// in, declines, or the code expires; it waits interval between polls (5 s
// when the server named none, §3.2), five seconds more after each
// slow_down (§3.5), and twice as long after a connection failure (§3.5's
// exponential back-off).
func (p *provider) pollDevice(ctx context.Context, deviceCode string, interval, lifetime time.Duration, clk clock) (*oauth2.Token, error) {
	t, err := p.poll(ctx, deviceCode, interval, lifetime, clk)
	return t, redact(err, deviceCode)
}

func (p *provider) poll(ctx context.Context, deviceCode string, interval, lifetime time.Duration, clk clock) (*oauth2.Token, error) {
	acct := p.cfg.Account
	if interval <= 0 {
		interval = 5 * time.Second
	}
	var deadline time.Time
	if lifetime > 0 {
		deadline = clk.Now().Add(lifetime)
	}
	wait := interval
	expired := func() error {
		return fmt.Errorf("account %s: the code expired before the sign-in was finished; run the login again", acct)
	}
	for {
		if err := clk.Sleep(ctx, wait); err != nil {
			return nil, fmt.Errorf("account %s: sign-in abandoned: %w", acct, err)
		}
		if !deadline.IsZero() && !clk.Now().Before(deadline) {
			return nil, expired()
		}
		t, code, err := p.deviceToken(ctx, deviceCode)
		switch {
		case err == nil:
			return t, nil
		case code == "authorization_pending":
			wait = interval
		case code == "slow_down":
			interval += 5 * time.Second
			wait = interval
		case code == "expired_token":
			return nil, expired()
		case code == "access_denied":
			return nil, fmt.Errorf("account %s: the sign-in was declined", acct)
		case code != "":
			return nil, err
		case ctx.Err() != nil:
			return nil, fmt.Errorf("account %s: sign-in abandoned: %w", acct, ctx.Err())
		case isNetwork(err):
			wait = min(2*wait, maxBackoff)
		default:
			return nil, err
		}
	}
}

// networkError marks a poll that reached no answer.
type networkError struct{ error }

func (e networkError) Unwrap() error { return e.error }

func isNetwork(err error) bool {
	_, ok := err.(networkError)
	return ok
}

// deviceToken makes one device access token request (RFC 8628 §3.4) and
// returns the token, or the OAuth error code and an error.
func (p *provider) deviceToken(ctx context.Context, deviceCode string) (*oauth2.Token, string, error) {
	acct := p.cfg.Account
	resp, err := p.postForm(ctx, p.oauth.Endpoint.TokenURL, url.Values{"grant_type": {deviceGrant}, "device_code": {deviceCode}})
	if err != nil {
		return nil, "", networkError{providerError(acct, "sign-in", err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, "", networkError{providerError(acct, "sign-in", err)}
	}
	var tj struct {
		AccessToken      string `json:"access_token"`
		TokenType        string `json:"token_type"`
		RefreshToken     string `json:"refresh_token"`
		ExpiresIn        any    `json:"expires_in"` // a number; some servers send a string
		Scope            string `json:"scope"`
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
	}
	if err := json.Unmarshal(body, &tj); err != nil {
		if resp.StatusCode >= 500 {
			// A front end that is down: back off as for a timeout.
			return nil, "", networkError{&ProviderError{Account: acct, Op: "sign-in", Status: resp.StatusCode}}
		}
		return nil, "", &ProviderError{Account: acct, Op: "sign-in", Status: resp.StatusCode}
	}
	if tj.Error != "" || resp.StatusCode != http.StatusOK {
		return nil, tj.Error, &ProviderError{Account: acct, Op: "sign-in", Code: cleanText(tj.Error, 64),
			Description: cleanText(tj.ErrorDescription, 300), Status: resp.StatusCode}
	}
	if tj.AccessToken == "" {
		return nil, "", fmt.Errorf("account %s: sign-in failed: the provider's answer has no access token", acct)
	}
	t := &oauth2.Token{AccessToken: tj.AccessToken, TokenType: tj.TokenType, RefreshToken: tj.RefreshToken}
	var secs int64
	switch v := tj.ExpiresIn.(type) {
	case float64:
		secs = int64(v)
	case string:
		secs, _ = strconv.ParseInt(v, 10, 64)
	}
	if secs > 0 {
		t.Expiry = time.Now().Add(time.Duration(secs) * time.Second)
	}
	return t.WithExtra(map[string]any{"scope": tj.Scope}), "", nil
}

// clock is the time the device flow waits on; tests drive a fake one.
type clock interface {
	Now() time.Time
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
