package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/store/pg"
)

// serveConfig is pouch serve's configuration as the operator writes it.
// Every setting is a flag and, under its tag, a key of the TOML file given by
// --config; flags win. validate checks it and makes the settings the server
// runs with; pouch serve, check-config and a reload all take that one path.
//
// A new setting is a field here (or in one of the embedded groups), with
// its flag defined in register beside the others; validate turns it into
// what the server takes.
type serveConfig struct {
	ConfigFile      string          // --config; not a key of the file
	Data            textSetting     `toml:"data"`
	Store           urlSetting      `toml:"store"`
	LockTTL         durationSetting `toml:"lock-ttl"`
	POP3            textSetting     `toml:"pop3"`
	POP3S           textSetting     `toml:"pop3s"`
	TLSCert         textSetting     `toml:"tls-cert"`
	TLSKey          textSetting     `toml:"tls-key"`
	Hostname        textSetting     `toml:"hostname"`
	LogLevel        textSetting     `toml:"log-level"`
	LogFormat       textSetting     `toml:"log-format"`
	MaxLine         intSetting      `toml:"max-line-length"`
	PreLoginTimeout durationSetting `toml:"pre-login-timeout"`
	IdleTimeout     durationSetting `toml:"idle-timeout"`
	AuthFailDelay   durationSetting `toml:"auth-fail-delay"`
	MaxBadCommands  intSetting      `toml:"max-bad-commands"`
	InsecureNets    textSetting     `toml:"insecure-auth-networks"`
	ProxyNets       textSetting     `toml:"proxy-networks"`
	ClientCA        textSetting     `toml:"tls-client-ca"`
	OAuthIssuer     textSetting     `toml:"oauth-issuer"`
	OAuthAudience   textSetting     `toml:"oauth-audience"`
	OAuthJWKS       textSetting     `toml:"oauth-jwks"`
	OAuthUserClaim  textSetting     `toml:"oauth-user-claim"`
	OAuthDomains    textSetting     `toml:"oauth-domains"`
	AdminSocket     textSetting     `toml:"admin-socket"`
	lmtpConfig                      // --lmtp, its domains and the delivery limits (deliver.go)
	defenceConfig                   // bans, access rules, limits, audit, metrics (serve_defence.go)
	retentionConfig                 // expiry, deletion window, sweeps (serve_retention.go)
	accountsConfig                  // --default-domain and the [accounts] table (accounts.go)

	src configSource // where each setting came from
}

func defaultAddr(privileged, unprivileged string) string {
	if os.Geteuid() == 0 {
		return privileged
	}
	return unprivileged
}

const serveUsage = `Usage: pouch serve [flags]

Runs the POP3 server. With no flags it keeps everything under ./pouch-data.

Example:
  pouch serve --data /var/lib/pouch --pop3 '' --pop3s :995

Flags:
`

// serveFlags returns pouch serve's flag set, bound to a configuration that
// holds the defaults until it is parsed (loadServeConfig).
func serveFlags(stderr io.Writer) (*flag.FlagSet, *serveConfig) {
	c := &serveConfig{}
	fs := flag.NewFlagSet("pouch serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.register(fs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), serveUsage)
		printFlags(fs.Output(), fs)
	}
	return fs, c
}

