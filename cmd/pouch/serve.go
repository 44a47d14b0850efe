package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/tlsutil"
	"github.com/pouchmail/pouch/retention"
	"github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/store/maildir"
)

// runServe is pouch serve: the configuration (flags and --config file) is
// checked into settings, which are then wired into running servers.
func runServe(args []string, stderr io.Writer) error {
	fs, c := serveFlags(stderr)
	pos, err := loadServeConfig(fs, c, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError("serve takes no arguments, got %q", pos[0])
	}
	activated := systemdListeners()
	defer func() {
		for _, l := range activated {
			l.Close() // after Shutdown, or on an error before serving
		}
	}()
	s, err := c.validate(len(activated))
	if err != nil {
		return err
	}
	log, level := newLogger(stderr, s.logLevel, s.logFormat)
	for _, w := range s.warnings {
		log.Warn(w)
	}
	checkFDBudget(s, log)
	conf := &configReloader{args: args, running: fs, file: c.ConfigFile, sockets: len(activated), level: level, log: log}
	return serve(s, activated, conf, log)
}

// listener is one of pouch serve's POP3 listeners.
type listener struct {
	net.Listener
	name string
	tls  bool
}

// listen opens the POP3 listeners, or takes those systemd passed.
func listen(s *serveSettings, activated map[string]net.Listener) ([]listener, error) {
	var ls []listener
	for _, l := range s.listeners {
		if sl, ok := activated[l.name]; ok { // systemd socket activation
			ls = append(ls, listener{sl, l.name, l.tls})
			continue
		}
		if l.addr == "" {
			continue
		}
		nl, err := net.Listen("tcp", l.addr)
		if err != nil {
			return ls, fmt.Errorf("listen %s on %s: %v", l.name, l.addr, err)
		}
		ls = append(ls, listener{nl, l.name, l.tls})
	}
	return ls, nil
}

