package server

import (
	"bytes"
	"container/list"
	"context"
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/pop3"
	"github.com/pouchmail/pouch/store"
)

// Implementation is the IMPLEMENTATION capability's value (RFC 2449 §6.9).
const Implementation = "Pouch"

type state int

const (
	stateAuthorization state = iota // RFC 1939 §4
	stateTransaction                // RFC 1939 §5
	stateDone                       // QUIT handled or connection ending
)

// session is one POP3 connection.
type session struct {
	srv  *Server
	conn net.Conn
	dc   *deadlineConn
	r    *pop3.Reader
	w    *pop3.Writer
	log  *slog.Logger
	id   string
	// ctx ends when the session is aborted or finishes: a wait in the
	// guard stops then.
	ctx    context.Context
	cancel context.CancelFunc

	implicitTLS bool
	ip          netip.Addr           // the client's address
	src         netip.Prefix         // its source, as the limits and the guard count
	stream      net.Conn             // the connection as read and written: TLS or not
	tls         *tls.ConnectionState // nil before TLS
	localCert   *tls.Certificate     // the certificate the server picked in a full handshake
	localLeaf   *x509.Certificate    // the leaf the client saw: localCert's, or resumedLeaf
	resumedLeaf *x509.Certificate    // the leaf of the first handshake, from a session ticket
	trusted     bool                 // from a network where cleartext passwords are allowed
	authStart   time.Time            // when the current authentication attempt began
	attempt     *guard.Attempt       // the guard's attempt (throttle), until it ends
	state       state
	timestamp   string // APOP timestamp of the greeting, "" when APOP is off
	user        string // from USER, waiting for PASS
	bad         int    // bad commands so far

	// TRANSACTION state.
	mailbox string
	account auth.Account // the mailbox's, as it was at login
	md      store.Maildrop
	msgs    []store.Message
	deleted []bool
	// retrieved marks the messages sent with RETR or TOP, for the
	// retention policy (RFC 2449 §6.7).
	retrieved []uint8
	retrs     int
	sent      int64

	op operatorView // what Server.Who and Server.Kick read (operator.go)

	// Guarded by srv.mu: the session's place among those not logged in
	// (nil once logged in or shed), whether its credentials are being
	// checked (shedding passes it over), and whether it counts as logged in.
	pre      *list.Element
	checking bool
	counted  bool
	// shed is set when the session was closed to make room (shedNow).
	shed atomic.Bool
	// leaseLost is set when the maildrop's lock was lost (watchLease).
	leaseLost atomic.Bool

	closeOnce sync.Once
	tlsConn   atomic.Pointer[tls.Conn] // set once TLS is up, for abort
}

func newSession(s *Server, c net.Conn, implicitTLS bool) *session {
	id := fmt.Sprintf("%s%06x", s.idPrefix, s.ids.Add(1))
	remote := c.RemoteAddr().String()
	sess := &session{
		srv:         s,
		conn:        c,
		id:          id,
		implicitTLS: implicitTLS,
		log:         s.log.With("session", id, "remote", remote),
	}
	if p, ok := c.(interface{ Proxy() net.Addr }); ok && p.Proxy() != nil {
		sess.log = sess.log.With("via", p.Proxy().String()) // the load balancer
	}
	sess.ctx, sess.cancel = context.WithCancel(context.Background())
	sess.op.remote, sess.op.since = remote, time.Now()
	// Made here, before the session's goroutine starts, so that shedNow
	// can reach it from the accept loop.
	sess.dc = &deadlineConn{Conn: countingConn{c, &sess.op}, timeout: s.cfg.PreLoginTimeout, notAfter: time.Now().Add(s.cfg.PreLoginTimeout)}
	return sess
}

// abort ends the session from any goroutine (kick, shutdown, a failed
// send): the session's reads fail at once and its writes within closeWait,
// and it ends without UPDATE. A plaintext connection, or one still in its
// handshake, is closed here; over TLS the session's own goroutine closes it
// in finish, with close_notify, since only it can know that no write is
// under way.
func (s *session) abort() {
	s.cancel()
	if s.tlsConn.Load() == nil {
		s.closeOnce.Do(func() { s.conn.Close() })
		return
	}
	by := time.Now().Add(closeWait)
	if s.dc.closeBy.CompareAndSwap(0, by.UnixNano()) {
		s.conn.SetReadDeadline(time.Unix(1, 0)) // a read under way ends now
		s.conn.SetWriteDeadline(by)
	}
}

