package proxied

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// pipeConn is one end of a pipe that says it comes from a TCP address.
type pipeConn struct {
	net.Conn
	from net.Addr
}

func (c pipeConn) RemoteAddr() net.Addr { return c.from }

// The octets that follow a header in the same read reach the connection's
// reader, byte for byte, and the header's addresses stand for the
// connection's.
func TestHeaderThenData(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		b.Write([]byte("PROXY TCP6 2001:db8::7 2001:db8::1 40000 995\r\n\x16\x03\x01rest of a ClientHello"))
		b.Close()
	}()
	pc, err := header(pipeConn{a, &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 5}}, time.Now().Add(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if got := pc.RemoteAddr().String(); got != "[2001:db8::7]:40000" {
		t.Errorf("RemoteAddr = %s", got)
	}
	if got := pc.LocalAddr().String(); got != "[2001:db8::1]:995" {
		t.Errorf("LocalAddr = %s", got)
	}
	if got := pc.Proxy().String(); got != "10.0.0.1:5" {
		t.Errorf("Proxy = %s", got)
	}
	rest, err := io.ReadAll(pc)
	if err != nil || string(rest) != "\x16\x03\x01rest of a ClientHello" {
		t.Errorf("after the header: %q %v", rest, err)
	}
}

// A header is found however its first octets are split between reads, and
// octets that only begin like one pass.
func TestSignatureAcrossReads(t *testing.T) {
	for _, tc := range []struct {
		parts  []string
		header bool
	}{
		{[]string{"PRO", "XY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"}, true},
		{[]string{"\r\n\r\n", "\x00\r\nQUIT\n", "\x21"}, true},
		{[]string{"P", "ASS x\r\n"}, false},
		{[]string{"PROXYING\r\n"}, false},
		{[]string{"\r\n", "USER a\r\n"}, false},
	} {
		a, b := net.Pipe()
		go func() {
			for _, p := range tc.parts {
				b.Write([]byte(p))
			}
			b.Close()
		}()
		c := &Conn{Conn: a}
		_, err := io.ReadAll(c)
		if got := errors.Is(err, ErrUntrusted); got != tc.header {
			t.Errorf("%q: header found %v, want %v (%v)", tc.parts, got, tc.header, err)
		}
		a.Close()
	}
}

// Closing the listener closes the connections still waiting for their
// header, without reporting them, and Accept returns at once.
func TestCloseEndsHeaderWaits(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan error, 1)
	l := Listen(inner, Config{
		Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Timeout:  time.Minute,
		Refused:  func(_ net.Addr, err error) { refused <- err },
	})
	accepted := make(chan error, 1)
	go func() { _, err := l.Accept(); accepted <- err }()
	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pl := l.(*listener)
	for waiting := 0; waiting == 0; {
		pl.mu.Lock()
		waiting = len(pl.pending)
		pl.mu.Unlock()
		time.Sleep(time.Millisecond) // until the header wait begins
	}
	l.Close()
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the connection waiting for its header was not closed: %v", err)
	}
	select {
	case err := <-refused:
		t.Errorf("a connection closed by Close was reported: %v", err)
	default:
	}
}