// serve listens, gives up root, opens what the settings name and serves
// until a signal or a failed listener; then it shuts down gracefully.
func serve(s *serveSettings, activated map[string]net.Listener, conf *configReloader, log *slog.Logger) error {
	// Listen on everything first, so that a bad address fails before serving.
	ls, err := listen(s, activated)
	defer func() {
		for _, l := range ls {
			l.Close() // after Shutdown, or on an error before serving
		}
	}()
	if err != nil {
		return err
	}
	// The admin socket's directory may be root's: with --run-as it is made
	// before root is given up, for the service user (admin.go).
	adminSock := &adminSocket{path: s.adminSocket}
	defer adminSock.close()
	if s.defence.runAs != "" {
		if err := adminSock.openAs(s.defence.runAs); err != nil {
			return err
		}
		// Bound ports may need root; nothing else does.
		if err := dropPrivileges(s.defence.runAs); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(s.data, 0o700); err != nil {
		return fmt.Errorf("data directory: %v", err)
	}
	mailEntries, err := checkDataDir(s.data, s.tlsKeys...)
	if err != nil {
		return err
	}
	if err := adminSock.open(); err != nil {
		return err
	}
	w, err := s.wire(mailEntries, log)
	defer w.close()
	if err != nil {
		return err
	}
	conf.policies = w.policies
	return w.run(ls, adminSock, conf, log)
}

// storeConnectTimeout bounds the connection to the database at start.
const storeConnectTimeout = 30 * time.Second

// wiring is pouch serve's parts, made from the settings.
type wiring struct {
	s        *serveSettings
	cfg      server.Config
	srv      *server.Server
	accounts *accounts
	mail     mailStore
	policies *retention.Policies
	certs    *tlsutil.Manager
	tokens   *auth.TokenVerifier
	lmtp     *lmtpService
	closers  []func() error
}

// close closes what wire opened, in reverse order.
func (w *wiring) close() {
	for i := len(w.closers) - 1; i >= 0; i-- {
		w.closers[i]()
	}
}

// wire opens what the settings name (the users file, the Maildirs, the
// certificates, the OAuth key set, the defences, the LMTP listener) and
// makes the POP3 server. What it opened is closed by close, also after an
// error.
func (s *serveSettings) wire(mailEntries []os.DirEntry, log *slog.Logger) (*wiring, error) {
	w := &wiring{s: s}
	hostname := s.hostname
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	// The mail store first, so that it is closed last: after the sessions,
	// deliveries and sweeps ended (run waits for them), so that their
	// leases go at once.
	ctx, cancel := context.WithTimeout(context.Background(), storeConnectTimeout)
	var err error
	w.mail, err = openMailStore(ctx, s.store, nodeName(hostname))
	cancel()
	if err != nil {
		return w, err
	}
	if c, ok := w.mail.(io.Closer); ok {
		w.closers = append(w.closers, c.Close)
		log.Info("mail store", "store", redactedURL(s.store.url), "lock_ttl", s.store.lockTTL)
	}
	// Accounts that cannot be looked up do not stop the server: it serves
	// what it can and says so (usersExpected, readiness).
	if w.accounts, err = openAccounts(s.accounts, s.data, usersExpected(mailEntries), log); err != nil {
		return w, err
	}
	w.closers = append(w.closers, w.accounts.close)
	if r := w.accounts.remote; r != nil {
		go countAccounts(r, log) // the start-up check of the iterate query
	}
	users := w.accounts.source()
	if md, ok := w.mail.(*maildir.Store); ok {
		warnMailNames(filepath.Join(s.data, "mail"), mailEntries, log)
		layout, err := md.Layout()
		if err != nil {
			return w, fmt.Errorf("mail directory: %v", err)
		}
		log.Info("accounts", "source", w.accounts.describe(), "mail_layout", layout.String(),
			"default_domain", s.accounts.defaultDomain)
	} else {
		log.Info("accounts", "source", w.accounts.describe(), "default_domain", s.accounts.defaultDomain)
	}
	w.mail.SetLogger(log)
	w.policies = retention.NewPolicies(s.retention.policy, users)
	w.mail.SetPolicy(w.policies.Policy)
	w.cfg = s.server
	w.cfg.Store, w.cfg.Retention, w.cfg.Auth, w.cfg.Logger, w.cfg.Hostname = w.mail, w.policies, users, log, hostname
	if w.certs, err = s.setupTLS(hostname, log, &w.cfg); err != nil {
		return w, err
	}
	if s.oauth.on() {
		if w.tokens, err = s.tokenVerifier(); err != nil {
			return w, err
		}
		w.cfg.Tokens = w.tokens
	}
	if w.cfg.SecretKey, err = loadSecretKey(s.data); err != nil {
		return w, err
	}
	closers, err := s.defence.open(&w.cfg, s.src, s.data, s.store)
	w.closers = append(w.closers, closers...)
	if err != nil {
		return w, err
	}
	w.srv = server.New(w.cfg)
	if w.lmtp, err = listenLMTP(s, w.mail, users, hostname, log); err != nil {
		return w, err
	}
	if w.lmtp != nil {
		w.closers = append(w.closers, w.lmtp.l.Close) // after Shutdown, or on an error before serving
	}
	proxiedLMTP(w.lmtp, s, log)
	return w, nil
}

// countAccounts lists the accounts of a database or directory once and logs
// how many there are, or why they cannot be listed.
func countAccounts(r *auth.Remote, log *slog.Logger) {
	n := 0
	for _, err := range r.Names() {
		if err != nil {
			log.Warn("accounts cannot be listed (iterate_query, iterate_filter); logins and delivery do not need it",
				"source", r.String(), "err", err)
			return
		}
		n++
	}
	log.Info("accounts listed", "source", r.String(), "accounts", n)
}

// run serves on the listeners until SIGTERM or SIGINT, or until one fails;
// SIGHUP and pouch reload reload meanwhile.
func (w *wiring) run(ls []listener, adminSock *adminSocket, conf *configReloader, log *slog.Logger) error {
	var serving atomic.Bool
	if w.cfg.Metrics != nil {
		stopMetrics, err := serveMetrics(context.Background(), w.s.defence.metricsAddr, w.cfg.Metrics, readiness(&serving, w.cfg.Auth, w.mail), w.s.defence.pprof, log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go w.accounts.watch(ctx)
	// SIGHUP reloads what can change under a running server; sessions stay.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// pouch reload, over the admin socket, takes the same path.
	reloadAll := func() error { return reload(log, conf, w.certs, w.accounts, w.tokens, w.cfg.Guard) }
	go func() {
		for range hup {
			reloadAll()
		}
	}()
	adminSock.serve(adminHandler{srv: w.srv, store: w.cfg.Store, reload: reloadAll}, log)
	var wg sync.WaitGroup
	errs := make(chan error, len(ls))
	// Ready from here: the listeners are bound, so the kernel queues
	// connections until the goroutines below accept them; ready before the
	// "listening" lines, which tell scripts and tests that the server is up.
	serving.Store(true)
	for _, l := range ls {
		log.Info("listening", "protocol", l.name, "addr", l.Addr().String(), "data", w.s.data)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if l.tls {
				err = w.srv.ServeTLS(l)
			} else {
				err = w.srv.Serve(l)
			}
			if err != nil && !errors.Is(err, server.ErrServerClosed) {
				errs <- fmt.Errorf("%s on %s: %v", l.name, l.Addr(), err)
			}
		}()
	}
	w.lmtp.start(&wg, errs)
	sweepCtx, stopSweeps := context.WithCancel(context.Background())
	sweeper := &retention.Sweeper{Store: w.mail, Policy: w.policies.Lookup, Log: log, Audit: w.cfg.Audit}
	var sweeps sync.WaitGroup
	sweeps.Add(1)
	go func() { defer sweeps.Done(); sweeper.Run(sweepCtx, w.s.retention.sweepEvery) }()
	defer func() { stopSweeps(); sweeps.Wait() }()
	log.Info("retention", "policy", retention.Describe(w.s.retention.policy), "sweep_interval", w.s.retention.sweepEvery)
	var failure error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "sessions", w.srv.Sessions(), "grace", server.ShutdownGrace)
	case failure = <-errs:
		log.Error("listener failed; shutting down", "err", failure)
	}
	serving.Store(false)
	sctx, cancel := context.WithTimeout(context.Background(), server.ShutdownGrace)
	defer cancel()
	lmtpStopped := w.lmtp.shutdown(sctx)
	if err := w.srv.Shutdown(sctx); err != nil {
		log.Warn("sessions still open after the grace period were closed without deleting anything")
	}
	<-lmtpStopped
	wg.Wait()
	log.Info("stopped")
	return failure
}

