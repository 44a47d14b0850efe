package oauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"unicode"

	"golang.org/x/oauth2"
)

// LoginRequiredError says an account has to sign in (again): it has no
// token yet, its refresh token was revoked or has expired (invalid_grant),
// or its configuration changed so that the stored token no longer fits.
// Its text ends with the command that fixes it.
type LoginRequiredError struct {
	Account string
	Reason  string
	First   bool // never signed in, rather than signed out
}

func (e *LoginRequiredError) Error() string {
	again := " again"
	if e.First {
		again = ""
	}
	return fmt.Sprintf("account %s: %s; log in%s with: pouch fetch auth login %s",
		e.Account, e.Reason, again, shellWord(e.Account))
}

// ProviderError is a refusal from the provider's token, device or
// revocation endpoint (RFC 6749 §5.2), told without the response body.
type ProviderError struct {
	Account     string
	Op          string // "sign-in", "refresh", "device authorization", "revocation"
	Code        string // the OAuth error code, if the provider gave one
	Description string // the provider's error_description, cleaned
	Status      int    // the HTTP status, if known
}

func (e *ProviderError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "account %s: %s failed: ", e.Account, e.Op)
	switch {
	case e.Code != "":
		b.WriteString("the provider answered " + e.Code)
		if hint := codeHints[e.Code]; hint != "" {
			b.WriteString(" (" + hint + ")")
		}
		if e.Description != "" {
			b.WriteString(": " + e.Description)
		}
	case e.Status != 0:
		fmt.Fprintf(&b, "the provider answered HTTP %d %s", e.Status, http.StatusText(e.Status))
	default:
		b.WriteString("the provider's answer made no sense")
	}
	return b.String()
}

// codeHints say what the RFC 6749 §5.2 and RFC 8628 §3.5 codes mean for
// the user.
var codeHints = map[string]string{
	"invalid_client":          "the provider does not accept this client-id and client-secret",
	"unauthorized_client":     "this app registration may not use this sign-in flow; for the device flow on Microsoft, turn on \"Allow public client flows\"",
	"invalid_scope":           "the provider refuses the scopes asked for",
	"access_denied":           "the sign-in was declined",
	"expired_token":           "the code expired before it was entered",
	"invalid_request":         "the provider found the request malformed",
	"server_error":            "the provider had an internal error; try again later",
	"temporarily_unavailable": "the provider is overloaded; try again later",
}

// providerError turns an error from x/oauth2 into one that shows nothing of
// the response body, where a misbehaving server might echo a token.
func providerError(account, op string, err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		pe := &ProviderError{Account: account, Op: op, Code: cleanText(re.ErrorCode, 64),
			Description: cleanText(re.ErrorDescription, 300)}
		if re.Response != nil {
			pe.Status = re.Response.StatusCode
		}
		return pe
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// "Post "URL": dial tcp ...": the URL is an endpoint, which carries
		// no secret; the request body is not in it.
		return fmt.Errorf("account %s: %s failed: %v", account, op, err)
	}
	return fmt.Errorf("account %s: %s failed: %w", account, op, err)
}

// cleanText keeps a provider's text printable and short.
func cleanText(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.TrimSpace(s))
	if r := []rune(s); len(r) > max {
		s = string(r[:max]) + "…"
	}
	return s
}

// redact replaces each secret found in err's text. Every error a flow
// returns passes through it: the package builds its own messages, and this
// is the net under them. A *ProviderError in the chain is copied with its
// fields cleaned too, so errors.As finds no secret either.
func redact(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	clean := func(s string) string {
		for _, x := range secrets {
			if len(x) >= 4 {
				s = strings.ReplaceAll(s, x, "[redacted]")
			}
		}
		return s
	}
	msg := err.Error()
	if clean(msg) == msg {
		return err
	}
	r := &redactedError{msg: clean(msg), err: err}
	var pe *ProviderError
	if errors.As(err, &pe) {
		c := *pe
		c.Code, c.Description = clean(c.Code), clean(c.Description)
		if pe == err {
			return &c
		}
		r.inner = &c
	}
	var lr *LoginRequiredError
	if errors.As(err, &lr) {
		r.inner = lr // its texts are Pouch's own
	}
	return r
}

// redactedError is an error whose text was cleaned of secrets. It unwraps
// only to the package's error types (cleaned) and to a context's end.
type redactedError struct {
	msg   string
	err   error
	inner error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.inner }
func (e *redactedError) Is(target error) bool {
	return (target == context.Canceled || target == context.DeadlineExceeded) && errors.Is(e.err, target)
}

// shellWord quotes an account name for a command line when it needs it.
func shellWord(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r < unicode.MaxASCII && (unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("@%+=:,./_-", r)))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
