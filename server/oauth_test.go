package server

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/testkit"
)

// fakeTokens accepts "good-TOKEN-for-USER" for USER.
type fakeTokens struct{}

func (fakeTokens) VerifyToken(token string) (string, error) {
	if user, ok := strings.CutPrefix(token, "good-token-for-"); ok {
		return user, nil
	}
	if token == "token-of-a-key-not-fetched" {
		return "", fmt.Errorf("%w: the OAuth key set could not be fetched", auth.ErrUnavailable)
	}
	return "", errors.New("bad token")
}

func bearerNoAuthz(token string) string {
	return b64("n,,\x01auth=Bearer " + token + "\x01\x01")
}

func bearerAs(user, token string) string {
	return b64("n,a=" + user + ",\x01auth=Bearer " + token + "\x01\x01")
}

func xoauth2As(user, token string) string {
	return b64("user=" + user + "\x01auth=Bearer " + token + "\x01\x01")
}

func TestOAuth(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	c := ts.dialTLS(t, nil)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH OAUTHBEARER ` + bearerAs("alice", "bad") + `
		S: \+ .*
		C: AQ==
		S: ` + authFailed + `
		C: AUTH OAUTHBEARER ` + bearerAs("alice", "good-token-for-bob") + `
		S: \+ .*
		C: AQ==
		S: ` + authFailed + `
		C: AUTH XOAUTH2 ` + xoauth2As("alice", "bad") + `
		S: \+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0=
		C:
		S: ` + authFailed + `
		C: AUTH XOAUTH2 ` + b64("nonsense") + `
		S: -ERR malformed SASL message
		C: AUTH OAUTHBEARER ` + bearerAs("ghost", "good-token-for-ghost") + `
		S: \+ .*
		C: AQ==
		S: ` + authFailed + `
		C: AUTH OAUTHBEARER ` + bearerAs("alice", "bad") + `
		S: \+ .*
		C:
		S: ` + authFailed + `
		C: AUTH OAUTHBEARER ` + bearerAs("alice", "bad") + `
		S: \+ .*
		C: *
		S: ` + authFailed + `
		C: AUTH OAUTHBEARER ` + bearerAs("alice", "good-token-for-alice@example.org") + `
		S: \+OK maildrop has 0 messages .*
		C: QUIT
		S: \+OK .*`)
	c = ts.dialTLS(t, nil)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH XOAUTH2 ` + xoauth2As("alice", "good-token-for-alice") + `
		S: \+OK maildrop has 0 messages .*`)
}