// setupTLS loads the certificates (making or renewing the self-signed one in
// DATA/tls when none is given) and the client CAs, for POP3S and STLS on
// the POP3 port, into cfg. The manager reloads them.
func (s *serveSettings) setupTLS(hostname string, log *slog.Logger, cfg *server.Config) (*tlsutil.Manager, error) {
	certs, err := tlsutil.NewManager(s.tlsCerts, s.tlsKeys, filepath.Join(s.data, "tls"), hostname, log)
	if err != nil {
		return nil, s.tlsProblem(err)
	}
	if cfg.TLS, err = certs.ServerConfig(s.clientCA); err != nil {
		return nil, fmt.Errorf("%s: %v", s.src.where("tls-client-ca"), err)
	}
	if s.clientCA != "" {
		cfg.ClientCAs = certs.ClientCAs
	}
	log.Info("TLS certificate loaded", "sha256", strings.Join(certs.Fingerprints(), ","))
	return certs, nil
}

// tlsProblem names the setting of a certificate that cannot be used: the
// operator's --tls-cert, not the self-signed pair made without one.
func (s *serveSettings) tlsProblem(err error) error {
	if len(s.tlsCerts) == 0 && len(s.tlsKeys) == 0 {
		return err
	}
	return fmt.Errorf("%s: %v", s.src.where("tls-cert"), err)
}

// tokenVerifier loads the OAuth key set for the token settings.
func (s *serveSettings) tokenVerifier() (*auth.TokenVerifier, error) {
	o := s.oauth
	v, err := auth.NewTokenVerifier(o.issuer, o.audience, o.jwks, o.userClaim)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", s.src.where("oauth-issuer"), err)
	}
	return v, nil
}

// reloadMu keeps a SIGHUP and a pouch reload from running at once.
var reloadMu sync.Mutex

// reload reads the certificates, the users file (or forgets the cached
// accounts of a database or directory), the OAuth key set and the ban list
// again; what cannot be read stays as it was. The error names everything
// that was kept, in one sentence.
func reload(log *slog.Logger, conf *configReloader, certs *tlsutil.Manager, users *accounts, tokens *auth.TokenVerifier, bans *guard.Guard) error {
	reloadMu.Lock()
	defer reloadMu.Unlock()
	var failed []string
	if err := conf.reload(); err != nil {
		log.Error("reload: keeping the old configuration", "err", err)
		failed = append(failed, err.Error())
	}
	if err := certs.Reload(); err != nil {
		log.Error("reload: keeping the old TLS certificates", "err", err)
		failed = append(failed, fmt.Sprintf("kept the old TLS certificates (%v)", err))
	} else {
		log.Info("reload: TLS certificates", "sha256", strings.Join(certs.Fingerprints(), ","))
	}
	if err := certs.ReloadClientCA(); err != nil {
		log.Error("reload: keeping the old client CAs", "err", err)
		failed = append(failed, fmt.Sprintf("kept the old client CAs (%v)", err))
	}
	if err := users.reload(log); err != nil {
		failed = append(failed, err.Error())
	}
	if tokens != nil {
		if err := tokens.Reload(); err != nil {
			log.Error("reload: keeping the old OAuth key set", "err", err)
			failed = append(failed, fmt.Sprintf("kept the old OAuth key set (%v)", err))
		}
	}
	if bans != nil {
		if err := bans.Reload(); err != nil {
			log.Error("reload: keeping the old ban list", "err", err)
			failed = append(failed, fmt.Sprintf("kept the old ban list (%v)", err))
		}
	}
	if len(failed) > 0 {
		log.Warn("reloaded in part", "failed", len(failed))
		return errors.New(strings.Join(failed, "; "))
	}
	log.Info("reloaded")
	return nil
}
