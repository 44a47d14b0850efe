package server

import (
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
	"strconv"
	"strings"
	"sync"
	"time"

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

	implicitTLS bool
	ip          netip.Addr           // the client's address
	stream      net.Conn             // the connection as read and written: TLS or not
	tls         *tls.ConnectionState // nil before TLS
	localCert   *tls.Certificate     // the certificate the server presented
	localLeaf   *x509.Certificate    // and its parsed leaf
	trusted     bool                 // from a network where cleartext passwords are allowed
	authStart   time.Time            // when the current authentication attempt began
	state       state
	timestamp   string // APOP timestamp of the greeting, "" when APOP is off
	user        string // from USER, waiting for PASS
	bad         int    // bad commands so far

	// TRANSACTION state.
	mailbox string
	md      store.Maildrop
	msgs    []store.Message
	deleted []bool
	// retrieved marks the messages sent with RETR or TOP, for the
	// retention policy (RFC 2449 §6.7).
	retrieved []uint8
	retrs     int
	sent      int64

	op operatorView // what Server.Who and Server.Kick read (operator.go)

	closeOnce sync.Once
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
	sess.op.remote, sess.op.since = remote, time.Now()
	return sess
}

// abort closes the connection from another goroutine (shutdown): the session's
// next read or write fails and it ends without UPDATE.
func (s *session) abort() {
	s.closeOnce.Do(func() { s.conn.Close() })
}

// deadlineConn sets a fresh deadline before every read and write, so that the
// timeout measures inactivity, not session length.
// Before login, the deadline is also never later than notAfter, so that a
// client sending a byte now and then (slowloris) cannot hold a connection
// past the pre-login timeout.
type deadlineConn struct {
	net.Conn
	timeout  time.Duration
	notAfter time.Time // zero after login
}

func (c *deadlineConn) deadline() time.Time {
	d := time.Now().Add(c.timeout)
	if !c.notAfter.IsZero() && c.notAfter.Before(d) {
		return c.notAfter
	}
	return d
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(c.deadline())
	return c.Conn.Read(p)
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	written := 0
	err := c.renewing(func() (bool, bool, error) {
		n, err := c.Conn.Write(p[written:])
		written += n
		return n > 0, written < len(p), err
	})
	return written, err
}