func TestOAuthDomains(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) { c.OAuthDomains = []string{"example.org"} })
	bearer := func(user, token string) string {
		return base64.StdEncoding.EncodeToString([]byte("n,a=" + user + ",\x01auth=Bearer " + token + "\x01\x01"))
	}
	c := ts.dialTLS(t, nil)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH OAUTHBEARER ` + bearer("alice", "good-token-for-alice@evil.example") + `
		S: \+ .*
		C: AQ==
		S: ` + authFailed + `
		C: AUTH OAUTHBEARER ` + bearer("alice", "good-token-for-alice@EXAMPLE.org") + `
		S: \+OK maildrop has 0 messages .*`)
}

// RFC 7628 §3.1: a= is optional; the user is then the token's.
func TestOAuthBearerWithoutAuthzid(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	for _, token := range []string{"good-token-for-alice@example.org", "good-token-for-alice"} {
		c := ts.dialTLS(t, nil)
		c.transcript(`
			S: \+OK Pouch ready\.
			C: AUTH OAUTHBEARER ` + bearerNoAuthz(token) + `
			S: \+OK maildrop has 0 messages .*
			C: QUIT
			S: \+OK .*`)
	}
	c := ts.dialTLS(t, nil)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH OAUTHBEARER ` + bearerNoAuthz("good-token-for-ghost@example.org") + `
		S: \+ .*
		C: AQ==
		S: ` + authFailed + `
		C: AUTH OAUTHBEARER ` + bearerNoAuthz("bad") + `
		S: \+ .*
		C: AQ==
		S: ` + authFailed)

	// With OAuthDomains, only those domains map to local users.
	ts = newTLSServer(t, "127.0.0.1", func(c *Config) { c.OAuthDomains = []string{"example.org"} })
	c = ts.dialTLS(t, nil)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH OAUTHBEARER ` + bearerNoAuthz("good-token-for-alice@evil.example") + `
		S: \+ .*
		C: AQ==
		S: ` + authFailed + `
		C: AUTH OAUTHBEARER ` + bearerNoAuthz("good-token-for-alice@Example.ORG") + `
		S: \+OK maildrop has 0 messages .*`)
}

// Login names of the form user@DOMAIN name the local user.
func TestOAuthLoginNameWithDomain(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) { c.OAuthDomains = []string{"example.org"} })
	good := []string{
		"AUTH XOAUTH2 " + xoauth2As("alice@example.org", "good-token-for-alice"),
		"AUTH XOAUTH2 " + xoauth2As("alice@example.org", "good-token-for-alice@example.org"),
		"AUTH OAUTHBEARER " + bearerAs("alice@example.org", "good-token-for-alice"),
		"AUTH OAUTHBEARER " + bearerAs("alice@EXAMPLE.org", "good-token-for-alice@example.org"),
	}
	for _, cmd := range good {
		c := ts.dialTLS(t, nil)
		c.transcript(`
			S: \+OK Pouch ready\.
			C: ` + cmd + `
			S: \+OK maildrop has 0 messages .*
			C: QUIT
			S: \+OK .*`)
	}
	c := ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)
	for _, cmd := range []string{
		"AUTH OAUTHBEARER " + bearerAs("alice@evil.example", "good-token-for-alice"),
		"AUTH OAUTHBEARER " + bearerAs("alice@example.org", "good-token-for-bob"),
		"AUTH OAUTHBEARER " + bearerAs("alice@example.org", "good-token-for-alice@evil.example"),
		"AUTH OAUTHBEARER " + bearerAs("ghost@example.org", "good-token-for-ghost"),
	} {
		c.send(cmd + "\r\n")
		c.expect(`\+ .*`)
		c.send("AQ==\r\n")
		c.expect(authFailed)
	}
	for _, cmd := range []string{
		"AUTH XOAUTH2 " + xoauth2As("alice@evil.example", "good-token-for-alice"),
		"AUTH XOAUTH2 " + xoauth2As("alice@example.org", "good-token-for-bob@example.org"),
	} {
		c.send(cmd + "\r\n")
		c.expect(`\+ .*`)
		c.send("\r\n")
		c.expect(authFailed)
	}
}

// longTokens accepts "TOKEN.USER" where TOKEN is 2000 octets of 'x'.
type longTokens struct{}

func (longTokens) VerifyToken(token string) (string, error) {
	t, user, ok := strings.Cut(token, ".")
	if !ok || t != strings.Repeat("x", 2000) {
		return "", errors.New("bad token")
	}
	return user, nil
}

// A malformed OAUTHBEARER message gets an error challenge (RFC 7628
// §3.2.2); any answer to it ends the exchange, as a bad command: no token
// was checked.
func TestOAuthBearerMalformed(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	c := ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)
	for _, answer := range []string{"", "AQ==", b64("\x01\x01"), "*"} {
		c.send("AUTH OAUTHBEARER " + b64("garbage") + "\r\n")
		c.expect(`\+ .*`)
		c.send(answer + "\r\n")
		if answer == "*" {
			c.expect(`-ERR authentication cancelled`)
		} else {
			c.expect(saslMalformed)
		}
	}
}

// After an error challenge has told the client that its token is wrong,
// every way of ending the exchange is a failed login, and the challenge
// itself waits the failure delay.
func TestBearerErrorChallengeIsAFailure(t *testing.T) {
	var logs testkit.SyncBuffer
	const delay = 300 * time.Millisecond
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.AuthFailDelay = delay
	})
	failures := func() int { return strings.Count(logs.String(), `msg="authentication failed"`) }
	c := ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)

	start := time.Now()
	c.send("AUTH OAUTHBEARER " + bearerAs("alice", "bad") + "\r\n")
	c.expect(`\+ .*`)
	if d := time.Since(start); d < delay {
		t.Errorf("error challenge after %v, before the failure delay %v", d, delay)
	}
	c.send("!!!not base64\r\n")
	c.expect(authFailed)
	if n := failures(); n != 1 {
		t.Errorf("%d failed logins logged after bad base64, want 1", n)
	}

	c.send("AUTH XOAUTH2 " + xoauth2As("alice", "bad") + "\r\n")
	c.expect(`\+ .*`)
	c.send(strings.Repeat("A", 20000) + "\r\n")
	c.expect(authFailed)
	if n := failures(); n != 2 {
		t.Errorf("%d failed logins logged after an over-long line, want 2", n)
	}

	// Hanging up after the error challenge does not escape the count.
	c.send("AUTH OAUTHBEARER " + bearerAs("alice", "bad") + "\r\n")
	c.expect(`\+ .*`)
	c.conn.Close()
	waitFor(t, "the failure of a dropped exchange to be logged", func() bool { return failures() == 3 })

	// Malformed input before any credential was checked is answered at
	// once and is no failed login.
	c = ts.dialTLS(t, nil)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH PLAIN !!!
		S: -ERR invalid base64 in initial response
		C: AUTH LOGIN
		S: \+ VXNlcm5hbWU6
		C: *
		S: -ERR authentication cancelled
		C: AUTH LOGIN
		S: \+ VXNlcm5hbWU6
		C: !!!
		S: -ERR invalid base64 in SASL response`)
	if n := failures(); n != 3 {
		t.Errorf("%d failed logins logged, want 3", n)
	}
}

// A client that falls silent after an error challenge gets one reply,
// the goodbye of the idle timeout, and its failure is counted; the reply
// of the failed login is not sent after the goodbye.
func TestSilenceAfterErrorChallenge(t *testing.T) {
	var logs testkit.SyncBuffer
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.PreLoginTimeout = 300 * time.Millisecond
	})
	c := ts.dialTLS(t, nil)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH OAUTHBEARER ` + bearerAs("alice", "bad") + `
		S: \+ .*
		S: -ERR autologout: idle for too long`)
	c.closed()
	waitFor(t, "the failure to be logged", func() bool {
		return strings.Count(logs.String(), `msg="authentication failed"`) == 1
	})
}
