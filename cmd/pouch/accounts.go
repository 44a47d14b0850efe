package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/auth/ldapsource"
	"github.com/pouchmail/pouch/auth/sqlsource"
	"github.com/pouchmail/pouch/internal/units"
	"github.com/pouchmail/pouch/store/pg"
)

// accountsConfig is where pouch serve's accounts are kept: the
// --default-domain setting, and the [accounts] table of the configuration
// file, which names the source (the users file by default, an SQL
// database, an LDAP directory) and its keys.
type accountsConfig struct {
	DefaultDomain textSetting `toml:"default-domain"`
	// table holds the [accounts] table's keys as written, or nil.
	table map[string]any
	// store is the --store URL, whose accounts table is the source when
	// the [accounts] table names none; set by the command before validate.
	store string
}

func (c *accountsConfig) register(fs *flag.FlagSet) {
	textVar(fs, &c.DefaultDomain, "default-domain", "", "`domain` of the names given without one: alice logs in, and takes mail, as alice@DOMAIN (default: names are taken as they are)")
}

// decodeTable takes the [accounts] table (serveConfig is a tableDecoder).
func (c *serveConfig) decodeTable(key string, values map[string]any) (bool, error) {
	if key != "accounts" {
		return false, nil
	}
	for k, v := range values {
		kind, ok := accountKeys[k]
		if !ok {
			return true, fmt.Errorf("unknown key %q", k)
		}
		switch kind {
		case keyText:
			if _, ok := v.(string); !ok {
				return true, fmt.Errorf("key %q: want a string", k)
			}
		case keyBool:
			if _, ok := v.(bool); !ok {
				return true, fmt.Errorf("key %q: want true or false", k)
			}
		case keyDuration:
			switch v.(type) {
			case string, int64:
			default:
				return true, fmt.Errorf("key %q: want a duration such as \"5m\"", k)
			}
		case keyTable:
			t, ok := v.(map[string]any)
			if !ok {
				return true, fmt.Errorf("key %q: want a table of settings and attribute names", k)
			}
			for field, attr := range t {
				if _, ok := attr.(string); !ok {
					return true, fmt.Errorf("key %q: %s: want an attribute name", k, field)
				}
			}
		}
	}
	c.table = values
	return true, nil
}

// The kinds of value of the [accounts] keys.
type keyKind int

const (
	keyText keyKind = iota
	keyBool
	keyDuration
	keyTable
)

// accountKeys are the keys of the [accounts] table, with the source that
// takes each ("" for all).
var accountKeys = map[string]keyKind{
	"source": keyText, "cache_ttl": keyDuration, "cache_negative_ttl": keyDuration, "timeout": keyDuration,
	// sql
	"driver": keyText, "dsn": keyText, "password_file": keyText, "password_query": keyText,
	"iterate_query": keyText, "domain_query": keyText,
	// ldap
	"url": keyText, "base": keyText, "filter": keyText, "bind": keyText, "bind_dn": keyText,
	"bind_password_file": keyText, "password_attribute": keyText, "start_tls": keyBool,
	"tls_ca_file": keyText, "attributes": keyTable, "user_attribute": keyText,
	"iterate_filter": keyText, "domain_filter": keyText, "domain_base": keyText,
}

var (
	commonAccountKeys = []string{"source", "cache_ttl", "cache_negative_ttl", "timeout"}
	sqlAccountKeys    = []string{"driver", "dsn", "password_file", "password_query", "iterate_query", "domain_query"}
)

// Sources of accounts.
const (
	sourcePasswd = "passwd-file"
	sourceSQL    = "sql"
	sourceLDAP   = "ldap"
	// sourceStore is Pouch's own accounts table in the --store database:
	// an SQL source with built-in queries (store/pg), the default with
	// --store.
	sourceStore = "store"
)

