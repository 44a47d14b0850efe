// Package proxied reads the PROXY protocol header (versions 1 and 2, as
// HAProxy's proxy-protocol.txt specifies them) that a load balancer sends
// before a connection's own octets, so that a server behind it sees each
// client's address instead of the balancer's. A header is required from the
// networks trusted to send one and refused from every other address.
//
// The header itself is parsed by github.com/pires/go-proxyproto; this package
// decides who may send one, bounds the wait for it, and keeps the accept loop
// free while it arrives.
package proxied

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pires/go-proxyproto"
)

var (
	// ErrUntrusted is a PROXY header from an address outside the trusted
	// networks: a client trying to pass for another, or a balancer that is
	// not configured as one.
	ErrUntrusted = errors.New("PROXY protocol header from an address not trusted to send one")
	// ErrNoHeader is a connection from a trusted network that did not start
	// with a PROXY header within the time allowed.
	ErrNoHeader = errors.New("no PROXY protocol header from a network that must send one")
	// ErrHungUp is a connection from a trusted network closed before it
	// sent anything, as a balancer's plain TCP health check does.
	ErrHungUp = errors.New("closed before sending a PROXY protocol header")
)

// Config says who must send a header and how long it may take.
type Config struct {
	// Networks are the balancers' networks: every connection from them
	// must start with a header, and no other connection may.
	Networks []netip.Prefix
	// Timeout bounds the wait for a header, from the accept.
	Timeout time.Duration
	// Refused, if set, is told of every connection from Networks closed
	// for its header (err is ErrNoHeader, ErrHungUp or a malformed
	// header), with the address it came from.
	Refused func(from net.Addr, err error)
}

