package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"golang.org/x/term"

	"github.com/pouchmail/pouch/client"
	"github.com/pouchmail/pouch/fetch"
	"github.com/pouchmail/pouch/fetch/oauth"
	"github.com/pouchmail/pouch/internal/units"
)

const fetchUsage = `Usage: pouch fetch [flags]
       pouch fetch --config FILE [flags] [ACCOUNT...]

Downloads mail from a POP3 server into a Maildir, an mbox, an MDA, or an
LMTP/SMTP server, exactly once: a message is deleted from the server (when
--keep says so) only after it is safely stored and recorded, and no crash or
network failure loses or duplicates it.

With --config, the TOML file has the flag names as keys: top-level keys apply
to every account, and each [account.NAME] table is one account. Flags on the
command line win over the file. ACCOUNT names select accounts (default: all).
Up to --parallel accounts are fetched at once; each account's lines are
printed together, in the order the accounts are named or sorted.

A server whose replies go out of step with the commands (a body line "."
that it did not dot-stuff, a message whose size disagrees with LIST, an
empty message, a reply that is neither +OK nor -ERR) ends the session
without deleting anything; what arrived of the message is kept in the
Maildir quarantine/ under --state-dir, and the message is left on the
server until --retry-quarantined.

An account with provider = "gmail", "microsoft" or "custom" signs in with
OAuth 2.0 once, and its tokens are refreshed by themselves:
  pouch fetch --config FILE auth login ACCOUNT [--device]
  pouch fetch --config FILE auth status [ACCOUNT...]
  pouch fetch --config FILE auth logout ACCOUNT

--mark-existing records the messages now on the server as fetched, without
downloading or deleting anything, so that a user coming from another client
gets only new mail from then on; those messages are never deleted by pouch
fetch.

With --every it keeps running: each account waits its own interval (the
every key of its table, else --every) plus a little jitter after each run,
never less than the server's LOGIN-DELAY, and longer after failures (twice
as long each time, up to an hour); SIGHUP reloads the --config file.

Exit status: 0 when every account was fetched (new mail or none), 1 when an
account failed, 2 for a bad command line or configuration, 3 when an
account needs you: it must sign in (again), or the server refused its
password or token.

Examples:
  pouch fetch --server pop.example.com:995 --user alice \
      --password-command 'pass show mail/alice' --to maildir:~/Mail/inbox --keep 14d
  pouch fetch --config ~/.config/pouch/fetch.toml --every 5m

Flags:
`

// fetchConfig holds the flags of one account.
type fetchConfig struct {
	configFile        string
	server            string
	tlsMode           string
	caFile            string
	fingerprint       string
	user              string
	passwordFile      string
	passwordCommand   string
	oauthTokenCommand string
	to                string
	rcpt              string
	keep              string
	maxSize           string
	deleteOversized   bool
	stateDir          string
	dryRun            bool
	every             string
	quiet             bool
	window            int
	timeout           time.Duration
	deadline          time.Duration
	parallel          int
	retryQuarantined  bool
	markExisting      bool
	quietEmpty        bool

	// OAuth 2.0 sign-in (fetch/oauth).
	provider         string
	clientID         string
	clientSecret     string
	clientSecretFile string
	scopes           string
	tenant           string
	issuer           string
	authURL          string
	tokenURL         string
	deviceURL        string
	revokeURL        string
	redirectPort     int

	// pouch fetch auth login only.
	device, browser bool
}

