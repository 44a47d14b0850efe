// Package client is a POP3 client (RFC 1939, RFC 2449, RFC 2595, RFC 5034)
// built on the pop3 wire codec: dialing with timeouts, implicit TLS or STLS,
// CAPA, every RFC 1939 command, TOP, UIDL, SASL and APOP, streaming RETR with
// byte-exact dot-unstuffing, streamed LIST and UIDL, and pipelined
// RETR/DELE/STAT when the server offers PIPELINING (and never when it does
// not).
//
// A Client is not safe for concurrent use (Abort excepted). After any I/O or
// protocol error the connection is unusable and every later call returns the
// same error. A reply that is neither +OK nor -ERR where a status line is
// due, and data that answers no command, are protocol errors: the server's
// replies are out of step with the commands.
package client

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/pouchmail/pouch/pop3"
)

// TLSMode says how a connection is protected.
type TLSMode int

const (
	// TLSImplicit starts TLS at once (POP3S, port 995).
	TLSImplicit TLSMode = iota
	// TLSStartTLS connects in cleartext and requires STLS (RFC 2595 §4) to
	// succeed before anything else is sent; there is no fallback.
	TLSStartTLS
	// TLSNone never uses TLS.
	TLSNone
)

// ParseTLSMode parses "implicit", "starttls" or "none".
func ParseTLSMode(s string) (TLSMode, error) {
	switch strings.ToLower(s) {
	case "implicit", "tls", "pop3s":
		return TLSImplicit, nil
	case "starttls", "stls":
		return TLSStartTLS, nil
	case "none":
		return TLSNone, nil
	}
	return 0, fmt.Errorf("TLS mode %q: use implicit, starttls or none", s)
}

func (m TLSMode) String() string {
	switch m {
	case TLSImplicit:
		return "implicit"
	case TLSStartTLS:
		return "starttls"
	}
	return "none"
}

// Options configure Dial. Zero values take the defaults.
type Options struct {
	TLS       TLSMode
	TLSConfig *tls.Config // ServerName defaults to the host of the address
	// DialTimeout bounds the TCP connect, the TLS handshake and the greeting
	// (30 s).
	DialTimeout time.Duration
	// Timeout bounds each wait for the server: a reply line, or any progress
	// in a message body (2 min).
	Timeout time.Duration
	// Dialer, if set, opens the TCP connection.
	Dialer func(ctx context.Context, network, addr string) (net.Conn, error)
}

const (
	defaultDialTimeout = 30 * time.Second
	defaultTimeout     = 2 * time.Minute
	maxReplyLine       = 64 << 10 // generous: some servers send long texts
	maxListLine        = 64 << 10
)

// Caps on a LIST, UIDL or CAPA reply (variables for the tests).
var (
	maxMultiLines = 10_000_000
	maxMultiBytes = 1 << 30
)

var (
	// ErrNoPipelining is returned when a command is sent while another is
	// awaiting its reply and the server did not offer PIPELINING.
	ErrNoPipelining = errors.New("pop3 client: server does not offer PIPELINING")
	// ErrBodyOpen is returned when a command is used while a RETR or TOP body
	// is still being read.
	ErrBodyOpen = errors.New("pop3 client: previous message body not closed")
	// ErrNoAPOP is returned by APOP when the greeting had no timestamp.
	ErrNoAPOP = errors.New("pop3 client: server does not offer APOP")
)

// Client is one POP3 connection.
type Client struct {
	conn      net.Conn
	raw       net.Conn // the TCP connection under any TLS, for Abort
	r         *pop3.Reader
	w         *pop3.Writer
	timeout   time.Duration
	greeting  pop3.Reply
	stamp     string // APOP timestamp from the greeting, "" if none
	caps      Caps   // nil until CAPA succeeded
	tls       bool
	pending   []pending
	body      *body // open multi-line body, if any
	oauthForm OAuthForm
	err       error // sticky: the connection is broken
}

// pending is a command whose reply has not been read yet.
type pending struct {
	name string
	// reply, for single-line replies, gets the status line (never a
	// continuation); an error it returns breaks the connection.
	reply func(pop3.Reply) error
}