// renewing calls write with a fresh write deadline, and again with a fresh
// one each time it timed out after the client took some of what it sends
// (progress) and something is left (more): a message goes out in blocks of
// up to 1 MiB, and a slow client is not an idle one.
func (c *deadlineConn) renewing(write func() (progress, more bool, err error)) error {
	for {
		c.Conn.SetWriteDeadline(c.deadline())
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
	s.dc = &deadlineConn{Conn: countingConn{s.conn, &s.op}, timeout: s.srv.cfg.PreLoginTimeout, notAfter: time.Now().Add(s.srv.cfg.PreLoginTimeout)}
	s.trusted = s.srv.trusted(s.conn.RemoteAddr())
	s.setStream(s.dc)
	if s.implicitTLS && !s.startTLS() {
		return
	}
	s.log.Debug("connected", "tls", s.tls != nil, "trusted", s.trusted)

	greeting := "Pouch ready."
	if s.srv.cfg.Auth.APOPAvailable() && s.cleartextAllowed() {
		s.timestamp = fmt.Sprintf("<%d.%s@%s>", os.Getpid(), randomHex(8), s.srv.cfg.Hostname)
		greeting += " " + s.timestamp
	}
	s.w.OK(greeting)
	if s.w.Flush() != nil {
		return
	}
	for s.state != stateDone {
		line, err := s.r.ReadLine(s.srv.cfg.MaxLineLength)
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
			s.dispatch(line)
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
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.PreLoginTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.log.Info("TLS handshake failed", "err", err)
		return false
	}
	state := tc.ConnectionState()
	s.tls = &state
	s.op.tls.Store(true)
	if s.localCert != nil && len(s.localCert.Certificate) > 0 {
		s.localLeaf, _ = x509.ParseCertificate(s.localCert.Certificate[0])
	}
	s.setStream(tc)
	s.log.Debug("TLS established", "version", tls.VersionName(state.Version), "cipher", tls.CipherSuiteName(state.CipherSuite))
	return true
}

// tlsConfig is the server's TLS configuration with certificate selection
// wrapped so that the session learns which certificate it presented, for
// tls-server-end-point channel binding (RFC 5929 §4).
func (s *session) tlsConfig() *tls.Config {
	cfg := s.srv.cfg.TLS.Clone()
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
	return cfg
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
func (s *session) finish() {
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
	if tc, ok := s.stream.(*tls.Conn); ok {
		// Sends close_notify (RFC 8446 §6.1) before closing.
		s.closeOnce.Do(func() { tc.Close() })
	}
	s.abort()
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
		"APOP": {(*session).cmdAPOP, auth, true},
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
		d := s.srv.cfg.LoginDelay
		if ld, ok := s.srv.cfg.Auth.(interface{ MaxLoginDelay() time.Duration }); ok {
			d = max(d, ld.MaxLoginDelay())
		}
		if d > 0 {
			caps = append(caps, fmt.Sprintf("LOGIN-DELAY %d USER", int(d/time.Second)))
		}
	} else if s.state == stateTransaction {
		if d := s.loginDelay(s.fields(s.mailbox)); d > 0 {
			caps = append(caps, fmt.Sprintf("LOGIN-DELAY %d", int(d/time.Second)))
		}
	}
	caps = append(caps,
		"RESP-CODES",
		"AUTH-RESP-CODE",
		"PIPELINING",
		s.expireCapability(),
		"UTF8 USER", // RFC 6856 §2
		"LANG",      // RFC 6856 §3
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
	if len(cmd.Args) != 1 || cmd.CheckArgs() != nil {
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
	if !s.throttle() {
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
	user, digest := normalizeName(cmd.Args[0]), strings.ToLower(cmd.Args[1])
	if !s.throttle() {
		return
	}
	secret, ok := s.srv.cfg.Auth.APOPSecret(user)
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
	if ok && s.srv.cfg.Guard != nil && s.srv.cfg.Guard.UserLocked(s.ip, user) {
		s.log.Info("user name locked for this address after many failures", "user", user, "ip", s.ip.String())
		ok = false
	}
	if !ok {
		s.loginFailed(user, method)
		return
	}
	if !s.admitUser(user) {
		return
	}
	md, err := s.srv.cfg.Store.Open(context.Background(), user)
	switch {
	case errors.Is(err, store.ErrLocked):
		// RFC 2449 §8.1.2.
		s.log.Info("maildrop in use", "user", user)
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
	s.mailbox = user
	s.msgs = md.Messages()
	s.deleted = make([]bool, len(s.msgs))
	s.retrieved = make([]uint8, len(s.msgs))
	s.state = stateTransaction
	s.dc.timeout, s.dc.notAfter = s.srv.cfg.IdleTimeout, time.Time{}
	s.srv.mu.Lock()
	s.srv.userSessions[user]++
	s.srv.lastLogin[user] = time.Now()
	s.op.user = user
	s.srv.mu.Unlock()
	var size int64
	for _, m := range s.msgs {
		size += m.Size
	}
	s.srv.cfg.Metrics.Login(true, method)
	s.log.Info("login", "user", user, "method", method, "tls", s.tls != nil, "messages", len(s.msgs), "octets", size)
	s.srv.audit("login", "session", s.id, "user", user, "ip", s.ip.String(), "method", method, "tls", s.tls != nil, "messages", len(s.msgs))
	s.w.OK(fmt.Sprintf("maildrop has %d messages (%d octets)", len(s.msgs), size))
}

// maxNameOctets is the longest user name that can exist (auth.ValidName).
const maxNameOctets = 255

// loginFailed records a failed authentication, waits the failure delay and
// answers with the one reply for every kind of failure (RFC 3206 [AUTH]).
// The log line is a stable format that fail2ban matches:
//
//	msg="authentication failed" session=ID remote=ADDR:PORT ip=ADDR user=NAME method=METHOD
func (s *session) loginFailed(user, method string) {
	s.srv.cfg.Metrics.Login(false, method)
	s.log.Info("authentication failed", "ip", s.ip.String(), "user", user, "method", method)
	s.srv.audit("login_failed", "session", s.id, "user", user, "ip", s.ip.String(), "method", method)
	banned := false
	if g := s.srv.cfg.Guard; g != nil && s.ip.IsValid() {
		if b, ok := g.Failure(s.ip, user); ok {
			banned = true
			s.log.Warn("source banned", "net", b.Net.String(), "until", b.Until, "reason", b.Reason)
			s.srv.audit("ban", "net", b.Net.String(), "until", b.Until, "reason", b.Reason)
			s.srv.cfg.Metrics.Banned()
		}
	}
	// Every failure is answered AuthFailDelay after the attempt began,
	// whatever was checked before it.
	if d := s.srv.cfg.AuthFailDelay - time.Since(s.authStart); s.srv.cfg.AuthFailDelay > 0 && d > 0 {
		s.w.Flush()
		time.Sleep(d)
	}
	s.w.Err(pop3.CodeAuth, "invalid user name or password")
	if banned {
		s.state = stateDone
	}
}

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
	if lines < 0 && s.msgs[i].Size >= bigMessage {
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
// get 1 MiB buffers from bigCopyBufs: half as many system calls again, for
// less server CPU per octet.
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