// closeConn closes the connection, from the session's goroutine. Over TLS it
// first sends close_notify (RFC 8446 §6.1, RFC 5246 §7.2.1), so that the
// client sees a clean end, waiting at most closeWait for a client that does
// not read; not after a write failed, when the client may hold part of a
// record.
func (s *session) closeConn() {
	s.closeOnce.Do(func() {
		tc := s.tlsConn.Load()
		if tc == nil || s.dc.failed.Load() {
			s.conn.Close()
			return
		}
		s.dc.closeBy.Store(time.Now().Add(closeWait).UnixNano())
		tc.Close()
	})
}

// closeWait bounds the wait to send close_notify when a session ends.
const closeWait = time.Second

// deadlineConn sets a fresh deadline before every read and write, so that the
// timeout measures inactivity, not session length.
// Before login, the deadline is also never later than notAfter, so that a
// client sending a byte now and then (slowloris) cannot hold a connection
// past the pre-login timeout.
type deadlineConn struct {
	net.Conn
	timeout  time.Duration
	notAfter time.Time // zero after login
	// closeBy, once set by abort or closeConn (Unix nanoseconds), is the
	// deadline of every write, and reads fail: the connection is closing.
	closeBy atomic.Int64
	// failed is set when a write failed: the client may have part of a
	// TLS record, and nothing more can be sent.
	failed atomic.Bool
	// interrupted, once set by interrupt, makes reads fail while writes
	// go on: the session has one last thing to say.
	interrupted atomic.Bool
}

// errInterrupted is the read error after interrupt.
var errInterrupted = errors.New("server: reading interrupted")

// interrupt makes the read under way, and every later one, fail with
// errInterrupted, from any goroutine.
func (c *deadlineConn) interrupt() {
	c.interrupted.Store(true)
	c.Conn.SetReadDeadline(time.Unix(1, 0))
}

func (c *deadlineConn) deadline() time.Time {
	if by := c.closeBy.Load(); by != 0 {
		return time.Unix(0, by)
	}
	d := time.Now().Add(c.timeout)
	if !c.notAfter.IsZero() && c.notAfter.Before(d) {
		return c.notAfter
	}
	return d
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(c.deadline())
	// Looked at after the deadline is set, so that the past deadline abort
	// sets is never overwritten unseen.
	if c.closeBy.Load() != 0 {
		return 0, net.ErrClosed
	}
	if c.interrupted.Load() {
		return 0, errInterrupted
	}
	n, err := c.Conn.Read(p)
	switch {
	case err == nil:
	case c.closeBy.Load() != 0:
		err = net.ErrClosed // ended by abort, not a timeout
	case c.interrupted.Load():
		err = errInterrupted
	}
	return n, err
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	written := 0
	err := c.renewing(func() (bool, bool, error) {
		n, err := c.Conn.Write(p[written:])
		written += n
		return n > 0, written < len(p), err
	})
	if err != nil {
		c.failed.Store(true)
	}
	return written, err
}

// renewing calls write with a fresh write deadline, and again with a fresh
// one each time it timed out after the client took some of what it sends
// (progress) and something is left (more): a message goes out in blocks of
// up to 1 MiB, and a slow client is not an idle one.
func (c *deadlineConn) renewing(write func() (progress, more bool, err error)) error {
	for {
		c.Conn.SetWriteDeadline(c.deadline())
		if by := c.closeBy.Load(); by != 0 {
			c.Conn.SetWriteDeadline(time.Unix(0, by)) // abort ran meanwhile
		}
		progress, more, err := write()
		var ne net.Error
		if !progress || !more || !errors.As(err, &ne) || !ne.Timeout() {
			return err
		}
	}
}

func (s *session) run() {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("session panic", "panic", v)
		}
		s.finish()
	}()
	s.trusted = s.srv.trusted(s.conn.RemoteAddr())
	s.setStream(s.dc)
	if s.implicitTLS && !s.startTLS() {
		return
	}
	s.log.Debug("connected", "tls", s.tls != nil, "trusted", s.trusted)

	greeting := "Pouch ready."
	if s.srv.apop != nil && s.srv.cfg.Auth.Summary().APOP && s.cleartextAllowed() {
		s.timestamp = fmt.Sprintf("<%d.%s@%s>", os.Getpid(), randomHex(8), s.srv.cfg.Hostname)
		greeting += " " + s.timestamp
	}
	s.w.OK(greeting)
	if s.w.Flush() != nil {
		return
	}
	for s.state != stateDone {
		line, err := s.r.ReadCommandLine(s.srv.cfg.MaxLineLength, s.authLineMax())
		switch {
		case errors.Is(err, pop3.ErrLineTooLong):
			s.badCommand("line too long")
		case errors.Is(err, pop3.ErrBadLine):
			s.badCommand("invalid characters in command")
		case err != nil:
			s.readFailed(err)
			return
		default:
			if s.op.kicked.Load() {
				return // even a command already buffered: nothing is committed
			}
			if s.leaseLost.Load() {
				s.lostGoodbye()
				return
			}
			s.dispatch(line)
			s.endCheck()
		}
		// PIPELINING (RFC 2449 §6.6): replies go out in order; flush only when
		// no further command is already waiting.
		if s.r.Buffered() == 0 || s.state == stateDone {
			if err := s.w.Flush(); err != nil {
				s.log.Info("write failed", "err", err)
				return
			}
		}
	}
}

