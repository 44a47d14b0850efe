package client

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/pop3"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

const (
	gmailCaps = `
		S: +OK Gpop ready
		C: CAPA
		S: +OK Capability list follows
		S: USER
		S: RESP-CODES
		S: EXPIRE 0
		S: LOGIN-DELAY 300
		S: TOP
		S: UIDL
		S: X-GOOGLE-RICO
		S: SASL PLAIN XOAUTH2 OAUTHBEARER
		S: .`
	microsoftCaps = `
		S: +OK The Microsoft Exchange POP3 service is ready.
		C: CAPA
		S: +OK
		S: TOP
		S: UIDL
		S: SASL PLAIN XOAUTH2
		S: USER
		S: .`
	// Gmail's error challenge for a token it does not take.
	gmailChallenge = `{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`
)

// Gmail takes XOAUTH2's message on the AUTH line.
func TestXOAuth2InitialResponseLikeGmail(t *testing.T) {
	fs := newFake(t, strings.Replace(gmailCaps, "XOAUTH2 OAUTHBEARER", "XOAUTH2", 1)+`
		C: AUTH XOAUTH2 `+b64("user=alice@gmail.com\x01auth=Bearer ya29.tok\x01\x01")+`
		S: +OK Welcome.`)
	c := dialFake(t, fs)
	mech, err := c.Login(Credentials{User: "alice@gmail.com", OAuthToken: "ya29.tok", Host: "pop.gmail.com", Port: 995})
	if err != nil || mech != "XOAUTH2" || c.OAuthFormUsed() != OAuthInitialResponse {
		t.Fatalf("%s %v %v", mech, err, c.OAuthFormUsed())
	}
}

