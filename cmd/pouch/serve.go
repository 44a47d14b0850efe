package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/tlsutil"
	"github.com/pouchmail/pouch/retention"
	"github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/store/maildir"
)

// serveConfig is the configuration of pouch serve. Every field is a flag, and
// the same name is a key of the TOML file given by --config; flags win.
type serveConfig struct {
	configFile      string
	data            string
	pop3            string
	pop3s           string
	tlsCert         string
	tlsKey          string
	hostname        string
	logLevel        string
	logFormat       string
	maxLine         int
	preLoginTimeout time.Duration
	idleTimeout     time.Duration
	authFailDelay   time.Duration
	maxBadCommands  int
	insecureNets    string
	proxyNets       string
	clientCA        string
	oauthIssuer     string
	oauthAudience   string
	oauthJWKS       string
	oauthUserClaim  string
	oauthDomains    string
	adminSocket     string
	lmtp            lmtpSettings      // --lmtp, --lmtp-domains and the delivery limits (deliver.go)
	defence         defenceSettings   // bans, access rules, limits, audit, metrics (serve_defence.go)
	retention       retentionSettings // expiry, deletion window, sweeps (serve_retention.go)
}

func defaultAddr(privileged, unprivileged string) string {
	if os.Geteuid() == 0 {
		return privileged
	}
	return unprivileged
}

func serveFlags(stderr io.Writer) (*flag.FlagSet, *serveConfig) {
	c := &serveConfig{}
	fs := flag.NewFlagSet("pouch serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.configFile, "config", "", "read settings from this TOML `file` (keys are the flag names; flags win)")
	fs.StringVar(&c.data, "data", "./pouch-data", "data `directory`: users file in DIR/users, mail in DIR/mail/USER/")
	fs.StringVar(&c.pop3, "pop3", defaultAddr(":110", "127.0.0.1:1110"), "POP3 listen `address`; empty disables it")
	fs.StringVar(&c.pop3s, "pop3s", defaultAddr(":995", "127.0.0.1:1995"), "POP3S (implicit TLS) listen `address`; empty disables it")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "TLS certificate `file` (PEM); default: a self-signed one in DATA/tls/")
	fs.StringVar(&c.tlsKey, "tls-key", "", "TLS private key `file` (PEM)")
	fs.StringVar(&c.hostname, "hostname", "", "host `name` for the greeting and the self-signed certificate (default: the system's)")
	fs.StringVar(&c.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log `format`: text or json")
	fs.IntVar(&c.maxLine, "max-line-length", minLineLength, "longest command line in `octets`, CRLF included (at least 255)")
	fs.DurationVar(&c.preLoginTimeout, "pre-login-timeout", 60*time.Second, "disconnect a client idle this `long` before login")
	fs.DurationVar(&c.idleTimeout, "idle-timeout", 10*time.Minute, "autologout after this `long` idle after login (RFC 1939: at least 10m)")
	fs.DurationVar(&c.authFailDelay, "auth-fail-delay", 2*time.Second, "wait this `long` before answering a failed login")
	fs.IntVar(&c.maxBadCommands, "max-bad-commands", 10, "disconnect after this `many` bad commands")
	fs.StringVar(&c.insecureNets, "insecure-auth-networks", "127.0.0.0/8,::1/128", "`networks` (CIDR, comma-separated) allowed to send passwords without TLS; empty: none")
	fs.StringVar(&c.proxyNets, "proxy-networks", "", "load balancers' `networks` (CIDR, comma-separated) that must start every connection with a PROXY protocol header (v1 or v2) on the POP3, POP3S and LMTP ports; from anywhere else a header is refused; empty: none")
	fs.StringVar(&c.clientCA, "tls-client-ca", "", "CA certificates `file` (PEM) for client certificates: enables SASL EXTERNAL")
	fs.StringVar(&c.oauthIssuer, "oauth-issuer", "", "OAuth 2.0 token `issuer` (the iss claim): enables OAUTHBEARER and XOAUTH2")
	fs.StringVar(&c.oauthAudience, "oauth-audience", "", "`audience` that tokens must be meant for (one of the aud claim)")
	fs.StringVar(&c.oauthJWKS, "oauth-jwks", "", "the issuer's JSON Web Key Set: a `file` or an https URL")
	fs.StringVar(&c.oauthUserClaim, "oauth-user-claim", "email", "token `claim` naming the user (the user, or user@DOMAIN)")
	fs.StringVar(&c.oauthDomains, "oauth-domains", "", "`domains` whose user@DOMAIN tokens log in as user (comma-separated; default: any)")
	fs.StringVar(&c.adminSocket, "admin-socket", "", "`path` of the socket for pouch who, kick, reload and mailbox stats (default DATA/admin.sock; \"off\" turns it off)")
	c.lmtp.register(fs, true)
	c.defence.register(fs)
	c.retention.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pouch serve [flags]\n\nRuns the POP3 server. With no flags it keeps everything under ./pouch-data.\n\nExample:\n  pouch serve --data /var/lib/pouch --pop3 '' --pop3s :995\n\nFlags:\n")
		fs.PrintDefaults()
	}
	return fs, c
}

