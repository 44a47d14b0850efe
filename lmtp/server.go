package lmtp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/random"
	"github.com/pouchmail/pouch/internal/unixsock"
)

// Config configures a Server. Zero durations and limits take the defaults.
type Config struct {
	// Agent delivers the messages; its MaxMessageSize is also the limit
	// that LHLO advertises in SIZE (RFC 1870).
	Agent  *Agent
	Logger *slog.Logger
	// Hostname is announced in the greeting (default: the system's).
	Hostname string
	// Domains, when not empty, are the only recipient domains accepted (in
	// any case). Otherwise the account source says, when it knows its
	// domains (auth.DomainSource: the users file's, an SQL domain_query),
	// and else every domain is, each recipient being looked up alone.
	Domains []string
	// ReadTimeout ends a connection on which the client sends nothing for
	// this long inside a transaction, from MAIL to the end of the message
	// (RFC 5321 §4.5.3.2: 5 minutes). It is renewed at every read, so it
	// measures a stall, not the length of a transfer.
	ReadTimeout time.Duration
	// IdleTimeout ends, with 421 4.4.2, a connection that sends no command
	// for this long outside a transaction: before LHLO, and between a
	// message's replies and the next MAIL (1 minute). MTAs send their
	// commands without pausing and keep an idle connection for the next
	// message only briefly (Postfix: 2 s, lmtp_connection_cache_time_limit),
	// so only abandoned connections wait this long.
	IdleTimeout time.Duration
	// MaxConnections bounds the connections open at once (100, Dovecot's
	// LMTP process limit; negative: no limit). A connection over it is
	// answered 421 4.3.2 and closed at once, so that idle LMTP connections
	// can never take the file descriptors that POP3 needs.
	MaxConnections int
	// WriteTimeout bounds the writing of each reply (5 minutes).
	WriteTimeout time.Duration
	// MaxLineLength bounds a command line and each line of a message, CRLF
	// included (64 KiB). RFC 5321 §4.5.3.1.6 sets 1000 octets for text lines;
	// real mail sometimes has longer ones, and refusing them would bounce it.
	MaxLineLength int
	// MaxRecipients bounds the recipients of one message (1000); more get
	// 452 4.5.3 and the sender sends them again in another transaction.
	MaxRecipients int
	// RcptCheckQuota refuses a recipient over quota at RCPT already, as
	// Dovecot's lmtp_rcpt_check_quota does. Off, the quota is checked only
	// when the message is stored, after DATA: an MTA that verifies
	// recipients with RCPT probes (Postfix's reject_unverified_recipient)
	// caches a refusal for hours, and would go on refusing a mailbox that
	// was full for a moment long after it has room again.
	RcptCheckQuota bool
	// SpoolDir holds the one copy of a message for several recipients while
	// it is written to each maildrop (default: os.TempDir()). The file is
	// unlinked as soon as it is created, so nothing is left behind.
	SpoolDir string
}

