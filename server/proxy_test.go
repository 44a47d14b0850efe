package server

import (
	"bufio"
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/testkit"
)

// newProxiedServer serves with 127.0.0.1 as the load balancer's network,
// logging into logs.
func newProxiedServer(t *testing.T, logs *testkit.SyncBuffer, mod func(*Config)) *testServer {
	return newTestServer(t, func(c *Config) {
		c.ProxyNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
		if mod != nil {
			mod(c)
		}
	})
}

// dialProxied connects from 127.0.0.1, the balancer, and sends header.
func (ts *testServer) dialProxied(t *testing.T, header []byte) *client {
	t.Helper()
	c := ts.dialFrom(t, "127.0.0.1")
	c.send(string(header))
	return c
}

// v2Header is a PROXY protocol version 2 header for a TCP connection from
// src to dst.
func v2Header(t *testing.T, src, dst string) []byte {
	t.Helper()
	h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src)), net.TCPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The address a PROXY header carries is the client's everywhere: in the
// session list, the logs, the audit trail, the per-address limit, the ban
// check at connect, and the networks allowed to send passwords without TLS.
func TestProxyHeaderGivesTheClientsAddress(t *testing.T) {
	var logs testkit.SyncBuffer
	g, err := guard.New(guard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Ban(netip.MustParsePrefix("203.0.113.9/32"), time.Hour, "test"); err != nil {
		t.Fatal(err)
	}
	ts := newProxiedServer(t, &logs, func(c *Config) {
		c.Guard = g
		c.MaxConnectionsPerIP = 1
		c.InsecureAuthNetworks = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}
	})
	// Version 1, from a network allowed to send passwords without TLS.
	a := ts.dialProxied(t, []byte("PROXY TCP4 198.51.100.7 192.0.2.1 40000 110\r\n"))
	a.login("alice", "secret")
	who := ts.srv.Who()
	if len(who) != 1 || who[0].Remote != "198.51.100.7:40000" {
		t.Errorf("Who = %+v, want the client's address 198.51.100.7:40000", who)
	}
	// Version 2, from elsewhere: no cleartext passwords.
	b := ts.dialProxied(t, v2Header(t, "192.0.2.44:50000", "192.0.2.1:110"))
	b.expect(`\+OK Pouch ready\.`)
	b.send("USER bob\r\n")
	b.expect(`-ERR \[AUTH\] cleartext authentication is not allowed.*`)
	// The per-address limit counts the client's address, not the balancer's.
	c := ts.dialProxied(t, []byte("PROXY TCP4 198.51.100.7 192.0.2.1 40001 110\r\n"))
	c.expect(`-ERR \[SYS/TEMP\] too many connections from your address`)
	// A banned client is refused at connect, through the balancer too.
	d := ts.dialProxied(t, []byte("PROXY TCP4 203.0.113.9 192.0.2.1 40002 110\r\n"))
	d.expect(`-ERR \[SYS/PERM\] access from your address is blocked`)
	if l := logs.String(); !strings.Contains(l, `msg=login session=`) || !strings.Contains(l, `remote=198.51.100.7:40000 via=127.0.0.1:`) {
		t.Errorf("the login is not logged with the client's address and the balancer's:\n%s", l)
	}
}

// A balancer's own connections (a LOCAL header, PROXY UNKNOWN) keep the
// connection's addresses (proxy-protocol.txt §2.1, §2.2).
func TestProxyLocalHeader(t *testing.T) {
	var logs testkit.SyncBuffer
	ts := newProxiedServer(t, &logs, nil)
	local := &proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}
	b, err := local.Format()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range [][]byte{b, []byte("PROXY UNKNOWN\r\n")} {
		c := ts.dialProxied(t, h)
		c.login("alice", "secret") // from loopback: cleartext allowed
		c.send("QUIT\r\n")
		c.expect(`\+OK.*`)
		c.closed()
	}
}

// A header from an address that may not send one closes the connection
// with a log line, on either port; so does a second header after the
// balancer's (a client trying to pass for another).
func TestProxyHeaderFromUntrustedAddressRefused(t *testing.T) {
	var logs testkit.SyncBuffer
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) {
		c.ProxyNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	refused := func(addr string, from string, header []byte, greeting bool) {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(header)
		r := bufio.NewReader(c)
		if greeting {
			if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "+OK Pouch ready.") {
				t.Fatalf("greeting: %q %v", l, err)
			}
		}
		if l, err := r.ReadString('\n'); err == nil || l != "" {
			t.Errorf("after a PROXY header from %s: got %q (%v), want the connection closed", from, l, err)
		}
	}
	refused(ts.addr, "127.0.0.2", []byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"), true)
	refused(ts.tlsAddr, "127.0.0.2", v2Header(t, "192.0.2.1:1", "192.0.2.2:2"), false)
	// From the balancer, a second header after its own.
	refused(ts.addr, "127.0.0.1", append(v2Header(t, "192.0.2.1:1", "192.0.2.2:2"), "PROXY TCP4 192.0.2.3 192.0.2.2 1 2\r\n"...), true)
	waitSessions(t, ts.srv, 0)
	if n := strings.Count(logs.String(), `msg="connection refused: PROXY protocol header from an address not in the proxy networks" session=`); n != 3 {
		t.Errorf("%d refusals logged, want 3:\n%s", n, logs.String())
	}
	// Without a header, a client elsewhere is served as usual.
	c := ts.dialFrom(t, "127.0.0.2")
	c.login("alice", "secret")
}

// From the balancer's network a header is required: a connection without
// one, or with a malformed one, is closed with a log line, and one that
// sends nothing is closed at the pre-login timeout without holding up the
// others.
func TestProxyHeaderRequired(t *testing.T) {
	var logs testkit.SyncBuffer
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) {
		c.ProxyNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		c.PreLoginTimeout = 500 * time.Millisecond
	})
	silent := ts.dialFrom(t, "127.0.0.1") // sends nothing: no header
	start := time.Now()
	for _, h := range []string{"PROXY TCP4 192.0.2.1 nonsense\r\n", "PROXY TCP4 192.0.2.1 192.0.2.2 1 2", "USER alice\r\n"} {
		c := ts.dialProxied(t, []byte(h))
		c.closed()
	}
	// The balancer's other connections are served meanwhile.
	ok := ts.dialProxied(t, []byte("PROXY TCP4 127.0.0.9 127.0.0.1 1 2\r\n"))
	ok.login("alice", "secret")
	silent.closed()
	if d := time.Since(start); d < 400*time.Millisecond || d > 5*time.Second {
		t.Errorf("a connection without a header was closed after %v; want the pre-login timeout", d)
	}
	// A TLS client straight from the balancer's network.
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.1")}}
	if c, err := tlsDial(d, ts); err == nil {
		c.Close()
		t.Error("a TLS handshake without a PROXY header succeeded")
	}
	l := logs.String()
	if n := strings.Count(l, `msg="connection refused: bad PROXY protocol header"`); n != 5 {
		t.Errorf("%d refusals logged, want 5:\n%s", n, l)
	}
	for _, want := range []string{"malformed PROXY protocol header", "within the time allowed"} {
		if !strings.Contains(l, want) {
			t.Errorf("no %q in the log:\n%s", want, l)
		}
	}
}

// tlsDial makes a TLS connection to the POP3S port with d.
func tlsDial(d *net.Dialer, ts *tlsServer) (*tls.Conn, error) {
	return tls.DialWithDialer(d, "tcp", ts.tlsAddr, &tls.Config{RootCAs: ts.roots, ServerName: "localhost"})
}