// accountsSettings are the checked settings of the accounts.
type accountsSettings struct {
	source        string // sourcePasswd, sourceSQL or sourceLDAP
	defaultDomain string
	sql           sqlsource.Config
	ldap          ldapsource.Config
	// bindPasswordFile holds the LDAP service account's password, read
	// when the source is opened.
	bindPasswordFile string
	remote           auth.RemoteOptions
	where            string // "FILE: [accounts]", for messages
	store            string // the --store URL, for sourceStore
}

func (c *accountsConfig) text(k string) string {
	s, _ := c.table[k].(string)
	return s
}

// validate checks the accounts settings, adding what is wrong to bad. The
// queries, filters and URLs are checked; nothing is connected to.
func (c *accountsConfig) validate(src configSource, bad *problems) accountsSettings {
	s := accountsSettings{source: sourcePasswd, where: src.file + ": [accounts]", store: c.store,
		remote: auth.RemoteOptions{CacheTTL: auth.DefaultCacheTTL, NegativeTTL: auth.DefaultNegativeTTL, Timeout: auth.DefaultTimeout}}
	if c.store != "" {
		s.source = sourceStore
		if c.table == nil {
			s.where = "--store"
		}
	}
	if d := c.DefaultDomain.String(); d != "" {
		s.defaultDomain = auth.NormalizeDomain(d)
		if strings.ContainsAny(d, "@/ \t") || strings.HasPrefix(d, ".") {
			bad.add(src.problem("default-domain", "%q is not a domain", d))
		}
	}
	if c.table == nil {
		s.sql = storeQueries(s)
		return s
	}
	problem := func(format string, args ...any) {
		bad.add(usageError("%s: %s", s.where, fmt.Sprintf(format, args...)))
	}
	if v := c.text("source"); v != "" {
		s.source = v
	}
	var allowed []string
	switch s.source {
	case sourcePasswd:
		allowed = []string{"source"}
	case sourceSQL:
		allowed = append(slices.Clone(commonAccountKeys), sqlAccountKeys...)
	case sourceLDAP:
		allowed = slices.Clone(commonAccountKeys)
		for k := range accountKeys {
			if !slices.Contains(sqlAccountKeys, k) && !slices.Contains(commonAccountKeys, k) {
				allowed = append(allowed, k)
			}
		}
	case sourceStore:
		allowed = slices.Clone(commonAccountKeys)
		if s.store == "" {
			problem("source %q is the accounts table of the --store database: give --store", s.source)
		}
	default:
		problem("source %q: say \"passwd-file\", \"sql\", \"ldap\" or \"store\"", s.source)
		return s
	}
	keys := make([]string, 0, len(c.table))
	for k := range c.table {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !slices.Contains(allowed, k) {
			problem("key %q is not for source = %q", k, s.source)
		}
	}
	for k, dst := range map[string]*time.Duration{"cache_ttl": &s.remote.CacheTTL,
		"cache_negative_ttl": &s.remote.NegativeTTL, "timeout": &s.remote.Timeout} {
		v, ok := c.table[k]
		if !ok {
			continue
		}
		text := fmt.Sprint(v)
		if n, ok := v.(int64); ok {
			text = strconv.FormatInt(n, 10) + "s" // a number: seconds, as Dovecot's
		}
		d, err := units.ParseDuration(text)
		switch {
		case err != nil:
			problem("key %q: %v", k, err)
		case d < 0 || k == "timeout" && d == 0:
			problem("key %q: %v is too short", k, d)
		default:
			*dst = d
		}
	}
	switch s.source {
	case sourceStore:
		s.sql = storeQueries(s)
	case sourceSQL:
		s.sql = sqlsource.Config{Driver: c.text("driver"), DSN: c.text("dsn"), PasswordFile: c.text("password_file"),
			PasswordQuery: c.text("password_query"), IterateQuery: c.text("iterate_query"),
			DomainQuery: c.text("domain_query"), Timeout: s.remote.Timeout}
		if s.sql.DSN == "" {
			problem("dsn is missing: say where the database is")
		}
		check := s.sql
		check.PasswordFile = "" // read at the start
		if db, err := sqlsource.Open(check); err != nil {
			problem("%v", err)
		} else {
			db.Close()
		}
	case sourceLDAP:
		attrs := map[string]string{}
		if t, ok := c.table["attributes"].(map[string]any); ok {
			for field, attr := range t {
				attrs[field] = attr.(string)
			}
		}
		start, _ := c.table["start_tls"].(bool)
		s.ldap = ldapsource.Config{URL: c.text("url"), StartTLS: start, CAFile: c.text("tls_ca_file"),
			Base: c.text("base"), Filter: c.text("filter"), Bind: c.text("bind"), BindDN: c.text("bind_dn"),
			PasswordAttribute: c.text("password_attribute"), Attributes: attrs,
			UserAttribute: c.text("user_attribute"), IterateFilter: c.text("iterate_filter"),
			DomainFilter: c.text("domain_filter"), DomainBase: c.text("domain_base"), Timeout: s.remote.Timeout}
		s.bindPasswordFile = c.text("bind_password_file")
		switch {
		case s.ldap.URL == "":
			problem("url is missing: say where the directory is (ldap://host:389 or ldaps://host:636)")
		case s.ldap.Bind == "user" && s.ldap.PasswordAttribute != "":
			problem("password_attribute is for reading passwords; with bind = \"user\" the directory checks them")
		case s.bindPasswordFile != "" && s.ldap.BindDN == "":
			problem("bind_password_file without bind_dn")
		case s.ldap.BindDN != "" && s.bindPasswordFile == "":
			problem("bind_dn without bind_password_file: say which file holds its password")
		}
		if _, err := ldapsource.New(s.ldap); err != nil && s.ldap.URL != "" {
			problem("%v", err)
		}
	}
	return s
}