// Dial connects to addr ("host:port"), protects the connection as opts.TLS
// says, and reads the greeting. ctx bounds only the setup; later commands
// are bounded by opts.Timeout.
func Dial(ctx context.Context, addr string, opts Options) (*Client, error) {
	dt := opts.DialTimeout
	if dt <= 0 {
		dt = defaultDialTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, dt)
	defer cancel()
	dial := opts.Dialer
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	// Cancelling ctx interrupts whatever setup step is blocked.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	c, err := setup(ctx, conn, addr, opts)
	if !stop() || ctx.Err() != nil {
		conn.Close()
		if ctx.Err() == context.DeadlineExceeded {
			return nil, fmt.Errorf("pop3 client: %s: no greeting or handshake within %v: %w", addr, dt, ctx.Err())
		}
		return nil, fmt.Errorf("pop3 client: connecting to %s: %w", addr, ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return c, nil
}

func setup(ctx context.Context, conn net.Conn, addr string, opts Options) (*Client, error) {
	raw := conn
	cfg := tlsConfigFor(opts.TLSConfig, addr)
	if opts.TLS == TLSImplicit {
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("pop3 client: TLS handshake with %s: %w", addr, err)
		}
		conn = tc
	}
	c := newClient(conn, opts.Timeout)
	c.raw = raw
	c.tls = opts.TLS == TLSImplicit
	if err := c.readGreeting(); err != nil {
		return nil, err
	}
	if opts.TLS == TLSStartTLS {
		if err := c.StartTLS(cfg); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// tlsConfigFor clones cfg (or a fresh one) with ServerName set from addr.
func tlsConfigFor(cfg *tls.Config, addr string) *tls.Config {
	if cfg == nil {
		cfg = &tls.Config{}
	}
	cfg = cfg.Clone()
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cfg.ServerName = host
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	return cfg
}

// NewClient starts a session on an open connection and reads the greeting.
// timeout bounds each wait for the server (0: 2 min).
func NewClient(conn net.Conn, timeout time.Duration) (*Client, error) {
	c := newClient(conn, timeout)
	_, c.tls = conn.(*tls.Conn)
	if err := c.readGreeting(); err != nil {
		return nil, err
	}
	return c, nil
}

func newClient(conn net.Conn, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	return &Client{conn: conn, raw: conn, r: pop3.NewReader(conn), w: pop3.NewWriter(conn), timeout: timeout}
}

// Abort closes the connection at once, without QUIT, so the server deletes
// nothing (RFC 1939 §6). It is the one method that may be called from
// another goroutine: a call blocked on the server returns an error, and so
// does every later one.
func (c *Client) Abort() {
	c.raw.Close()
}

func (c *Client) readGreeting() error {
	rep, err := c.readReply()
	if err != nil {
		return fmt.Errorf("pop3 client: reading greeting: %w", err)
	}
	if !rep.OK {
		return c.fail(fmt.Errorf("pop3 client: server refused the connection: %w", rep.Err()))
	}
	c.greeting = rep
	if i := strings.IndexByte(rep.Text, '<'); i >= 0 {
		if j := strings.IndexByte(rep.Text[i:], '>'); j > 0 {
			c.stamp = rep.Text[i : i+j+1]
		}
	}
	return nil
}

// Greeting returns the text of the server's greeting.
func (c *Client) Greeting() string { return c.greeting.Text }

// TLS reports whether the connection is protected by TLS.
func (c *Client) TLS() bool { return c.tls }

// TLSConnectionState returns the TLS state, if the connection uses TLS.
func (c *Client) TLSConnectionState() (tls.ConnectionState, bool) {
	if tc, ok := c.conn.(*tls.Conn); ok {
		return tc.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}

// fail makes err sticky and closes the connection.
func (c *Client) fail(err error) error {
	if c.err == nil {
		c.err = err
		c.conn.Close()
	}
	return err
}

// usable returns the sticky error, or ErrBodyOpen while a body is open.
func (c *Client) usable() error {
	if c.err != nil {
		return c.err
	}
	if c.body != nil {
		return ErrBodyOpen
	}
	return nil
}

func (c *Client) readReply() (pop3.Reply, error) { return c.readReplyMax(maxReplyLine) }

// readReplyMax reads a reply line of at most max octets within the
// timeout; a failure breaks the connection.
func (c *Client) readReplyMax(max int) (pop3.Reply, error) {
	c.conn.SetReadDeadline(time.Now().Add(c.timeout))
	rep, err := c.r.ReadReply(max)
	if err != nil {
		return rep, c.fail(err)
	}
	return rep, nil
}

// send writes one command into the buffer and records it as pending. It
// refuses to put a second command on the wire when the server has not
// offered PIPELINING (RFC 2449 §6.6).
func (c *Client) send(reply func(pop3.Reply) error, name string, args ...string) error {
	if err := c.usable(); err != nil {
		return err
	}
	if len(c.pending) > 0 && !c.Pipelining() {
		// Read the replies of single-line commands first.
		if err := c.drainSingle(); err != nil {
			return err
		}
		if len(c.pending) > 0 {
			return ErrNoPipelining
		}
	}
	if err := pop3.WriteCommand(c.w, name, args...); err != nil {
		return err // a bad argument: nothing written
	}
	c.pending = append(c.pending, pending{name: name, reply: reply})
	return nil
}

// Flush sends every buffered command.
func (c *Client) Flush() error {
	if c.err != nil {
		return c.err
	}
	if c.w.Buffered() == 0 {
		return nil
	}
	c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	if err := c.w.Flush(); err != nil {
		return c.fail(err)
	}
	return nil
}

// drainSingle flushes and reads the replies of the single-line commands at
// the front of the queue, calling their callbacks.
func (c *Client) drainSingle() error {
	for len(c.pending) > 0 && c.pending[0].reply != nil {
		if err := c.Flush(); err != nil {
			return err
		}
		p := c.pending[0]
		rep, err := c.readReply()
		if err != nil {
			return err
		}
		if rep.Continuation {
			return c.fail(fmt.Errorf("%w: unexpected continuation to %s", pop3.ErrProtocol, p.name))
		}
		c.pending = c.pending[1:]
		if err := p.reply(rep); err != nil {
			return c.fail(err)
		}
		if err := c.checkQuiet(); err != nil {
			return err
		}
	}
	return nil
}

// checkQuiet fails the connection when the server has sent anything while
// no reply is due: a server that does not dot-stuff a body line "." ends
// the body early, and the rest of it arrives unasked. Data that is still
// in flight is found instead as the next status line, which it cannot be.
func (c *Client) checkQuiet() error {
	if len(c.pending) == 0 && c.r.Buffered() > 0 {
		return c.fail(fmt.Errorf("%w: the server sent %d octets that answer no command (a body line \".\" not dot-stuffed?)", pop3.ErrProtocol, c.r.Buffered()))
	}
	return nil
}

// Pending returns the number of commands sent whose replies are unread.
func (c *Client) Pending() int { return len(c.pending) }

// Wait reads the replies of every pending single-line command (DELE sent
// with SendDele), calling their callbacks. It fails if a RETR is pending.
func (c *Client) Wait() error {
	if err := c.usable(); err != nil {
		return err
	}
	if err := c.drainSingle(); err != nil {
		return err
	}
	if len(c.pending) > 0 {
		return fmt.Errorf("pop3 client: %s reply still pending", c.pending[0].name)
	}
	return nil
}

// cmd runs one command with a single-line reply, after any pending ones,
// and returns the reply; -ERR is returned as a *pop3.Error.
func (c *Client) cmd(name string, args ...string) (pop3.Reply, error) {
	if err := c.Wait(); err != nil {
		return pop3.Reply{}, err
	}
	if err := pop3.WriteCommand(c.w, name, args...); err != nil {
		return pop3.Reply{}, err
	}
	if err := c.Flush(); err != nil {
		return pop3.Reply{}, err
	}
	rep, err := c.readReply()
	if err != nil {
		return rep, err
	}
	if rep.Continuation {
		return rep, c.fail(fmt.Errorf("%w: unexpected continuation to %s", pop3.ErrProtocol, name))
	}
	return rep, rep.Err()
}

// multi runs a command with a multi-line reply and returns its lines,
// unstuffed (RFC 1939 §3), without terminators.
func (c *Client) multi(name string, args ...string) ([]string, error) {
	if _, err := c.cmd(name, args...); err != nil {
		return nil, err
	}
	return c.multiLines(name, true)
}

// multiReply reads the status line of a multi-line reply to a command
// already sent, then passes each of its lines to fn. last says that no
// other reply is due after this one.
func (c *Client) multiReply(name string, last bool, fn func(line []byte) error) error {
	rep, err := c.readReply()
	if err != nil {
		return err
	}
	if rep.Continuation {
		return c.fail(fmt.Errorf("%w: unexpected continuation to %s", pop3.ErrProtocol, name))
	}
	if err := rep.Err(); err != nil {
		return err
	}
	return c.eachLine(name, last, fn)
}

// multiLines reads the lines of a multi-line reply after its +OK.
func (c *Client) multiLines(name string, last bool) ([]string, error) {
	var lines []string
	err := c.eachLine(name, last, func(line []byte) error {
		lines = append(lines, string(line))
		return nil
	})
	return lines, err
}

// eachLine passes the lines of a multi-line reply after its +OK to fn,
// unstuffed (RFC 1939 §3), without terminators; a line is valid only
// during the call. An error from fn breaks the connection, since the rest
// of the reply is left unread.
func (c *Client) eachLine(name string, last bool, fn func(line []byte) error) error {
	total, n := 0, 0
	for {
		c.conn.SetReadDeadline(time.Now().Add(c.timeout))
		line, err := c.r.ReadLine(maxListLine)
		total += len(line) + 2
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return c.fail(err)
		}
		if len(line) > 0 && line[0] == '.' {
			if len(line) == 1 {
				if last {
					return c.checkQuiet()
				}
				return nil
			}
			line = line[1:]
		}
		if n >= maxMultiLines || total > maxMultiBytes {
			return c.fail(fmt.Errorf("%w: %s reply too long (more than %d lines or %d octets)", pop3.ErrProtocol, name, maxMultiLines, maxMultiBytes))
		}
		n++
		if err := fn(line); err != nil {
			return c.fail(err)
		}
	}
}

// Caps is a CAPA response (RFC 2449 §5): capability names, upper-cased, to
// their arguments.
type Caps map[string][]string

// Has reports whether the capability name is present.
func (c Caps) Has(name string) bool {
	_, ok := c[strings.ToUpper(name)]
	return ok
}

// SASL returns the offered SASL mechanisms, upper-cased.
func (c Caps) SASL() []string {
	var out []string
	for _, m := range c["SASL"] {
		out = append(out, strings.ToUpper(m))
	}
	return out
}

// LoginDelay returns the LOGIN-DELAY capability (RFC 2449 §6.5): how long
// after the +OK of a login the server refuses the next one. Before
// login, perUser (the USER tag) says it varies per user and this is the
// largest; after login the value is the user's own.
func (c Caps) LoginDelay() (d time.Duration, perUser, ok bool) {
	args, ok := c["LOGIN-DELAY"]
	if !ok || len(args) == 0 {
		return 0, false, false
	}
	n, err := strconv.ParseInt(args[0], 10, 64)
	if err != nil || n < 0 {
		return 0, false, false
	}
	// RFC 2449 §6.5 names no limit; a day keeps a typo from parking an
	// account for years.
	n = min(n, 86400)
	return time.Duration(n) * time.Second, len(args) > 1 && strings.EqualFold(args[1], "USER"), true
}

// Capa asks for the capabilities (RFC 2449 §5) and remembers them; they
// change after STLS and after login, so call it again then.
func (c *Client) Capa() (Caps, error) {
	lines, err := c.multi("CAPA")
	if err != nil {
		return nil, err
	}
	caps := Caps{}
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		caps[strings.ToUpper(f[0])] = f[1:]
	}
	c.caps = caps
	return caps, nil
}

// Caps returns the capabilities of the last successful Capa, or nil.
func (c *Client) Caps() Caps { return c.caps }

// Pipelining reports whether the last CAPA offered PIPELINING.
func (c *Client) Pipelining() bool { return c.caps.Has("PIPELINING") }

// StartTLS upgrades the connection with STLS (RFC 2595 §4). Anything the
// server sent after its +OK and before the handshake is treated as an
// attack and fails the session. The capabilities are forgotten.
func (c *Client) StartTLS(cfg *tls.Config) error {
	if c.tls {
		return errors.New("pop3 client: already using TLS")
	}
	if _, err := c.cmd("STLS"); err != nil {
		return fmt.Errorf("pop3 client: STLS refused: %w", err)
	}
	if c.r.Buffered() > 0 {
		return c.fail(fmt.Errorf("%w: data after STLS reply (injection attempt?)", pop3.ErrProtocol))
	}
	tc := tls.Client(c.conn, tlsConfigFor(cfg, c.conn.RemoteAddr().String()))
	c.conn.SetDeadline(time.Now().Add(c.timeout))
	if err := tc.Handshake(); err != nil {
		return c.fail(fmt.Errorf("pop3 client: TLS handshake after STLS: %w", err))
	}
	c.conn.SetDeadline(time.Time{})
	c.conn = tc
	c.r = pop3.NewReader(tc)
	c.w = pop3.NewWriter(tc)
	c.tls = true
	c.caps = nil
	return nil
}

// User sends USER (RFC 1939 §7).
func (c *Client) User(name string) error {
	_, err := c.cmd("USER", name)
	return err
}

// Pass sends PASS (RFC 1939 §7). The password may contain spaces.
func (c *Client) Pass(password string) error {
	_, err := c.cmd("PASS", password)
	return err
}

// APOP logs in with the greeting's timestamp and the shared secret
// (RFC 1939 §7).
func (c *Client) APOP(name, secret string) error {
	if c.stamp == "" {
		return ErrNoAPOP
	}
	sum := md5.Sum([]byte(c.stamp + secret))
	_, err := c.cmd("APOP", name, hex.EncodeToString(sum[:]))
	return err
}

// HasAPOP reports whether the greeting carried an APOP timestamp.
func (c *Client) HasAPOP() bool { return c.stamp != "" }

// Stat returns the number of messages and their total size (RFC 1939 §5).
// Anything the server sent after the reply is a protocol error: nothing
// else was asked.
func (c *Client) Stat() (count int, size int64, err error) {
	rep, err := c.cmd("STAT")
	if err != nil && !isERR(err) {
		return 0, 0, err
	}
	if qerr := c.checkQuiet(); qerr != nil {
		return 0, 0, qerr
	}
	if err != nil {
		return 0, 0, err
	}
	return parseStat(rep.Text)
}

// MessageInfo is one line of a LIST or UIDL response.
type MessageInfo struct {
	Num  int
	Size int64  // LIST
	UID  string // UIDL
}

// List returns every message number and size (RFC 1939 §5).
func (c *Client) List() ([]MessageInfo, error) {
	var out []MessageInfo
	if _, err := c.cmd("LIST"); err != nil {
		return nil, err
	}
	err := c.eachLine("LIST", true, func(l []byte) error {
		n, size, err := parseListLine(l)
		out = append(out, MessageInfo{Num: n, Size: size})
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ListUidl returns what List and Uidl return, sending both commands at once
// when the server offers PIPELINING (one round trip instead of two). A -ERR
// to UIDL (not implemented) comes back as uidlErr, a *pop3.Error; err is
// any other failure.
func (c *Client) ListUidl() (list, uidl []MessageInfo, uidlErr, err error) {
	uidlErr, err = c.ListUidlFunc(func(n int, size int64) error {
		list = append(list, MessageInfo{Num: n, Size: size})
		return nil
	}, func(n int, uid []byte) error {
		uidl = append(uidl, MessageInfo{Num: n, UID: string(uid)})
		return nil
	})
	if err != nil {
		return nil, nil, nil, err
	}
	if uidlErr != nil {
		uidl = nil
	}
	return list, uidl, uidlErr, nil
}

// ListUidlFunc is ListUidl streamed, for listings too long to hold: list
// gets each LIST line and then uidl each UIDL line, in the server's order,
// as they are read; uid is valid only during the call. An error from either
// function ends the session and is returned as err.
func (c *Client) ListUidlFunc(list func(n int, size int64) error, uidl func(n int, uid []byte) error) (uidlErr, err error) {
	onList := func(l []byte) error {
		n, size, err := parseListLine(l)
		if err != nil {
			return err
		}
		return list(n, size)
	}
	onUidl := func(l []byte) error {
		n, uid, err := parseUidlLine(l)
		if err != nil {
			return err
		}
		return uidl(n, uid)
	}
	if !c.Pipelining() {
		if _, err := c.cmd("LIST"); err != nil {
			return nil, err
		}
		if err := c.eachLine("LIST", true, onList); err != nil {
			return nil, err
		}
		if _, err := c.cmd("UIDL"); err != nil {
			if isERR(err) {
				return err, nil
			}
			return nil, err
		}
		return nil, c.eachLine("UIDL", true, onUidl)
	}
	if err := c.Wait(); err != nil {
		return nil, err
	}
	if err := pop3.WriteCommand(c.w, "LIST"); err != nil {
		return nil, err
	}
	if err := pop3.WriteCommand(c.w, "UIDL"); err != nil {
		return nil, err
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	lerr := c.multiReply("LIST", false, onList)
	if lerr != nil && c.err != nil {
		return nil, lerr
	}
	uerr := c.multiReply("UIDL", true, onUidl) // read even after a -ERR to LIST
	if lerr != nil {
		return nil, lerr
	}
	if uerr != nil && c.err != nil {
		return nil, uerr
	}
	return uerr, nil
}

func isERR(err error) bool {
	var pe *pop3.Error
	return errors.As(err, &pe)
}

// parseListLine parses a scan listing, "n size" (RFC 1939 §5).
func parseListLine(l []byte) (int, int64, error) {
	n, rest, ok := scanListing(l)
	size, sok := parseOctets(rest)
	if !ok || !sok {
		return 0, 0, fmt.Errorf("%w: bad LIST line %q", pop3.ErrProtocol, l)
	}
	return n, size, nil
}

// parseOctets parses a size: decimal digits, less than 2^63.
func parseOctets(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// parseUidlLine parses a unique-id listing, "n uid" (RFC 1939 §7).
func parseUidlLine(l []byte) (int, []byte, error) {
	n, uid, ok := scanListing(l)
	if !ok || len(uid) == 0 {
		return 0, nil, fmt.Errorf("%w: bad UIDL line %q", pop3.ErrProtocol, l)
	}
	return n, uid, nil
}

// ListOne returns the size of message n.
func (c *Client) ListOne(n int) (int64, error) {
	rep, err := c.cmd("LIST", strconv.Itoa(n))
	if err != nil {
		return 0, err
	}
	_, size, err := parseListLine([]byte(rep.Text))
	if err != nil {
		return 0, fmt.Errorf("%w: bad LIST reply %q", pop3.ErrProtocol, rep.Text)
	}
	return size, nil
}

// Uidl returns every message number and unique id (RFC 1939 §7). A server
// that does not implement UIDL returns a *pop3.Error.
func (c *Client) Uidl() ([]MessageInfo, error) {
	var out []MessageInfo
	if _, err := c.cmd("UIDL"); err != nil {
		return nil, err
	}
	err := c.eachLine("UIDL", true, func(l []byte) error {
		n, uid, err := parseUidlLine(l)
		out = append(out, MessageInfo{Num: n, UID: string(uid)})
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// UidlOne returns the unique id of message n.
func (c *Client) UidlOne(n int) (string, error) {
	rep, err := c.cmd("UIDL", strconv.Itoa(n))
	if err != nil {
		return "", err
	}
	_, uid, err := parseUidlLine([]byte(rep.Text))
	if err != nil {
		return "", fmt.Errorf("%w: bad UIDL reply %q", pop3.ErrProtocol, rep.Text)
	}
	return string(uid), nil
}

// scanListing splits "n rest" and trims rest; UIDs keep any inner octets.
func scanListing(l []byte) (int, []byte, bool) {
	l = bytes.TrimLeft(l, " ")
	num, rest, _ := bytes.Cut(l, []byte(" "))
	n, ok := pop3.ParseNumber(string(num))
	return n, bytes.Trim(rest, " "), ok
}

// Dele marks message n deleted (RFC 1939 §5); QUIT commits.
func (c *Client) Dele(n int) error {
	_, err := c.cmd("DELE", strconv.Itoa(n))
	return err
}

// Noop sends NOOP.
func (c *Client) Noop() error {
	_, err := c.cmd("NOOP")
	return err
}

// Rset unmarks every deleted message.
func (c *Client) Rset() error {
	_, err := c.cmd("RSET")
	return err
}

// Quit ends the session; in TRANSACTION state the server then commits the
// deletions (RFC 1939 §6), and a nil error means they were committed. The
// connection is closed in every case.
func (c *Client) Quit() error {
	if c.body != nil {
		c.body.Close()
	}
	_, err := c.cmd("QUIT")
	c.conn.Close()
	if c.err == nil {
		c.err = errors.New("pop3 client: connection closed")
	}
	return err
}

// Close closes the connection without QUIT: the server deletes nothing.
func (c *Client) Close() error {
	if c.err == nil {
		c.err = errors.New("pop3 client: connection closed")
	}
	return c.conn.Close()
}

// Retr downloads message n (RFC 1939 §5). The body is streamed byte for
// byte, CRLF included and dots unstuffed, with no line length limit; it is
// valid until Close, which must be called before any other command. A body
// cut short returns io.ErrUnexpectedEOF and breaks the connection.
func (c *Client) Retr(n int) (io.ReadCloser, error) {
	if err := c.SendRetr(n); err != nil {
		return nil, err
	}
	return c.ReadRetr()
}

// Top returns the header and the first lines of the body of message n
// (RFC 1939 §7), streamed like Retr.
func (c *Client) Top(n, lines int) (io.ReadCloser, error) {
	if err := c.send(nil, "TOP", strconv.Itoa(n), strconv.Itoa(lines)); err != nil {
		return nil, err
	}
	return c.ReadRetr()
}

// SendRetr queues "RETR n" without waiting for the reply; the replies of
// queued commands are read in order by ReadRetr. More than one command may
// wait only when Pipelining is true.
func (c *Client) SendRetr(n int) error {
	return c.send(nil, "RETR", strconv.Itoa(n))
}

// SendDele queues "DELE n"; done is called with the reply's error when a
// later ReadRetr, Wait or command reads it.
func (c *Client) SendDele(n int, done func(error)) error {
	return c.send(func(rep pop3.Reply) error {
		if done != nil {
			done(rep.Err())
		}
		return nil
	}, "DELE", strconv.Itoa(n))
}

// parseStat parses a drop listing, "nn mm" and perhaps more text.
func parseStat(text string) (int, int64, error) {
	f := strings.Fields(text)
	if len(f) >= 2 {
		count, ok1 := pop3.ParseNumber(f[0])
		size, ok2 := parseOctets([]byte(f[1]))
		if f[0] == "0" {
			count, ok1 = 0, true
		}
		if ok1 && ok2 {
			return count, size, nil
		}
	}
	return 0, 0, fmt.Errorf("%w: bad STAT reply %q", pop3.ErrProtocol, text)
}

// ReadRetr flushes, reads the replies of queued DELEs, then the reply of the
// oldest queued RETR or TOP, and returns its body (see Retr).
func (c *Client) ReadRetr() (io.ReadCloser, error) {
	if err := c.usable(); err != nil {
		return nil, err
	}
	if err := c.drainSingle(); err != nil {
		return nil, err
	}
	if len(c.pending) == 0 {
		return nil, errors.New("pop3 client: no RETR pending")
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	rep, err := c.readReply()
	if err != nil {
		return nil, err
	}
	c.pending = c.pending[1:]
	if !rep.OK {
		if rep.Continuation {
			return nil, c.fail(fmt.Errorf("%w: unexpected continuation", pop3.ErrProtocol))
		}
		return nil, rep.Err()
	}
	c.body = &body{c: c, r: c.r.DotReader()}
	return c.body, nil
}

// body is an open multi-line message body.
type body struct {
	c    *Client
	r    io.Reader
	done bool
	err  error
}

func (b *body) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.done {
		return 0, io.EOF
	}
	b.c.conn.SetReadDeadline(time.Now().Add(b.c.timeout))
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.done = true
		if qerr := b.c.checkQuiet(); qerr != nil {
			b.err = qerr
			return n, qerr
		}
	} else if err != nil {
		b.err = b.c.fail(err)
	}
	return n, err
}

// Close reads what is left of the body so the next reply can be read.
func (b *body) Close() error {
	if b.c.body == b {
		b.c.body = nil
	}
	if b.done || b.err != nil {
		return b.err
	}
	_, err := io.Copy(io.Discard, readerOnly{b})
	return err
}

type readerOnly struct{ io.Reader }
