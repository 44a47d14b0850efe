package server

import (
	"crypto/md5"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/auth"
)

func apopDigest(stamp, secret string) string {
	sum := md5.Sum([]byte(stamp + secret))
	return hex.EncodeToString(sum[:])
}

func TestAPOP(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.Auth = fakeAuth{users: map[string]string{"alice": "tanstaaf"}, apop: true}
	})
	c := ts.dial(t)
	greeting := c.expect(`\+OK Pouch ready\. <\d+\.[0-9a-f]+@test\.example>`)
	ts1 := greeting[strings.Index(greeting, "<"):]
	digest := func(ts, secret string) string {
		sum := md5.Sum([]byte(ts + secret))
		return hex.EncodeToString(sum[:])
	}
	c.transcript(`
		C: APOP alice ` + digest(ts1, "wrong") + `
		S: -ERR \[AUTH\] invalid user name or password
		C: APOP nobody ` + digest(ts1, "tanstaaf") + `
		S: -ERR \[AUTH\] invalid user name or password
		C: APOP alice
		S: -ERR APOP takes a user name and a digest
		C: APOP alice ` + digest(ts1, "tanstaaf") + `
		S: \+OK maildrop has 0 messages \(0 octets\)`)
	// Every greeting has its own timestamp.
	c2 := ts.dial(t)
	if g := c2.line(); strings.Contains(g, ts1) {
		t.Fatalf("timestamp reused: %q", g)
	}
}

func TestNoAPOPWithoutSecrets(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: APOP alice 0123456789abcdef0123456789abcdef
		S: -ERR APOP is not available`)
}

func TestAuthFailures(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: PASS secret
		S: -ERR send USER first
		C: USER alice
		S: \+OK send PASS
		C: PASS wrong
		S: -ERR \[AUTH\] invalid user name or password
		C: PASS secret
		S: -ERR send USER first
		C: USER nobody
		S: \+OK send PASS
		C: PASS secret
		S: -ERR \[AUTH\] invalid user name or password
		C: USER bob
		S: \+OK send PASS
		C: PASS pass word with spaces
		S: \+OK maildrop has 0 messages \(0 octets\)`)
}

func TestAuthFailDelayIsTheSame(t *testing.T) {
	ts := newTestServer(t, func(c *Config) { c.AuthFailDelay = 200 * time.Millisecond })
	for _, user := range []string{"alice", "nobody"} {
		c := ts.dial(t)
		c.expect(`\+OK.*`)
		start := time.Now()
		c.send("USER " + user + "\r\nPASS wrong\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(`-ERR \[AUTH\] invalid user name or password`)
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Errorf("%s: failure answered after %v, before the delay", user, d)
		}
	}
}

func TestInUse(t *testing.T) {
	ts := newTestServer(t, nil)
	c1 := ts.dial(t)
	c1.login("alice", "secret")
	c2 := ts.dial(t)
	c2.transcript(`
		S: \+OK Pouch ready\.
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: -ERR \[IN-USE\] maildrop already locked by another session`)
	c1.send("QUIT\r\n")
	c1.expect(`\+OK .*`)
	c1.closed()
	c2.transcript(`
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: \+OK maildrop has 0 messages \(0 octets\)`)
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