// warnings are the accounts settings that are allowed but unwise.
func (s accountsSettings) warnings() []string {
	var out []string
	if s.source == sourceLDAP && s.ldap.Bind == "user" && !strings.HasPrefix(s.ldap.URL, "ldaps:") && !s.ldap.StartTLS &&
		!loopbackURL(s.ldap.URL) {
		out = append(out, s.where+": the users' passwords go to "+s.ldap.URL+" unencrypted: use ldaps:// or start_tls = true")
	}
	return out
}

// loopbackURL reports whether an ldap:// URL names a loopback host.
func loopbackURL(u string) bool {
	host := strings.TrimPrefix(strings.TrimPrefix(u, "ldap://"), "ldaps://")
	host, _, _ = strings.Cut(host, "/")
	if h, _, ok := strings.Cut(host, ":"); ok && !strings.HasPrefix(host, "[") {
		host = h
	}
	return host == "localhost" || strings.HasPrefix(host, "127.") || host == "[::1]" || strings.HasPrefix(host, "[::1]:")
}

// storeQueries is the SQL source that reads the accounts table of the
// --store database.
func storeQueries(s accountsSettings) sqlsource.Config {
	pw, iterate, domain := pg.AccountQueries(auth.SettingFields())
	return sqlsource.Config{Driver: "postgres", DSN: s.store, PasswordQuery: pw, IterateQuery: iterate,
		DomainQuery: domain, Timeout: s.remote.Timeout}
}

// accounts is the source of accounts that pouch serve, deliver and user
// open: the users file, or a database or directory behind an auth.Remote.
type accounts struct {
	users  *auth.Users
	remote *auth.Remote
	// stop ends the following of the accounts table's changes (store).
	stop func()
}

// accountsRetry is how often a node that lost its database connection
// tries again to be told of account changes.
const accountsRetry = 2 * time.Second

