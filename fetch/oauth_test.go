package fetch

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/pouchmail/pouch/client"
	"github.com/pouchmail/pouch/internal/popscript"
)

// tokens is a TokenSource handing out its tokens in turn, each until it is
// invalidated.
type tokens struct {
	mu          sync.Mutex
	list        []string
	invalidated []string
}

func (s *tokens) TokenContext(context.Context) (*oauth2.Token, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &oauth2.Token{AccessToken: s.list[0]}, nil
}

func (s *tokens) Invalidate(t *oauth2.Token) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.invalidated = append(s.invalidated, t.AccessToken)
	if len(s.list) > 1 && s.list[0] == t.AccessToken {
		s.list = s.list[1:]
	}
}

func oauthAccount(t *testing.T, b *popscript.Box, src TokenSource) *Account {
	a := testAccount(t, b.Addr)
	a.PasswordFile, a.Tokens, a.User = "", src, "alice@example.org"
	return a
}

// goodToken accepts only "fresh-token" for alice.
func goodToken(user, token string) bool { return user == "alice@example.org" && token == "fresh-token" }

// A Gmail-like server refuses an expired token with its JSON challenge: the
// token is handed back, one fresh token is tried, and mail comes.
func TestExpiredTokenRefreshedOnce(t *testing.T) {
	msgs, bodies := boxMessages(1, 2)
	b := (&popscript.Box{Messages: msgs, OAuth: &popscript.OAuth{Mechanisms: []string{"XOAUTH2"}, Check: goodToken,
		Challenge: `{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`}}).Start(t)
	src := &tokens{list: []string{"stale-token", "fresh-token"}}
	a := oauthAccount(t, b, src)
	st, err := Run(context.Background(), a, nil)
	if err != nil || st.Fetched != 2 || st.Mechanism != "XOAUTH2" {
		t.Fatalf("%+v %v", st, err)
	}
	if !slices.Equal(src.invalidated, []string{"stale-token"}) || len(b.Problems()) != 0 {
		t.Fatalf("invalidated %q, problems %q", src.invalidated, b.Problems())
	}
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), bodies)

	// A fresh token refused too: one sentence, no token in it, and no
	// third try.
	src = &tokens{list: []string{"stale-token", "revoked-token"}}
	a.Tokens = src
	connects := len(b.Connects())
	_, err = Run(context.Background(), a, nil)
	var oe *client.OAuthError
	if !errors.As(err, &oe) || !strings.Contains(err.Error(), "the server refused the access token as invalid or expired") ||
		!strings.Contains(err.Error(), "a freshly refreshed token was refused too, so the sign-in may have been revoked or be for another address than alice@example.org") {
		t.Fatalf("%v", err)
	}
	if strings.Contains(err.Error(), "token\x01") || strings.Contains(err.Error(), "revoked-token") || strings.Contains(err.Error(), "stale-token") {
		t.Fatalf("a token in %q", err)
	}
	if n := len(b.Connects()) - connects; n != 2 {
		t.Fatalf("%d connections", n)
	}
}

// A token command that prints the same token again is not tried twice.
func TestTokenCommandRefusedOnce(t *testing.T) {
	b := (&popscript.Box{OAuth: &popscript.OAuth{Check: goodToken, Challenge: `{"status":"401","schemes":"bearer"}`}}).Start(t)
	a := testAccount(t, b.Addr)
	a.PasswordFile, a.OAuthTokenCommand, a.User = "", "echo same-token", "alice@example.org"
	_, err := Run(context.Background(), a, nil)
	var ae *AuthError
	if !errors.As(err, &ae) || !strings.Contains(err.Error(), "login with OAUTHBEARER failed: the server refused the access token as invalid or expired") {
		t.Fatalf("%v", err)
	}
	if n := len(b.Connects()); n != 1 {
		t.Fatalf("%d connections", n)
	}
	if len(b.Problems()) != 0 {
		t.Fatal(b.Problems())
	}
}

