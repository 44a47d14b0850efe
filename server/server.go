// Package server is Pouch's POP3 server: listeners, graceful shutdown, and the
// per-connection state machine of RFC 1939 with the extensions of RFC 2449
// (CAPA, response codes, PIPELINING) and SASL authentication (RFC 5034).
//
// The server knows neither the storage backend nor where the accounts are
// kept: it talks to a store.Store and an Authenticator (an auth.Source).
//
// A command's handler writes its +OK and multi-line responses and returns
// an error for anything else; session.reply (reply.go) alone turns errors
// into -ERR replies and ends sessions.
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
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pouchmail/pouch/audit"
	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/proxied"
	"github.com/pouchmail/pouch/internal/random"
	"github.com/pouchmail/pouch/metrics"
	"github.com/pouchmail/pouch/store"
)

// Authenticator is what the server asks of the account source (see
// auth.Source, which auth.Users and auth.Remote implement): the server
// looks up accounts, verifies passwords, and announces what the accounts
// add up to. Its optional capabilities, auth.SCRAMSource (SCRAM-SHA-256),
// auth.APOPSource (APOP), auth.CachedVerifier and auth.Checker, are found
// once, by New: SCRAM and APOP are offered only by a source that has them.
type Authenticator interface {
	// Account returns user's account (see auth.Source.Account).
	Account(user string) (auth.Account, error)
	// Verify reports whether password is user's password. It takes the same
	// time whether or not the user exists.
	Verify(user, password string) bool
	// Summary says what the accounts add up to: SCRAM and APOP are offered
	// only while some account can use them.
	Summary() auth.Summary
	// Fault is not nil while the accounts cannot all be looked up: failed
	// logins then get -ERR [SYS/TEMP].
	Fault() error
}

// Config configures a Server. Zero durations and limits take the defaults.
type Config struct {
	Store  store.Store
	Auth   Authenticator
	Logger *slog.Logger

	// Hostname appears in the greeting's APOP timestamp.
	Hostname string
	// MaxLineLength bounds a command line, CRLF included (RFC 2449 §4: 255).
	MaxLineLength int
	// PreLoginTimeout bounds the wait for each command before login (60 s).
	PreLoginTimeout time.Duration
	// IdleTimeout is the autologout timer after login (RFC 1939 §3: 10 min).
	IdleTimeout time.Duration
	// AuthFailDelay is how long every failed authentication waits before its
	// -ERR, the same for unknown users and wrong passwords (2 s). Negative
	// means no delay.
	AuthFailDelay time.Duration
	// MaxBadCommands is how many bad commands a session may send before it is
	// disconnected (10).
	MaxBadCommands int
	// TLS, if set, is used by ServeTLS and STLS. Its session ticket keys
	// (which crypto/tls makes and rotates unless set) seal the tickets of
	// every connection, so that sessions resume on either port.
	TLS *tls.Config
	// ClientCAs, if set, returns the CAs now in force for client
	// certificates: a certificate that chains to one of them, for client
	// authentication, allows SASL EXTERNAL. A client is asked for a
	// certificate, and one that does not verify only leaves EXTERNAL out:
	// the handshake goes on.
	ClientCAs func() *x509.CertPool
	// InsecureAuthNetworks are the networks from which passwords may be sent
	// without TLS (USER/PASS, APOP, AUTH PLAIN and LOGIN, bearer tokens).
	// Nil means loopback only; an empty, non-nil slice means nowhere.
	InsecureAuthNetworks []netip.Prefix
	// Tokens, if set, checks OAuth 2.0 bearer tokens for OAUTHBEARER and
	// XOAUTH2.
	Tokens TokenVerifier
	// OAuthDomains, if set, are the domains whose user@DOMAIN tokens and
	// OAuth login names log in as user when there is no account
	// user@DOMAIN; otherwise a token's user (and the login name) must be
	// the account name itself or user@ any domain.
	OAuthDomains []string
	// DefaultDomain completes the names without a domain that clients
	// log in with (USER, APOP, SASL, client certificates, tokens): alice
	// is then the account alice@DefaultDomain (Dovecot's
	// auth_default_realm). Empty: names are taken as they are.
	DefaultDomain string
	// SecretKey keys the made-up SCRAM salts of unknown users; keep it
	// across restarts so that they stay the same (random when empty).
	SecretKey []byte
	// Guard slows down and bans sources of failed logins; nil turns that off.
	Guard *guard.Guard
	// Rules are the access rules by network and country; nil admits all.
	Rules *guard.Rules
	// MaxConnections, MaxConnectionsPerIP and MaxSessionsPerUser limit
	// concurrent sessions (0: no limit).
	MaxConnections      int
	MaxConnectionsPerIP int
	MaxSessionsPerUser  int
	// MaxPreLogin bounds the connections not logged in yet (0: no limit
	// but MaxConnections). When it, or MaxConnections, is reached, a new
	// connection closes the oldest of them that is not having its
	// credentials checked, so that a flood of connections that never log
	// in cannot keep a user out; logged-in sessions are never closed for
	// room.
	MaxPreLogin int
	// ProxyNetworks are the load balancers' networks: a connection from
	// them must start with a PROXY protocol header (v1 or v2), whose client
	// address then stands for the connection's everywhere (limits, guard,
	// rules, InsecureAuthNetworks, logs, audit); a header from any other
	// address closes the connection. Nil: no header is read from anyone.
	ProxyNetworks []netip.Prefix
	// LoginDelay is the LOGIN-DELAY of RFC 2449 §6.5 for users without one
	// of their own (0: none).
	LoginDelay time.Duration
	// PasswordMaxAge refuses passwords older than this (0: no limit).
	PasswordMaxAge time.Duration
	// Audit, if set, receives logins, failures, logouts and bans.
	Audit *audit.Log
	// Retention, if set, gives each user's retention policy (EXPIRE);
	// nil announces EXPIRE NEVER.
	Retention Retention
	// Metrics, if set, counts sessions, logins, bans, bytes and commands.
	Metrics *metrics.Metrics
	// MaxConcurrentAuth bounds password verifications running at once, since
	// each costs tens of milliseconds and megabytes (the number of CPUs: more
	// only queues CPU work in front of the open sessions' commands).
	MaxConcurrentAuth int
}