func (c *serveConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.ConfigFile, "config", "", "read settings from this TOML `file` (keys are the flag names; flags win)")
	textVar(fs, &c.Data, "data", "./pouch-data", "data `directory`: users file in DIR/users, mail in DIR/mail/DOMAIN/USER/ (or DIR/mail/USER/); with --store, only this node's own files (TLS key, secret key, audit log, admin socket)")
	urlVar(fs, &c.Store, "store", "", "keep maildrops, accounts and bans in the PostgreSQL database at this `URL` (postgres://user@host/db), shared by every pouch serve node on it; default: the Maildirs under --data")
	durationVar(fs, &c.LockTTL, "lock-ttl", pg.DefaultLockTTL, "with --store: how `long` the maildrops of a node that stopped answering stay locked (its users wait this long to log in on another node)")
	textVar(fs, &c.POP3, "pop3", defaultAddr(":110", "127.0.0.1:1110"), "POP3 listen `address`; empty disables it")
	textVar(fs, &c.POP3S, "pop3s", defaultAddr(":995", "127.0.0.1:1995"), "POP3S (implicit TLS) listen `address`; empty disables it")
	textVar(fs, &c.TLSCert, "tls-cert", "", "TLS certificate `file` (PEM); default: a self-signed one in DATA/tls/")
	textVar(fs, &c.TLSKey, "tls-key", "", "TLS private key `file` (PEM)")
	textVar(fs, &c.Hostname, "hostname", "", "host `name` for the greeting and the self-signed certificate (default: the system's)")
	textVar(fs, &c.LogLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	textVar(fs, &c.LogFormat, "log-format", "text", "log `format`: text or json")
	intVar(fs, &c.MaxLine, "max-line-length", minLineLength, "longest command line in `octets`, CRLF included (at least 255)")
	durationVar(fs, &c.PreLoginTimeout, "pre-login-timeout", 60*time.Second, "disconnect a client idle this `long` before login")
	durationVar(fs, &c.IdleTimeout, "idle-timeout", 10*time.Minute, "autologout after this `long` idle after login (RFC 1939: at least 10m)")
	durationVar(fs, &c.AuthFailDelay, "auth-fail-delay", 2*time.Second, "wait this `long` before answering a failed login")
	intVar(fs, &c.MaxBadCommands, "max-bad-commands", 10, "disconnect after this `many` bad commands")
	textVar(fs, &c.InsecureNets, "insecure-auth-networks", "127.0.0.0/8,::1/128", "`networks` (CIDR, comma-separated) allowed to send passwords without TLS; empty: none")
	textVar(fs, &c.ProxyNets, "proxy-networks", "", "load balancers' `networks` (CIDR, comma-separated) that must start every connection with a PROXY protocol header (v1 or v2) on the POP3, POP3S and LMTP ports; from anywhere else a header is refused; empty: none")
	textVar(fs, &c.ClientCA, "tls-client-ca", "", "CA certificates `file` (PEM) for client certificates: enables SASL EXTERNAL")
	textVar(fs, &c.OAuthIssuer, "oauth-issuer", "", "OAuth 2.0 token `issuer` (the iss claim): enables OAUTHBEARER and XOAUTH2")
	textVar(fs, &c.OAuthAudience, "oauth-audience", "", "`audience` that tokens must be meant for (one of the aud claim)")
	textVar(fs, &c.OAuthJWKS, "oauth-jwks", "", "the issuer's JSON Web Key Set: a `file` or an https URL")
	textVar(fs, &c.OAuthUserClaim, "oauth-user-claim", "email", "token `claim` naming the user (the user, or user@DOMAIN)")
	textVar(fs, &c.OAuthDomains, "oauth-domains", "", "`domains` whose user@DOMAIN tokens log in as user (comma-separated; default: any)")
	textVar(fs, &c.AdminSocket, "admin-socket", "", "`path` of the socket for pouch who, kick, reload and mailbox stats (default DATA/admin.sock; \"off\" turns it off)")
	c.lmtpConfig.register(fs, true)
	c.defenceConfig.register(fs)
	c.retentionConfig.register(fs)
	c.accountsConfig.register(fs)
}

// loadServeConfig parses pouch serve's command line into c (bound to fs by
// serveFlags), then reads the --config file it names for the settings the
// command line did not give. It returns the positional arguments.
func loadServeConfig(fs *flag.FlagSet, c *serveConfig, args []string) ([]string, error) {
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return nil, err
	}
	c.src = configSource{file: c.ConfigFile, onCommandLine: flagNames(fs)}
	if c.ConfigFile != "" {
		if c.src.inFile, err = decodeConfigFile(c.ConfigFile, c, c.src.onCommandLine); err != nil {
			return nil, &exitError{code: 2, msg: err.Error()}
		}
	}
	return pos, nil
}

// readServeConfig reads pouch serve's configuration file alone, for the
// commands that share some of its settings.
func readServeConfig(path string) (*serveConfig, error) {
	fs, c := serveFlags(io.Discard)
	if _, err := loadServeConfig(fs, c, []string{"--config", path}); err != nil {
		return nil, err
	}
	return c, nil
}

// serveSettings are pouch serve's settings once checked: the values the
// packages take, made by validate. Opening what they name (files, ports,
// the key set) is left to the server's start, and to check-config's probes.
type serveSettings struct {
	src         configSource
	data        string
	store       storeSettings
	listeners   []listenAddr // POP3 and POP3S, as configured
	hostname    string       // "" for the system's
	logLevel    slog.Level
	logFormat   string
	tlsCerts    []string
	tlsKeys     []string
	clientCA    string
	oauth       oauthSettings
	adminSocket string // "" when off
	// server holds the settings of server.Config; the start adds the
	// store, the users, the logger and the resources.
	server    server.Config
	lmtp      lmtpSettings
	defence   defenceSettings
	retention retentionSettings
	accounts  accountsSettings
	// warnings are settings allowed but unwise, one sentence each.
	warnings []string
}

// listenAddr is a POP3 listener as configured.
type listenAddr struct {
	name string // pop3 or pop3s, as systemd's FileDescriptorName too
	addr string // "" when off
	tls  bool
}

// oauthSettings are the OAuth 2.0 bearer token settings.
type oauthSettings struct {
	issuer, audience, jwks, userClaim string
	domains                           []string
}

// on reports whether OAuth was asked for (auth.NewTokenVerifier then checks
// that it has all it needs).
func (o oauthSettings) on() bool { return o.issuer != "" || o.jwks != "" }