func fetchFlags(stderr io.Writer) (*flag.FlagSet, *fetchConfig) {
	c := &fetchConfig{}
	fs := flag.NewFlagSet("pouch fetch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.configFile, "config", "", "read accounts from this TOML `file`")
	fs.StringVar(&c.server, "server", "", "POP3 server `host[:port]`; the port defaults to 995 for implicit TLS, 110 for starttls and none")
	fs.StringVar(&c.tlsMode, "tls", "implicit", "`mode`: implicit (POP3S), starttls (STLS, never falls back), or none (cleartext)")
	fs.StringVar(&c.caFile, "ca-file", "", "trust the CA certificates in this PEM `file` instead of the system's")
	fs.StringVar(&c.fingerprint, "tls-fingerprint", "", "accept only the server certificate with this SHA-256 `hex` fingerprint")
	fs.StringVar(&c.user, "user", "", "user `name` on the server")
	fs.StringVar(&c.passwordFile, "password-file", "", "read the password from the first line of this `file`")
	fs.StringVar(&c.passwordCommand, "password-command", "", "run this shell `command` and use the first line it prints as the password")
	fs.StringVar(&c.oauthTokenCommand, "oauth-token-command", "", "run this shell `command` for an OAuth 2.0 access token (OAUTHBEARER, XOAUTH2)")
	fs.StringVar(&c.to, "to", "", "`destination`: maildir:DIR, mbox:FILE, mda:CMD, lmtp:HOST:PORT or smtp:HOST:PORT")
	fs.StringVar(&c.rcpt, "rcpt", os.Getenv("USER"), "envelope recipient `address` for lmtp: and smtp:")
	fs.StringVar(&c.keep, "keep", "0", "leave mail on the server this `long` after its first download (14d, 36h, 90s) or forever; 0 deletes at once")
	fs.StringVar(&c.maxSize, "max-size", "0", "skip messages larger than this `size` (octets, or with K, M, G); 0 means no limit")
	fs.BoolVar(&c.deleteOversized, "delete-oversized", false, "delete messages larger than --max-size from the server without downloading them")
	fs.StringVar(&c.stateDir, "state-dir", fetch.DefaultStateDir(), "`directory` for the per-account journals and locks")
	fs.BoolVar(&c.dryRun, "dry-run", false, "log in and say what would be done, changing nothing")
	fs.StringVar(&c.every, "every", "", "keep running and fetch again every `interval` (5m, 1h)")
	fs.BoolVar(&c.quiet, "q", false, "print nothing but errors")
	fs.IntVar(&c.window, "window", 1024, "RETR commands in flight when the server offers PIPELINING")
	durationVar(fs, (*durationSetting)(&c.timeout), "timeout", 2*time.Minute, "give up on a server silent this `long`")
	durationVar(fs, (*durationSetting)(&c.deadline), "deadline", fetch.DefaultDeadline, "cut off an account's run after this `long` in all (the session ends without deleting anything); 0 for none")
	fs.IntVar(&c.parallel, "parallel", 4, "fetch up to `n` accounts at once")
	fs.BoolVar(&c.retryQuarantined, "retry-quarantined", false, "download again the messages an earlier run found damaged and left on the server")
	fs.BoolVar(&c.markExisting, "mark-existing", false, "record every message now on the server as fetched, downloading and deleting nothing")
	fs.BoolVar(&c.quietEmpty, "quiet-empty", false, "print an account's summary only when it fetched, deleted or recorded something, or failed")
	fs.StringVar(&c.provider, "provider", "", "sign in with OAuth 2.0: `name` gmail, microsoft or custom (then: pouch fetch auth login)")
	fs.StringVar(&c.clientID, "client-id", "", "OAuth client `id` of the app registration to sign in as")
	fs.StringVar(&c.clientSecret, "client-secret", "", "OAuth client `secret` (Gmail's Desktop app clients have one; public clients none)")
	fs.StringVar(&c.clientSecretFile, "client-secret-file", "", "read the OAuth client secret from the first line of this `file`")
	fs.StringVar(&c.scopes, "scopes", "", "OAuth `scopes` to ask for, separated by spaces (default: the provider's for POP)")
	fs.StringVar(&c.tenant, "tenant", "", "Microsoft `directory`: common, consumers, organizations or a tenant id (default common)")
	fs.StringVar(&c.issuer, "issuer", "", "custom provider: the issuer `URL`, whose endpoints are found by discovery")
	fs.StringVar(&c.authURL, "auth-url", "", "OAuth authorization endpoint `URL`")
	fs.StringVar(&c.tokenURL, "token-url", "", "OAuth token endpoint `URL`")
	fs.StringVar(&c.deviceURL, "device-url", "", "OAuth device authorization endpoint `URL` (RFC 8628)")
	fs.StringVar(&c.revokeURL, "revoke-url", "", "OAuth revocation endpoint `URL` (RFC 7009)")
	fs.IntVar(&c.redirectPort, "redirect-port", 0, "loopback `port` of the browser sign-in (default: a free one)")
	fs.BoolVar(&c.device, "device", false, "auth login: sign in with a code typed on another device (RFC 8628), for machines without a browser")
	fs.BoolVar(&c.browser, "browser", false, "auth login: sign in through a web browser (RFC 8252)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), fetchUsage)
		printFlags(fs.Output(), fs)
	}
	return fs, c
}

// account turns the flags into an Account, and the OAuth settings of an
// account with a provider (nil otherwise). forAuth (pouch fetch auth)
// needs no destination.
func (c *fetchConfig) account(name string, forAuth bool) (*fetch.Account, *oauth.Config, error) {
	a, err := c.account1(name, forAuth)
	if err != nil {
		return nil, nil, err
	}
	if c.provider == "" {
		for _, k := range []struct{ key, v string }{{"client-id", c.clientID}, {"client-secret", c.clientSecret},
			{"client-secret-file", c.clientSecretFile}, {"scopes", c.scopes}, {"tenant", c.tenant}, {"issuer", c.issuer},
			{"auth-url", c.authURL}, {"token-url", c.tokenURL}, {"device-url", c.deviceURL}, {"revoke-url", c.revokeURL}} {
			if k.v != "" {
				return nil, nil, fmt.Errorf("--%s needs --provider", k.key)
			}
		}
		return a, nil, nil
	}
	secret := c.clientSecret
	if c.clientSecretFile != "" {
		if secret != "" {
			return nil, nil, errors.New("give --client-secret or --client-secret-file, not both")
		}
		data, err := os.ReadFile(fetch.ExpandHome(c.clientSecretFile))
		if err != nil {
			return nil, nil, fmt.Errorf("client-secret-file: %w", err)
		}
		if secret = strings.TrimSpace(firstLine(string(data))); secret == "" {
			return nil, nil, fmt.Errorf("client-secret-file %s is empty", c.clientSecretFile)
		}
	}
	oc := &oauth.Config{Account: a.DisplayName(), Provider: c.provider, ClientID: c.clientID, ClientSecret: secret,
		Tenant: c.tenant, Issuer: c.issuer, AuthURL: c.authURL, TokenURL: c.tokenURL, DeviceURL: c.deviceURL,
		RevokeURL: c.revokeURL, RedirectPort: c.redirectPort, LoginHint: c.user}
	if c.scopes != "" {
		oc.Scopes = strings.Fields(c.scopes) // RFC 6749 §3.3: scope tokens are separated by spaces
	}
	if err := oc.Validate(); err != nil {
		return nil, nil, err
	}
	if c.provider == oauth.Microsoft {
		a.OAuthForm = client.OAuthTwoStep
	}
	return a, oc, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return strings.TrimSuffix(s, "\r")
}

func (c *fetchConfig) account1(name string, forAuth bool) (*fetch.Account, error) {
	if c.server == "" {
		return nil, errors.New("--server is required")
	}
	if c.user == "" {
		return nil, errors.New("--user is required")
	}
	n := 0
	for _, s := range []string{c.passwordFile, c.passwordCommand, c.oauthTokenCommand, c.provider} {
		if s != "" {
			n++
		}
	}
	if n != 1 && !(forAuth && n == 0) {
		return nil, errors.New("give exactly one of --password-file, --password-command, --oauth-token-command, --provider")
	}
	if c.to == "" && !c.dryRun && !c.markExisting && !forAuth {
		return nil, errors.New("--to is required (for example --to maildir:~/Mail/inbox)")
	}
	mode, err := client.ParseTLSMode(c.tlsMode)
	if err != nil {
		return nil, err
	}
	keep, forever, err := fetch.ParseKeep(c.keep)
	if err != nil {
		return nil, err
	}
	maxSize, err := units.ParseSize(c.maxSize)
	if err != nil {
		return nil, fmt.Errorf("--max-size: %v", err)
	}
	if c.deleteOversized && maxSize == 0 {
		return nil, errors.New("--delete-oversized needs --max-size")
	}
	if c.window < 1 {
		return nil, fmt.Errorf("--window %d: give at least 1 (RETR commands in flight)", c.window)
	}
	server, err := serverAddr(c.server, mode)
	if err != nil {
		return nil, err
	}
	if c.to != "" {
		if err := checkDestination(c.to, c.rcpt); err != nil {
			return nil, err
		}
	}
	if c.fingerprint != "" {
		if fp, err := hex.DecodeString(client.NormalizeFingerprint(c.fingerprint)); err != nil || len(fp) != sha256.Size {
			return nil, fmt.Errorf("--tls-fingerprint %q: give the 64 hex digits of the certificate's SHA-256 fingerprint (colons allowed)", c.fingerprint)
		}
	}
	// Files read at every run must be readable now: one that is not is
	// a mistake in the configuration, not a failure that may pass.
	if c.passwordFile != "" {
		if err := readable(c.passwordFile); err != nil {
			return nil, fmt.Errorf("--password-file %s cannot be read: %v", c.passwordFile, err)
		}
	}
	if c.caFile != "" {
		pem, err := os.ReadFile(fetch.ExpandHome(c.caFile))
		if err != nil {
			return nil, fmt.Errorf("--ca-file %s cannot be read: %v", c.caFile, pathErr(err))
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s holds no PEM certificate", c.caFile)
		}
	}
	deadline := c.deadline
	if deadline == 0 {
		deadline = -1 // none
	}
	return &fetch.Account{
		Name: name, Server: server, TLS: mode, CAFile: c.caFile, Fingerprint: c.fingerprint,
		User: c.user, PasswordFile: c.passwordFile, PasswordCommand: c.passwordCommand,
		OAuthTokenCommand: c.oauthTokenCommand, To: c.to, Rcpt: c.rcpt,
		Keep: keep, KeepForever: forever, MaxSize: maxSize, DeleteOversized: c.deleteOversized,
		StateDir: c.stateDir, DryRun: c.dryRun, Window: c.window, Timeout: c.timeout,
		Deadline: deadline, RetryQuarantined: c.retryQuarantined, MarkExisting: c.markExisting,
	}, nil
}

// serverAddr returns the --server address with its port: a host without
// one gets POP3's: 995 for implicit TLS (RFC 8314 §3.3), 110 otherwise
// (RFC 1939 §3), as mpop does.
func serverAddr(server string, mode client.TLSMode) (string, error) {
	if host, port, err := net.SplitHostPort(server); err == nil {
		if host == "" || port == "" {
			return "", fmt.Errorf("--server %q: give HOST:PORT, or the host alone for the usual port", server)
		}
		return server, nil
	}
	host := server
	if inner, ok := strings.CutPrefix(host, "["); ok {
		host, ok = strings.CutSuffix(inner, "]")
		if !ok || net.ParseIP(host) == nil {
			host = "" // not an IPv6 address in brackets
		}
	}
	if host == "" || strings.ContainsAny(host, "[]/ ") || strings.Contains(host, ":") && net.ParseIP(host) == nil {
		return "", fmt.Errorf("--server %q: give HOST:PORT, or the host alone for the usual port (an IPv6 address in brackets: [2001:db8::1]:995)", server)
	}
	port := "110"
	if mode == client.TLSImplicit {
		port = "995"
	}
	return net.JoinHostPort(host, port), nil
}

// destinationKinds are what --to takes, as fetch.OpenDestination reads it.
const destinationKinds = "maildir:DIR, mbox:FILE, mda:CMD, lmtp:HOST:PORT or smtp:HOST:PORT"

// checkDestination checks the form of a --to destination, which each run
// opens (a Maildir is made then, so it is not opened here).
func checkDestination(spec, rcpt string) error {
	kind, arg, ok := strings.Cut(spec, ":")
	switch {
	case !ok || arg == "":
		return fmt.Errorf("--to %q: give %s", spec, destinationKinds)
	case kind == "maildir" || kind == "mbox" || kind == "mda":
		return nil
	case kind == "lmtp" || kind == "smtp":
		if _, _, err := net.SplitHostPort(arg); err != nil {
			return fmt.Errorf("--to %q: give %s:HOST:PORT", spec, kind)
		}
		if rcpt == "" {
			return fmt.Errorf("--to %s needs a recipient (--rcpt)", spec)
		}
		return nil
	}
	return fmt.Errorf("--to %q: %q is no kind of destination; give %s", spec, kind, destinationKinds)
}

// readable says why the file at path cannot be opened for reading, or
// returns nil.
func readable(path string) error {
	f, err := os.Open(fetch.ExpandHome(path))
	if err != nil {
		return pathErr(err)
	}
	return f.Close()
}

// pathErr is what went wrong with a file, without its path (the message
// names it already): "no such file or directory".
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// topLevelKeys are the keys that apply to the whole command, not to one
// account.
var topLevelKeys = map[string]bool{"parallel": true}

// commandOnly are flags that are no configuration keys.
var commandOnly = map[string]bool{"config": true, "device": true, "browser": true, "mark-existing": true}

// setFromTOML sets every flag not given on the command line from values
// (an account's table if account).
func setFromTOML(fs *flag.FlagSet, set map[string]bool, values map[string]any, where string, account bool) error {
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		if key == "account" || key == "accounts" {
			continue
		}
		if commandOnly[key] || fs.Lookup(key) == nil {
			return fmt.Errorf("%s: unknown key %q", where, key)
		}
		if account && topLevelKeys[key] {
			return fmt.Errorf("%s: key %q belongs at the top of the file", where, key)
		}
		if set[key] {
			continue
		}
		v := fmt.Sprint(values[key])
		if list, ok := values[key].([]any); ok {
			// scopes = ["a", "b"]: the flag takes them separated by spaces.
			parts := make([]string, len(list))
			for i, e := range list {
				parts[i] = fmt.Sprint(e)
			}
			v = strings.Join(parts, " ")
		}
		if err := fs.Set(key, v); err != nil {
			return fmt.Errorf("%s: key %q: %v", where, key, err)
		}
	}
	return nil
}