// setStream makes rw the connection that commands are read from and replies
// written to.
func (s *session) setStream(rw net.Conn) {
	// Commands are short (255 octets; SASL lines, read in pieces, more), and
	// every idle session holds this buffer: 1 KiB, not the default 4.
	s.r = pop3.NewReaderSize(rw, 1024)
	s.w = pop3.NewWriter(rw)
	s.stream = rw
}

// startTLS runs the server side of a TLS handshake (implicit TLS, or after
// STLS), bounded by the pre-login timeout. It reports false, after logging,
// when the handshake fails; the session then ends.
func (s *session) startTLS() bool {
	tc := tls.Server(s.dc, s.tlsConfig())
	// Ended by the pre-login timeout, or at once by an abort or a shed.
	ctx, cancel := context.WithTimeout(s.ctx, s.srv.cfg.PreLoginTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		switch {
		case s.shed.Load():
			s.log.Debug("closed to make room during the TLS handshake: the oldest connection not logged in")
		case !s.untrustedHeader(err):
			s.log.Info("TLS handshake failed", "err", err)
		}
		return false
	}
	state := tc.ConnectionState()
	s.verifyClientCert(&state)
	s.tls = &state
	s.op.tls.Store(true)
	s.localLeaf = s.presentedLeaf(state.DidResume)
	s.tlsConn.Store(tc)
	if !s.implicitTLS {
		s.srv.cfg.Metrics.SessionUpgraded() // STLS (RFC 2595 §4)
	}
	s.setStream(tc)
	s.log.Debug("TLS established", "version", tls.VersionName(state.Version), "cipher", tls.CipherSuiteName(state.CipherSuite), "resumed", state.DidResume)
	return true
}

// verifyClientCert checks the certificate a client presented against the
// client CAs now in force, for client authentication, and records its
// chains in state.VerifiedChains, which EXTERNAL requires. The handshake
// only asked for it (RFC 8446 §4.3.2, RFC 5246 §7.4.4): one that does not
// verify leaves EXTERNAL out and the session goes on.
func (s *session) verifyClientCert(state *tls.ConnectionState) {
	if len(state.PeerCertificates) == 0 || len(state.VerifiedChains) > 0 || s.srv.cfg.ClientCAs == nil {
		return
	}
	roots := s.srv.cfg.ClientCAs()
	if roots == nil {
		return
	}
	opts := x509.VerifyOptions{
		Roots:         roots,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, c := range state.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	leaf := state.PeerCertificates[0]
	chains, err := leaf.Verify(opts)
	if err != nil {
		s.log.Info("client certificate not accepted; EXTERNAL is not offered", "subject", leaf.Subject.String(), "err", err)
		return
	}
	state.VerifiedChains = chains
}

// tlsConfig is the server's TLS configuration for this connection:
// certificate selection wrapped so that the session learns which
// certificate it presented, for tls-server-end-point channel binding
// (RFC 5929 §4), and the client CAs now in force. Session tickets
// (RFC 5077, RFC 8446 §4.6.1) are sealed and opened with the keys of the
// server's one configuration, which crypto/tls makes and rotates, so that
// any later connection, on either port, can resume the session. A resumed
// session sends no certificate, so each ticket carries the one of the first
// handshake: tls-server-end-point binds to what the client saw.
func (s *session) tlsConfig() *tls.Config {
	base := s.srv.cfg.TLS
	cfg := base.Clone()
	pick := cfg.GetCertificate
	certs := cfg.Certificates
	cfg.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		var c *tls.Certificate
		var err error
		switch {
		case pick != nil:
			c, err = pick(hello)
		case len(certs) == 0:
			err = errors.New("no certificate configured")
		default:
			c = &certs[0]
			for i := range certs {
				if hello.SupportsCertificate(&certs[i]) == nil {
					c = &certs[i]
					break
				}
			}
		}
		s.localCert = c
		return c, err
	}
	cfg.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		ss.Extra = slices.DeleteFunc(ss.Extra, isLeafExtra)
		if leaf := s.presentedLeaf(cs.DidResume); leaf != nil {
			ss.Extra = append(ss.Extra, append([]byte(leafExtra), leaf.Raw...))
		}
		if base.WrapSession != nil {
			return base.WrapSession(cs, ss)
		}
		return base.EncryptTicket(cs, ss)
	}
	cfg.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		var ss *tls.SessionState
		var err error
		if base.UnwrapSession != nil {
			ss, err = base.UnwrapSession(identity, cs)
		} else {
			ss, err = base.DecryptTicket(identity, cs)
		}
		if ss != nil {
			s.resumedLeaf = nil
			if i := slices.IndexFunc(ss.Extra, isLeafExtra); i >= 0 {
				s.resumedLeaf, _ = x509.ParseCertificate(ss.Extra[i][len(leafExtra):])
			}
		}
		return ss, err
	}
	if s.srv.cfg.ClientCAs != nil {
		if roots := s.srv.cfg.ClientCAs(); roots != nil {
			// Ask for a certificate, naming the CAs, but do not let the
			// handshake check it: verifyClientCert does.
			cfg.ClientCAs = roots
			if cfg.ClientAuth == tls.NoClientCert || cfg.ClientAuth == tls.VerifyClientCertIfGiven {
				cfg.ClientAuth = tls.RequestClientCert
			}
		}
	}
	return cfg
}