// A Microsoft-like server answers a token on the AUTH line with "-ERR
// Protocol error": the two-step form follows, and the next run of the
// account uses it at once.
func TestMicrosoftTwoStep(t *testing.T) {
	msgs, _ := boxMessages(1, 1)
	b := (&popscript.Box{Messages: msgs, OAuth: &popscript.OAuth{Mechanisms: []string{"XOAUTH2"}, Check: goodToken,
		TwoStepOnly: true, Refusal: "Authentication failure: unknown user name or bad password."}}).Start(t)
	a := oauthAccount(t, b, &tokens{list: []string{"fresh-token"}})
	for range 2 {
		if st, err := Run(context.Background(), a, nil); err != nil {
			t.Fatalf("%+v %v", st, err)
		}
	}
	s := b.Sessions()
	if len(s) != 2 || !sent(s[0], "AUTH XOAUTH2 ") || !slices.Contains(s[0], "AUTH XOAUTH2") || sent(s[1], "AUTH XOAUTH2 ") || !slices.Contains(s[1], "AUTH XOAUTH2") {
		t.Fatalf("sessions %q", s)
	}
	// Told to use the two-step form (provider = "microsoft"), it never
	// sends the token on the AUTH line.
	formMemo.Delete(b.Addr)
	a.OAuthForm = client.OAuthTwoStep
	if _, err := Run(context.Background(), a, nil); err != nil {
		t.Fatal(err)
	}
	if s := b.Sessions(); sent(s[2], "AUTH XOAUTH2 ") {
		t.Fatalf("%q", s[2])
	}
}

// LOGIN-DELAY (RFC 2449 §6.5) is learnt from CAPA and kept beside the
// journal: a run before it has passed does not connect. A server that
// refuses a login with [LOGIN-DELAY] gets no second try before the delay.
func TestLoginDelayHonoured(t *testing.T) {
	b := (&popscript.Box{LoginDelay: 3 * time.Second}).Start(t)
	a := testAccount(t, b.Addr)
	st, err := Run(context.Background(), a, nil)
	if err != nil || st.LoginDelay != 3*time.Second || st.LoggedIn.IsZero() {
		t.Fatalf("%+v %v", st, err)
	}
	_, err = Run(context.Background(), a, nil)
	var le *LoginDelayError
	if !errors.As(err, &le) || le.Refused || le.Delay != 3*time.Second || le.Until.Sub(st.LoggedIn) > 3*time.Second ||
		!strings.Contains(err.Error(), "the server allows one login every 3s (LOGIN-DELAY): not logging in before") {
		t.Fatalf("%v", err)
	}
	if n := len(b.Connects()); n != 1 {
		t.Fatalf("%d connections", n)
	}
	// Another client logged in meanwhile (the state file does not know):
	// the server refuses, and the refusal is remembered.
	os.Remove(filepath.Join(a.StateDir, a.StateName()+".login"))
	_, err = Run(context.Background(), a, nil)
	if !errors.As(err, &le) || !le.Refused || le.Delay != 3*time.Second || time.Until(le.Until) < 2*time.Second {
		t.Fatalf("%v", err)
	}
	_, err = Run(context.Background(), a, nil)
	if !errors.As(err, &le) || !le.Refused {
		t.Fatalf("%v", err)
	}
	if n := len(b.Connects()); n != 2 {
		t.Fatalf("%d connections", n)
	}
	if p := b.Problems(); len(p) != 1 {
		t.Fatalf("problems %q", p) // the one refused login
	}
}

// LOGIN-DELAY with the USER tag before login is the largest of any user
// (RFC 2449 §6.5): the value after login is the user's own, and none after
// login means none.
func TestLoginDelayPerUser(t *testing.T) {
	for _, tc := range []struct {
		after string
		want  time.Duration
	}{{"S: LOGIN-DELAY 60", time.Minute}, {"", 0}} {
		fs := newFake(t, `
			S: +OK hello
			C: CAPA
			S: +OK
			S: USER
			S: UIDL
			S: LOGIN-DELAY 900 USER
			S: .
			C: USER alice
			S: +OK
			C: PASS secret
			S: +OK
			C: CAPA
			S: +OK
			S: UIDL
			`+tc.after+`
			S: .
			C: LIST
			S: +OK
			S: .
			C: UIDL
			S: +OK
			S: .
			C: QUIT
			S: +OK`)
		a := testAccount(t, fs.Addr)
		st, err := Run(context.Background(), a, nil)
		if err != nil || st.LoginDelay != tc.want {
			t.Fatalf("%q: %v %v", tc.after, st.LoginDelay, err)
		}
		_, err = os.Stat(filepath.Join(a.StateDir, a.StateName()+".login"))
		if (tc.want > 0) != (err == nil) {
			t.Fatalf("%q: state file: %v", tc.after, err)
		}
	}
}