// badAccount is an account of the --config file whose settings are wrong.
type badAccount struct {
	name string
	err  error // exit status 2
}

type namedAccount struct {
	acct       *fetch.Account
	oauth      *oauth.Config // nil: the account has no provider
	quiet      bool
	quietEmpty bool
	every      time.Duration // 0: once
}

// fetchRun is what one pouch fetch command does.
type fetchRun struct {
	accts    []namedAccount
	bad      []badAccount // accounts of the --config file that did not load
	daemon   bool         // --every: keep running
	parallel int
	config   string // the --config file, "" for none
}

// tokenStores are the token stores of one pouch fetch command, one per
// state directory, kept across reloads: the sources of an account share
// its token through them.
type tokenStores struct {
	mu     sync.Mutex
	m      map[string]*oauth.Store
	stderr io.Writer
}

func (t *tokenStores) get(stateDir string) *oauth.Store {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*oauth.Store{}
	}
	if s := t.m[stateDir]; s != nil {
		return s
	}
	// The store logs no token; only a refreshed token it could not save
	// is worth a line here (the other failures come back as errors).
	h := slog.NewTextHandler(t.stderr, &slog.HandlerOptions{Level: slog.LevelError,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}})
	s := oauth.NewStore(stateDir, slog.New(h))
	t.m[stateDir] = s
	return s
}