// leafExtra marks the session ticket entry holding the server's
// certificate (tls.SessionState.Extra).
const leafExtra = "pouch-leaf\x00"

func isLeafExtra(b []byte) bool { return bytes.HasPrefix(b, []byte(leafExtra)) }

// presentedLeaf is the leaf certificate the client saw: on a resumed
// session the one of the first handshake, else the one picked now.
func (s *session) presentedLeaf(resumed bool) *x509.Certificate {
	if resumed {
		return s.resumedLeaf
	}
	c := s.localCert
	if c == nil || len(c.Certificate) == 0 {
		return nil
	}
	if c.Leaf != nil {
		return c.Leaf
	}
	leaf, _ := x509.ParseCertificate(c.Certificate[0])
	return leaf
}

// cleartextAllowed reports whether passwords may be sent on this connection:
// over TLS, or from a network the operator trusts (RFC 8314 §3, RFC 2595 §2).
func (s *session) cleartextAllowed() bool {
	return s.tls != nil || s.trusted
}

// readFailed logs why reading stopped and says goodbye on a timeout. No path
// from here enters UPDATE.
func (s *session) readFailed(err error) {
	var ne net.Error
	switch {
	case s.shed.Load():
		s.shedGoodbye()
	case s.leaseLost.Load():
		s.lostGoodbye()
	case s.untrustedHeader(err):
	case errors.As(err, &ne) && ne.Timeout():
		s.log.Info("autologout: idle timeout", "user", s.mailbox)
		s.dc.notAfter, s.dc.timeout = time.Time{}, 5*time.Second // for the goodbye only
		s.w.Err("", "autologout: idle for too long")
		s.w.Flush()
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		s.log.Debug("connection closed by peer", "user", s.mailbox)
	default:
		s.log.Info("read failed", "err", err, "user", s.mailbox)
	}
}

// finish releases the maildrop without committing and closes the connection.
// It ends the guard's attempt still in progress, however the session ended
// (a recovered panic included), so that none is left counting.
func (s *session) finish() {
	s.attemptDone()
	s.cancel()
	if s.mailbox != "" {
		s.srv.mu.Lock()
		if s.srv.userSessions[s.mailbox]--; s.srv.userSessions[s.mailbox] <= 0 {
			delete(s.srv.userSessions, s.mailbox)
		}
		s.srv.mu.Unlock()
	}
	if s.md != nil {
		if err := s.md.Close(); err != nil {
			s.log.Error("closing maildrop", "err", err, "user", s.mailbox)
		}
		s.md = nil
		s.logout(0, false)
	}
	s.closeConn()
}

// watchLease ends the session when lost is closed before the session ends:
// the maildrop's lock was lost (store.Leased), so another session may have
// it, and this one must not go on as if it held it. The command under way
// finishes (a QUIT's commit then fails and removes nothing); the next read
// is cut short, and lostGoodbye says why.
func (s *session) watchLease(lost <-chan struct{}) {
	select {
	case <-lost:
		s.leaseLost.Store(true)
		s.dc.interrupt()
	case <-s.ctx.Done():
	}
}

