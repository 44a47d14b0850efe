package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pouchmail/pouch/audit"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/guard/pgbans"
	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/internal/units"
	"github.com/pouchmail/pouch/metrics"
	"github.com/pouchmail/pouch/server"
)

// defenceConfig are pouch serve's settings for the built-in defences.
type defenceConfig struct {
	BanAfter       intSetting      `toml:"ban-after"`
	BanWindow      durationSetting `toml:"ban-window"`
	BanTime        durationSetting `toml:"ban-time"`
	Trusted        textSetting     `toml:"trusted-networks"`
	AllowIP        textSetting     `toml:"allow-ip"`
	DenyIP         textSetting     `toml:"deny-ip"`
	GeoIPDB        textSetting     `toml:"geoip-db"`
	AllowCountry   textSetting     `toml:"allow-country"`
	DenyCountry    textSetting     `toml:"deny-country"`
	MaxConns       intSetting      `toml:"max-connections"`
	MaxConnsPerIP  intSetting      `toml:"max-connections-per-ip"`
	MaxPreLogin    intSetting      `toml:"max-prelogin-connections"`
	MaxPerUser     intSetting      `toml:"max-sessions-per-user"`
	LoginDelay     durationSetting `toml:"login-delay"`
	PasswordMaxAge textSetting     `toml:"password-max-age"`
	AuditLog       textSetting     `toml:"audit-log"`
	Metrics        textSetting     `toml:"metrics"`
	Pprof          boolSetting     `toml:"pprof"`
	RunAs          textSetting     `toml:"run-as"`
}

func (d *defenceConfig) register(fs *flag.FlagSet) {
	intVar(fs, &d.BanAfter, "ban-after", 10, "lock a user name for an address after this `many` failed logins within --ban-window; ban an address failing for as many names, or 10 times as often (0: never)")
	durationVar(fs, &d.BanWindow, "ban-window", 15*time.Minute, "how `long` a failed login counts")
	durationVar(fs, &d.BanTime, "ban-time", 15*time.Minute, "the first ban's `length`; it doubles for repeat offenders, up to a day")
	textVar(fs, &d.Trusted, "trusted-networks", "", "`networks` (CIDR, comma-separated) never slowed down or banned")
	textVar(fs, &d.AllowIP, "allow-ip", "", "admit only these `networks` (CIDR, comma-separated)")
	textVar(fs, &d.DenyIP, "deny-ip", "", "refuse these `networks` (CIDR, comma-separated)")
	textVar(fs, &d.GeoIPDB, "geoip-db", "", "MaxMind-format country database `file` (GeoLite2-Country) for the country rules")
	textVar(fs, &d.AllowCountry, "allow-country", "", "admit only these `countries` (ISO codes, comma-separated)")
	textVar(fs, &d.DenyCountry, "deny-country", "", "refuse these `countries` (ISO codes, comma-separated)")
	intVar(fs, &d.MaxConns, "max-connections", 1000, "most POP3 connections at once (0: no limit)")
	intVar(fs, &d.MaxConnsPerIP, "max-connections-per-ip", 100, "most POP3 connections at once from one address, or IPv6 /64 (0: no limit)")
	intVar(fs, &d.MaxPreLogin, "max-prelogin-connections", 250, "most POP3 connections not logged in at once; past it, or --max-connections, the oldest of them is closed for a new one (0: no limit but --max-connections)")
	intVar(fs, &d.MaxPerUser, "max-sessions-per-user", 0, "most logged-in sessions per user (0: no limit beyond the maildrop lock)")
	durationVar(fs, &d.LoginDelay, "login-delay", 0, "LOGIN-DELAY: least `time` between two logins of a user (RFC 2449; the login_delay field overrides)")
	textVar(fs, &d.PasswordMaxAge, "password-max-age", "", "refuse passwords older than this `age`, like 90d (the password_max_age field overrides)")
	textVar(fs, &d.AuditLog, "audit-log", "", "audit log `file` (JSON lines; default DATA/audit.log; \"off\" turns it off)")
	textVar(fs, &d.Metrics, "metrics", "", "serve Prometheus /metrics, /healthz and /readyz on this `address` (like 127.0.0.1:9110)")
	boolVar(fs, &d.Pprof, "pprof", false, "also serve Go's profiler (/debug/pprof/) on the --metrics address, to see where the time goes")
	textVar(fs, &d.RunAs, "run-as", "", "after binding the ports, run as this `user` (when started as root)")
}

