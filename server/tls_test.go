package server

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/tlsutil"
)

// tlsServer is a test server with TLS on both a POP3 (STLS) and a POP3S
// listener, listening on addr's IP.
type tlsServer struct {
	*testServer
	tlsAddr string
	certs   *tlsutil.Manager
	roots   *x509.CertPool
	certDir string
}

func newTLSServer(t *testing.T, ip string, mod func(*Config)) *tlsServer {
	t.Helper()
	dir := t.TempDir()
	certs, err := tlsutil.NewManager(nil, nil, dir, "localhost", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	clientCA, caKey := newCA(t, "Test client CA")
	caFile := filepath.Join(dir, "client-ca.pem")
	writeCA(t, caFile, clientCA)
	cfg, err := certs.ServerConfig(caFile)
	if err != nil {
		t.Fatal(err)
	}
	ts := &tlsServer{certs: certs, certDir: dir}
	ts.testServer = newTestServerOn(t, ip, func(c *Config) {
		c.TLS = cfg
		c.ClientCAs = certs.ClientCAs
		c.Auth = scramAuth{fakeAuth{users: map[string]string{"alice": "secret", "bob": "pass word with spaces"}}}
		c.Tokens = fakeTokens{}
		if mod != nil {
			mod(c)
		}
	})
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	go ts.srv.ServeTLS(l)
	ts.tlsAddr = l.Addr().String()
	ts.roots = x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(mustCert(t, certs).Certificate[0])
	ts.roots.AddCert(leaf)
	clientCAKey = caKey
	clientCACert = clientCA
	return ts
}

var (
	clientCAKey  *ecdsa.PrivateKey
	clientCACert *x509.Certificate
)

// writeCA writes a CA certificate as PEM.
func writeCA(t *testing.T, path string, ca *x509.Certificate) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func mustCert(t *testing.T, m *tlsutil.Manager) *tls.Certificate {
	c, err := m.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newCA makes a CA certificate named name and its key.
func newCA(t *testing.T, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

// clientCert makes a client certificate for name signed by the test CA.
func clientCert(t *testing.T, name string) tls.Certificate {
	t.Helper()
	return signedClientCert(t, name, clientCACert, clientCAKey)
}

// signedClientCert makes a client certificate for name signed by ca.
func signedClientCert(t *testing.T, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// newTestServerOn is newTestServer listening on ip.
func newTestServerOn(t *testing.T, ip string, mod func(*Config)) *testServer {
	ts := newTestServer(t, mod)
	if ip == "127.0.0.1" {
		return ts
	}
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Skipf("cannot listen on %s: %v", ip, err)
	}
	go ts.srv.Serve(l)
	ts.addr = l.Addr().String()
	return ts
}

func (ts *tlsServer) dialTLS(t *testing.T, cfg *tls.Config) *client {
	t.Helper()
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg.RootCAs = ts.roots
	cfg.ServerName = "localhost"
	c, err := tls.Dial("tcp", ts.tlsAddr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, conn: c, r: bufio.NewReader(c)}
}

// starttls upgrades a plaintext client after "+OK Begin TLS negotiation".
func (c *client) starttls(roots *x509.CertPool) *tls.ConnectionState {
	c.t.Helper()
	c.send("STLS\r\n")
	c.expect(`\+OK Begin TLS negotiation`)
	if c.r.Buffered() != 0 {
		c.t.Fatal("data after the STLS reply")
	}
	tc := tls.Client(c.conn, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
	st := tc.ConnectionState()
	return &st
}

func (c *client) capa() []string {
	c.t.Helper()
	c.send("CAPA\r\n")
	c.expect(`\+OK Capability list follows`)
	var caps []string
	for {
		l := c.line()
		if l == "." {
			return caps
		}
		caps = append(caps, l)
	}
}

func has(caps []string, want string) bool {
	for _, c := range caps {
		if c == want {
			return true
		}
	}
	return false
}

func TestSTLS(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	c := ts.dial(t)
	c.expect(`\+OK Pouch ready\.`)
	if caps := c.capa(); !has(caps, "STLS") || !has(caps, "USER") || has(caps, "SASL SCRAM-SHA-256-PLUS SCRAM-SHA-256 OAUTHBEARER XOAUTH2 PLAIN LOGIN") {
		t.Fatalf("CAPA before TLS: %v", caps)
	}
	st := c.starttls(ts.roots)
	if st.Version < tls.VersionTLS12 {
		t.Fatalf("TLS version %x", st.Version)
	}
	caps := c.capa()
	if has(caps, "STLS") || !has(caps, "SASL SCRAM-SHA-256-PLUS SCRAM-SHA-256 OAUTHBEARER XOAUTH2 PLAIN LOGIN") {
		t.Fatalf("CAPA after TLS: %v", caps)
	}
	c.transcript(`
		C: STLS
		S: -ERR TLS is already active
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: \+OK maildrop has 0 messages \(0 octets\)
		C: STLS
		S: -ERR not allowed after login
		C: QUIT
		S: \+OK .*`)
}

func TestSTLSInjectionDiscarded(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	ts.deliver(t, "alice", msg1)
	c := ts.dial(t)
	c.expect(`\+OK Pouch ready\.`)
	// A man in the middle appends commands after STLS in the same packet:
	// they must never run, inside or outside TLS.
	c.send("STLS\r\nUSER alice\r\nPASS secret\r\nDELE 1\r\nQUIT\r\n")
	c.expect(`\+OK Begin TLS negotiation`)
	tc := tls.Client(c.conn, &tls.Config{RootCAs: ts.roots, ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
	c.transcript(`
		C: STAT
		S: -ERR not allowed before login
		C: PASS secret
		S: -ERR send USER first
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: \+OK maildrop has 1 messages .*`)
}

func TestSTLSWithoutTLSConfig(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	c.expect(`\+OK Pouch ready\.`)
	if has(c.capa(), "STLS") {
		t.Fatal("STLS advertised without a certificate")
	}
	c.transcript(`
		C: STLS
		S: -ERR TLS is not available`)
}

func TestImplicitTLS(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	ts.deliver(t, "alice", msg1)
	c := ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)
	if caps := c.capa(); has(caps, "STLS") {
		t.Fatalf("STLS advertised on POP3S: %v", caps)
	}
	c.login2("alice", "secret")
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)
	// The server ends TLS with close_notify, so the client sees a clean EOF.
	if _, err := c.r.ReadByte(); err != io.EOF {
		t.Fatalf("after QUIT: %v, want a clean EOF (close_notify)", err)
	}
}

func (c *client) login2(user, pass string) {
	c.t.Helper()
	c.send("USER " + user + "\r\nPASS " + pass + "\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(`\+OK maildrop has \d+ messages \(\d+ octets\)`)
}

func TestTLSGarbageAndStalls(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) { c.PreLoginTimeout = 300 * time.Millisecond })
	// Garbage instead of a ClientHello.
	raw, err := net.Dial("tcp", ts.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	raw.Write([]byte("USER alice\r\nPASS secret\r\n\x16\x03\x01garbage"))
	if b, err := io.ReadAll(raw); strings.Contains(string(b), "+OK") {
		t.Fatalf("garbage got %q, %v", b, err)
	}
	raw.Close()
	// A handshake that stalls is cut off by the deadline.
	raw, _ = net.Dial("tcp", ts.tlsAddr)
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	io.ReadAll(raw)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stalled handshake held for %v", d)
	}
	raw.Close()
	// Everyone else is still served.
	c := ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)
	c.login2("alice", "secret")
}

func TestCleartextPolicy(t *testing.T) {
	// The server trusts only 127.0.0.1; the client comes from 127.0.0.2.
	ts := newTLSServer(t, "127.0.0.2", func(c *Config) {
		c.InsecureAuthNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		c.Auth = scramAuth{fakeAuth{users: map[string]string{"alice": "secret"}, apop: true}}
	})
	c := ts.dialFrom(t, "127.0.0.2")
	g := c.expect(`\+OK Pouch ready\..*`)
	if strings.Contains(g, "<") {
		t.Fatalf("APOP timestamp offered without TLS: %q", g)
	}
	caps := c.capa()
	if has(caps, "USER") || !has(caps, "SASL SCRAM-SHA-256") || !has(caps, "STLS") {
		t.Fatalf("CAPA without TLS from an untrusted network: %v", caps)
	}
	const refused = `-ERR \[AUTH\] cleartext authentication is not allowed without TLS; use STLS or port 995`
	c.transcript(`
		C: USER alice
		S: ` + refused + `
		C: PASS secret
		S: -ERR send USER first
		C: USER nobody
		S: ` + refused + `
		C: AUTH PLAIN ` + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00secret")) + `
		S: ` + refused + `
		C: AUTH LOGIN
		S: ` + refused + `
		C: AUTH XOAUTH2
		S: ` + refused + `
		C: APOP alice 0123456789abcdef0123456789abcdef
		S: ` + refused)
	// SCRAM never reveals the password, so it works without TLS.
	scramLogin(t, c, "SCRAM-SHA-256", "alice", "secret", nil, "")
	c.expect(`\+OK maildrop has 0 messages .*`)
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)

	// After STLS, everything is allowed.
	c = ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK Pouch ready\..*`)
	c.starttls(ts.roots)
	if caps := c.capa(); !has(caps, "USER") {
		t.Fatalf("CAPA after STLS: %v", caps)
	}
	c.login2("alice", "secret")
}

func TestCertificateReloadWhileSessionsOpen(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	c := ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)
	c.login2("alice", "secret")
	before := ts.certs.Fingerprints()[0]

	// A new certificate is written over the old files.
	if err := tlsutil.SelfSigned(filepath.Join(ts.certDir, "cert.pem"), filepath.Join(ts.certDir, "key.pem"), "localhost"); err != nil {
		t.Fatal(err)
	}
	if err := ts.certs.Reload(); err != nil {
		t.Fatal(err)
	}
	after := ts.certs.Fingerprints()[0]
	if after == before {
		t.Fatal("fingerprint unchanged after reload")
	}
	// The open session goes on; new sessions get the new certificate.
	c.send("NOOP\r\n")
	c.expect(`\+OK`)
	leaf, _ := x509.ParseCertificate(mustCert(t, ts.certs).Certificate[0])
	ts.roots = x509.NewCertPool()
	ts.roots.AddCert(leaf)
	c2 := ts.dialTLS(t, nil)
	c2.expect(`\+OK Pouch ready\.`)
}

// Client certificates and tokens name accounts by full address: a name
// without a domain takes the default domain, and an address its own
// account before any OAuthDomains mapping to a bare user.
func TestAddressesFromCertificatesAndTokens(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) {
		c.Auth = scramAuth{fakeAuth{users: map[string]string{"alice@example.org": "a", "alice@example.net": "b"}}}
		c.DefaultDomain = "example.org"
	})
	bearer := func(token string) string {
		return base64.StdEncoding.EncodeToString([]byte("n,,\x01auth=Bearer " + token + "\x01\x01"))
	}
	for _, tc := range []struct {
		cert, token, want string
	}{
		{cert: "alice", want: "alice@example.org"},
		{cert: "alice@Example.NET", want: "alice@example.net"},
		{token: "good-token-for-alice@example.net", want: "alice@example.net"},
		{token: "good-token-for-alice", want: "alice@example.org"},
	} {
		var c *client
		if tc.cert != "" {
			c = ts.dialTLS(t, &tls.Config{Certificates: []tls.Certificate{clientCert(t, tc.cert)}})
			c.transcript(`
				S: \+OK Pouch ready\.
				C: AUTH EXTERNAL =
				S: \+OK maildrop has 0 messages .*`)
		} else {
			c = ts.dialTLS(t, nil)
			c.transcript(`
				S: \+OK Pouch ready\.
				C: AUTH OAUTHBEARER ` + bearer(tc.token) + `
				S: \+OK maildrop has 0 messages .*`)
		}
		c.transcript(`
			C: QUIT
			S: \+OK .*`)
		local, domain, _ := strings.Cut(tc.want, "@")
		if _, err := os.Stat(filepath.Join(ts.root, domain, local, "cur")); err != nil {
			t.Errorf("cert %q token %q: the maildrop of %s: %v", tc.cert, tc.token, tc.want, err)
		}
	}
}