// A token Gmail refuses: its JSON error challenge is answered with an
// empty line (XOAUTH2), and the refusal becomes one sentence without the
// token, saying a new token may help.
func TestXOAuth2ErrorChallengeLikeGmail(t *testing.T) {
	fs := newFake(t, strings.Replace(gmailCaps, "XOAUTH2 OAUTHBEARER", "XOAUTH2", 1)+`
		C: AUTH XOAUTH2 .+
		S: + `+b64(gmailChallenge)+`
		C: 
		S: -ERR [AUTH] Invalid credentials.`)
	c := dialFake(t, fs)
	_, err := c.Login(Credentials{User: "alice@gmail.com", OAuthToken: "ya29.expired-token", Host: "pop.gmail.com"})
	var oe *OAuthError
	if !errors.As(err, &oe) || !oe.TokenRefused() || oe.FormRefused() {
		t.Fatalf("%v", err)
	}
	var pe *pop3.Error
	if !errors.As(err, &pe) || pe.Code != pop3.CodeAuth {
		t.Fatalf("no [AUTH] code in %v", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "login with XOAUTH2 failed: the server refused the access token as invalid or expired") ||
		strings.Contains(msg, "expired-token") || strings.Contains(msg, b64("ya29")[:4]) {
		t.Fatalf("%q", msg)
	}
}

// OAUTHBEARER's error challenge is answered with a single 0x01 (RFC 7628
// §3.2.3), not with "*" (which cancels the exchange instead).
func TestOAuthBearerErrorChallenge(t *testing.T) {
	fs := newFake(t, gmailCaps+`
		C: AUTH OAUTHBEARER `+b64("n,a=alice@gmail.com,\x01host=pop.gmail.com\x01port=995\x01auth=Bearer tok\x01\x01")+`
		S: + `+b64(`{"status":"403","schemes":"bearer","scope":"https://mail.google.com/"}`)+`
		C: AQ==
		S: -ERR [AUTH] Invalid credentials.`)
	c := dialFake(t, fs)
	_, err := c.Login(Credentials{User: "alice@gmail.com", OAuthToken: "tok", Host: "pop.gmail.com", Port: 995})
	var oe *OAuthError
	if !errors.As(err, &oe) || oe.TokenRefused() || oe.Challenge == nil || oe.Challenge.Status != "403" {
		t.Fatalf("%v", err)
	}
	if !strings.Contains(err.Error(), "does not carry the scope the server needs (it wants https://mail.google.com/)") {
		t.Fatalf("%q", err)
	}
}

// Gmail with POP turned off, and Microsoft's refusal: sentences that say
// what to do.
func TestOAuthRefusalsExplained(t *testing.T) {
	fs := newFake(t, strings.Replace(gmailCaps, "XOAUTH2 OAUTHBEARER", "XOAUTH2", 1)+`
		C: AUTH XOAUTH2 .+
		S: -ERR [SYS/PERM] Your account is not enabled for POP access. Please visit your Gmail settings page and enable your account for POP access.`)
	c := dialFake(t, fs)
	_, err := c.Login(Credentials{User: "a", OAuthToken: "t", Host: "pop.gmail.com"})
	var oe *OAuthError
	if !errors.As(err, &oe) || oe.TokenRefused() || oe.FormRefused() || !strings.Contains(err.Error(), "POP access is turned off for this account") {
		t.Fatalf("%v", err)
	}
	fs = newFake(t, microsoftCaps+`
		C: AUTH XOAUTH2
		S: + 
		C: .+
		S: -ERR Authentication failure: unknown user name or bad password.`)
	c = dialFake(t, fs)
	_, err = c.Login(Credentials{User: "a@contoso.com", OAuthToken: "t", Host: "outlook.office365.com"})
	if !errors.As(err, &oe) || !oe.TokenRefused() || !strings.Contains(err.Error(), "Microsoft refused the login: POP may be turned off for this mailbox") {
		t.Fatalf("%v", err)
	}
}

// Microsoft's servers get the two-step form at once: AUTH XOAUTH2, an
// empty "+" continuation, then the message.
func TestXOAuth2TwoStepLikeMicrosoft(t *testing.T) {
	fs := newFake(t, microsoftCaps+`
		C: AUTH XOAUTH2
		S: + 
		C: `+b64("user=alice@contoso.com\x01auth=Bearer eyJ0eXAi\x01\x01")+`
		S: +OK User successfully authenticated.`)
	c := dialFake(t, fs)
	mech, err := c.Login(Credentials{User: "alice@contoso.com", OAuthToken: "eyJ0eXAi", Host: "outlook.office365.com", Port: 995})
	if err != nil || mech != "XOAUTH2" || c.OAuthFormUsed() != OAuthTwoStep {
		t.Fatalf("%s %v", mech, err)
	}
}

// A server not known to want two steps, answering the initial response
// with "-ERR Protocol error": the two-step form follows on the same
// connection. Asked for the initial response explicitly, the client does
// not retry, and the error says the form was refused.
func TestOAuthRetriesOtherFormOnProtocolError(t *testing.T) {
	script := microsoftCaps + `
		C: AUTH XOAUTH2 .+
		S: -ERR Protocol error.
		C: AUTH XOAUTH2
		S: +
		C: ` + b64("user=bob@example.com\x01auth=Bearer tok\x01\x01") + `
		S: +OK User successfully authenticated.`
	c := dialFake(t, newFake(t, script))
	mech, err := c.Login(Credentials{User: "bob@example.com", OAuthToken: "tok", Host: "pop.example.com"})
	if err != nil || mech != "XOAUTH2" || c.OAuthFormUsed() != OAuthTwoStep {
		t.Fatalf("%s %v", mech, err)
	}

	c = dialFake(t, newFake(t, microsoftCaps+`
		C: AUTH XOAUTH2 .+
		S: -ERR Protocol error.`))
	_, err = c.Login(Credentials{User: "bob@example.com", OAuthToken: "tok", Host: "pop.example.com", OAuthForm: OAuthInitialResponse})
	var oe *OAuthError
	if !errors.As(err, &oe) || !oe.FormRefused() || oe.TokenRefused() || oe.Form != OAuthInitialResponse ||
		!strings.Contains(err.Error(), `it wants it after a "+" continuation`) {
		t.Fatalf("%v", err)
	}

	// Both forms refused: said so, and not retried again.
	c = dialFake(t, newFake(t, microsoftCaps+`
		C: AUTH XOAUTH2 .+
		S: -ERR Protocol error.
		C: AUTH XOAUTH2
		S: + 
		C: .+
		S: -ERR Protocol error.`))
	_, err = c.Login(Credentials{User: "bob@example.com", OAuthToken: "tok", Host: "pop.example.com"})
	if !errors.As(err, &oe) || !oe.BothForms || !strings.Contains(err.Error(), "both on the AUTH line and after") {
		t.Fatalf("%v", err)
	}

	// A server that hangs up after the refusal: the refusal is returned,
	// for the caller to try the other form on a new connection.
	c = dialFake(t, newFake(t, microsoftCaps+`
		C: AUTH XOAUTH2 .+
		S: -ERR Protocol error.
		CLOSE`))
	_, err = c.Login(Credentials{User: "bob@example.com", OAuthToken: "tok", Host: "pop.example.com"})
	if !errors.As(err, &oe) || !oe.FormRefused() || oe.BothForms || oe.Form != OAuthInitialResponse {
		t.Fatalf("%v", err)
	}
}

// A user name with "," and "=" is escaped in OAUTHBEARER's gs2-header.
func TestOAuthBearerEscapesUser(t *testing.T) {
	fs := newFake(t, `
		S: +OK hi
		C: CAPA
		S: +OK
		S: SASL OAUTHBEARER
		S: .
		C: AUTH OAUTHBEARER `+b64("n,a=a=3Db=2Cc,\x01auth=Bearer t\x01\x01")+`
		S: +OK`)
	c := dialFake(t, fs)
	if _, err := c.Login(Credentials{User: "a=b,c", OAuthToken: "t"}); err != nil {
		t.Fatal(err)
	}
}

func TestTwoStepHost(t *testing.T) {
	for host, want := range map[string]bool{"outlook.office365.com": true, "OUTLOOK.OFFICE365.COM.": true,
		"pop-mail.outlook.com": true, "outlook.office.com": true, "pop.gmail.com": false,
		"notoutlook.com": false, "outlook.com.example.org": false} {
		if TwoStepHost(host) != want {
			t.Errorf("%s: %v", host, !want)
		}
	}
}

func TestCapsLoginDelay(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		d       time.Duration
		perUser bool
		ok      bool
	}{
		{[]string{"900"}, 15 * time.Minute, false, true},
		{[]string{"300", "USER"}, 5 * time.Minute, true, true},
		{[]string{"0"}, 0, false, true},
		{[]string{"x"}, 0, false, false},
		{[]string{"-1"}, 0, false, false},
		{[]string{"99999999999"}, 24 * time.Hour, false, true},
		{nil, 0, false, false},
	} {
		caps := Caps{}
		if tc.args != nil {
			caps["LOGIN-DELAY"] = tc.args
		}
		d, perUser, ok := caps.LoginDelay()
		if d != tc.d || perUser != tc.perUser || ok != tc.ok {
			t.Errorf("%v: %v %v %v", tc.args, d, perUser, ok)
		}
	}
}

// A server that repeats the AUTH line in its refusal does not put the
// token into the error.
func TestOAuthErrorHidesEchoedToken(t *testing.T) {
	ir := b64("user=a\x01auth=Bearer secret-token-value\x01\x01")
	fs := newFake(t, `
		S: +OK hi
		C: CAPA
		S: +OK
		S: SASL XOAUTH2
		S: .
		C: AUTH XOAUTH2 `+ir+`
		S: -ERR [AUTH] bad command AUTH XOAUTH2 `+ir+` (token secret-token-value)`)
	c := dialFake(t, fs)
	_, err := c.Login(Credentials{User: "a", OAuthToken: "secret-token-value"})
	if err == nil || strings.Contains(err.Error(), ir) || strings.Contains(err.Error(), "secret-token-value") || !strings.Contains(err.Error(), "[redacted]") {
		t.Fatalf("%v", err)
	}
}