// openAccounts opens the source of the settings. The users file is in
// data; expected says that it should list users (usersExpected). A
// database or directory is not connected to yet: Watch pings it.
func openAccounts(s accountsSettings, data string, expected bool, log *slog.Logger) (*accounts, error) {
	var (
		b   auth.Backend
		err error
	)
	switch s.source {
	case sourceStore, sourceSQL:
		b, err = sqlsource.Open(s.sql)
	case sourceLDAP:
		cfg := s.ldap
		if s.bindPasswordFile != "" {
			f, err := os.ReadFile(s.bindPasswordFile)
			if err != nil {
				return nil, fmt.Errorf("%s: bind_password_file: %v", s.where, err)
			}
			line, _, _ := strings.Cut(string(f), "\n")
			cfg.BindPassword = strings.TrimRight(line, "\r")
			if cfg.BindPassword == "" {
				return nil, fmt.Errorf("%s: bind_password_file %s is empty", s.where, s.bindPasswordFile)
			}
		}
		b, err = ldapsource.New(cfg)
	default:
		users := auth.OpenUsersWith(filepath.Join(data, "users"), auth.UsersOptions{Expected: expected, Logger: log})
		if log != nil {
			for _, w := range users.Warnings() {
				log.Warn("users file", "problem", w)
			}
		}
		return &accounts{users: users}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %v", s.where, err)
	}
	opts := s.remote
	opts.Logger = log
	a := &accounts{remote: auth.NewRemote(b, opts)}
	if s.source == sourceStore && log != nil {
		// pouch serve: every change of the table (pouch user --store,
		// on any machine) is taken in at once, not after the TTL.
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			pg.Watch(ctx, s.store, pg.AccountsChannel, accountsRetry, func() error { a.remote.Flush(); return nil }, log)
		}()
		a.stop = func() { cancel(); <-done }
	}
	return a, nil
}

// source is the source as the server, LMTP and retention take it.
func (a *accounts) source() auth.Source {
	if a.remote != nil {
		return a.remote.Source()
	}
	return a.users
}

// describe names the source for logs.
func (a *accounts) describe() string {
	if a.remote != nil {
		return a.remote.String()
	}
	return "users file"
}

// watch checks the source until ctx is done, so that a fault is seen (and
// its end) while no lookup happens.
func (a *accounts) watch(ctx context.Context) {
	if a.remote != nil {
		a.remote.Watch(ctx, usersWatchInterval)
		return
	}
	a.users.Watch(ctx, usersWatchInterval)
}

// reload reads the users file again, or forgets the cached look-ups of a
// database or directory (as doveadm auth cache flush). The error says what
// was kept.
func (a *accounts) reload(log *slog.Logger) error {
	if a.remote != nil {
		a.remote.Flush()
		log.Info("reload: account cache flushed", "source", a.remote.String())
		return nil
	}
	if err := a.users.Reload(); err != nil {
		log.Error("reload: keeping the users loaded before", "err", err)
		return fmt.Errorf("kept the users loaded before (%v)", err)
	}
	for _, w := range a.users.Warnings() {
		log.Warn("users file", "problem", w)
	}
	return nil
}

// close closes the connections to a database or directory.
func (a *accounts) close() error {
	if a.stop != nil {
		a.stop()
	}
	if a.remote != nil {
		return a.remote.Close()
	}
	return nil
}