const (
	defaultMaxLine         = 255
	defaultPreLoginTimeout = 60 * time.Second
	defaultIdleTimeout     = 10 * time.Minute
	defaultAuthFailDelay   = 2 * time.Second
	defaultMaxBadCommands  = 10
	// maxSASLLine bounds a SASL response line; RFC 5034 §4 lets it exceed 255.
	maxSASLLine = 16 * 1024
	// ShutdownGrace is how long open sessions get to finish on shutdown.
	ShutdownGrace = 10 * time.Second
)

// Server serves POP3 on any number of listeners.
type Server struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	closing   bool
	wg        sync.WaitGroup // one per session goroutine and per Serve loop
	ids       atomic.Uint64
	idPrefix  string
	authSem   chan struct{}
	fakeKey   []byte // keys the made-up SCRAM salts of unknown users

	// The Authenticator's optional capabilities, nil when it has not.
	scramKeys auth.SCRAMSource
	apop      auth.APOPSource
	cached    auth.CachedVerifier
	checker   auth.Checker

	perIP        map[netip.Prefix]int // open sessions per source (address, or IPv6 /64)
	preLogin     list.List            // *session not logged in (nor shed), oldest first
	preIP        map[netip.Prefix]int // sessions in preLogin per source
	loggedIn     int                  // sessions logged in
	sheds        notice               // log lines about shed connections, at most one a minute
	userSessions map[string]int       // logged-in sessions per user
	lastLogin    map[string]time.Time // for LOGIN-DELAY
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.MaxLineLength <= 0 {
		cfg.MaxLineLength = defaultMaxLine
	}
	if cfg.PreLoginTimeout <= 0 {
		cfg.PreLoginTimeout = defaultPreLoginTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = defaultIdleTimeout
	}
	if cfg.AuthFailDelay == 0 {
		cfg.AuthFailDelay = defaultAuthFailDelay
	}
	if cfg.MaxBadCommands <= 0 {
		cfg.MaxBadCommands = defaultMaxBadCommands
	}
	if cfg.MaxConcurrentAuth <= 0 {
		cfg.MaxConcurrentAuth = runtime.NumCPU()
	}
	if len(cfg.SecretKey) == 0 {
		cfg.SecretKey = []byte(random.Hex(32))
	}
	if cfg.InsecureAuthNetworks == nil {
		cfg.InsecureAuthNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
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
	srv := &Server{
		cfg:       cfg,
		log:       log,
		listeners: make(map[net.Listener]struct{}),
		sessions:  make(map[*session]struct{}),
		idPrefix:  random.Hex(3),
		authSem:   make(chan struct{}, cfg.MaxConcurrentAuth),
		fakeKey:   cfg.SecretKey,

		perIP:        make(map[netip.Prefix]int),
		preIP:        make(map[netip.Prefix]int),
		userSessions: make(map[string]int),
		lastLogin:    make(map[string]time.Time),
	}
	srv.scramKeys, _ = cfg.Auth.(auth.SCRAMSource)
	srv.apop, _ = cfg.Auth.(auth.APOPSource)
	srv.cached, _ = cfg.Auth.(auth.CachedVerifier)
	srv.checker, _ = cfg.Auth.(auth.Checker)
	return srv
}