const (
	defaultReadTimeout = 5 * time.Minute
	defaultIdleTimeout = time.Minute
	// DefaultMaxConnections is MaxConnections when it is zero.
	DefaultMaxConnections = 100
	defaultWriteTimeout   = 5 * time.Minute
	defaultMaxLine        = 64 * 1024
	defaultMaxRecipients  = 1000
	// ShutdownGrace is how long deliveries in progress get to finish on
	// shutdown.
	ShutdownGrace = 10 * time.Second
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("lmtp: server closed")

// Server is an LMTP server (RFC 2033) that delivers through an Agent. It
// speaks LHLO, MAIL, RCPT, DATA (one reply per recipient), BDAT, RSET, NOOP,
// VRFY and QUIT with PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, SIZE and
// CHUNKING, as go-smtp implements them.
type Server struct {
	cfg      Config
	log      *slog.Logger
	smtp     *smtp.Server
	domains  map[string]bool
	idPrefix string
	ids      atomic.Uint64
	// sizeFix is the SIZE capability as go-smtp writes it and as it should
	// read, or empty.
	sizeFix [2]string
	// ctx is cancelled when the shutdown grace period ends, which stops
	// deliveries still reading a message.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closing   bool
	// refused counts the connections refused over MaxConnections since
	// refusedLog, when the last of them was logged.
	refused    int
	refusedLog time.Time
	closed     atomic.Bool // closing, for reads without the lock
	stopOnce   sync.Once
	stopped    chan struct{} // closed when every connection has ended after Shutdown

	// deliveries counts running LMTPData calls: for BDAT go-smtp runs them
	// in goroutines of their own, which its Shutdown does not wait for.
	deliveries sync.WaitGroup
}

// New returns a Server for cfg. cfg.Agent must be set.
func New(cfg Config) *Server {
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = defaultReadTimeout
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = defaultWriteTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = defaultIdleTimeout
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.MaxLineLength <= 0 {
		cfg.MaxLineLength = defaultMaxLine
	}
	if cfg.MaxRecipients <= 0 {
		cfg.MaxRecipients = defaultMaxRecipients
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = os.TempDir()
	}
	if cfg.Hostname == "" {
		cfg.Hostname, _ = os.Hostname()
		if cfg.Hostname == "" {
			cfg.Hostname = "localhost"
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		cfg:       cfg,
		log:       log,
		idPrefix:  "l" + random.Hex(3),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
		stopped:   make(chan struct{}),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if len(cfg.Domains) > 0 {
		s.domains = make(map[string]bool, len(cfg.Domains))
		for _, d := range cfg.Domains {
			s.domains[normalizeDomain(d)] = true
		}
	}
	gs := smtp.NewServer(smtp.BackendFunc(s.newSession))
	gs.LMTP = true
	gs.Domain = cfg.Hostname
	// go-smtp refuses a message once it has read MaxMessageBytes octets,
	// before it can see whether the final dot follows, so a message of
	// exactly the limit would fail. One more octet lets it through; the
	// Agent refuses what is over the limit, and conn.Write advertises the
	// limit itself in SIZE (RFC 1870 §4).
	if limit := cfg.Agent.MaxMessageSize; limit > 0 && limit < math.MaxInt64 {
		gs.MaxMessageBytes = limit + 1
		s.sizeFix = [2]string{fmt.Sprintf("SIZE %d\r\n", limit+1), fmt.Sprintf("SIZE %d\r\n", limit)}
	}
	gs.MaxLineLength = cfg.MaxLineLength
	gs.MaxRecipients = cfg.MaxRecipients
	gs.WriteTimeout = cfg.WriteTimeout
	gs.ReadTimeout = 0 // conn renews a deadline at every read instead
	gs.ErrorLog = errorLog{log}
	s.smtp = gs
	return s
}

// serves reports whether recipients in domain are taken (Config.Domains);
// the error says that the account source cannot tell now.
func (s *Server) serves(domain string) (bool, error) {
	if s.domains != nil {
		return s.domains[normalizeDomain(domain)], nil
	}
	if ds, ok := s.cfg.Agent.Users.(auth.DomainSource); ok && domain != "" {
		return ds.HasDomain(normalizeDomain(domain))
	}
	return true, nil
}

func normalizeDomain(d string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
}

// Serve accepts LMTP connections on l until Shutdown, and then returns
// ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	tl := &listener{Listener: l, srv: s}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[tl] = struct{}{}
	s.mu.Unlock()

	err := s.smtp.Serve(tl)

	s.mu.Lock()
	delete(s.listeners, tl)
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return ErrServerClosed
	}
	return err
}

// Shutdown stops accepting connections, closes the connections that are
// between messages, and waits for the deliveries in progress to finish and
// send their replies. When ctx is done first, it closes the remaining
// connections, whose deliveries then fail without being acknowledged, and
// waits for their goroutines. A delivery is never acknowledged unless it is
// durable, so a shutdown at any moment loses no mail; at worst a message
// stored just before the connection closed is sent again by the client.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	s.closed.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		if !c.busy.Load() {
			c.Conn.Close() // between messages: the client sends the next one elsewhere or later
		}
	}
	s.mu.Unlock()
	s.stopOnce.Do(func() {
		go func() {
			_ = s.smtp.Shutdown(context.Background()) // waits for every connection's goroutine
			s.deliveries.Wait()
			close(s.stopped)
		}()
	})
	select {
	case <-s.stopped:
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.Conn.Close()
	}
	s.mu.Unlock()
	<-s.stopped
	return ctx.Err()
}

func (s *Server) isClosing() bool { return s.closed.Load() }

// listener wraps accepted connections in conn.
type listener struct {
	net.Listener
	srv *Server
}

// Accept returns the next connection within MaxConnections; those over it
// are refused here, one at a time, so that a flood of them holds no more
// than one file descriptor beyond the limit.
func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		srv := l.srv
		srv.mu.Lock()
		if srv.closing {
			srv.mu.Unlock()
			c.Close()
			return nil, net.ErrClosed
		}
		if max := srv.cfg.MaxConnections; max > 0 && len(srv.conns) >= max {
			srv.mu.Unlock()
			srv.refuse(c)
			continue
		}
		tc := &conn{Conn: c, srv: srv}
		srv.conns[tc] = struct{}{}
		srv.mu.Unlock()
		return tc, nil
	}
}

