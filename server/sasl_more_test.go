package server

import (
	"crypto/md5"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdg-go/scram"

	"github.com/pouchmail/pouch/auth"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func bearerNoAuthz(token string) string {
	return b64("n,,\x01auth=Bearer " + token + "\x01\x01")
}

func bearerAs(user, token string) string {
	return b64("n,a=" + user + ",\x01auth=Bearer " + token + "\x01\x01")
}

func xoauth2As(user, token string) string {
	return b64("user=" + user + "\x01auth=Bearer " + token + "\x01\x01")
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

// RFC 5034 §4: an initial response may make the AUTH line longer than the
// 255 octets of other commands.
func TestAuthLongInitialResponse(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) { c.Tokens = longTokens{} })
	token := strings.Repeat("x", 2000) + ".alice"
	c := ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: USER ` + strings.Repeat("u", 300) + `
		S: -ERR line too long
		C: AUTH OAUTHBEARER ` + b64(strings.Repeat("x", 20000)) + `
		S: -ERR line too long
		C: AUTH XOAUTH2 ` + xoauth2As("alice", token) + `
		S: \+OK maildrop has 0 messages .*
		C: NOOP ` + strings.Repeat("1", 300) + `
		S: -ERR line too long
		C: AUTH PLAIN ` + strings.Repeat("A", 300) + `
		S: -ERR line too long
		C: QUIT
		S: \+OK .*`)
	c = ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: auth oauthbearer ` + bearerNoAuthz(token) + `
		S: \+OK maildrop has 0 messages .*`)
	// Not a bad command: the session goes on past MaxBadCommands of them.
	c = ts.dial(t)
	c.expect(`\+OK Pouch ready\.`)
	for range 12 {
		c.send("AUTH OAUTHBEARER " + bearerAs("alice", strings.Repeat("x", 2000)+".bob") + "\r\n")
		c.expect(`\+ .*`)
		c.send("AQ==\r\n")
		c.expect(authFailed)
	}
}

// User names longer than 40 octets work with USER and APOP too.
func TestLongUserNames(t *testing.T) {
	long := "firstname.lastname.department@example-company.org"
	const pw = "Sturdy-Otter-2291-bucket"
	ts := newTestServer(t, func(c *Config) {
		c.Auth = fakeAuth{users: map[string]string{long: pw}, apop: true}
	})
	c := ts.dial(t)
	c.expect(`\+OK Pouch ready\. <.*>`)
	c.transcript(`
		C: USER ` + long + `
		S: \+OK send PASS
		C: PASS ` + pw + `
		S: \+OK maildrop has 0 messages .*
		C: QUIT
		S: \+OK .*`)
	c = ts.dial(t)
	greeting := c.expect(`\+OK Pouch ready\. <.*>`)
	stamp := greeting[strings.Index(greeting, "<"):]
	c.transcript(`
		C: APOP ` + long + ` ` + strings.Repeat("0", 41) + `
		S: -ERR argument too long
		C: APOP ` + long + ` ` + apopDigest(stamp, pw) + `
		S: \+OK maildrop has 0 messages .*`)
	// Still bounded by the line.
	c = ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\..*
		C: USER ` + strings.Repeat("n", 251) + `
		S: -ERR line too long`)
}

// RFC 6856 §2: the USER tag of UTF8 only where USER is offered.
func TestCapaUTF8Tag(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.2", func(c *Config) {
		c.InsecureAuthNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK Pouch ready\..*`)
	if caps := c.capa(); has(caps, "USER") || has(caps, "UTF8 USER") || !has(caps, "UTF8") {
		t.Fatalf("CAPA without TLS from an untrusted network: %v", caps)
	}
	c.starttls(ts.roots)
	if caps := c.capa(); !has(caps, "USER") || !has(caps, "UTF8 USER") {
		t.Fatalf("CAPA after STLS: %v", caps)
	}
}

// jörg composed (NFC) and decomposed (NFD).
const (
	jorgNFC = "j\u00f6rg"
	jorgNFD = "jo\u0308rg"
)

// The SCRAM user name and a client certificate's name are normalized as
// every other user name is (RFC 6856 §4).
func TestSASLNormalizesNames(t *testing.T) {
	const pw = "Nimble-Badger-7304-ladder"
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) {
		c.Auth = scramAuth{fakeAuth{users: map[string]string{jorgNFC: pw, "alice": "secret"}}}
	})
	c := ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)
	// A client that does not SASLprep sends the name as typed.
	cl, err := scram.SHA256.NewClientUnprepped(jorgNFD, pw, "")
	if err != nil {
		t.Fatal(err)
	}
	conv := cl.NewConversation()
	first, _ := conv.Step("")
	if !strings.Contains(first, jorgNFD) {
		t.Fatalf("client-first %q", first)
	}
	c.send("AUTH SCRAM-SHA-256 " + b64(first) + "\r\n")
	for !conv.Done() {
		l := c.expect(`\+ .*`)
		chal, _ := base64.StdEncoding.DecodeString(l[2:])
		resp, err := conv.Step(string(chal))
		if err != nil {
			t.Fatalf("client step: %v", err)
		}
		c.send(b64(resp) + "\r\n")
	}
	c.expect(`\+OK maildrop has 0 messages .*`)
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)

	c = ts.dialTLS(t, &tls.Config{Certificates: []tls.Certificate{clientCert(t, jorgNFD)}})
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH EXTERNAL ` + b64(jorgNFC) + `
		S: \+OK maildrop has 0 messages .*
		C: QUIT
		S: \+OK .*`)

	c = ts.dialTLS(t, nil)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH PLAIN ` + b64(jorgNFD+"\x00"+jorgNFC+"\x00"+pw) + `
		S: \+OK maildrop has 0 messages .*`)
}

// Users added with `pouch user add` log in with either form of their name,
// and a password SCRAM cannot use still works with the other mechanisms.
func TestUsersFileNames(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	const pw = "Gentle-Walrus-8830-pebble"
	const emoji = "sunlit \U0001F33B meadow at noon 41"
	if err := auth.AddUser(path, jorgNFD, pw); err != nil {
		t.Fatal(err)
	}
	if err := auth.AddUser(path, "sunny", emoji); err != nil {
		t.Fatal(err)
	}
	users, err := auth.OpenUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) { c.Auth = users })
	for _, name := range []string{jorgNFC, jorgNFD} {
		c := ts.dial(t)
		c.login(name, pw)
		c.send("QUIT\r\n")
		c.expect(`\+OK .*`)
	}
	c := ts.dial(t)
	c.login("sunny", emoji)
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)
	c = ts.dialTLS(t, nil)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH PLAIN ` + b64("\x00sunny\x00"+emoji) + `
		S: \+OK maildrop has 0 messages .*`)
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
	var logs syncBuffer
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
	var logs syncBuffer
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

func apopDigest(stamp, secret string) string {
	sum := md5.Sum([]byte(stamp + secret))
	return hex.EncodeToString(sum[:])
}
