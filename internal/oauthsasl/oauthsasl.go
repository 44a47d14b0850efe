// Package oauthsasl builds the client messages of the two OAuth 2.0 SASL
// mechanisms mail providers speak, OAUTHBEARER (RFC 7628) and Google's and
// Microsoft's XOAUTH2, and turns a provider's refusal (its JSON error
// challenge and the -ERR text that ends the exchange) into one sentence a
// user can act on. It holds pure functions only: the POP3 client runs the
// exchange.
package oauthsasl

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// Mechanism names, as servers list them in CAPA's SASL line (RFC 5034 §5).
const (
	OAuthBearer = "OAUTHBEARER"
	XOAuth2     = "XOAUTH2"
)

// XOAuth2Response is the XOAUTH2 client message, before base64:
// "user=" USER ^A "auth=Bearer " TOKEN ^A ^A. POP3 servers take it either
// on the AUTH line (Gmail) or after a "+" continuation (Microsoft).
func XOAuth2Response(user, token string) []byte {
	return []byte("user=" + user + "\x01auth=Bearer " + token + "\x01\x01")
}

// GS2Header is the gs2-header OAUTHBEARER's message starts with
// (RFC 7628 §3.1, RFC 5801 §4): "n," (no channel binding), the
// authorization identity as "a=" saslname when there is one, then ",". In a
// saslname "," is written "=2C" and "=" is written "=3D".
func GS2Header(authzid string) string {
	if authzid == "" {
		return "n,,"
	}
	r := strings.NewReplacer("=", "=3D", ",", "=2C")
	return "n,a=" + r.Replace(authzid) + ","
}

// OAuthBearerResponse is the OAUTHBEARER client message (RFC 7628 §3.1):
// the gs2-header for user, then ^A-separated key/value pairs host=, port=
// (each only when known) and auth=Bearer TOKEN, ended by ^A ^A.
func OAuthBearerResponse(user, host string, port int, token string) []byte {
	var b strings.Builder
	b.WriteString(GS2Header(user))
	b.WriteByte(0x01)
	if host != "" {
		b.WriteString("host=" + host + "\x01")
	}
	if port > 0 {
		b.WriteString("port=" + strconv.Itoa(port) + "\x01")
	}
	b.WriteString("auth=Bearer " + token + "\x01\x01")
	return []byte(b.String())
}

// ErrorChallengeReply is what a client sends after a server's error
// challenge so that the server ends the exchange with -ERR: for OAUTHBEARER
// a single ^A (RFC 7628 §3.2.3), for XOAUTH2 an empty response.
func ErrorChallengeReply(mechanism string) []byte {
	if strings.EqualFold(mechanism, OAuthBearer) {
		return []byte{0x01}
	}
	return []byte{}
}

// Challenge is a server's JSON error challenge (RFC 7628 §3.2.2). Status is
// an OAuth error code there ("invalid_token", "insufficient_scope"); Google
// and Microsoft put an HTTP status in it instead ("400", "401").
type Challenge struct {
	Status              string `json:"status"`
	Schemes             string `json:"schemes,omitempty"`
	Scope               string `json:"scope,omitempty"`
	OpenIDConfiguration string `json:"openid-configuration,omitempty"`
}

// maxChallenge bounds the challenge ParseChallenge accepts.
const maxChallenge = 8 << 10

// ParseChallenge decodes an error challenge (already base64-decoded). The
// status is required; the values must be strings, as RFC 7628 §3.2.2 says,
// but Google's numeric forms are accepted too.
func ParseChallenge(b []byte) (Challenge, error) {
	if len(b) > maxChallenge {
		return Challenge{}, errors.New("oauthsasl: error challenge too long")
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		return Challenge{}, errors.New("oauthsasl: the error challenge is not a JSON object")
	}
	field := func(k string) string {
		switch v := raw[k].(type) {
		case string:
			return v
		case float64:
			return strconv.FormatFloat(v, 'f', -1, 64)
		}
		return ""
	}
	c := Challenge{Status: field("status"), Schemes: field("schemes"), Scope: field("scope"),
		OpenIDConfiguration: field("openid-configuration")}
	if c.Status == "" {
		return Challenge{}, errors.New("oauthsasl: the error challenge has no status")
	}
	return c, nil
}

// Explain says in one sentence why an OAuth login was refused. ch is the
// server's error challenge, or nil when there was none; serverText is the
// text of the -ERR that ended the exchange (it may be empty). Neither holds
// a token, and the sentence names none.
func Explain(ch *Challenge, serverText string) string {
	text := Clean(serverText)
	low := strings.ToLower(text)
	var s string
	switch {
	// Gmail: "-ERR [SYS/PERM] Your account is not enabled for POP access. Please visit your Gmail settings page and enable your account for POP access."
	case strings.Contains(low, "not enabled for pop"):
		s = "POP access is turned off for this account: turn it on in the provider's settings (Gmail: Settings, Forwarding and POP/IMAP, Enable POP), then fetch again"
	// Gmail: "-ERR [AUTH] Web login required: https://support.google.com/mail/answer/78754"
	case strings.Contains(low, "web login required"):
		s = "the provider wants you to sign in once in a web browser (it blocked this login as unusual); do that, then fetch again"
	// Microsoft sends "-ERR Protocol error" to an initial response it
	// wants after a "+" continuation instead.
	case strings.Contains(low, "protocol error") && ch == nil:
		s = "the server did not accept the token on the AUTH line; it wants it after a \"+\" continuation"
	case ch != nil:
		s = explainStatus(ch)
	// Microsoft: "-ERR Authentication failure: unknown user name or bad password."
	case strings.Contains(low, "unknown user name or bad password"):
		s = "Microsoft refused the login: POP may be turned off for this mailbox (Outlook.com: Settings, Mail, Forwarding and IMAP, Let devices and apps use POP; Microsoft 365: the administrator enables POP for the mailbox), the token may lack the POP.AccessAsUser.All scope, or the user name may differ from the account you signed in with"
	default:
		s = "the server refused the OAuth token"
	}
	if text != "" {
		s += " (the server said: " + text + ")"
	}
	return s
}

func explainStatus(ch *Challenge) string {
	scope := ""
	if ch.Scope != "" {
		scope = " (it wants " + Clean(ch.Scope) + ")"
	}
	switch strings.ToLower(ch.Status) {
	case "401", "invalid_token":
		return "the server refused the access token as invalid or expired"
	case "403", "insufficient_scope":
		return "the access token does not carry the scope the server needs" + scope + "; sign in again with that scope"
	case "400", "invalid_request":
		return "the server found the login malformed: check that the user name is the address you signed in with" + scope
	}
	return fmt.Sprintf("the server refused the token with status %q%s", Clean(ch.Status), scope)
}

// Clean keeps a server's text printable and short, for a message: control
// characters go, and more than 200 characters are cut to 200 and "…".
func Clean(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, strings.TrimSpace(s))
	if r := []rune(s); len(r) > 200 {
		s = string(r[:200]) + "…"
	}
	return s
}