// applyConfigFile sets every flag not given on the command line from the TOML
// file, naming the file and key of any error.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	var values map[string]any
	if _, err := toml.DecodeFile(path, &values); err != nil {
		return fmt.Errorf("config %s: %v", path, err)
	}
	set := flagNames(fs)
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		if key == "config" || fs.Lookup(key) == nil {
			return fmt.Errorf("config %s: unknown key %q", path, key)
		}
		if set[key] {
			continue
		}
		var s string
		switch v := values[key].(type) {
		case []any:
			s = joinList(v)
		default:
			s = fmt.Sprint(v)
		}
		if err := fs.Set(key, s); err != nil {
			return fmt.Errorf("config %s: key %q: %v", path, key, err)
		}
	}
	return nil
}

// newLogger returns a logger whose level can change later (a reload).
func newLogger(w io.Writer, level, format string) (*slog.Logger, *slog.LevelVar, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, usageError("log level %q: use debug, info, warn or error", level)
	}
	lv := new(slog.LevelVar)
	lv.Set(l)
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), lv, nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), lv, nil
	}
	return nil, nil, usageError("log format %q: use text or json", format)
}

func runServe(args []string, stderr io.Writer) error {
	fs, c := serveFlags(stderr)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError("serve takes no arguments, got %q", pos[0])
	}
	if c.configFile != "" {
		if err := applyConfigFile(fs, c.configFile); err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
	}
	log, logLevel, err := newLogger(stderr, c.logLevel, c.logFormat)
	if err != nil {
		return err
	}
	if err := checkMaxLine(c.maxLine); err != nil {
		return usageError("--max-line-length: %v", err)
	}
	if w := idleTimeoutWarning(c.idleTimeout); w != "" {
		log.Warn(w)
	}
	proxyNets, err := parseProxyNetworks(c.proxyNets)
	if err != nil {
		return err
	}
	checkFDBudget(c, log)
	activated := systemdListeners()
	if c.pop3 == "" && c.pop3s == "" && c.lmtp.addr == "" && len(activated) == 0 {
		return usageError("--pop3, --pop3s and --lmtp are all empty: nothing to serve")
	}
	// Listen on everything first, so that a bad address fails before serving.
	type listener struct {
		net.Listener
		name string
		tls  bool
	}
	var ls []listener
	defer func() {
		for _, l := range ls {
			l.Close() // after Shutdown, or on an error before serving
		}
	}()
	for _, l := range []struct {
		name, addr string
		tls        bool
	}{{"pop3", c.pop3, false}, {"pop3s", c.pop3s, true}} {
		if sl, ok := activated[l.name]; ok { // systemd socket activation
			ls = append(ls, listener{sl, l.name, l.tls})
			continue
		}
		if l.addr == "" {
			continue
		}
		nl, err := net.Listen("tcp", l.addr)
		if err != nil {
			return fmt.Errorf("listen %s on %s: %v", l.name, l.addr, err)
		}
		ls = append(ls, listener{nl, l.name, l.tls})
	}
	// The admin socket's directory may be root's: with --run-as it is made
	// before root is given up, for the service user (admin.go).
	adminSock := &adminSocket{path: adminSocketPath(c.data, c.adminSocket)}
	defer adminSock.close()
	if c.defence.runAs != "" {
		if err := adminSock.openAs(c.defence.runAs); err != nil {
			return err
		}
	}
	// Bound ports may need root; nothing else does.
	if c.defence.runAs != "" {
		if err := dropPrivileges(c.defence.runAs); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(c.data, 0o700); err != nil {
		return fmt.Errorf("data directory: %v", err)
	}
	mailEntries, err := checkDataDir(c.data, splitList(c.tlsKey)...)
	if err != nil {
		return err
	}
	if err := adminSock.open(); err != nil {
		return err
	}
	hostname := c.hostname
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	// A users file that cannot be used does not stop the server: it serves
	// what it can and says so (usersExpected, readiness).
	users := auth.OpenUsersWith(filepath.Join(c.data, "users"),
		auth.UsersOptions{Expected: usersExpected(mailEntries), Logger: log})
	for _, w := range users.Warnings() {
		log.Warn("users file", "problem", w)
	}
	warnMailNames(filepath.Join(c.data, "mail"), mailEntries, log)
	policy, err := c.retention.policy()
	if err != nil {
		return err
	}
	mail := maildir.New(filepath.Join(c.data, "mail"))
	mail.SetLogger(log)
	policies := retention.NewPolicies(policy, users)
	mail.SetPolicy(policies.Policy)
	cfg := server.Config{
		Store:           mail,
		Retention:       policies,
		Auth:            users,
		Logger:          log,
		Hostname:        hostname,
		MaxLineLength:   c.maxLine,
		PreLoginTimeout: c.preLoginTimeout,
		IdleTimeout:     c.idleTimeout,
		AuthFailDelay:   c.authFailDelay,
		MaxBadCommands:  c.maxBadCommands,
	}
	if c.authFailDelay == 0 {
		cfg.AuthFailDelay = -1 // explicitly none
	}
	cfg.InsecureAuthNetworks = []netip.Prefix{}
	for _, n := range splitList(c.insecureNets) {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			return usageError("--insecure-auth-networks: %q is not a network in CIDR form (like 192.0.2.0/24)", n)
		}
		cfg.InsecureAuthNetworks = append(cfg.InsecureAuthNetworks, p)
	}
	cfg.ProxyNetworks = proxyNets
	certs, err := setupTLS(c, hostname, log, &cfg)
	if err != nil {
		return err
	}
	var tokens *auth.TokenVerifier
	if c.oauthIssuer != "" || c.oauthJWKS != "" {
		if tokens, err = auth.NewTokenVerifier(c.oauthIssuer, c.oauthAudience, c.oauthJWKS, c.oauthUserClaim); err != nil {
			return err
		}
		cfg.Tokens = tokens
		cfg.OAuthDomains = splitList(c.oauthDomains)
	}
	if cfg.SecretKey, err = loadSecretKey(c.data); err != nil {
		return err
	}
	closers, err := c.defence.apply(&cfg, c.data)
	for _, cl := range closers {
		defer cl()
	}
	if err != nil {
		return err
	}
	srv := server.New(cfg)

	var serving atomic.Bool
	if cfg.Metrics != nil {
		stopMetrics, err := serveMetrics(context.Background(), c.defence.metricsAddr, cfg.Metrics, readiness(&serving, users), log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	lmtpSvc, err := listenLMTP(c, users, hostname, log)
	if err != nil {
		return err
	}
	proxiedLMTP(lmtpSvc, c, proxyNets, log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go users.Watch(ctx, usersWatchInterval)
	// SIGHUP reloads what can change under a running server; sessions stay.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// pouch reload, over the admin socket, takes the same path.
	conf := &configReloader{args: args, running: fs, file: c.configFile, level: logLevel, policies: policies, log: log}
	reloadAll := func() error { return reload(log, conf, certs, users, tokens, cfg.Guard) }
	go func() {
		for range hup {
			reloadAll()
		}
	}()
	adminSock.serve(adminHandler{srv: srv, store: cfg.Store, reload: reloadAll}, log)
	var wg sync.WaitGroup
	errs := make(chan error, len(ls))
	for _, l := range ls {
		log.Info("listening", "protocol", l.name, "addr", l.Addr().String(), "data", c.data)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if l.tls {
				err = srv.ServeTLS(l)
			} else {
				err = srv.Serve(l)
			}
			if err != nil && !errors.Is(err, server.ErrServerClosed) {
				errs <- fmt.Errorf("%s on %s: %v", l.name, l.Addr(), err)
			}
		}()
	}
	lmtpSvc.start(&wg, errs)
	sweepCtx, stopSweeps := context.WithCancel(context.Background())
	sweeper := &retention.Sweeper{Store: mail, Policy: policies.Lookup, Log: log, Audit: cfg.Audit}
	var sweeps sync.WaitGroup
	sweeps.Add(1)
	go func() { defer sweeps.Done(); sweeper.Run(sweepCtx, c.retention.sweepEvery) }()
	defer func() { stopSweeps(); sweeps.Wait() }()
	log.Info("retention", "policy", retention.Describe(policy), "sweep_interval", c.retention.sweepEvery)
	serving.Store(true)
	var failure error
	select {
	case <-ctx.Done():
		log.Info("shutting down", "sessions", srv.Sessions(), "grace", server.ShutdownGrace)
	case failure = <-errs:
		log.Error("listener failed; shutting down", "err", failure)
	}
	serving.Store(false)
	sctx, cancel := context.WithTimeout(context.Background(), server.ShutdownGrace)
	defer cancel()
	lmtpStopped := lmtpSvc.shutdown(sctx)
	if err := srv.Shutdown(sctx); err != nil {
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
func setupTLS(c *serveConfig, hostname string, log *slog.Logger, cfg *server.Config) (*tlsutil.Manager, error) {
	certs, err := tlsutil.NewManager(splitList(c.tlsCert), splitList(c.tlsKey), filepath.Join(c.data, "tls"), hostname, log)
	if err != nil {
		return nil, err
	}
	if cfg.TLS, err = certs.ServerConfig(c.clientCA); err != nil {
		return nil, err
	}
	if c.clientCA != "" {
		cfg.ClientCAs = certs.ClientCAs
	}
	log.Info("TLS certificate loaded", "sha256", strings.Join(certs.Fingerprints(), ","))
	return certs, nil
}

// minLineLength is the least --max-line-length: RFC 2449 §4 lets a command
// line be 255 octets, CRLF included (RFC 1939 §3's 40-octet arguments fit).
const minLineLength = 255

// checkMaxLine refuses a command line limit that real commands exceed.
func checkMaxLine(n int) error {
	if n < minLineLength {
		return fmt.Errorf("%d is too short, since POP3 clients may send command lines of %d octets (RFC 2449 §4): give at least %d", n, minLineLength, minLineLength)
	}
	return nil
}

// minIdleTimeout is the least autologout timer of RFC 1939 §3.
const minIdleTimeout = 10 * time.Minute

// idleTimeoutWarning says why an idle timeout below RFC 1939's is unwise, or
// returns "" (0 takes the default).
func idleTimeoutWarning(d time.Duration) string {
	if d <= 0 || d >= minIdleTimeout {
		return ""
	}
	return fmt.Sprintf("--idle-timeout %v is shorter than the %v that RFC 1939 §3 asks for: clients that pause between commands may be logged out", d, minIdleTimeout)
}

// reloadMu keeps a SIGHUP and a pouch reload from running at once.
var reloadMu sync.Mutex

// reload reads the certificates, the users file, the OAuth key set and the
// ban list again; what cannot be read stays as it was. The error names
// everything that was kept, in one sentence.
func reload(log *slog.Logger, conf *configReloader, certs *tlsutil.Manager, users *auth.Users, tokens *auth.TokenVerifier, bans *guard.Guard) error {
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
	if err := users.Reload(); err != nil {
		log.Error("reload: keeping the users loaded before", "err", err)
		failed = append(failed, fmt.Sprintf("kept the users loaded before (%v)", err))
	} else {
		for _, w := range users.Warnings() {
			log.Warn("users file", "problem", w)
		}
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
