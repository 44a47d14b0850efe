package oauthsasl

import (
	"encoding/base64"
	"strings"
	"testing"
	"unicode"

	"github.com/emersion/go-sasl"
)

// Google's XOAUTH2 protocol page gives this user, token and encoding.
func TestXOAuth2ResponseMatchesGooglesExample(t *testing.T) {
	got := base64.StdEncoding.EncodeToString(XOAuth2Response("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"))
	want := "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
	if got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
}

// RFC 7628 §4.1's example, and the same message from go-sasl's client.
func TestOAuthBearerResponse(t *testing.T) {
	got := string(OAuthBearerResponse("user@example.com", "server.example.com", 143, "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="))
	want := "n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
	if got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	_, ir, err := sasl.NewOAuthBearerClient(&sasl.OAuthBearerOptions{
		Username: "user@example.com", Host: "server.example.com", Port: 143,
		Token: "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="}).Start()
	if err != nil || string(ir) != want {
		t.Fatalf("go-sasl sends %q (%v)", ir, err)
	}
	if got := string(OAuthBearerResponse("", "", 0, "T")); got != "n,,\x01auth=Bearer T\x01\x01" {
		t.Fatalf("without user, host and port: %q", got)
	}
}

func TestGS2HeaderEscapes(t *testing.T) {
	for in, want := range map[string]string{
		"":              "n,,",
		"alice":         "n,a=alice,",
		"a,b=c@example": "n,a=a=2Cb=3Dc@example,",
		"==":            "n,a==3D=3D,",
	} {
		if got := GS2Header(in); got != want {
			t.Errorf("GS2Header(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestErrorChallengeReply(t *testing.T) {
	if r := ErrorChallengeReply("OAUTHBEARER"); string(r) != "\x01" {
		t.Errorf("OAUTHBEARER: %q", r)
	}
	if r := ErrorChallengeReply("xoauth2"); r == nil || len(r) != 0 {
		t.Errorf("XOAUTH2: %q", r)
	}
}

func TestParseChallenge(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Challenge
	}{
		// Google (its XOAUTH2 page).
		{`{"status":"401","schemes":"bearer mac","scope":"https://mail.google.com/"}`,
			Challenge{Status: "401", Schemes: "bearer mac", Scope: "https://mail.google.com/"}},
		// Exchange Online.
		{`{"status":"401","schemes":"Bearer"}`, Challenge{Status: "401", Schemes: "Bearer"}},
		// RFC 7628 §3.2.2's example.
		{`{"status":"invalid_token","scope":"example_scope","openid-configuration":"https://example.com/.well-known/openid-configuration"}`,
			Challenge{Status: "invalid_token", Scope: "example_scope", OpenIDConfiguration: "https://example.com/.well-known/openid-configuration"}},
		// A number where a string belongs.
		{`{"status":400}`, Challenge{Status: "400"}},
	} {
		got, err := ParseChallenge([]byte(tc.in))
		if err != nil || got != tc.want {
			t.Errorf("%s: got %+v, %v", tc.in, got, err)
		}
	}
	for _, bad := range []string{``, `nonsense`, `[]`, `{"schemes":"bearer"}`, `{"status":""}`, `{"status":"401"` + strings.Repeat(" ", maxChallenge) + `}`} {
		if _, err := ParseChallenge([]byte(bad)); err == nil {
			t.Errorf("%.40q: no error", bad)
		}
	}
}

func TestExplain(t *testing.T) {
	ch := func(s string) *Challenge { c, _ := ParseChallenge([]byte(s)); return &c }
	for _, tc := range []struct {
		ch         *Challenge
		text, want string
	}{
		{ch(`{"status":"401","schemes":"bearer"}`), "", "invalid or expired"},
		{ch(`{"status":"invalid_token"}`), "", "invalid or expired"},
		{ch(`{"status":"403","scope":"https://mail.google.com/"}`), "", "does not carry the scope the server needs (it wants https://mail.google.com/)"},
		{ch(`{"status":"insufficient_scope","scope":"pop"}`), "", "(it wants pop)"},
		{ch(`{"status":"400","schemes":"Bearer"}`), "", "malformed"},
		{ch(`{"status":"418"}`), "", `status "418"`},
		{nil, "[SYS/PERM] Your account is not enabled for POP access. Please visit your Gmail settings page and enable your account for POP access.", "POP access is turned off"},
		{ch(`{"status":"400"}`), "[SYS/PERM] Your account is not enabled for POP access.", "POP access is turned off"},
		{nil, "[AUTH] Web login required: https://support.google.com/mail/answer/78754", "sign in once in a web browser"},
		{nil, "Protocol error", `after a "+" continuation`},
		{nil, "Authentication failure: unknown user name or bad password.", "POP may be turned off for this mailbox"},
		{ch(`{"status":"401","schemes":"Bearer"}`), "Authentication failure: unknown user name or bad password.", "invalid or expired"},
		{nil, "", "the server refused the OAuth token"},
		{nil, "nope\x00\x1b[31m", "(the server said: nope[31m)"},
	} {
		got := Explain(tc.ch, tc.text)
		if !strings.Contains(got, tc.want) {
			t.Errorf("Explain(%+v, %q) = %q; want it to contain %q", tc.ch, tc.text, got, tc.want)
		}
	}
}

func FuzzParseChallenge(f *testing.F) {
	f.Add([]byte(`{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`))
	f.Add([]byte(`{"status":"invalid_token","scope":"example_scope","openid-configuration":"https://example.com/.well-known/openid-configuration"}`))
	f.Add([]byte(`{"status":401}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseChallenge(b)
		if err != nil {
			return
		}
		if c.Status == "" {
			t.Fatal("accepted a challenge without status")
		}
		for _, r := range Explain(&c, string(b)) {
			if unicode.IsControl(r) {
				t.Fatalf("control character in the explanation of %q", b)
			}
		}
	})
}
