package client

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/pouchmail/pouch/internal/oauthsasl"
	"github.com/pouchmail/pouch/pop3"
)

// OAuthForm says where an OAuth mechanism's client message goes.
type OAuthForm int

const (
	// OAuthAuto sends the message on the AUTH line, except to servers
	// known to want it after a continuation (Microsoft's), and tries the
	// other form once when the first is refused as a protocol error.
	OAuthAuto OAuthForm = iota
	// OAuthInitialResponse sends the message on the AUTH line, as the
	// initial response RFC 5034 §4 allows (Gmail takes it so).
	OAuthInitialResponse
	// OAuthTwoStep sends "AUTH MECH" alone and the message after the
	// server's empty "+" continuation (Microsoft's POP3 server wants this,
	// and answers an initial response with "-ERR Protocol error").
	OAuthTwoStep
)

func (f OAuthForm) String() string {
	switch f {
	case OAuthInitialResponse:
		return "initial response"
	case OAuthTwoStep:
		return "two-step"
	}
	return "auto"
}

// other is the form tried after f was refused.
func (f OAuthForm) other() OAuthForm {
	if f == OAuthTwoStep {
		return OAuthInitialResponse
	}
	return OAuthTwoStep
}

// TwoStepHost reports whether host is one of Microsoft's mail servers
// (outlook.office365.com, outlook.office.com, pop-mail.outlook.com and the
// like), whose POP3 service takes an OAuth message only after a "+"
// continuation.
func TwoStepHost(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	for _, d := range []string{"outlook.com", "office365.com", "office.com", "hotmail.com", "live.com"} {
		if host == d || strings.HasSuffix(host, "."+d) {
			return true
		}
	}
	return false
}

// OAuthError is a server's refusal of an OAuth login. Its text is one
// sentence saying why (oauthsasl.Explain): the token was invalid or
// expired, lacked a scope, POP is off for the account, or the server
// refused the form of the exchange. It never holds the token.
type OAuthError struct {
	Mechanism string
	Form      OAuthForm            // the form refused (never OAuthAuto)
	Challenge *oauthsasl.Challenge // the server's JSON error challenge, if it sent one
	Code      pop3.Code            // the -ERR's response code
	Text      string               // the -ERR's text
	// BothForms says that the other form was refused too.
	BothForms bool
}

func (e *OAuthError) Error() string {
	if e.BothForms && e.FormRefused() {
		return fmt.Sprintf("the server refused the %s exchange both on the AUTH line and after a \"+\" continuation as a protocol error (the server said: %s)",
			e.Mechanism, oauthsasl.Clean(e.Text))
	}
	if e.FormRefused() && e.Form == OAuthTwoStep {
		return fmt.Sprintf("the server did not accept the token after a \"+\" continuation (the server said: %s)", oauthsasl.Clean(e.Text))
	}
	return oauthsasl.Explain(e.Challenge, e.Text)
}

// Unwrap returns the -ERR as a *pop3.Error, so that its response code
// ([AUTH], [LOGIN-DELAY], [IN-USE], [SYS/TEMP]) can be tested.
func (e *OAuthError) Unwrap() error { return &pop3.Error{Code: e.Code, Text: e.Text} }

// FormRefused reports whether the server refused the shape of the exchange
// rather than the token: an -ERR without an error challenge or a response
// code that calls it a protocol or syntax error, as Microsoft's server
// answers a token on the AUTH line. The other form may work.
func (e *OAuthError) FormRefused() bool {
	if e.Challenge != nil || e.Code != "" {
		return false
	}
	low := strings.ToLower(e.Text)
	for _, s := range []string{"protocol error", "syntax", "unrecognized", "unknown command", "invalid command", "not supported", "argument"} {
		if strings.Contains(low, s) {
			return true
		}
	}
	return false
}

// TokenRefused reports whether the server refused the token itself (its
// challenge says invalid or expired, or it refused the login with no reason
// a new token would not change), so that one freshly refreshed token is
// worth a second try.
func (e *OAuthError) TokenRefused() bool {
	if e.Challenge != nil {
		switch strings.ToLower(e.Challenge.Status) {
		case "401", "invalid_token":
			return true
		}
		return false
	}
	switch e.Code {
	case "", pop3.CodeAuth:
	default:
		return false // [LOGIN-DELAY], [IN-USE], [SYS/TEMP], [SYS/PERM]
	}
	low := strings.ToLower(e.Text)
	return !e.FormRefused() && !strings.Contains(low, "not enabled for pop") && !strings.Contains(low, "web login required")
}