// validate checks every setting and returns the settings the server runs
// with, or every problem, each in one sentence naming the flag or the file
// and key (problems; exit status 2). sockets is how many listeners systemd
// passed (socket activation), which serve even with no address configured.
func (c *serveConfig) validate(sockets int) (*serveSettings, error) {
	src := c.src
	s := &serveSettings{
		src:         src,
		data:        c.Data.String(),
		hostname:    c.Hostname.String(),
		logFormat:   c.LogFormat.String(),
		tlsCerts:    c.TLSCert.list(),
		tlsKeys:     c.TLSKey.list(),
		clientCA:    c.ClientCA.String(),
		adminSocket: adminSocketPath(c.Data.String(), c.AdminSocket.String()),
		oauth: oauthSettings{issuer: c.OAuthIssuer.String(), audience: c.OAuthAudience.String(),
			jwks: c.OAuthJWKS.String(), userClaim: c.OAuthUserClaim.String(), domains: c.OAuthDomains.list()},
	}
	var bad problems
	s.store = storeSettings{url: c.Store.String(), lockTTL: time.Duration(c.LockTTL), data: s.data}
	if err := checkStoreURL(s.store.url); err != nil {
		bad.add(src.problem("store", "%v", err))
	}
	if s.store.lockTTL < minLockTTL {
		bad.add(src.problem("lock-ttl", "%v is too short: a node renews its heartbeat four times per TTL, over the network; give at least %v", s.store.lockTTL, minLockTTL))
	}
	for _, l := range []listenAddr{{"pop3", c.POP3.String(), false}, {"pop3s", c.POP3S.String(), true}} {
		bad.add(checkAddr(src, l.name, l.addr))
		s.listeners = append(s.listeners, l)
	}
	if err := s.logLevel.UnmarshalText([]byte(c.LogLevel)); err != nil {
		bad.add(src.problem("log-level", "unknown log level %q; use debug, info, warn or error", c.LogLevel))
	}
	if f := c.LogFormat; f != "text" && f != "json" {
		bad.add(src.problem("log-format", "unknown log format %q; use text or json", f))
	}
	if err := checkMaxLine(int(c.MaxLine)); err != nil {
		bad.add(src.problem("max-line-length", "%v", err))
	}
	if w := idleTimeoutWarning(time.Duration(c.IdleTimeout)); w != "" {
		s.warnings = append(s.warnings, w)
	}
	insecure, err := guard.ParseNets(c.InsecureNets.String())
	if err != nil {
		bad.add(src.problem("insecure-auth-networks", "%v", err))
	}
	if insecure == nil {
		insecure = []netip.Prefix{} // empty, not nil: nowhere
	}
	proxyNets, err := guard.ParseNets(c.ProxyNets.String())
	if err != nil {
		bad.add(src.problem("proxy-networks", "%v", err))
	}
	s.server = server.Config{
		Hostname:             s.hostname,
		MaxLineLength:        int(c.MaxLine),
		PreLoginTimeout:      time.Duration(c.PreLoginTimeout),
		IdleTimeout:          time.Duration(c.IdleTimeout),
		AuthFailDelay:        time.Duration(c.AuthFailDelay),
		MaxBadCommands:       int(c.MaxBadCommands),
		InsecureAuthNetworks: insecure,
		ProxyNetworks:        proxyNets,
	}
	if c.AuthFailDelay == 0 {
		s.server.AuthFailDelay = -1 // explicitly none
	}
	if s.oauth.on() {
		s.server.OAuthDomains = s.oauth.domains
	}
	s.lmtp = c.lmtpConfig.validate(src, &bad)
	s.defence = c.defenceConfig.validate(src, s.data, &s.server, &bad)
	s.retention = c.retentionConfig.validate(src, &bad)
	c.accountsConfig.store = s.store.url
	s.accounts = c.accountsConfig.validate(src, &bad)
	s.server.DefaultDomain = s.accounts.defaultDomain
	s.lmtp.delivery.defaultDomain = s.accounts.defaultDomain
	s.warnings = append(s.warnings, s.accounts.warnings()...)
	if s.listeners[0].addr == "" && s.listeners[1].addr == "" && s.lmtp.addr == "" && sockets == 0 {
		bad.add(usageError("--pop3, --pop3s and --lmtp are all empty: nothing to serve"))
	}
	if err := bad.err(); err != nil {
		return nil, err
	}
	return s, nil
}

// checkAddr checks the form of a TCP listen address, HOST:PORT (either may
// be empty); "" is none. Whether the host and port exist is known when the
// server listens (or check-config resolves it).
func checkAddr(src configSource, key, addr string) error {
	if addr == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return src.problem(key, "%v", err)
	}
	return nil
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

// newLogger returns a logger whose level can change later (a reload).
func newLogger(w io.Writer, level slog.Level, format string) (*slog.Logger, *slog.LevelVar) {
	lv := new(slog.LevelVar)
	lv.Set(level)
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), lv
	}
	return slog.New(slog.NewTextHandler(w, opts)), lv
}