// lostGoodbye ends a session whose maildrop lock was lost, with a
// temporary error (RFC 3206 §4 [SYS/TEMP]): the client may log in again,
// and nothing it marked for deletion was removed.
func (s *session) lostGoodbye() {
	s.log.Warn("maildrop lock lost; closing the session without deleting anything", "user", s.mailbox)
	s.state = stateDone
	s.dc.notAfter, s.dc.timeout = time.Time{}, 5*time.Second // for the goodbye only
	s.w.Err(pop3.CodeSysTemp, "this server lost the lock on your maildrop; nothing was deleted; log in again")
	s.w.Flush()
}

// logout logs and audits the end of a logged-in session.
func (s *session) logout(deleted int, committed bool) {
	s.log.Info("logout", "user", s.mailbox, "retr", s.retrs, "deleted", deleted, "bytes", s.sent, "committed", committed)
	s.srv.audit("logout", "session", s.id, "user", s.mailbox, "ip", s.ip.String(),
		"retrieved", s.retrs, "deleted", deleted, "bytes", s.sent, "committed", committed)
}

// badCommand answers a command that cannot be run and drops the client after
// too many of them.
func (s *session) badCommand(msg string) {
	s.bad++
	if s.bad >= s.srv.cfg.MaxBadCommands {
		s.log.Info("too many bad commands; disconnecting", "user", s.mailbox)
		s.w.Err("", "too many bad commands; bye")
		s.state = stateDone
		return
	}
	s.w.Err("", msg)
}

type handler struct {
	fn    func(*session, pop3.Command)
	state state
	// checkArgs applies the 40-octet argument limit of RFC 1939 §3.
	checkArgs bool
}

var handlers map[string]handler

func init() {
	auth, trans := stateAuthorization, stateTransaction
	handlers = map[string]handler{
		"USER": {(*session).cmdUSER, auth, false},
		"PASS": {(*session).cmdPASS, auth, false},
		"APOP": {(*session).cmdAPOP, auth, false}, // cmdAPOP checks them: the name may be longer
		"AUTH": {(*session).cmdAUTH, auth, false},
		"STLS": {(*session).cmdSTLS, auth, true},
		"UTF8": {(*session).cmdUTF8, auth, true},
		"STAT": {(*session).cmdSTAT, trans, true},
		"LIST": {(*session).cmdLIST, trans, true},
		"RETR": {(*session).cmdRETR, trans, true},
		"DELE": {(*session).cmdDELE, trans, true},
		"NOOP": {(*session).cmdNOOP, trans, true},
		"RSET": {(*session).cmdRSET, trans, true},
		"TOP":  {(*session).cmdTOP, trans, true},
		"UIDL": {(*session).cmdUIDL, trans, true},
	}
}

func (s *session) dispatch(line []byte) {
	cmd, err := pop3.ParseCommand(line)
	if err != nil {
		s.badCommand("unknown command")
		return
	}
	switch cmd.Name {
	case "QUIT": // RFC 1939 §4, §6: valid in both states
		s.cmdQUIT()
		return
	case "CAPA": // RFC 2449 §5
		s.cmdCAPA()
		return
	case "LANG": // RFC 6856 §3: valid in both states
		s.cmdLANG(cmd)
		return
	}
	h, ok := handlers[cmd.Name]
	if !ok {
		s.badCommand("unknown command")
		return
	}
	if h.state != s.state {
		if s.state == stateAuthorization {
			s.badCommand("not allowed before login")
		} else {
			s.badCommand("not allowed after login")
		}
		return
	}
	if h.checkArgs && cmd.CheckArgs() != nil {
		s.badCommand("argument too long")
		return
	}
	start := time.Now()
	h.fn(s, cmd)
	s.srv.cfg.Metrics.Command(cmd.Name, time.Since(start))
}

// capabilities lists the CAPA response for the current state and connection
// (RFC 2449 §6): after STLS it is computed anew, and mechanisms that would
// reveal a password appear only where passwords may be sent.
func (s *session) capabilities() []string {
	caps := []string{"TOP", "UIDL"}
	if s.state == stateAuthorization {
		if s.cleartextAllowed() {
			caps = append(caps, "USER")
		}
		if mechs := s.mechanisms(); len(mechs) > 0 {
			caps = append(caps, "SASL "+strings.Join(mechs, " "))
		}
		if s.tls == nil && s.srv.cfg.TLS != nil {
			caps = append(caps, "STLS") // RFC 2595 §4
		}
	}
	if s.state == stateAuthorization {
		// RFC 2449 §6.5: before login, the largest delay any user has.
		if d := max(s.srv.cfg.LoginDelay, s.srv.cfg.Auth.Summary().MaxLoginDelay); d > 0 {
			caps = append(caps, fmt.Sprintf("LOGIN-DELAY %d USER", int(d/time.Second)))
		}
	} else if s.state == stateTransaction {
		if d := s.loginDelay(s.account); d > 0 {
			caps = append(caps, fmt.Sprintf("LOGIN-DELAY %d", int(d/time.Second)))
		}
	}
	// RFC 6856 §2: the USER tag says that USER takes UTF-8 names, so only
	// where USER is offered.
	utf8 := "UTF8"
	if s.cleartextAllowed() {
		utf8 = "UTF8 USER"
	}
	caps = append(caps,
		"RESP-CODES",
		"AUTH-RESP-CODE",
		"PIPELINING",
		s.expireCapability(),
		utf8,
		"LANG", // RFC 6856 §3
	)
	if s.state == stateTransaction {
		caps = append(caps, "IMPLEMENTATION "+Implementation)
	}
	return caps
}