// oauthLogin logs in with an OAuth mechanism (OAUTHBEARER, RFC 7628, or
// XOAUTH2) in the form cr asks for. With OAuthAuto, a form refused as a
// protocol error is followed by the other form on the same connection;
// when the server closed the connection instead, the error is the
// refusal, for the caller to connect again with the other form.
func (c *Client) oauthLogin(mech string, cr Credentials) error {
	form := cr.OAuthForm
	auto := form == OAuthAuto
	if auto {
		form = OAuthInitialResponse
		if TwoStepHost(cr.Host) {
			form = OAuthTwoStep
		}
	}
	err := c.oauthExchange(mech, cr, form)
	var oe *OAuthError
	if !auto || !errors.As(err, &oe) || !oe.FormRefused() || c.err != nil {
		return err
	}
	err2 := c.oauthExchange(mech, cr, form.other())
	var oe2 *OAuthError
	switch {
	case err2 == nil:
		return nil
	case errors.As(err2, &oe2):
		if oe2.FormRefused() {
			oe2.BothForms = true
		}
		return err2
	}
	// The connection failed (closed after the refusal): report the
	// refusal, so that the caller can try the other form on a new one.
	return err
}

// OAuthFormUsed returns the form of the last successful OAuth login.
func (c *Client) OAuthFormUsed() OAuthForm { return c.oauthForm }

// oauthExchange runs one OAuth SASL exchange (RFC 5034 §4) in one form.
// After an error challenge it sends what the mechanism expects so that the
// server ends the exchange with -ERR: for OAUTHBEARER a single 0x01
// (RFC 7628 §3.2.3), for XOAUTH2 an empty line.
func (c *Client) oauthExchange(mech string, cr Credentials, form OAuthForm) error {
	if err := c.Wait(); err != nil {
		return err
	}
	var msg []byte
	if mech == oauthsasl.OAuthBearer {
		msg = oauthsasl.OAuthBearerResponse(cr.User, cr.Host, cr.Port, cr.OAuthToken)
	} else {
		msg = oauthsasl.XOAuth2Response(cr.User, cr.OAuthToken)
	}
	args := []string{mech}
	sent := form == OAuthInitialResponse
	encoded := base64.StdEncoding.EncodeToString(msg)
	if sent {
		args = append(args, encoded)
	}
	// A server may repeat what it was sent in its answer (an AUTH line it
	// did not understand); the token never goes further in an error.
	pairs := []string{encoded, "[redacted]"}
	if len(cr.OAuthToken) >= 8 { // a shorter one would blank ordinary words
		pairs = append(pairs, cr.OAuthToken, "[redacted]")
	}
	hide := strings.NewReplacer(pairs...)
	if err := pop3.WriteCommand(c.w, "AUTH", args...); err != nil {
		return fmt.Errorf("pop3 client: the user name cannot be sent in an AUTH command: %w", err)
	}
	var ch *oauthsasl.Challenge
	answered := false
	for {
		if err := c.Flush(); err != nil {
			return err
		}
		rep, err := c.readReplyMax(maxSASLLine)
		if err != nil {
			return err
		}
		if !rep.Continuation {
			if rep.OK {
				c.oauthForm = form
				return nil
			}
			if ch != nil {
				ch.Status, ch.Schemes, ch.Scope, ch.OpenIDConfiguration = hide.Replace(ch.Status), hide.Replace(ch.Schemes), hide.Replace(ch.Scope), hide.Replace(ch.OpenIDConfiguration)
			}
			return &OAuthError{Mechanism: mech, Form: form, Challenge: ch, Code: rep.Code, Text: hide.Replace(rep.Text)}
		}
		switch {
		case !sent:
			// The empty challenge of the two-step form.
			sent = true
			if err := c.w.Line(encoded); err != nil {
				return err
			}
		case !answered:
			ch = parseChallenge(rep.Text)
			answered = true
			if err := c.w.Line(base64.StdEncoding.EncodeToString(oauthsasl.ErrorChallengeReply(mech))); err != nil {
				return err
			}
		default:
			// A second challenge after the error one: RFC 5034 §4's "*"
			// cancels the exchange.
			pop3.WriteCommand(c.w, "*")
			if err := c.Flush(); err != nil {
				return err
			}
			if _, err := c.readReply(); err != nil {
				return err
			}
			return c.fail(fmt.Errorf("%w: SASL %s: a challenge after the error challenge", pop3.ErrProtocol, mech))
		}
	}
}

// parseChallenge reads an error challenge: base64 of a JSON object as
// RFC 7628 §3.2.2 says, or the JSON itself from servers that skip the
// base64. It returns nil for anything else.
func parseChallenge(text string) *oauthsasl.Challenge {
	b, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		b = []byte(text)
	}
	ch, err := oauthsasl.ParseChallenge(b)
	if err != nil {
		return nil
	}
	return &ch
}