// refuse answers a connection over MaxConnections and closes it: 421 before
// the greeting (RFC 5321 §3.1), 4.3.2 "system not accepting network
// messages" (RFC 3463 §3.4), so that the MTA tries again later. The write
// goes into an empty socket buffer and does not wait; the deadline is only a
// bound. Refusals are logged once a minute at most, with their number.
func (s *Server) refuse(c net.Conn) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(c, "421 4.3.2 %s Too many connections, try again later\r\n", s.cfg.Hostname)
	c.Close()
	s.mu.Lock()
	s.refused++
	n, log := s.refused, time.Since(s.refusedLog) >= time.Minute
	if log {
		s.refused, s.refusedLog = 0, time.Now()
	}
	s.mu.Unlock()
	if log {
		s.log.Warn("lmtp: connections refused: too many at once", "protocol", "lmtp",
			"limit", s.cfg.MaxConnections, "refused", n)
	}
}

// conn is one client connection. Every read renews the read deadline (the
// idle timeout outside a transaction, the read timeout inside), and a read
// that timed out fails at once ever after, so a stall inside a message ends
// the delivery, its replies and the connection in one timeout.
type conn struct {
	net.Conn
	srv      *Server
	timedOut atomic.Bool
	// inTx is set from MAIL to the end of the transaction (session.Reset).
	inTx atomic.Bool
	// busy is set from the start of a message's data until the next read
	// after it, by which time its replies are written; Shutdown closes the
	// connections that are not busy at once.
	busy      atomic.Bool
	dataEnded atomic.Bool
	// peerEOF is set once a read has met the end of the client's input.
	peerEOF atomic.Bool
	// lineTooLong is set when a message had a line over the limit: its
	// replies are the last, and go-smtp's own reply to the same error, which
	// it gives next, is not sent.
	lineTooLong atomic.Bool
	closeOnce   sync.Once
}

func (c *conn) Read(p []byte) (int, error) {
	if c.timedOut.Load() {
		return 0, os.ErrDeadlineExceeded
	}
	if c.dataEnded.Swap(false) {
		c.busy.Store(false)
	}
	if !c.busy.Load() && c.srv.isClosing() {
		// Between messages during shutdown: end the session. go-smtp ends it
		// quietly on net.ErrClosed as on io.EOF, but takes io.EOF inside a
		// BDAT chunk for the end of the chunk, and this read may be the first
		// of a chunk whose message has not started yet: the cut message would
		// be delivered. net.ErrClosed fails the chunk instead, and closing
		// the connection keeps go-smtp's reply to that failure (a 554 with
		// the error's text) from the client, which sends the message again.
		c.Conn.Close()
		return 0, net.ErrClosed
	}
	timeout := c.srv.cfg.IdleTimeout
	if c.inTx.Load() || c.busy.Load() {
		timeout = c.srv.cfg.ReadTimeout
	}
	if err := c.Conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(p)
	if err == io.EOF {
		c.peerEOF.Store(true) // see messageReader
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.timedOut.Store(true)
	}
	return n, err
}

