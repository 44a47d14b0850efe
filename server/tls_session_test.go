package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdg-go/scram"

	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/tlsutil"
	"github.com/pouchmail/pouch/metrics"
)

// RFC 8314 §3.3: on the POP3S port nothing is sent before the handshake, so
// a refused source gets no cleartext -ERR there, and no handshake either.
func TestPOP3SRefusalSendsNothing(t *testing.T) {
	g, err := guard.New(guard.Config{MaxFailures: 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Ban(netip.MustParsePrefix("127.0.0.2/32"), time.Hour, "test"); err != nil {
		t.Fatal(err)
	}
	deny, _ := guard.ParseNets("127.0.0.3")
	rules, err := guard.NewRules(nil, deny, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New()
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) {
		c.Guard, c.Rules, c.Metrics = g, rules, m
		c.MaxConnectionsPerIP = 1
	})
	silent := func(from string) {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		raw, err := d.Dial("tcp", ts.tlsAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(raw)
		var ne net.Error
		if len(b) > 0 || errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("refused source %s on the POP3S port got %q (%v); want the connection closed unanswered", from, b, err)
		}
	}
	silent("127.0.0.2") // banned
	silent("127.0.0.3") // denied by the access rules
	// Over the limit of connections per address.
	first := ts.dialTLSFrom(t, "127.0.0.4", nil)
	first.expect(`\+OK Pouch ready\.`)
	silent("127.0.0.4")

	// On the POP3 port the refusal is still told, in POP3.
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`-ERR \[SYS/.*`)
	body := scrapeMetrics(t, m)
	if !strings.Contains(body, `pouch_connections_refused_total{reason="banned"} 2`) ||
		!strings.Contains(body, `pouch_connections_refused_total{reason="denied"} 1`) ||
		!strings.Contains(body, `pouch_connections_refused_total{reason="limit"} 1`) {
		t.Errorf("refusals not counted:\n%s", body)
	}
}

// dialTLSFrom connects to the POP3S port from the local address ip.
func (ts *tlsServer) dialTLSFrom(t *testing.T, ip string, cfg *tls.Config) *client {
	t.Helper()
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg.RootCAs, cfg.ServerName = ts.roots, "localhost"
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c, err := tls.DialWithDialer(d, "tcp", ts.tlsAddr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, conn: c, r: bufio.NewReader(c)}
}

func scrapeMetrics(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

// A session upgraded with STLS counts as a TLS session, and its logins as
// logins over TLS; its connection still counts as one that arrived without.
func TestSTLSMetrics(t *testing.T) {
	m := metrics.New()
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) { c.Metrics = m })
	want := func(lines ...string) {
		t.Helper()
		body := scrapeMetrics(t, m)
		for _, l := range lines {
			if !strings.Contains(body, l) {
				t.Errorf("metrics lack %q", l)
			}
		}
	}
	c := ts.dial(t)
	c.expect(`\+OK Pouch ready\.`)
	waitSessions(t, ts.srv, 1)
	want(`pouch_sessions{tls="no"} 1`, `pouch_connections_total{tls="no"} 1`)
	c.starttls(ts.roots)
	c.login2("alice", "secret")
	want(`pouch_sessions{tls="no"} 0`, `pouch_sessions{tls="yes"} 1`, `pouch_connections_total{tls="no"} 1`,
		`pouch_logins_total{mechanism="PASS",result="success",tls="yes"} 1`)
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)

	// Cleartext from a trusted network, and implicit TLS.
	c = ts.dial(t)
	c.login("bob", "pass word with spaces")
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)
	c = ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)
	c.send("USER alice\r\nPASS wrong\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(authFailed)
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)
	waitSessions(t, ts.srv, 0)
	want(`pouch_sessions{tls="no"} 0`, `pouch_sessions{tls="yes"} 0`,
		`pouch_connections_total{tls="no"} 2`, `pouch_connections_total{tls="yes"} 1`,
		`pouch_logins_total{mechanism="PASS",result="success",tls="no"} 1`,
		`pouch_logins_total{mechanism="PASS",result="failure",tls="yes"} 1`)
}

// otherCert makes a client certificate for name signed by a CA that the
// server does not know.
func otherCert(t *testing.T, name string) tls.Certificate {
	t.Helper()
	ca, caKey := newCA(t, "Another CA")
	return signedClientCert(t, name, ca, caKey)
}