// verify checks a password with at most MaxConcurrentAuth checks at once, so
// that a login storm queues instead of exhausting memory and CPU. Credentials
// verified recently (auth.CachedVerifier) skip the queue. The error, with
// false, says that the source could not check (auth.Checker).
func (s *Server) verify(user, password string) (bool, error) {
	if s.cached != nil && s.cached.VerifyCached(user, password) {
		return true, nil
	}
	s.authSem <- struct{}{}
	defer func() { <-s.authSem }()
	if s.checker != nil {
		return s.checker.Check(user, password)
	}
	return s.cfg.Auth.Verify(user, password), nil
}

// verify checks user's password; when the source could not check it, the
// login that follows is deferred ([SYS/TEMP]), not failed.
func (s *session) verify(user, password string) bool {
	ok, err := s.srv.verify(user, password)
	s.unchecked = err
	return ok
}

// audit writes an audit event, logging a failure to write it.
func (s *Server) audit(event string, fields ...any) {
	if err := s.cfg.Audit.Event(event, fields...); err != nil {
		s.log.Error("writing the audit log", "err", err, "event", event)
	}
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("server: closed")

// Serve accepts plaintext POP3 connections on l until Shutdown.
func (s *Server) Serve(l net.Listener) error { return s.serve(l, false) }

// ServeTLS accepts POP3S connections (implicit TLS, RFC 8314 §3.3) on l.
func (s *Server) ServeTLS(l net.Listener) error {
	if s.cfg.TLS == nil {
		return errors.New("server: ServeTLS without a TLS configuration")
	}
	return s.serve(l, true)
}

func (s *Server) serve(l net.Listener, implicitTLS bool) error {
	l = proxied.Listen(l, proxied.Config{Networks: s.cfg.ProxyNetworks, Timeout: s.cfg.PreLoginTimeout, Refused: s.proxyRefused})
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		if !s.startSession(c, implicitTLS) {
			c.Close()
		}
	}
}

// isTemporary reports accept errors worth retrying (EMFILE, ECONNABORTED, …).
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *Server) startSession(c net.Conn, implicitTLS bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	ip := addrOf(c.RemoteAddr())
	if refusal, reason := s.admit(ip); refusal != nil {
		s.cfg.Metrics.Refused(reason)
		if implicitTLS {
			// RFC 8314 §3.3: on the implicit-TLS port nothing goes before
			// the handshake, and a refused source gets no handshake (no
			// work for the server): the connection is closed unanswered.
			return false
		}
		s.refuse(c, refusal)
		return true
	}
	sess := newSession(s, c, implicitTLS)
	sess.ip = ip
	s.sessions[sess] = struct{}{}
	sess.src = guard.Source(ip)
	s.addPreLogin(sess)
	s.perIP[sess.src]++
	s.wg.Add(1)
	s.cfg.Metrics.SessionStarted(implicitTLS)
	go func() {
		defer s.wg.Done()
		sess.run()
		// Counted out as it was counted in: a POP3S session whose handshake
		// failed has no TLS state, but was counted as a TLS one.
		s.cfg.Metrics.SessionEnded(implicitTLS || sess.tls != nil) // or upgraded by STLS
		s.mu.Lock()
		delete(s.sessions, sess)
		s.uncountLocked(sess)
		s.mu.Unlock()
	}()
	return true
}

// uncount takes sess out of the counts the connection limits read (the
// sessions not logged in, those logged in, those of its address, those of
// its user), once: when its last reply is about to go, so that a client that
// quits and connects again at once is not refused for the session it just
// ended, and otherwise when its goroutine ends.
func (s *Server) uncount(sess *session) {
	s.mu.Lock()
	s.uncountLocked(sess)
	s.mu.Unlock()
}

// uncountLocked is uncount with s.mu held.
func (s *Server) uncountLocked(sess *session) {
	if sess.uncounted {
		return
	}
	sess.uncounted = true
	s.notPreLogin(sess)
	if sess.counted {
		s.loggedIn--
	}
	if s.perIP[sess.src] <= 1 {
		delete(s.perIP, sess.src)
	} else {
		s.perIP[sess.src]--
	}
	if sess.mailbox != "" {
		if s.userSessions[sess.mailbox]--; s.userSessions[sess.mailbox] <= 0 {
			delete(s.userSessions, sess.mailbox)
		}
	}
}

// Shutdown stops accepting connections and waits for open sessions to end. When
// ctx is done first, the remaining connections are closed without entering the
// UPDATE state (no deletions), and Shutdown waits for their goroutines: a commit
// that already began completes, so no UPDATE is left half done.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for sess := range s.sessions {
		// Like a kick: not even a QUIT already read is carried out.
		sess.op.kicked.Store(true)
		sess.abort()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}

// Sessions returns the number of open sessions.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}
