package server

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
)

// greetingAPOP is the greeting with an APOP timestamp ({PLAIN} users).
const greetingAPOP = `\+OK Pouch ready\. <.*>`

const sysTempCredentials = `-ERR \[SYS/TEMP\] cannot check credentials now; try again later`

// While the users file cannot be used, the users it had still log in; a
// failed login gets [SYS/TEMP], whether the name is missing from the list or
// the password is wrong, and only a wrong password for a user the list has
// counts towards a ban. Once the file is good again, failures are [AUTH].
func TestLoginsWhileTheUsersFileIsUnusable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte("alice:{PLAIN}secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	users := auth.OpenUsersWith(path, auth.UsersOptions{})
	ts, _ := newGuarded(t, func(c *Config) { c.Auth = users })
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}

	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(greetingAPOP)
	c.send("USER alice\r\nPASS secret\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(`\+OK maildrop has \d+ messages \(\d+ octets\)`)
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)
	c.closed()

	// More unknown names than the guard's limit of 3: none is counted, or
	// the source would be banned for guessing across names.
	c = ts.dialFrom(t, "127.0.0.3")
	c.expect(greetingAPOP)
	for i := range 5 {
		c.send(fmt.Sprintf("USER nobody%d\r\nPASS x\r\n", i))
		c.expect(`\+OK send PASS`)
		c.expect(sysTempCredentials)
	}
	c.send("USER alice\r\nPASS secret\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(`\+OK maildrop has \d+ messages \(\d+ octets\)`)

	// A wrong password for alice has the same reply, and counts: the third
	// locks the name for this source, so that even her right password is
	// refused from it.
	c = ts.dialFrom(t, "127.0.0.4")
	c.expect(greetingAPOP)
	for range 3 {
		c.send("USER alice\r\nPASS wrong\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(sysTempCredentials)
	}
	c.send("USER alice\r\nPASS secret\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(authFailed)

	if err := os.WriteFile(path, []byte("alice:{PLAIN}secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c = ts.dialFrom(t, "127.0.0.5")
	c.expect(greetingAPOP)
	c.send("USER nobody\r\nPASS x\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(authFailed)
}

// bareSource is an account source with none of the optional capabilities,
// whose accounts would still have SCRAM keys and APOP secrets.
type bareSource struct{ users map[string]string }

func (b bareSource) Account(user string) (auth.Account, error) {
	if _, ok := b.users[user]; !ok {
		return auth.Account{}, auth.ErrNoSuchUser
	}
	return auth.Account{Name: user}, nil
}
func (b bareSource) Verify(user, pw string) bool { p, ok := b.users[user]; return ok && p == pw }
func (b bareSource) Summary() auth.Summary       { return auth.Summary{SCRAM: true, APOP: true} }
func (b bareSource) Fault() error                { return nil }

// SCRAM and APOP are offered only by a source that can serve them
// (auth.SCRAMSource, auth.APOPSource, found once by New), and only while
// some account can use them (Summary).
func TestOptionalCapabilities(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.Auth = bareSource{map[string]string{"alice": "secret"}} })
	c := ts.dial(t)
	c.expect(`\+OK Pouch ready\.$`)
	caps := c.capa()
	if strings.Contains(strings.Join(caps, " "), "SCRAM") {
		t.Errorf("SCRAM offered by a source without keys: %v", caps)
	}
	c.send("APOP alice 0123456789abcdef0123456789abcdef\r\n")
	c.expect(`-ERR APOP is not available`)
	c.login2("alice", "secret")

	path := filepath.Join(t.TempDir(), "users")
	if err := auth.AddUser(path, "bob", "Kq7-vTz2-mW9p"); err != nil {
		t.Fatal(err)
	}
	users := auth.OpenUsersWith(path, auth.UsersOptions{})
	ts = newTestServer(t, func(c *Config) { c.Auth = users })
	c = ts.dial(t)
	c.expect(`\+OK Pouch ready\.$`) // no {PLAIN} user: no APOP
	if caps := c.capa(); !has(caps, "SASL SCRAM-SHA-256 PLAIN LOGIN") {
		t.Errorf("CAPA with SCRAM keys: %v", caps)
	}
	os.WriteFile(path, []byte("bob:{PLAIN}pw\n"), 0o600)
	c = ts.dial(t)
	c.expect(greetingAPOP)
	if caps := c.capa(); !has(caps, "SASL PLAIN LOGIN") {
		t.Errorf("CAPA once no account has SCRAM keys: %v", caps)
	}
}

// checkingSource is an account source that tells a wrong password from one
// it could not check (auth.Checker), and can be made unable to.
type checkingSource struct {
	bareSource
	down *atomic.Bool
}

func (c checkingSource) Check(user, pw string) (bool, error) {
	if c.down.Load() {
		return false, fmt.Errorf("%w: database down", auth.ErrUnavailable)
	}
	return c.Verify(user, pw), nil
}

func (c checkingSource) Account(user string) (auth.Account, error) {
	if c.down.Load() {
		return auth.Account{}, fmt.Errorf("%w: database down", auth.ErrUnavailable)
	}
	return c.bareSource.Account(user)
}

// A password the source could not check is answered -ERR [SYS/TEMP] and
// counts as no failed login, by any mechanism; the guard's limit of 3 is
// never reached. Names without a domain take the default domain.
func TestUncheckedLoginsAreNoFailures(t *testing.T) {
	var down atomic.Bool
	src := checkingSource{bareSource{map[string]string{"alice@example.org": "secret"}}, &down}
	ts, _ := newGuarded(t, func(c *Config) { c.Auth = src; c.DefaultDomain = "Example.ORG" })
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK Pouch ready\.$`)
	c.login2("alice", "secret") // alice@example.org
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)
	down.Store(true)
	c = ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK Pouch ready\.$`)
	for range 5 {
		c.send("USER alice@example.org\r\nPASS secret\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(sysTempCredentials)
		c.send("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00secret")) + "\r\n")
		c.expect(sysTempCredentials)
	}
	down.Store(false)
	c.send("USER alice\r\nPASS secret\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(`\+OK maildrop has 0 messages \(0 octets\)`)
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)
	if _, err := os.Stat(filepath.Join(ts.root, "example.org", "alice", "cur")); err != nil {
		t.Errorf("the maildrop of alice@example.org: %v", err)
	}
}

// A client certificate or a bearer token whose user the source could not
// look up is answered -ERR [SYS/TEMP], as a password it could not check is,
// even by a source that reports no Fault: no error challenge tells the
// client that a good token is bad, and the guard counts nothing.
func TestUncheckedExternalAndTokensAreNoFailures(t *testing.T) {
	var down atomic.Bool
	src := checkingSource{bareSource{map[string]string{"alice": "secret"}}, &down}
	g, err := guard.New(guard.Config{MaxFailures: 3, UserMaxFailures: 4})
	if err != nil {
		t.Fatal(err)
	}
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) { c.Auth = src; c.Guard = g })
	cert := &tls.Config{Certificates: []tls.Certificate{clientCert(t, "alice")}}
	down.Store(true)
	c := ts.dialTLS(t, cert)
	c.expect(`\+OK Pouch ready\.`)
	for range 5 {
		c.send("AUTH EXTERNAL =\r\n")
		c.expect(sysTempCredentials)
		c.send("AUTH OAUTHBEARER " + bearerAs("alice", "good-token-for-alice") + "\r\n")
		c.expect(sysTempCredentials)
		c.send("AUTH XOAUTH2 " + xoauth2As("alice", "good-token-for-alice") + "\r\n")
		c.expect(sysTempCredentials)
	}
	down.Store(false)
	// A token that cannot be checked because the issuer's key set cannot
	// be fetched is deferred too, and counts for nothing.
	for range 5 {
		c.send("AUTH OAUTHBEARER " + bearerAs("alice", "token-of-a-key-not-fetched") + "\r\n")
		c.expect(sysTempCredentials)
		c.send("AUTH XOAUTH2 " + xoauth2As("alice", "token-of-a-key-not-fetched") + "\r\n")
		c.expect(sysTempCredentials)
	}
	c.send("AUTH EXTERNAL =\r\n")
	c.expect(`\+OK maildrop has 0 messages .*`)
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)
	c = ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)
	c.send("AUTH OAUTHBEARER " + bearerAs("alice", "good-token-for-alice") + "\r\n")
	c.expect(`\+OK maildrop has 0 messages .*`)
}