// defenceSettings are the checked settings of the defences: what opens the
// ban list, the access rules and the audit log (open).
type defenceSettings struct {
	guard       guard.Config // without the state file and the logger
	allow, deny []netip.Prefix
	geoipDB     string
	allowC      []string
	denyC       []string
	auditLog    string // "" when off
	metricsAddr string // "" when off
	pprof       bool   // the profiler on the metrics address
	runAs       string
}

// validate checks the settings, adding what is wrong to bad, and puts the
// limits into cfg.
func (d *defenceConfig) validate(src configSource, data string, cfg *server.Config, bad *problems) defenceSettings {
	nets := func(key string, v textSetting) []netip.Prefix {
		n, err := guard.ParseNets(v.String())
		if err != nil {
			bad.add(src.problem(key, "%v", err))
		}
		return n
	}
	s := defenceSettings{
		guard: guard.Config{
			Trusted:     nets("trusted-networks", d.Trusted),
			Window:      time.Duration(d.BanWindow),
			MaxFailures: int(d.BanAfter),
			BanTime:     time.Duration(d.BanTime),
		},
		allow:       nets("allow-ip", d.AllowIP),
		deny:        nets("deny-ip", d.DenyIP),
		geoipDB:     d.GeoIPDB.String(),
		allowC:      d.AllowCountry.list(),
		denyC:       d.DenyCountry.list(),
		auditLog:    d.AuditLog.String(),
		metricsAddr: d.Metrics.String(),
		pprof:       bool(d.Pprof),
		runAs:       d.RunAs.String(),
	}
	if s.geoipDB == "" {
		if len(s.allowC) > 0 {
			bad.add(src.problem("allow-country", "country rules need --geoip-db, a country database"))
		}
		if len(s.denyC) > 0 {
			bad.add(src.problem("deny-country", "country rules need --geoip-db, a country database"))
		}
	}
	switch s.auditLog {
	case "off":
		s.auditLog = ""
	case "":
		s.auditLog = filepath.Join(data, "audit.log")
	}
	bad.add(checkAddr(src, "metrics", s.metricsAddr))
	if s.pprof && s.metricsAddr == "" {
		bad.add(src.problem("pprof", "the profiler is served on the --metrics address: give one"))
	}
	cfg.MaxConnections, cfg.MaxConnectionsPerIP, cfg.MaxSessionsPerUser = int(d.MaxConns), int(d.MaxConnsPerIP), int(d.MaxPerUser)
	cfg.MaxPreLogin = int(d.MaxPreLogin)
	cfg.LoginDelay = time.Duration(d.LoginDelay)
	if v := d.PasswordMaxAge.String(); v != "" {
		age, err := units.ParseDuration(v)
		if err != nil {
			bad.add(src.problem("password-max-age", "%v", err))
		}
		cfg.PasswordMaxAge = age
	}
	return s
}

// open fills in the server configuration's defences: the ban list (in the
// data directory, or in the database shared with the other nodes), the
// access rules and the audit log. It returns what must be closed at the
// end.
func (d *defenceSettings) open(cfg *server.Config, src configSource, data string, mail storeSettings) (closers []func() error, err error) {
	if w := rootWarning(os.Geteuid(), d.runAs); w != "" && cfg.Logger != nil {
		cfg.Logger.Warn(w)
	}
	if d.guard.MaxFailures > 0 {
		gc := d.guard
		gc.StatePath, gc.Log = filepath.Join(data, "bans.json"), cfg.Logger
		var bans *pgbans.Store
		if mail.shared() {
			if bans, err = pgbans.Open(context.Background(), mail.url, cfg.Logger); err != nil {
				return nil, storeError(err, mail.url)
			}
			gc.Bans = bans
		}
		if cfg.Guard, err = guard.New(gc); err != nil {
			if bans != nil {
				bans.Close()
			}
			return nil, err
		}
		if bans != nil {
			closers = append(closers, watchBans(bans, cfg.Guard))
		}
	}
	if cfg.Rules, err = d.rules(src); err != nil {
		return nil, err
	}
	closers = append(closers, cfg.Rules.Close)
	if d.auditLog != "" {
		if cfg.Audit, err = audit.Open(d.auditLog); err != nil {
			return closers, err
		}
		closers = append(closers, cfg.Audit.Close)
	}
	if d.metricsAddr != "" {
		cfg.Metrics = metrics.New()
	}
	return closers, nil
}

