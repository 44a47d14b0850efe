package server

import (
	"crypto/tls"
	"encoding/base64"
	"regexp"
	"strings"
	"testing"

	"github.com/pouchmail/pouch/auth"
	"github.com/xdg-go/scram"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

const authFailed = `-ERR \[AUTH\] invalid user name or password`

// saslMalformed answers a SASL message that bears no credential.
const saslMalformed = `-ERR malformed SASL message`

func TestAuthPlain(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH
		S: \+OK SASL mechanisms follow
		S: PLAIN
		S: LOGIN
		S: \.
		C: AUTH CRAM-MD5
		S: -ERR unsupported SASL mechanism
		C: AUTH PLAIN !!!notbase64
		S: -ERR invalid base64 in initial response
		C: AUTH PLAIN
		S: \+ 
		C: *
		S: -ERR authentication cancelled
		C: AUTH PLAIN
		S: \+ 
		C: %%%
		S: -ERR invalid base64 in SASL response
		C: AUTH PLAIN ` + b64("\x00alice\x00wrong") + `
		S: -ERR \[AUTH\] invalid user name or password
		C: AUTH PLAIN ` + b64("bob\x00alice\x00secret") + `
		S: -ERR \[AUTH\] invalid user name or password
		C: AUTH PLAIN ` + b64("garbage") + `
		S: -ERR malformed SASL message
		C: AUTH PLAIN =
		S: -ERR malformed SASL message
		C: AUTH PLAIN ` + b64("\x00\x00secret") + `
		S: -ERR malformed SASL message
		C: AUTH PLAIN
		S: \+ 
		C: ` + b64("\x00alice\x00secret") + `
		S: \+OK maildrop has 0 messages \(0 octets\)
		C: QUIT
		S: \+OK .*`)
	c = ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: auth plain ` + b64("alice\x00alice\x00secret") + `
		S: \+OK maildrop has 0 messages \(0 octets\)`)
}

func TestAuthLogin(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	c := ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH LOGIN
		S: \+ VXNlcm5hbWU6
		C: ` + b64("alice") + `
		S: \+ UGFzc3dvcmQ6
		C: ` + b64("wrong") + `
		S: ` + authFailed + `
		C: AUTH LOGIN ` + b64("bob") + `
		S: \+ UGFzc3dvcmQ6
		C: ` + b64("pass word with spaces") + `
		S: \+OK maildrop has 0 messages .*`)
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

// scramAuth adds SCRAM credentials to fakeAuth, and takes APOP away.
type scramAuth struct{ fakeAuth }

func (a scramAuth) SCRAMCredentials(user string) (scram.StoredCredentials, bool) {
	pw, ok := a.users[user]
	if !ok {
		return scram.StoredCredentials{}, false
	}
	c, _ := scram.SHA256.NewClient(user, pw, "")
	creds, err := c.GetStoredCredentialsWithError(scram.KeyFactors{Salt: "0123456789abcdef", Iters: 4096})
	return creds, err == nil
}

func (a scramAuth) Summary() auth.Summary { return auth.Summary{SCRAM: true} }

func (a scramAuth) APOPSecret(string) (string, bool) { return "", false }

// scramLogin runs a SCRAM exchange with the xdg-go client.
func scramLogin(t *testing.T, c *client, mech, user, pass string, cb *scram.ChannelBinding, wantFail string) {
	t.Helper()
	cl, err := scram.SHA256.NewClient(user, pass, "")
	if err != nil {
		t.Fatal(err)
	}
	var conv *scram.ClientConversation
	switch {
	case cb != nil:
		conv = cl.NewConversationWithChannelBinding(*cb)
	case mech == "SCRAM-SHA-256-Y":
		conv = cl.NewConversationAdvertisingChannelBinding()
		mech = "SCRAM-SHA-256"
	default:
		conv = cl.NewConversation()
	}
	first, err := conv.Step("")
	if err != nil {
		t.Fatal(err)
	}
	c.send("AUTH " + mech + " " + base64.StdEncoding.EncodeToString([]byte(first)) + "\r\n")
	for {
		l := c.line()
		if !strings.HasPrefix(l, "+ ") {
			if wantFail != "" && regexp.MustCompile("^"+wantFail+"$").MatchString(l) {
				return
			}
			t.Fatalf("SCRAM: %q", l)
		}
		chal, err := base64.StdEncoding.DecodeString(l[2:])
		if err != nil {
			t.Fatal(err)
		}
		if conv.Done() {
			c.send("\r\n")
			if wantFail != "" {
				c.expect(wantFail)
			}
			return
		}
		resp, err := conv.Step(string(chal))
		if err != nil {
			t.Fatalf("client step: %v", err)
		}
		if conv.Done() && resp == "" {
			// The server-final was verified by the client.
			c.send("\r\n")
			if wantFail != "" {
				c.expect(wantFail)
			}
			return
		}
		c.send(base64.StdEncoding.EncodeToString([]byte(resp)) + "\r\n")
	}
}

func TestSCRAM(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	c := ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)
	st := c.conn.(*tls.Conn).ConnectionState()
	exporter, err := scram.NewTLSExporterBinding(&st)
	if err != nil {
		t.Fatal(err)
	}
	endpoint, err := scram.NewTLSServerEndpointBinding(&st)
	if err != nil {
		t.Fatal(err)
	}
	wrong := scram.ChannelBinding{Type: scram.ChannelBindingTLSExporter, Data: make([]byte, 32)}

	scramLogin(t, c, "SCRAM-SHA-256", "alice", "wrong", nil, authFailed)
	scramLogin(t, c, "SCRAM-SHA-256", "nobody", "secret", nil, authFailed)
	// A channel binding that does not match leaves the proof unchecked:
	// refused, but no failed login.
	scramLogin(t, c, "SCRAM-SHA-256-PLUS", "alice", "secret", &wrong, saslMalformed)
	// A client that supports channel binding but did not see PLUS offered
	// was downgraded by someone: refused.
	scramLogin(t, c, "SCRAM-SHA-256-Y", "alice", "secret", nil, saslMalformed)
	// p= with the non-PLUS name, and no channel binding with the PLUS name.
	scramLogin(t, c, "SCRAM-SHA-256", "alice", "secret", &exporter, saslMalformed)
	scramLogin(t, c, "SCRAM-SHA-256-PLUS", "alice", "secret", nil, saslMalformed)
	scramLogin(t, c, "SCRAM-SHA-256-PLUS", "alice", "secret", &exporter, "")
	c.expect(`\+OK maildrop has 0 messages .*`)
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)

	c = ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)
	st = c.conn.(*tls.Conn).ConnectionState()
	endpoint, _ = scram.NewTLSServerEndpointBinding(&st)
	scramLogin(t, c, "SCRAM-SHA-256-PLUS", "alice", "secret", &endpoint, "")
	c.expect(`\+OK maildrop has 0 messages .*`)
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)

	// Truncated and malformed exchanges: the last one's nonce is not the
	// server's, so its proof is not checked.
	c = ts.dialTLS(t, nil)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH SCRAM-SHA-256
		S: \+ 
		C: ` + base64.StdEncoding.EncodeToString([]byte("garbage")) + `
		S: ` + saslMalformed + `
		C: AUTH SCRAM-SHA-256 ` + base64.StdEncoding.EncodeToString([]byte("n,,n=alice,r=abc")) + `
		S: \+ .*
		C: *
		S: -ERR authentication cancelled
		C: AUTH SCRAM-SHA-256 ` + base64.StdEncoding.EncodeToString([]byte("n,,n=alice,r=abc")) + `
		S: \+ .*
		C: ` + base64.StdEncoding.EncodeToString([]byte("c=biws,r=abc,p=AAAA")) + `
		S: ` + saslMalformed + `
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: \+OK maildrop .*`)
}

