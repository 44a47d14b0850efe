package oauth

import (
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
	"invalid_client":          "the provider does not accept this client_id and client_secret",
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
// is the net under them.
func redact(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	changed := false
	for _, s := range secrets {
		if len(s) >= 4 && strings.Contains(msg, s) {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
			changed = true
		}
	}
	if !changed {
		return err
	}
	return &redactedError{msg: msg, err: err}
}

// redactedError keeps the error chain for errors.As on the package's own
// types, whose texts hold no secret, while its own text is cleaned.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error {
	var lr *LoginRequiredError
	if errors.As(e.err, &lr) {
		return lr
	}
	var pe *ProviderError
	if errors.As(e.err, &pe) {
		return pe
	}
	return nil
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