// rules opens the access rules (and their country database).
func (d *defenceSettings) rules(src configSource) (*guard.Rules, error) {
	r, err := guard.NewRules(d.allow, d.deny, d.allowC, d.denyC, d.geoipDB)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", src.where("geoip-db"), err)
	}
	return r, nil
}

// banRetry is how often a node that lost its database connection tries
// again to be told of ban changes (reading the bans anew each time).
const banRetry = 2 * time.Second

// watchBans keeps g's bans up to date with the database's, as other nodes
// and pouch ban change them, until the function it returns is called.
func watchBans(bans *pgbans.Store, g *guard.Guard) func() error {
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); bans.Watch(ctx, banRetry, g.Reload) }()
	return func() error {
		stop()
		<-done
		bans.Close()
		return nil
	}
}

// usersWatchInterval is how often pouch serve checks the users file while no
// lookup does, so that a fault is logged (and /readyz fails) without waiting
// for mail or a login.
const usersWatchInterval = 5 * time.Second

// usersExpected reports whether the users file should list users at start,
// given the entries of the mail directory: it does once a user has had a
// Maildir (pouch user add makes one), so that a missing or empty users file
// beside them is a fault, not the first start of a server without users.
func usersExpected(mailEntries []os.DirEntry) bool {
	for _, e := range mailEntries {
		if !strings.HasPrefix(e.Name(), ".") && (e.IsDir() || e.Type()&fs.ModeSymlink != 0) {
			return true
		}
	}
	return false
}

// readiness is what /readyz reports: nil while the server serves with a
// usable accounts and, with --store, a database that answers; otherwise
// why not. While the accounts cannot be looked up, users not known before
// get temporary failures, and while the database cannot be reached every
// login and delivery does, so a load balancer should prefer another node.
func readiness(serving *atomic.Bool, users interface{ Fault() error }, mail any) func() error {
	db, _ := mail.(interface{ Ping(context.Context) error })
	return func() error {
		if !serving.Load() {
			return errors.New("not serving (starting or shutting down)")
		}
		if err := users.Fault(); err != nil {
			return err
		}
		if db != nil {
			ctx, cancel := context.WithTimeout(context.Background(), readyzTimeout)
			defer cancel()
			if err := db.Ping(ctx); err != nil {
				return errors.New("the database cannot be reached")
			}
		}
		return nil
	}
}

// readyzTimeout bounds the database check of /readyz.
const readyzTimeout = 2 * time.Second

// serveMetrics serves /metrics, /healthz (the process answers) and /readyz
// (ready returns nil) on addr.
func serveMetrics(ctx context.Context, addr string, m *metrics.Metrics, ready func() error, profile bool, log *slog.Logger) (stop func(), err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen metrics on %s: %v", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if profile {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(l)
	log.Info("listening", "protocol", "metrics", "addr", l.Addr().String())
	return func() { hs.Shutdown(ctx) }, nil
}