// A client certificate from a CA the server does not know leaves EXTERNAL
// out, and nothing else: the handshake succeeds and the client logs in with
// a password or SCRAM.
func TestClientCertFromAnotherCA(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			foreign := otherCert(t, "alice")
			var asked *tls.CertificateRequestInfo
			cfg := &tls.Config{MaxVersion: version, GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
				asked = cri
				return &foreign, nil // whatever the server asked for
			}}
			c := ts.dialTLS(t, cfg)
			c.expect(`\+OK Pouch ready\.`)
			if asked == nil {
				t.Fatal("the server did not ask for a client certificate")
			}
			if len(asked.AcceptableCAs) != 1 || !strings.Contains(string(asked.AcceptableCAs[0]), "Test client CA") {
				t.Errorf("acceptable CAs named by the server: %q", asked.AcceptableCAs)
			}
			caps := c.capa()
			if !has(caps, "SASL SCRAM-SHA-256-PLUS SCRAM-SHA-256 OAUTHBEARER XOAUTH2 PLAIN LOGIN") {
				t.Fatalf("CAPA with a certificate from another CA: %v", caps)
			}
			c.transcript(`
				C: AUTH EXTERNAL =
				S: -ERR SASL mechanism not available on this connection`)
			scramLogin(t, c, "SCRAM-SHA-256", "alice", "secret", nil, "")
			c.expect(`\+OK maildrop has 0 messages .*`)
			c.send("QUIT\r\n")
			c.expect(`\+OK .*`)

			c = ts.dialTLS(t, &tls.Config{MaxVersion: version, Certificates: []tls.Certificate{foreign},
				GetClientCertificate: cfg.GetClientCertificate})
			c.expect(`\+OK Pouch ready\.`)
			c.send("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n") // \0alice\0secret
			c.expect(`\+OK maildrop has 0 messages .*`)
			c.send("QUIT\r\n")
			c.expect(`\+OK .*`)

			// A certificate from the configured CA allows EXTERNAL.
			good := clientCert(t, "alice")
			c = ts.dialTLS(t, &tls.Config{MaxVersion: version, Certificates: []tls.Certificate{good}})
			c.expect(`\+OK Pouch ready\.`)
			if caps := c.capa(); !has(caps, "SASL SCRAM-SHA-256-PLUS SCRAM-SHA-256 EXTERNAL OAUTHBEARER XOAUTH2 PLAIN LOGIN") {
				t.Fatalf("CAPA with a certificate from the client CA: %v", caps)
			}
			c.send("AUTH EXTERNAL =\r\n")
			c.expect(`\+OK maildrop has 0 messages .*`)
			// Released before the next version logs in as alice again.
			c.send("QUIT\r\n")
			c.expect(`\+OK .*`)
		})
	}
}

// recordConn keeps what a TLS client reads, to tell the records apart.
type recordConn struct {
	net.Conn
	got []byte
}

func (r *recordConn) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.got = append(r.got, p[:n]...)
	return n, err
}

// lastRecord returns the content type and length of the last whole TLS
// record read.
func (r *recordConn) lastRecord() (typ byte, length int) {
	b := r.got
	for len(b) >= 5 {
		n := int(b[3])<<8 | int(b[4])
		if len(b) < 5+n {
			break
		}
		typ, length = b[0], n
		b = b[5+n:]
	}
	return typ, length
}

// dialRecorded logs alice in over POP3S with the given TLS version, keeping
// the records the client reads.
func (ts *tlsServer) dialRecorded(t *testing.T, version uint16) (*client, *recordConn) {
	t.Helper()
	raw, err := net.Dial("tcp", ts.tlsAddr)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordConn{Conn: raw}
	tc := tls.Client(rec, &tls.Config{RootCAs: ts.roots, ServerName: "localhost", MinVersion: version, MaxVersion: version})
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { tc.Close() })
	c := &client{t: t, conn: tc, r: bufio.NewReader(tc)}
	c.login("alice", "secret")
	return c, rec
}

// sawCloseNotify checks that the connection ended with a TLS close_notify
// alert and then EOF. Go's client reports EOF alike with or without the
// alert, so the record itself is looked at: an alert record in TLS 1.2; in
// TLS 1.3, where every record looks like application data, one of the
// length of an encrypted alert (2 octets, the content type, a 16-octet tag).
func sawCloseNotify(t *testing.T, c *client, rec *recordConn, version uint16) {
	t.Helper()
	if b, err := c.r.ReadByte(); err != io.EOF {
		t.Fatalf("read %q, %v; want EOF", b, err)
	}
	typ, n := rec.lastRecord()
	switch {
	case version == tls.VersionTLS12 && typ == 21:
	case version == tls.VersionTLS13 && typ == 23 && n == 2+1+16:
	default:
		var all []int
		b := rec.got
		for len(b) >= 5 {
			n := int(b[3])<<8 | int(b[4])
			all = append(all, int(b[0]), n)
			if len(b) < 5+n {
				break
			}
			b = b[5+n:]
		}
		t.Fatalf("%s: the last record was of type %d and %d octets: no close_notify %v", tls.VersionName(version), typ, n, all)
	}
}