func (s *session) cmdCAPA() {
	s.w.OK("Capability list follows")
	for _, c := range s.capabilities() {
		s.w.Line(c)
	}
	s.w.Line(".")
}

func (s *session) cmdQUIT() {
	s.state = stateDone
	if s.md == nil {
		s.w.OK("Pouch signing off")
		return
	}
	// RFC 1939 §6: the UPDATE state. Only this path removes mail.
	var del []int
	for i, d := range s.deleted {
		if d {
			del = append(del, i)
		}
	}
	md := s.md
	s.md = nil
	del = s.retain(md, del)
	err := md.Commit(del)
	if cerr := md.Close(); cerr != nil {
		s.log.Error("closing maildrop", "err", cerr, "user", s.mailbox)
	}
	if err != nil {
		s.log.Error("commit failed", "err", err, "user", s.mailbox, "deleted", len(del))
		s.w.Err(pop3.CodeSysTemp, "some deleted messages not removed")
		s.logout(0, false)
		return
	}
	left := len(s.msgs) - len(del)
	s.logout(len(del), true)
	if left == 0 {
		s.w.OK("Pouch signing off (maildrop empty)")
	} else {
		s.w.OK(fmt.Sprintf("Pouch signing off (%d messages left)", left))
	}
}

// --- AUTHORIZATION state (RFC 1939 §4, §7; RFC 5034) ---

// errCleartext is the reply to a password sent where it may not be
// (RFC 8314 §3; the same whatever the credentials).
const errCleartext = "cleartext authentication is not allowed without TLS; use STLS or port 995"

func (s *session) cmdUSER(cmd pop3.Command) {
	if !s.cleartextAllowed() {
		s.user = ""
		s.w.Err(pop3.CodeAuth, errCleartext)
		return
	}
	if len(cmd.Args) != 1 || cmd.CheckArgsName(0, maxNameOctets) != nil {
		s.user = ""
		s.badCommand("USER takes one user name")
		return
	}
	// The same answer for every name: nothing tells whether the user exists.
	s.user = normalizeName(cmd.Args[0])
	s.w.OK("send PASS")
}

func (s *session) cmdPASS(cmd pop3.Command) {
	user := s.user
	s.user = ""
	if user == "" {
		s.badCommand("send USER first")
		return
	}
	// RFC 1939 §7: the password is the rest of the line and may hold spaces.
	if !s.throttle(user, "PASS") {
		return
	}
	s.login(user, "PASS", s.srv.verify(user, cmd.Rest))
}

func (s *session) cmdAPOP(cmd pop3.Command) {
	s.user = ""
	if s.timestamp == "" {
		if !s.cleartextAllowed() {
			s.w.Err(pop3.CodeAuth, errCleartext)
			return
		}
		s.badCommand("APOP is not available")
		return
	}
	if len(cmd.Args) != 2 {
		s.badCommand("APOP takes a user name and a digest")
		return
	}
	if cmd.CheckArgsName(0, maxNameOctets) != nil {
		s.badCommand("argument too long")
		return
	}
	user, digest := normalizeName(cmd.Args[0]), strings.ToLower(cmd.Args[1])
	if !s.throttle(user, "APOP") {
		return
	}
	secret, ok := "", false
	if s.srv.apop != nil {
		secret, ok = s.srv.apop.APOPSecret(user)
	}
	if !ok {
		secret = randomHex(16) // compare anyway, so that timing tells nothing
	}
	sum := md5.Sum([]byte(s.timestamp + secret))
	want := hex.EncodeToString(sum[:])
	match := subtle.ConstantTimeCompare([]byte(want), []byte(digest)) == 1
	s.login(user, "APOP", ok && match)
}