// Trusted reports whether ip is in nets.
func Trusted(nets []netip.Prefix, ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range nets {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Listen returns a listener whose connections report the client's
// addresses. With no networks configured, no header is read: connections
// pass straight through, only refusing one that starts with a header.
// Otherwise a connection from the networks has its header read in a
// goroutine of its own, bounded by cfg.Timeout, and is handed to Accept only
// once the header is in; the accept loop never waits for it.
func Listen(l net.Listener, cfg Config) net.Listener {
	pl := &listener{Listener: l, cfg: cfg}
	if len(cfg.Networks) > 0 {
		pl.ready = make(chan accepted)
		pl.done = make(chan struct{})
		pl.pending = make(map[net.Conn]struct{})
	}
	return pl
}

type accepted struct {
	c   net.Conn
	err error
}

type listener struct {
	net.Listener
	cfg Config

	start     sync.Once
	ready     chan accepted // connections whose header is in, and accept errors
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	mu        sync.Mutex
	pending   map[net.Conn]struct{} // connections whose header is awaited
	closed    bool
}

func (l *listener) Accept() (net.Conn, error) {
	if l.ready == nil {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		return &Conn{Conn: c}, nil
	}
	l.start.Do(func() { go l.acceptLoop() })
	select {
	case a := <-l.ready:
		return a.c, a.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// acceptLoop accepts connections and hands them on: at once when they come
// from outside the networks, after their header when from inside. An accept
// error is handed on too, and waits for the next Accept, so that the
// caller's back-off paces this loop.
func (l *listener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !l.hand(accepted{err: err}) || !temporary(err) {
				return
			}
			continue
		}
		if !Trusted(l.cfg.Networks, addrOf(c.RemoteAddr())) {
			if !l.hand(accepted{c: &Conn{Conn: c}}) {
				c.Close()
				return
			}
			continue
		}
		if !l.track(c) {
			c.Close()
			return
		}
		go l.readHeader(c, time.Now().Add(l.cfg.Timeout))
	}
}

// hand passes a to Accept, or reports false once the listener is closed.
func (l *listener) hand(a accepted) bool {
	select {
	case l.ready <- a:
		return true
	case <-l.done:
		return false
	}
}

// track records a connection whose header is awaited, so that Close can
// close it; false once the listener is closed.
func (l *listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.pending[c] = struct{}{}
	return true
}

func (l *listener) readHeader(c net.Conn, deadline time.Time) {
	pc, err := header(c, deadline)
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
	if err != nil {
		select {
		case <-l.done: // closed by Close: nothing to report
		default:
			if l.cfg.Refused != nil {
				l.cfg.Refused(c.RemoteAddr(), err)
			}
		}
		c.Close()
		return
	}
	if !l.hand(accepted{c: pc}) {
		c.Close()
	}
}

// Close closes the listener and the connections still waiting for their
// header.
func (l *listener) Close() error {
	err := l.Listener.Close()
	if l.done != nil {
		l.closeOnce.Do(func() {
			close(l.done)
			l.mu.Lock()
			l.closed = true
			for c := range l.pending {
				c.Close()
			}
			l.mu.Unlock()
		})
	}
	return err
}

// temporary reports accept errors worth retrying (EMFILE, ECONNABORTED, …).
func temporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// addrOf returns the IP address of a TCP address, or the zero Addr.
func addrOf(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(t.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// headerBuf is the read buffer for a header: a version 1 header (107
// octets at most) must arrive in one read, and what follows it in that
// read is kept for the connection.
const headerBuf = 512

// header reads the PROXY header that must start c, by deadline, and
// returns the connection as the client made it: RemoteAddr is the client's
// address, LocalAddr the one it connected to, Proxy the balancer's. A LOCAL
// header (version 2) or PROXY UNKNOWN (version 1), which a balancer sends
// for its own connections such as health checks, keeps the connection's
// own addresses (proxy-protocol.txt §2.1, §2.2). A header for anything but
// TCP over IPv4 or IPv6 is refused.
func header(c net.Conn, deadline time.Time) (*Conn, error) {
	if err := c.SetReadDeadline(deadline); err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(c, headerBuf)
	if _, err := br.Peek(1); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, ErrHungUp
		}
		return nil, noHeader(err)
	}
	h, err := proxyproto.Read(br)
	if err != nil {
		if errors.Is(err, proxyproto.ErrNoProxyProtocol) {
			return nil, ErrNoHeader
		}
		return nil, noHeader(err)
	}
	// The session sets its own deadlines; a connection that cannot take
	// this one is broken, and its next read says so.
	c.SetReadDeadline(time.Time{})
	// The client's own first octets are checked too: a second header
	// after the balancer's is a client trying to pass for another.
	pc := &Conn{Conn: c, proxy: c.RemoteAddr()}
	if h.Command.IsProxy() && h.TransportProtocol != proxyproto.UNSPEC {
		src, dst, ok := h.TCPAddrs()
		if !ok || src == nil || dst == nil {
			return nil, fmt.Errorf("PROXY protocol header for %v, not TCP", h.TransportProtocol)
		}
		pc.remote, pc.local = src, dst
	}
	if n := br.Buffered(); n > 0 {
		rest, _ := br.Peek(n)
		pc.rest = bytes.Clone(rest)
	}
	return pc, nil
}

// noHeader describes a header read that failed: a timeout is a missing
// header, anything else a malformed one.
func noHeader(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w within the time allowed", ErrNoHeader)
	}
	return fmt.Errorf("malformed PROXY protocol header: %w", err)
}

// Conn is a connection as the client made it. Its first octets are checked:
// a connection that starts with a PROXY header where none may come (from an
// untrusted address, or a second one after a balancer's) fails its read with
// ErrUntrusted.
type Conn struct {
	net.Conn
	rest          []byte   // read past the header, not yet returned
	remote, local net.Addr // from the header; nil: the connection's own
	proxy         net.Addr // the balancer's end; nil when not proxied
	checked       bool     // the first octets cannot start a header
	seen          []byte   // first octets so far, while they might
}

// RemoteAddr is the client's address.
func (c *Conn) RemoteAddr() net.Addr {
	if c.remote != nil {
		return c.remote
	}
	return c.Conn.RemoteAddr()
}

// LocalAddr is the address the client connected to.
func (c *Conn) LocalAddr() net.Addr {
	if c.local != nil {
		return c.local
	}
	return c.Conn.LocalAddr()
}

// Proxy is the address of the balancer the connection came through, or nil.
func (c *Conn) Proxy() net.Addr { return c.proxy }

// NetConn returns the connection underneath, for writes that bypass this
// one (sendfile); reads must go through Conn.
func (c *Conn) NetConn() net.Conn { return c.Conn }

func (c *Conn) Read(p []byte) (int, error) {
	var n int
	var err error
	if len(c.rest) > 0 {
		n = copy(p, c.rest)
		c.rest = c.rest[n:]
	} else {
		n, err = c.Conn.Read(p)
	}
	if !c.checked && n > 0 {
		if c.startsHeader(p[:n]) {
			return 0, ErrUntrusted
		}
	}
	return n, err
}

// A version 1 header starts with "PROXY " and a version 2 header with a
// 12-octet signature (proxy-protocol.txt §2.1, §2.2).
var (
	sigV1 = []byte("PROXY ")
	sigV2 = proxyproto.SIGV2
)

// startsHeader looks at the first octets read, up to a signature's length,
// and reports whether they are a PROXY header's.
func (c *Conn) startsHeader(p []byte) bool {
	c.seen = append(c.seen, p[:min(len(p), len(sigV2)-len(c.seen))]...)
	for _, sig := range [][]byte{sigV1, sigV2} {
		if len(c.seen) >= len(sig) && bytes.HasPrefix(c.seen, sig) {
			c.checked = true
			return true
		}
	}
	for _, sig := range [][]byte{sigV1, sigV2} {
		if len(c.seen) < len(sig) && bytes.HasPrefix(sig, c.seen) {
			return false // too few octets yet to tell
		}
	}
	c.checked, c.seen = true, nil
	return false
}