func TestSCRAMUnknownUserLooksTheSame(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	first := func(user string) string {
		c := ts.dialTLS(t, nil)
		c.expect(`\+OK.*`)
		c.send("AUTH SCRAM-SHA-256 " + base64.StdEncoding.EncodeToString([]byte("n,,n="+user+",r=nonce")) + "\r\n")
		l := c.expect(`\+ .*`)
		b, _ := base64.StdEncoding.DecodeString(l[2:])
		// r=nonce...,s=SALT,i=ITER: drop the server's random nonce.
		parts := strings.Split(string(b), ",")
		return strings.Join(parts[1:], ",")
	}
	if a, b := first("nobody"), first("nobody"); a != b {
		t.Errorf("an unknown user's salt changes between attempts: %q, %q", a, b)
	}
	if s := first("nobody"); !strings.Contains(s, "i=4096") {
		t.Errorf("unknown user's challenge %q", s)
	}
}

func TestExternal(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	// Without a client certificate EXTERNAL is neither offered nor accepted.
	c := ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)
	for _, cp := range c.capa() {
		if strings.Contains(cp, "EXTERNAL") {
			t.Fatalf("EXTERNAL offered without a client certificate: %q", cp)
		}
	}
	c.transcript(`
		C: AUTH EXTERNAL =
		S: -ERR SASL mechanism not available on this connection`)

	cert := clientCert(t, "alice")
	c = ts.dialTLS(t, &tls.Config{Certificates: []tls.Certificate{cert}})
	c.expect(`\+OK Pouch ready\.`)
	if caps := c.capa(); !has(caps, "SASL SCRAM-SHA-256-PLUS SCRAM-SHA-256 EXTERNAL OAUTHBEARER XOAUTH2 PLAIN LOGIN") {
		t.Fatalf("CAPA with a client certificate: %v", caps)
	}
	c.transcript(`
		C: AUTH EXTERNAL ` + base64.StdEncoding.EncodeToString([]byte("bob")) + `
		S: ` + authFailed + `
		C: AUTH EXTERNAL =
		S: \+OK maildrop has 0 messages .*`)

	// A certificate for a name that is no user.
	c = ts.dialTLS(t, &tls.Config{Certificates: []tls.Certificate{clientCert(t, "mallory")}})
	c.transcript(`
		S: \+OK Pouch ready\.
		C: AUTH EXTERNAL =
		S: ` + authFailed)
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