// login finishes an authentication attempt: on success it opens the maildrop
// and enters TRANSACTION; on failure it waits the configured delay and answers
// with the same reply whatever the reason (RFC 3206 [AUTH]).
func (s *session) login(user, method string, ok bool) {
	if len(user) > maxNameOctets {
		// No user has such a name; keep logs, audit and the guard small.
		user, ok = user[:maxNameOctets], false
	}
	if !ok {
		s.failLogin(user, method, "")
		return
	}
	account, ok := s.admitUser(user, method)
	if !ok {
		return
	}
	md, err := s.srv.cfg.Store.Open(context.Background(), user)
	switch {
	case errors.Is(err, store.ErrLocked):
		// RFC 2449 §8.1.2.
		s.loginRefused(user, method, "maildrop in use")
		s.w.Err(pop3.CodeInUse, "maildrop already locked by another session")
		return
	case errors.Is(err, store.ErrBadUser):
		s.log.Error("user name cannot name a maildrop", "user", user)
		s.w.Err(pop3.CodeSysPerm, "maildrop unavailable")
		return
	case err != nil:
		s.log.Error("opening maildrop", "err", err, "user", user)
		s.w.Err(pop3.CodeSysTemp, "maildrop unavailable, try again later")
		return
	}
	s.md = md
	if l, ok := md.(store.Leased); ok {
		go s.watchLease(l.Lost())
	}
	s.mailbox, s.account = user, account
	s.msgs = md.Messages()
	s.deleted = make([]bool, len(s.msgs))
	s.retrieved = make([]uint8, len(s.msgs))
	s.state = stateTransaction
	s.dc.timeout, s.dc.notAfter = s.srv.cfg.IdleTimeout, time.Time{}
	s.srv.mu.Lock()
	s.srv.userSessions[user]++
	s.srv.lastLogin[user] = time.Now()
	s.loggedInLocked()
	s.op.user = user
	s.srv.mu.Unlock()
	var size int64
	for _, m := range s.msgs {
		size += m.Size
	}
	s.srv.cfg.Metrics.Login(true, method, s.tls != nil)
	s.log.Info("login", "user", user, "method", method, "tls", s.tls != nil, "messages", len(s.msgs), "octets", size)
	s.srv.audit("login", "session", s.id, "user", user, "ip", s.ip.String(), "method", method, "tls", s.tls != nil, "messages", len(s.msgs))
	s.w.OK(fmt.Sprintf("maildrop has %d messages (%d octets)", len(s.msgs), size))
}

// maxNameOctets is the longest user name that can exist (auth.ValidName).
const maxNameOctets = 255

// --- TRANSACTION state (RFC 1939 §5, §7) ---

// message parses a message-number argument and checks that the message exists
// and is not deleted; it answers -ERR and returns false otherwise.
func (s *session) message(arg string) (int, bool) {
	n, ok := pop3.ParseNumber(arg)
	if !ok || n > len(s.msgs) {
		s.w.Err("", "no such message")
		return 0, false
	}
	if s.deleted[n-1] {
		s.w.Err("", fmt.Sprintf("message %d already deleted", n))
		return 0, false
	}
	return n - 1, true
}

func (s *session) stat() (count int, size int64) {
	for i, m := range s.msgs {
		if !s.deleted[i] {
			count++
			size += m.Size
		}
	}
	return count, size
}

func (s *session) cmdSTAT(cmd pop3.Command) {
	if len(cmd.Args) != 0 {
		s.badCommand("STAT takes no argument")
		return
	}
	n, size := s.stat()
	s.w.OK(fmt.Sprintf("%d %d", n, size))
}

func (s *session) cmdLIST(cmd pop3.Command) {
	s.listing(cmd, "LIST", func(i int) string { return strconv.FormatInt(s.msgs[i].Size, 10) })
}

func (s *session) cmdUIDL(cmd pop3.Command) {
	s.listing(cmd, "UIDL", func(i int) string { return s.msgs[i].UID })
}

// listing answers LIST and UIDL: one message, or all that are not deleted.
func (s *session) listing(cmd pop3.Command, name string, value func(int) string) {
	switch len(cmd.Args) {
	case 1:
		if i, ok := s.message(cmd.Args[0]); ok {
			s.w.OK(fmt.Sprintf("%d %s", i+1, value(i)))
		}
	case 0:
		n, size := s.stat()
		if name == "LIST" {
			s.w.OK(fmt.Sprintf("%d messages (%d octets)", n, size))
		} else {
			s.w.OK("unique-id listing follows")
		}
		var b []byte
		for i := range s.msgs {
			if s.deleted[i] {
				continue
			}
			b = strconv.AppendInt(b[:0], int64(i+1), 10)
			b = append(b, ' ')
			b = append(b, value(i)...)
			s.w.Line(string(b))
		}
		s.w.Line(".")
	default:
		s.badCommand(name + " takes at most one argument")
	}
}