// Write sends a reply line of go-smtp, which writes each line in one Write,
// with the corrections of fixReply.
func (c *conn) Write(p []byte) (int, error) {
	q, fixed := c.fixReply(p)
	if !fixed {
		return c.Conn.Write(p)
	}
	if len(q) > 0 {
		if _, err := c.Conn.Write(q); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// sequenceErrors are go-smtp's texts for commands given out of order, which
// it sends with code 502 (command not implemented); RFC 5321 §4.2.4 and
// §4.3.2 give them 503 (bad sequence of commands).
var sequenceErrors = map[string]bool{
	"Missing RCPT TO command.":                 true, // DATA, BDAT
	"Missing MAIL FROM command.":               true, // RCPT
	"Please introduce yourself first.":         true, // MAIL before LHLO
	"MAIL not allowed during message transfer": true, // between BDAT chunks
	"RCPT not allowed during message transfer": true,
	"DATA not allowed during message transfer": true,
}

// replyUnknownCommand is the reply to a command line that names no command
// Pouch knows: 500 (RFC 5321 §4.2.4), 5.5.1 as Dovecot's LMTP answers.
const replyUnknownCommand = "500 5.5.1 Unknown command\r\n"

// fixReply returns the line to send in place of the reply line p, and
// whether it differs: the SIZE capability with the limit itself (see New),
// 503 for sequence errors, 500 5.5.1 for unknown commands, and nothing for
// go-smtp's "Too long line" after the replies to a message that had one,
// which LMTPData has already sent.
func (c *conn) fixReply(p []byte) ([]byte, bool) {
	if len(p) < 4 {
		return nil, false
	}
	code, rest := string(p[:3]), p[4:]
	switch {
	case code == "250" && c.srv.sizeFix[0] != "" && string(rest) == c.srv.sizeFix[0]:
		return append(p[:4:4], c.srv.sizeFix[1]...), true
	case code == "502" && bytes.HasPrefix(rest, []byte("5.5.1 ")) &&
		sequenceErrors[strings.TrimSuffix(string(rest[6:]), "\r\n")]:
		return append([]byte("503"), p[3:]...), true
	case code == "501" && string(rest) == "5.5.2 Bad command\r\n",
		code == "500" && bytes.HasPrefix(rest, []byte("5.5.2 Syntax errors, ")) &&
			bytes.HasSuffix(rest, []byte(" command unrecognized\r\n")):
		// go-smtp's replies to a line that is not a four-letter verb alone
		// or followed by a space ("HELLO", "MAIL:FROM:<a@b.c>"), which it
		// answers 501 (syntax error in arguments) though it recognised no
		// command, and to a four-letter verb it does not know.
		return []byte(replyUnknownCommand), true
	case code == "500" && c.lineTooLong.Load() && string(rest) == "5.4.0 Too long line, closing connection\r\n":
		return nil, true
	case code == "554" && bytes.HasPrefix(rest, []byte("5.0.0 ")):
		// go-smtp's reply to an error that is not an *smtp.SMTPError, such
		// as a BDAT chunk whose read timed out: a permanent failure that
		// names internal addresses. Nothing was stored, so the sender
		// should try again (RFC 5321 §4.2.5), and learn nothing more.
		msg := rest[6:]
		var rcpt []byte
		if i := bytes.Index(msg, []byte("> ")); bytes.HasPrefix(msg, []byte("<")) && i > 0 {
			rcpt = msg[:i+2]
			msg = msg[i+2:]
		}
		if bytes.HasPrefix(msg, []byte("Error: transaction failed: ")) {
			return append(append([]byte("451 4.3.0 "), rcpt...), "Error: transaction failed, try again later\r\n"...), true
		}
	}
	return nil, false
}

// Close closes the connection. It leaves the count of MaxConnections first,
// so that a client that has seen the connection close can open another.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.srv.mu.Lock()
		delete(c.srv.conns, c)
		c.srv.mu.Unlock()
	})
	err := c.Conn.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

func (c *conn) startData() {
	c.dataEnded.Store(false)
	c.busy.Store(true)
}

func (c *conn) endData() { c.dataEnded.Store(true) }

// errorLog passes go-smtp's own log lines (lost connections, recovered
// panics) to the logger.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Printf(format string, v ...any) { e.print(fmt.Sprintf(format, v...)) }
func (e errorLog) Println(v ...any)               { e.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (e errorLog) print(msg string) {
	if strings.HasPrefix(msg, "panic") {
		e.log.Error("lmtp: "+msg, "protocol", "lmtp")
		return
	}
	e.log.Info("lmtp: "+msg, "protocol", "lmtp")
}

// ExposedWarning returns a warning when the LMTP listener at addr can be
// reached from other machines (a TCP address that is not loopback), or "".
// LMTP has no authentication: whoever can connect can deliver mail to any
// user, so only the MTA should reach it.
func ExposedWarning(addr net.Addr) string {
	ta, ok := addr.(*net.TCPAddr)
	if !ok || ta.IP.IsLoopback() {
		return ""
	}
	return fmt.Sprintf("LMTP on %s accepts mail for every user from anyone who can connect, without authentication; "+
		"listen on a loopback address or a Unix socket, or let only the MTA reach it", addr)
}

// Listen opens a listener for an LMTP address: "unix:/path" for a Unix
// socket, anything else for TCP ("127.0.0.1:2424"). A Unix socket is made
// mode 0660 (so the MTA's group can connect) and is removed when the listener
// is closed; a stale socket left by a crash is replaced, but a path that is not
// a socket, or on which a server still answers, is refused.
func Listen(addr string) (net.Listener, error) {
	path, unix := strings.CutPrefix(addr, "unix:")
	if !unix {
		return net.Listen("tcp", addr)
	}
	if path == "" {
		return nil, errors.New("unix: needs a socket path")
	}
	l, err := unixsock.Listen(path, 0o660)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}
