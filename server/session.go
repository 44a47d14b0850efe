package server

import (
	"container/list"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/proxied"
	"github.com/pouchmail/pouch/pop3"
	"github.com/pouchmail/pouch/store"
)

type state int

const (
	stateAuthorization state = iota // RFC 1939 §4
	stateTransaction                // RFC 1939 §5
	stateDone                       // QUIT handled or connection ending
)

// session is one POP3 connection. Each file of the package holds one
// concern of it (docs/ARCHITECTURE.md, "The session's code"); this one runs
// it: the command loop, dispatch, its end.
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
	unchecked   error                // why the last password could not be checked, or nil
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
	// uncounted is set once the session left the counts of the connection
	// limits (Server.uncount). Guarded by srv.mu.
	uncounted bool
	// shed is set when the session was closed to make room (shedNow).
	shed atomic.Bool
	// lost is closed when the maildrop's lock is lost (store.Leased);
	// watchLease then sets leaseLost and interrupts the read under way.
	lost      <-chan struct{}
	leaseLost atomic.Bool

	closeOnce sync.Once
	tlsConn   atomic.Pointer[tls.Conn] // set once TLS is up, for abort
}

func newSession(s *Server, c net.Conn, implicitTLS bool) *session {
	id := s.connID()
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

func (s *session) run() {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("session panic", "panic", v)
		}
		s.finish()
	}()
	s.trusted = proxied.Trusted(s.srv.cfg.InsecureAuthNetworks, s.ip)
	s.setStream(s.dc)
	if s.implicitTLS && !s.startTLS() {
		return
	}
	s.log.Debug("connected", "tls", s.tls != nil, "trusted", s.trusted)

	s.w.OK(s.greeting())
	if s.w.Flush() != nil {
		return
	}
	for s.state != stateDone {
		if !s.reply(s.next()) {
			return
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

// next reads the next command and runs it.
func (s *session) next() error {
	line, err := s.r.ReadCommandLine(s.srv.cfg.MaxLineLength, s.authLineMax())
	switch {
	case errors.Is(err, pop3.ErrLineTooLong):
		return badCommand("line too long")
	case errors.Is(err, pop3.ErrBadLine):
		return badCommand("invalid characters in command")
	case err != nil:
		return &readError{err}
	case s.op.kicked.Load():
		return errAborted // even a command already buffered: nothing is committed
	case s.lockLost():
		return ending(s.lostReply()) // nor after the lock was lost
	}
	defer s.endCheck()
	return s.dispatch(line)
}

// finish releases the maildrop without committing and closes the connection.
// It ends the guard's attempt still in progress, however the session ended
// (a recovered panic included), so that none is left counting.
func (s *session) finish() {
	s.attemptDone()
	s.cancel()
	s.srv.uncount(s)
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
// is cut short, and lostReply says why.
func (s *session) watchLease(lost <-chan struct{}) {
	select {
	case <-lost:
		s.leaseLost.Store(true)
		s.dc.interrupt()
	case <-s.ctx.Done():
	}
}

// lockLost reports whether the maildrop's lock is lost, whether or not
// watchLease has seen it yet.
func (s *session) lockLost() bool {
	select {
	case <-s.lost:
		return true
	default:
		return s.leaseLost.Load()
	}
}

// lostReply is the goodbye of a session whose maildrop lock was lost: a
// temporary error (RFC 3206 §4 [SYS/TEMP]), since the client may log in
// again, and nothing it marked for deletion was removed.
func (s *session) lostReply() *pop3.Error {
	s.log.Warn("maildrop lock lost; closing the session without deleting anything", "user", s.mailbox)
	s.dc.goodbye()
	return &pop3.Error{Code: pop3.CodeSysTemp, Text: "this server lost the lock on your maildrop; nothing was deleted; log in again"}
}

// logout logs and audits the end of a logged-in session.
func (s *session) logout(deleted int, committed bool) {
	s.log.Info("logout", "user", s.mailbox, "retr", s.retrs, "deleted", deleted, "bytes", s.sent, "committed", committed)
	s.srv.audit("logout", "session", s.id, "user", s.mailbox, "ip", s.ip.String(),
		"retrieved", s.retrs, "deleted", deleted, "bytes", s.sent, "committed", committed)
}

type handler struct {
	fn    func(*session, pop3.Command) error
	state state
	args  argRule
}

// argRule is what dispatch checks of a command's arguments before its
// handler runs.
type argRule int

const (
	ownArgs   argRule = iota // the handler checks them: a user name may be longer, a password has spaces
	shortArgs                // each at most 40 octets (RFC 1939 §3)
	noArgs                   // none; any given are first checked as shortArgs
)

var handlers map[string]handler

func init() {
	auth, trans := stateAuthorization, stateTransaction
	handlers = map[string]handler{
		"USER": {(*session).cmdUSER, auth, ownArgs},
		"PASS": {(*session).cmdPASS, auth, ownArgs},
		"APOP": {(*session).cmdAPOP, auth, ownArgs},
		"AUTH": {(*session).cmdAUTH, auth, ownArgs},
		"STLS": {(*session).cmdSTLS, auth, noArgs},
		"UTF8": {(*session).cmdUTF8, auth, noArgs},
		"STAT": {(*session).cmdSTAT, trans, noArgs},
		"LIST": {(*session).cmdLIST, trans, shortArgs},
		"RETR": {(*session).cmdRETR, trans, shortArgs},
		"DELE": {(*session).cmdDELE, trans, shortArgs},
		"NOOP": {(*session).cmdNOOP, trans, noArgs},
		"RSET": {(*session).cmdRSET, trans, noArgs},
		"TOP":  {(*session).cmdTOP, trans, shortArgs},
		"UIDL": {(*session).cmdUIDL, trans, shortArgs},
	}
}

// dispatch runs the command on line with its handler, if the session's
// state allows it.
func (s *session) dispatch(line []byte) error {
	cmd, err := pop3.ParseCommand(line)
	if err != nil {
		return badCommand("unknown command")
	}
	switch cmd.Name {
	case "QUIT": // RFC 1939 §4, §6: valid in both states
		return s.cmdQUIT()
	case "CAPA": // RFC 2449 §5
		return s.cmdCAPA()
	case "LANG": // RFC 6856 §3: valid in both states
		return s.cmdLANG(cmd)
	}
	h, ok := handlers[cmd.Name]
	switch {
	case !ok:
		return badCommand("unknown command")
	case h.state != s.state && s.state == stateAuthorization:
		return badCommand("not allowed before login")
	case h.state != s.state:
		return badCommand("not allowed after login")
	case h.args != ownArgs && cmd.CheckArgs() != nil:
		return badCommand("argument too long")
	case h.args == noArgs && len(cmd.Args) != 0:
		return badCommand(cmd.Name + " takes no argument")
	}
	start := time.Now()
	err = h.fn(s, cmd)
	s.srv.cfg.Metrics.Command(cmd.Name, time.Since(start))
	return err
}