// probeAccounts is check-config's look at the accounts: the source is
// asked once (the iterate query or filter, and, for user, the password
// query or search and the domain query), and what it returned is written
// to w. A source that cannot be used is a problem.
func probeAccounts(s accountsSettings, a *accounts, user string, w interface{ Write([]byte) (int, error) }, bad *problems) {
	if a.remote == nil {
		if user == "" {
			return
		}
		name := auth.AccountName(user, s.defaultDomain)
		acct, err := a.users.Account(name)
		// A user who cannot log in fails the check: scripts ask for one.
		switch {
		case errors.Is(err, auth.ErrNoSuchUser):
			bad.add(fmt.Errorf("--check-user %s: no such user in the users file", name))
		case err != nil:
			bad.add(fmt.Errorf("--check-user %s: %s", name, plainError(err)))
		default:
			fmt.Fprintf(w, "check-user %s: found; credentials: %s\n", name, acct.Credentials)
			printAccount(w, acct)
		}
		return
	}
	r := a.remote
	ctx, cancel := context.WithTimeout(context.Background(), 4*s.remote.Timeout)
	defer cancel()
	n := 0
	var listErr error
	for acct, err := range r.Accounts() {
		if err != nil && !errors.Is(err, auth.ErrInvalidAccount) {
			listErr = err
			break
		}
		if n < 5 {
			fmt.Fprintf(w, "accounts: %s\n", acct.Name)
		}
		n++
		if n >= 1000 {
			break
		}
	}
	switch {
	case listErr != nil && strings.Contains(listErr.Error(), "cannot be listed"):
		fmt.Fprintf(w, "note: %v\n", listErr)
	case listErr != nil:
		bad.add(fmt.Errorf("%s: listing the accounts: %v", s.where, listErr))
	case n >= 1000:
		fmt.Fprintf(w, "accounts: at least %d listed (the first 1000 looked up)\n", n)
	default:
		fmt.Fprintf(w, "accounts: %d listed\n", n)
	}
	if user == "" {
		if listErr == nil && n == 0 {
			if err := r.Source().Fault(); err != nil {
				bad.add(err)
			}
		}
		return
	}
	name := auth.AccountName(user, s.defaultDomain)
	rec, acct, err := r.Inspect(ctx, name)
	switch {
	case errors.Is(err, auth.ErrNoSuchUser):
		bad.add(fmt.Errorf("--check-user %s: no such account", name))
	case errors.Is(err, auth.ErrInvalidAccount):
		bad.add(fmt.Errorf("--check-user %s: found in %s, but refused: %s", name, rec.Where, refusedAccount(err)))
	case err != nil:
		bad.add(fmt.Errorf("%s: looking up %s: %v", s.where, name, err))
		return
	default:
		fmt.Fprintf(w, "check-user %s: found in %s\n", name, rec.Where)
		switch {
		case s.source == sourceLDAP && s.ldap.Bind == "user":
			fmt.Fprintf(w, "  password: checked by binding as %s\n", rec.Bind)
		case rec.Password == "":
			fmt.Fprintf(w, "  password: none: this user cannot log in\n")
		default:
			scheme := "CRYPT"
			if strings.HasPrefix(rec.Password, "{") {
				scheme, _, _ = strings.Cut(rec.Password[1:], "}")
			}
			fmt.Fprintf(w, "  password: {%s}, usable for %s\n", scheme, acct.Credentials)
		}
		fields := make([]string, 0, len(rec.Fields))
		for k, v := range rec.Fields {
			fields = append(fields, k+" = "+strconv.Quote(v))
		}
		sort.Strings(fields)
		for _, f := range fields {
			fmt.Fprintf(w, "  %s\n", f)
		}
		if len(rec.Ignored) > 0 {
			fmt.Fprintf(w, "  ignored (not settings Pouch reads): %s\n", strings.Join(rec.Ignored, ", "))
		}
		printAccount(w, acct)
	}
	if _, domain, ok := auth.SplitAddress(name); ok {
		has, err := r.HasDomain(domain)
		switch {
		case err != nil:
			bad.add(fmt.Errorf("%s: domain %s: %v", s.where, domain, err))
		case has:
			fmt.Fprintf(w, "domain %s: mail is taken\n", domain)
		default:
			fmt.Fprintf(w, "domain %s: mail is refused (550 5.1.2)\n", domain)
		}
	}
}

// printAccount writes the settings an account sets.
func printAccount(w interface{ Write([]byte) (int, error) }, a auth.Account) {
	if a.Disabled {
		fmt.Fprintf(w, "  disabled: POP3 access is off\n")
	}
	if a.Quota.Storage.Set {
		fmt.Fprintf(w, "  quota: %s\n", units.FormatSize(a.Quota.Storage.Value))
	}
	if a.Quota.Messages.Set {
		fmt.Fprintf(w, "  quota: %d messages\n", a.Quota.Messages.Value)
	}
	if a.LoginDelay.Set {
		fmt.Fprintf(w, "  login delay: %v\n", a.LoginDelay.Value)
	}
	for _, l := range a.Retention.Lines() {
		fmt.Fprintf(w, "  %s\n", l)
	}
}