// dropPrivileges switches to the named user (and its primary group) after the
// privileged ports are bound.
func dropPrivileges(name string) error {
	uid, gid, err := lookupRunAs(name)
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		if os.Geteuid() == uid {
			return nil
		}
		return fmt.Errorf("--run-as %s needs to be started as root", name)
	}
	if err := syscall.Setgroups([]int{gid}); err != nil {
		return fmt.Errorf("--run-as: %v", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("--run-as: %v", err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("--run-as: %v", err)
	}
	return nil
}

// checkDataDir refuses a data directory that others could tamper with or
// read secrets from: one writable by group or others or owned by another
// user; a mail directory, or a user's Maildir, writable by group or others;
// a users file, secret key, ban list, audit log or TLS key (DATA/tls/key.pem,
// and each of keys that lies under DATA) that group or others can read or
// write. Each refusal is one sentence naming the path and the command that
// fixes it. The Maildirs are checked at the top only, not message by
// message. It returns the entries of the mail directory, which it lists to
// check the Maildirs (none when that is missing).
func checkDataDir(dir string, keys ...string) ([]os.DirEntry, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("data directory: %v", err)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("data directory %s is writable by group or others (mode %04o); run: chmod go-w %s", dir, fi.Mode().Perm(), dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() && st.Uid != 0 {
		return nil, fmt.Errorf("data directory %s belongs to uid %d, not to the user running pouch (uid %d)", dir, st.Uid, os.Geteuid())
	}
	private := []struct{ name, path string }{
		{"users file", filepath.Join(dir, "users")},
		{"secret key", filepath.Join(dir, "secret.key")},
		{"ban list", filepath.Join(dir, "bans.json")},
		{"audit log", filepath.Join(dir, "audit.log")},
		{"TLS key", filepath.Join(dir, "tls", "key.pem")},
	}
	for _, k := range keys {
		if under(dir, k) {
			private = append(private, struct{ name, path string }{"TLS key", k})
		}
	}
	for _, f := range private {
		fi, err := os.Stat(f.path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", f.name, err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("%s %s can be read or written by group or others (mode %04o); run: chmod 600 %s", f.name, f.path, fi.Mode().Perm(), f.path)
		}
	}
	mail := filepath.Join(dir, "mail")
	fi, err = os.Stat(mail)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mail directory: %v", err)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, fmt.Errorf("mail directory %s is writable by group or others (mode %04o); run: chmod go-w %s", mail, fi.Mode().Perm(), mail)
	}
	entries, err := os.ReadDir(mail)
	if err != nil {
		return nil, fmt.Errorf("mail directory: %v", err)
	}
	for _, e := range entries {
		p := filepath.Join(mail, e.Name())
		fi, err := os.Stat(p) // a Maildir may be a symbolic link
		if err != nil || !fi.IsDir() {
			continue
		}
		if fi.Mode().Perm()&0o022 != 0 {
			return nil, fmt.Errorf("maildir %s is writable by group or others (mode %04o); run: chmod go-w %s", p, fi.Mode().Perm(), p)
		}
	}
	return entries, nil
}

// under reports whether path lies inside dir.
func under(dir, path string) bool {
	d, err1 := filepath.Abs(dir)
	p, err2 := filepath.Abs(path)
	if err1 != nil || err2 != nil {
		return false
	}
	rel, err := filepath.Rel(d, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// rootWarning is the warning for a server left running as root: no --run-as
// and no service user.
func rootWarning(euid int, runAs string) string {
	if euid != 0 || runAs != "" {
		return ""
	}
	return "running as root: a flaw in the server would give the whole machine away; start it with --run-as USER (or as a service user, as in contrib/systemd/pouch.service)"
}

// loadSecretKey returns the server's secret key from DATA/secret.key, making
// it (32 random octets, mode 0600) on first start. It keeps the made-up SCRAM
// salts of unknown users the same across restarts.
func loadSecretKey(data string) ([]byte, error) {
	path := filepath.Join(data, "secret.key")
	key, err := os.ReadFile(path)
	if err == nil && len(key) >= 32 {
		return key, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("secret key: %v", err)
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if err := fsx.WriteFile(path, key, fsx.Options{Perm: 0o600}); err != nil {
		return nil, fmt.Errorf("secret key: %v", err)
	}
	return key, nil
}

// lookupRunAs returns the uid and gid of the --run-as user.
func lookupRunAs(name string) (uid, gid int, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, fmt.Errorf("--run-as: %v", err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, nil
}