// fetchArgs is a pouch fetch command line, parsed.
type fetchArgs struct {
	fs   *flag.FlagSet
	c    *fetchConfig
	pos  []string
	set  map[string]bool
	args []string
}

func parseFetchArgs(args []string, stderr io.Writer) (*fetchArgs, error) {
	fs, c := fetchFlags(stderr)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return nil, err
	}
	return &fetchArgs{fs: fs, c: c, pos: pos, set: flagNames(fs), args: args}, nil
}

// loadAccounts returns the accounts to fetch: names selects them from the
// --config file (all when empty). forAuth loads them for pouch fetch auth.
func loadAccounts(fa *fetchArgs, names []string, forAuth bool, stores *tokenStores, stderr io.Writer) (fetchRun, error) {
	c := fa.c
	if c.configFile == "" {
		if len(names) > 0 {
			return fetchRun{}, usageError("account names need --config; got %q", names[0])
		}
		a, oc, err := c.account("", forAuth)
		if err != nil {
			return fetchRun{}, usageError("fetch: %v", err)
		}
		every, err := parseEvery(c.every)
		if err != nil {
			return fetchRun{}, err
		}
		na := namedAccount{acct: a, oauth: oc, quiet: c.quiet, quietEmpty: c.quietEmpty, every: every}
		if err := na.wire(stores); err != nil {
			return fetchRun{}, err
		}
		return fetchRun{accts: []namedAccount{na}, daemon: every > 0 && !c.markExisting, parallel: 1}, nil
	}
	var file map[string]any
	if _, err := toml.DecodeFile(fetch.ExpandHome(c.configFile), &file); err != nil {
		return fetchRun{}, &exitError{code: 2, msg: fmt.Sprintf("config %s: %v", c.configFile, err)}
	}
	// The top level, on a copy of the command line's flags.
	tfs, tc := fetchFlags(stderr)
	parseInterleaved(tfs, fa.args) // parsed once before without error
	if err := setFromTOML(tfs, fa.set, file, "config "+c.configFile, false); err != nil {
		return fetchRun{}, &exitError{code: 2, msg: err.Error()}
	}
	if tc.parallel < 1 {
		return fetchRun{}, usageError("config %s: key \"parallel\": %d: give at least 1 (accounts fetched at once)", c.configFile, tc.parallel)
	}
	table, _ := file["account"].(map[string]any)
	if t2, ok := file["accounts"].(map[string]any); ok {
		if table == nil {
			table = map[string]any{}
		}
		for k, v := range t2 {
			table[k] = v
		}
	}
	if len(table) == 0 {
		return fetchRun{}, usageError("config %s: no [account.NAME] table", c.configFile)
	}
	if len(names) == 0 {
		for n := range table {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	// The default interval: --every, or the top level's every.
	defEvery, err := parseEvery(tc.every)
	if err != nil {
		return fetchRun{}, err
	}
	var out []namedAccount
	var bad []badAccount
	shortest := time.Duration(0)
	for _, name := range names {
		if _, ok := table[name].(map[string]any); !ok {
			return fetchRun{}, usageError("config %s: no account %q", c.configFile, name)
		}
	}
	for _, name := range names {
		// An account whose settings are wrong is left out; the others
		// run (fetchOnce, the daemon).
		na, every, err := loadAccount(fa, file, name, table[name].(map[string]any), defEvery, forAuth, stores, stderr)
		if err != nil {
			bad = append(bad, badAccount{name: name, err: err})
			continue
		}
		if every > 0 && (shortest == 0 || every < shortest) {
			shortest = every
		}
		out = append(out, na)
	}
	for i := range out {
		if out[i].every == 0 {
			out[i].every = shortest // accounts without an interval of their own
		}
	}
	// --mark-existing is done once, whatever the intervals.
	return fetchRun{accts: out, bad: bad, daemon: shortest > 0 && !c.markExisting, parallel: tc.parallel, config: c.configFile}, nil
}

// loadAccount loads the account name of the --config file, its table vals
// over the top level's keys and under the command line's flags, and its
// interval (defEvery unless it has its own every).
func loadAccount(fa *fetchArgs, file map[string]any, name string, vals map[string]any, defEvery time.Duration,
	forAuth bool, stores *tokenStores, stderr io.Writer) (namedAccount, time.Duration, error) {
	c := fa.c
	afs, ac := fetchFlags(stderr)
	parseInterleaved(afs, fa.args)
	setFromTOML(afs, fa.set, file, "config "+c.configFile, false)
	where := fmt.Sprintf("config %s: account %s", c.configFile, name)
	if err := setFromTOML(afs, fa.set, vals, where, true); err != nil {
		return namedAccount{}, 0, &exitError{code: 2, msg: err.Error()}
	}
	a, oc, err := ac.account(name, forAuth)
	if err != nil {
		return namedAccount{}, 0, usageError("account %s: %v", name, err)
	}
	// An account's own every wins over --every, which sets it for the
	// others.
	every := defEvery
	if v, ok := vals["every"]; ok {
		if every, err = parseEvery(fmt.Sprint(v)); err != nil {
			return namedAccount{}, 0, usageError("%s: %v", where, err)
		}
	}
	na := namedAccount{acct: a, oauth: oc, quiet: ac.quiet, quietEmpty: ac.quietEmpty, every: every}
	if err := na.wire(stores); err != nil {
		return namedAccount{}, 0, err
	}
	return na, every, nil
}

// wire gives an account with a provider its token source.
func (na *namedAccount) wire(stores *tokenStores) error {
	if na.oauth == nil {
		return nil
	}
	src, err := oauth.TokenSource(*na.oauth, stores.get(na.stateDir()))
	if err != nil {
		return usageError("%v", err)
	}
	na.acct.Tokens = src
	return nil
}

func (na *namedAccount) stateDir() string {
	if d := na.acct.StateDir; d != "" {
		return fetch.ExpandHome(d)
	}
	return fetch.DefaultStateDir()
}

func parseEvery(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, forever, err := fetch.ParseKeep(s)
	if err != nil || forever || d < time.Second {
		return 0, usageError("--every %q: use an interval from 1s to %s, like 5m", s, units.FormatDuration(math.MaxInt64/units.Day*units.Day))
	}
	return d, nil
}

func runFetch(args []string, stdin io.Reader, stderr io.Writer) error {
	fa, err := parseFetchArgs(args, stderr)
	if err != nil {
		return err
	}
	if fa.c.parallel < 1 {
		return usageError("fetch: --parallel %d: give at least 1 (accounts fetched at once)", fa.c.parallel)
	}
	stores := &tokenStores{stderr: stderr}
	if len(fa.pos) > 0 && fa.pos[0] == "auth" {
		return runFetchAuth(fa, fa.pos[1:], stdin, stores, stderr)
	}
	fr, err := loadAccounts(fa, fa.pos, false, stores, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// After the first signal the current message is finished and the session
	// ends with QUIT; a second signal kills at once.
	context.AfterFunc(ctx, stop)
	tty := false
	if f, ok := stderr.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	// A progress bar only while one account runs at a time.
	bar := tty && (len(fr.accts) == 1 || fr.parallel == 1)
	if !fr.daemon {
		return fetchOnce(ctx, fr, bar, stderr)
	}
	for _, b := range fr.bad {
		fmt.Fprintf(stderr, "pouch fetch: %s; it is not fetched until the configuration is fixed (SIGHUP reloads it)\n", plainError(b.err))
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	d := newDaemon(fr, &lockedWriter{w: stderr})
	d.reload = func() (fetchRun, error) {
		fa, err := parseFetchArgs(args, io.Discard)
		if err != nil {
			return fetchRun{}, err
		}
		return loadAccounts(fa, fa.pos, false, stores, io.Discard)
	}
	d.hup = hup
	d.run(ctx)
	return nil
}

// Exit statuses of pouch fetch besides 0 (every account fetched) and 2
// (a bad command line or configuration).
const (
	exitFetchFailed = 1 // an account failed
	exitNeedsUser   = 3 // an account must sign in, or its credentials were refused
)

// needsUser reports whether err is one that only the user can fix: a
// missing or revoked sign-in, or credentials the server refused.
func needsUser(err error) bool {
	var lr *oauth.LoginRequiredError
	var ae *fetch.AuthError
	return errors.As(err, &lr) || errors.As(err, &ae)
}

// notFailed reports whether err leaves the account fetched: nil, or a
// login put off for the server's LOGIN-DELAY.
func notFailed(err error) bool {
	var ld *fetch.LoginDelayError
	return err == nil || errors.As(err, &ld)
}

// fetchOnce fetches every account once, up to fr.parallel at a time, and
// prints each account's lines together, in the accounts' order.
func fetchOnce(ctx context.Context, fr fetchRun, bar bool, stderr io.Writer) error {
	if len(fr.bad) == 1 && len(fr.accts) == 0 {
		return fr.bad[0].err
	}
	for _, b := range fr.bad {
		fmt.Fprintf(stderr, "pouch fetch: %s\n", plainError(b.err))
	}
	out := newOrderedOutput(stderr, len(fr.accts))
	sem := make(chan struct{}, fr.parallel)
	same := sameMailbox(fr.accts)
	errs := make([]error, len(fr.accts))
	var wg sync.WaitGroup
	for i, na := range fr.accts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer out.finish(i)
			mu := same[i]
			mu.Lock()
			defer mu.Unlock()
			sem <- struct{}{}
			defer func() { <-sem }()
			if ctx.Err() == nil {
				_, errs[i] = fetchOne(ctx, na, bar, out.writer(i))
			}
		}()
	}
	wg.Wait()
	failed, user, config := len(fr.bad), 0, len(fr.bad)
	all := len(fr.accts) + len(fr.bad)
	for _, err := range errs {
		switch {
		case notFailed(err):
		case needsUser(err):
			user++
			failed++
		default:
			failed++
		}
	}
	// The status is the worst: the configuration, then the user, then
	// what may pass.
	switch {
	case config > 0:
		return &exitError{code: 2, msg: fmt.Sprintf("fetch failed for %d of %d accounts (for %d their configuration is wrong, see above)", failed, all, config)}
	case user > 0:
		return &exitError{code: exitNeedsUser, msg: fmt.Sprintf("fetch failed for %d of %d accounts (for %d the server refused the password or token, or the account must sign in again)", failed, all, user)}
	case failed > 0:
		return &exitError{code: exitFetchFailed, msg: fmt.Sprintf("fetch failed for %d of %d accounts", failed, all)}
	}
	return nil
}

// sameMailbox returns a mutex per account, shared by the accounts of one
// server and user: a POP3 server locks a maildrop for one session at a
// time, so those run one after another.
func sameMailbox(accts []namedAccount) []*sync.Mutex {
	byKey := map[string]*sync.Mutex{}
	out := make([]*sync.Mutex, len(accts))
	for i, na := range accts {
		k := na.acct.Server + "\x00" + na.acct.User
		if byKey[k] == nil {
			byKey[k] = &sync.Mutex{}
		}
		out[i] = byKey[k]
	}
	return out
}

// lockedWriter keeps each Write whole when several goroutines write.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// orderedOutput prints the lines of accounts fetched at once in the
// accounts' order: the first unfinished account writes through, the others
// are held until every account before them has finished.
type orderedOutput struct {
	mu   sync.Mutex
	w    io.Writer
	held []bytes.Buffer
	done []bool
	head int
}

func newOrderedOutput(w io.Writer, n int) *orderedOutput {
	return &orderedOutput{w: w, held: make([]bytes.Buffer, n), done: make([]bool, n)}
}

// writer returns account i's writer; each Write is kept whole.
func (o *orderedOutput) writer(i int) io.Writer { return orderedWriter{o, i} }

type orderedWriter struct {
	o *orderedOutput
	i int
}

func (w orderedWriter) Write(p []byte) (int, error) {
	o := w.o
	o.mu.Lock()
	defer o.mu.Unlock()
	if w.i == o.head {
		return o.w.Write(p)
	}
	return o.held[w.i].Write(p)
}

// finish marks account i finished and prints what the accounts after it
// held, up to the next unfinished one.
func (o *orderedOutput) finish(i int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.done[i] = true
	for o.head < len(o.done) && o.done[o.head] {
		o.head++
		if o.head < len(o.done) {
			o.w.Write(o.held[o.head].Bytes())
			o.held[o.head] = bytes.Buffer{}
		}
	}
}

// fetchOne runs one account and reports on stderr.
func fetchOne(ctx context.Context, na namedAccount, bar bool, stderr io.Writer) (fetch.Stats, error) {
	a := na.acct
	name := a.DisplayName()
	obs := &reporter{w: stderr, name: name, quiet: na.quiet, bar: bar && !na.quiet}
	st, err := fetch.Run(ctx, a, obs)
	obs.clear()
	var ld *fetch.LoginDelayError
	if errors.As(err, &ld) {
		// Not a failure: the server asks for the wait.
		if !na.quiet && !na.quietEmpty {
			fmt.Fprintf(stderr, "pouch fetch: %s: skipped: %v\n", name, err)
		}
		return st, err
	}
	if err != nil {
		// The sign-in's errors name the account themselves.
		fmt.Fprintf(stderr, "pouch fetch: %s: %s\n", name, strings.TrimPrefix(err.Error(), "account "+name+": "))
	}
	if !na.quiet && (!na.quietEmpty || err != nil || st.Fetched+st.Deleted+st.Marked+st.Recovered > 0) {
		fmt.Fprintf(stderr, "pouch fetch: %s\n", summary(name, a.MarkExisting, st, err))
	}
	return st, err
}

// summary is the one line printed per account and run.
func summary(name string, marking bool, st fetch.Stats, err error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: ", name)
	if st.DryRun && err != nil {
		b.WriteString("dry run FAILED: nothing could be checked")
		return b.String()
	}
	if marking {
		verb := "recorded"
		if st.DryRun {
			verb = "dry run: would record"
		}
		fmt.Fprintf(&b, "%s %d messages on the server as fetched, downloading and deleting nothing; later runs fetch only newer mail", verb, st.Marked)
		if err != nil {
			b.WriteString(", FAILED")
		}
		return b.String()
	}
	if st.DryRun {
		fmt.Fprintf(&b, "dry run: would fetch %d (%s), delete %d, keep %d, skip %d", st.Fetched, humanBytes(st.Bytes), st.Deleted, st.Kept, st.Skipped)
		return b.String()
	}
	fmt.Fprintf(&b, "%d fetched (%s) in %s", st.Fetched, humanBytes(st.Bytes), st.Elapsed.Round(time.Millisecond))
	if st.Elapsed > 0 && st.Bytes > 0 {
		fmt.Fprintf(&b, " (%s/s)", humanBytes(int64(float64(st.Bytes)/st.Elapsed.Seconds())))
	}
	fmt.Fprintf(&b, ", %d deleted, %d kept on server, %d skipped", st.Deleted, st.Kept, st.Skipped)
	if st.Recovered > 0 {
		fmt.Fprintf(&b, ", %d recovered from an interrupted run", st.Recovered)
	}
	if st.Stopped {
		b.WriteString(", stopped by a signal")
	}
	if err != nil {
		b.WriteString(", FAILED")
	}
	return b.String()
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// reporter prints warnings and, on a terminal, a progress bar.
type reporter struct {
	w     io.Writer
	name  string
	quiet bool
	bar   bool

	mu          sync.Mutex
	total       int
	totalBytes  int64
	done        int
	doneBytes   int64
	start, last time.Time
	drawn       bool
}

func (r *reporter) Plan(msgs int, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.total, r.totalBytes, r.start = msgs, bytes, time.Now()
}

func (r *reporter) Fetched(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done++
	r.doneBytes += n
	if r.bar && (time.Since(r.last) > 100*time.Millisecond || r.done == r.total) {
		r.last = time.Now()
		r.draw()
	}
}

func (r *reporter) Warn(msg string) {
	if r.quiet {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLocked()
	fmt.Fprintf(r.w, "pouch fetch: %s: warning: %s\n", r.name, msg)
}

// draw renders "name [#####-----] 120/2000 480.0 KiB 1.2 MiB/s ETA 3s".
func (r *reporter) draw() {
	const width = 24
	frac := 1.0
	if r.totalBytes > 0 {
		frac = float64(r.doneBytes) / float64(r.totalBytes)
	} else if r.total > 0 {
		frac = float64(r.done) / float64(r.total)
	}
	frac = min(max(frac, 0), 1)
	filled := int(frac * width)
	el := time.Since(r.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(r.doneBytes) / el
	}
	eta := "?"
	if rate > 0 && r.totalBytes >= r.doneBytes {
		eta = time.Duration(float64(r.totalBytes-r.doneBytes) / rate * float64(time.Second)).Round(time.Second).String()
	}
	fmt.Fprintf(r.w, "\r\x1b[K%s [%s%s] %d/%d %s %s/s ETA %s", r.name,
		strings.Repeat("#", filled), strings.Repeat("-", width-filled),
		r.done, r.total, humanBytes(r.doneBytes), humanBytes(int64(rate)), eta)
	r.drawn = true
}

func (r *reporter) clear() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLocked()
}

func (r *reporter) clearLocked() {
	if r.drawn {
		fmt.Fprint(r.w, "\r\x1b[K")
		r.drawn = false
	}
}