func (s *session) cmdRETR(cmd pop3.Command) {
	if len(cmd.Args) != 1 {
		s.badCommand("RETR takes a message number")
		return
	}
	i, ok := s.message(cmd.Args[0])
	if !ok {
		return
	}
	if s.send(i, -1, fmt.Sprintf("%d octets", s.msgs[i].Size)) {
		s.retrs++
		s.retrieved[i] |= retrievedWhole
	}
}

func (s *session) cmdTOP(cmd pop3.Command) {
	if len(cmd.Args) != 2 {
		s.badCommand("TOP takes a message number and a line count")
		return
	}
	lines, err := strconv.ParseUint(cmd.Args[1], 10, 31)
	if err != nil {
		s.w.Err("", "invalid line count")
		return
	}
	i, ok := s.message(cmd.Args[0])
	if !ok {
		return
	}
	if s.send(i, int(lines), "top of message follows") {
		s.retrieved[i] |= retrievedTop
	}
}

// send streams message i as a multi-line response: whole (lines < 0) or its
// header and first lines of body (TOP). It reports whether the whole
// response went out.
func (s *session) send(i, lines int, text string) bool {
	r, err := s.md.Open(i)
	if errors.Is(err, store.ErrNotFound) {
		s.log.Warn("message vanished from storage", "user", s.mailbox, "msg", i+1, "uid", s.msgs[i].UID)
		s.w.Err(pop3.CodeSysPerm, fmt.Sprintf("message %d is no longer available", i+1))
		return false
	}
	if err != nil {
		s.log.Error("opening message", "err", err, "user", s.mailbox, "msg", i+1)
		s.w.Err(pop3.CodeSysTemp, "cannot read message now, try again later")
		return false
	}
	defer r.Close()
	var src io.Reader = r
	if sr, ok := r.(store.StoredReader); ok {
		// WriteBody makes the wire form while it dot-stuffs: one pass, not two.
		src = sr.Stored()
	}
	if lines >= 0 {
		src = newTopReader(src, lines)
	}
	s.w.OK(text)
	var send pop3.BlockSender
	if f, ok := src.(interface{ Fd() uintptr }); ok && lines < 0 && s.msgs[i].Size > pop3.BufferSize {
		// Blocks bigger than the Writer's buffer go straight to the
		// connection: with sendfile when they need no change.
		send = s.fileSender(int(f.Fd()))
	}
	pool := &copyBufs
	if lines < 0 && s.msgs[i].Size >= bigMessage && s.tls == nil {
		pool = &bigCopyBufs
	}
	bufp := pool.Get().(*[]byte)
	n, err := s.w.WriteBodyFunc(src, *bufp, send)
	pool.Put(bufp)
	s.sent += n
	s.srv.cfg.Metrics.Sent(n)
	if err != nil {
		// The +OK is out and part of the message may be too: there is no way
		// to say -ERR now, and ending the response would pass a truncated
		// message as whole. Drop the connection; nothing is deleted.
		s.log.Error("sending message failed; closing connection", "err", err, "user", s.mailbox, "msg", i+1)
		s.state = stateDone
		s.abort()
		return false
	}
	return true
}

// copyBufs are WriteBody's work buffers: 128 KiB file reads, converted in
// place into writes of up to 256 KiB. Messages of bigMessage octets or more
// sent on plain TCP get 1 MiB buffers from bigCopyBufs: half as many system
// calls again, for less server CPU per octet. Over TLS they do not: TLS
// cuts every write into records of 16 KiB, each written on its own, so a
// bigger buffer saves only file reads, while a session whose client stops
// reading holds its buffer as long as it waits.
var (
	copyBufs    = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}
	bigCopyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}
)

const bigMessage = 1 << 20

func (s *session) cmdDELE(cmd pop3.Command) {
	if len(cmd.Args) != 1 {
		s.badCommand("DELE takes a message number")
		return
	}
	i, ok := s.message(cmd.Args[0])
	if !ok {
		return
	}
	// Only a mark: the message is removed at QUIT (RFC 1939 §5, §6).
	s.deleted[i] = true
	s.w.OK(fmt.Sprintf("message %d deleted", i+1))
}

func (s *session) cmdNOOP(cmd pop3.Command) {
	if len(cmd.Args) != 0 {
		s.badCommand("NOOP takes no argument")
		return
	}
	s.w.OK("")
}

func (s *session) cmdRSET(cmd pop3.Command) {
	if len(cmd.Args) != 0 {
		s.badCommand("RSET takes no argument")
		return
	}
	clear(s.deleted)
	n, size := s.stat()
	s.w.OK(fmt.Sprintf("maildrop has %d messages (%d octets)", n, size))
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