// A kicked session and one closed at shutdown end TLS with close_notify.
func TestCloseNotifyOnKickAndShutdown(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			ts := newTLSServer(t, "127.0.0.1", nil)
			c, rec := ts.dialRecorded(t, version)
			if n := ts.srv.Kick("alice"); n != 1 {
				t.Fatalf("kicked %d sessions", n)
			}
			sawCloseNotify(t, c, rec, version)

			c, rec = ts.dialRecorded(t, version)
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			start := time.Now()
			if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Shutdown: %v", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Shutdown took %v", d)
			}
			sawCloseNotify(t, c, rec, version)
		})
	}
}

// A client that reads nothing while a message is sent cannot hold up
// shutdown: no close_notify is waited for behind a write that does not end.
func TestShutdownNotHeldByAClientThatDoesNotRead(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.1", nil)
	ts.deliver(t, "alice", "Subject: big\r\n\r\n"+strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 1<<16))
	c := ts.dialTLS(t, nil)
	c.login("alice", "secret")
	c.send("RETR 1\r\n")
	c.expect(`\+OK .*`) // and then reads no more
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	ts.srv.Shutdown(ctx)
	if d := time.Since(start); d > closeWait+3*time.Second {
		t.Fatalf("Shutdown took %v", d)
	}
}

// Sessions resume (RFC 5077, RFC 8446 §2.2) on later connections, on
// either port, and SCRAM-SHA-256-PLUS works on a resumed session with both
// channel bindings, even after the certificate changed: tls-server-end-point
// is the certificate of the first handshake, which the client still holds.
func TestTLSResumption(t *testing.T) {
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		t.Run(tls.VersionName(version), func(t *testing.T) {
			ts := newTLSServer(t, "127.0.0.1", nil)
			cache := tls.NewLRUClientSessionCache(8)
			cfg := func() *tls.Config {
				return &tls.Config{MaxVersion: version, ClientSessionCache: cache}
			}
			c := ts.dialTLS(t, cfg())
			c.expect(`\+OK Pouch ready\.`) // TLS 1.3 tickets come before it
			if c.conn.(*tls.Conn).ConnectionState().DidResume {
				t.Fatal("the first connection resumed")
			}
			c.send("QUIT\r\n")
			c.expect(`\+OK .*`)

			plus := func(c *client, binding string) {
				t.Helper()
				st := c.conn.(*tls.Conn).ConnectionState()
				if !st.DidResume {
					t.Fatal("the session was not resumed")
				}
				var cb scram.ChannelBinding
				var err error
				if binding == "tls-exporter" {
					cb, err = scram.NewTLSExporterBinding(&st)
				} else {
					cb, err = scram.NewTLSServerEndpointBinding(&st)
				}
				if err != nil {
					t.Fatal(err)
				}
				scramLogin(t, c, "SCRAM-SHA-256-PLUS", "alice", "secret", &cb, "")
				c.expect(`\+OK maildrop has 0 messages .*`)
				c.send("QUIT\r\n")
				c.expect(`\+OK .*`)
			}
			for _, binding := range []string{"tls-server-end-point", "tls-exporter"} {
				c = ts.dialTLS(t, cfg())
				c.expect(`\+OK Pouch ready\.`)
				plus(c, binding)
			}

			// STLS on the other port resumes the same session.
			c = ts.dial(t)
			c.expect(`\+OK Pouch ready\.`)
			c.send("STLS\r\n")
			c.expect(`\+OK Begin TLS negotiation`)
			conf := cfg()
			conf.RootCAs, conf.ServerName = ts.roots, "localhost"
			tc := tls.Client(c.conn, conf)
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			c.conn, c.r = tc, bufio.NewReader(tc)
			plus(c, "tls-server-end-point")

			// A new certificate: resumed sessions still bind to the old one.
			if err := tlsutil.SelfSigned(filepath.Join(ts.certDir, "cert.pem"), filepath.Join(ts.certDir, "key.pem"), "localhost"); err != nil {
				t.Fatal(err)
			}
			if err := ts.certs.Reload(); err != nil {
				t.Fatal(err)
			}
			c = ts.dialTLS(t, cfg())
			c.expect(`\+OK Pouch ready\.`)
			plus(c, "tls-server-end-point")
		})
	}
}
