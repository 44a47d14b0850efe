// Package ldapsource reads accounts from an LDAP directory (OpenLDAP, 389,
// Active Directory) with github.com/go-ldap/ldap/v3, as Dovecot's passdb
// ldap does: it is the auth.Backend behind an auth.Remote.
//
// An account is the one entry under Base that Filter finds, the name's
// placeholders in it escaped as RFC 4515 §3 asks (ldap.EscapeFilter), so
// that a name such as "*)(uid=*" matches nothing but itself. Its password
// is checked in one of two ways:
//
//   - bind = "user": Pouch binds as the entry's DN with the password the
//     client gave (RFC 4513 §5.1.3); the directory checks it, and no hash
//     leaves it. SCRAM and APOP, which need what is stored, are then not
//     offered. An empty password is refused before any bind, since a
//     simple bind with one is an unauthenticated bind that succeeds
//     (RFC 4513 §5.1.2).
//   - otherwise Pouch reads the PasswordAttribute (userPassword) and
//     checks it as it checks the users file: {CRYPT}$6$..., {ARGON2}
//     $argon2id$..., {BLF-CRYPT}, {SHA512-CRYPT}, {PLAIN}, ...
//
// The searches are made as BindDN with its password (a service account),
// or anonymously without one. Attributes maps the account's settings
// (auth.SettingFields) to the attributes that hold them.
package ldapsource

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"iter"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/pouchmail/pouch/auth"
)

// Config is an LDAP source's configuration: the [accounts] keys of pouch
// serve's configuration file with source = "ldap".
type Config struct {
	// URL is the directory's: ldap://host:389 or ldaps://host:636.
	URL string
	// StartTLS upgrades an ldap:// connection with StartTLS (RFC 4511
	// §4.14) before anything is sent.
	StartTLS bool
	// CAFile, if set, holds the CA certificates (PEM) that the directory's
	// certificate must chain to; otherwise the system's.
	CAFile string
	// Base is where the entries are searched (the whole subtree); it may
	// hold %u, %n and %d, escaped as RFC 4514 asks.
	Base string
	// Filter finds a name's entry, like (&(objectClass=inetOrgPerson)(mail=%u)).
	Filter string
	// Bind is "user" to check passwords by binding as the user's entry,
	// or "" to read PasswordAttribute.
	Bind string
	// BindDN and BindPassword are the service account that searches; none
	// searches anonymously.
	BindDN, BindPassword string
	// PasswordAttribute holds the stored password (userPassword).
	PasswordAttribute string
	// Attributes maps settings (auth.SettingFields) to attributes.
	Attributes map[string]string
	// UserAttribute is the attribute that holds an entry's account name,
	// for listing the accounts; by default the one Filter compares with %u
	// (or %n).
	UserAttribute string
	// IterateFilter finds every account; by default Filter with its
	// placeholders made "*".
	IterateFilter string
	// DomainFilter, if set, finds an entry when mail is taken for the
	// domain %d (searched under DomainBase, or Base).
	DomainFilter string
	DomainBase   string
	// Timeout bounds connecting and each request (default
	// auth.DefaultTimeout).
	Timeout time.Duration
}

// Source is an LDAP directory of accounts, an auth.Backend; in bind mode,
// NewBackend makes it an auth.Binder.
type Source struct {
	cfg     Config
	url     *url.URL
	tls     *tls.Config
	bind    bool
	attrs   []string // to read from an entry
	iterate string
	pool    chan *conn // idle connections
	slots   chan struct{}
	name    string
}

// binder is a Source in bind mode.
type binder struct{ *Source }

var (
	_ auth.Backend       = (*Source)(nil)
	_ auth.DomainBackend = (*Source)(nil)
	_ auth.Binder        = binder{}
)

// maxConns bounds the connections to the directory.
const maxConns = 8

// New checks cfg and returns the directory's backend: an auth.Binder when
// cfg.Bind is "user". It does not connect yet.
func New(cfg Config) (auth.Backend, error) {
	s, err := newSource(cfg)
	if err != nil {
		return nil, err
	}
	if s.bind {
		return binder{s}, nil
	}
	return s, nil
}

func newSource(cfg Config) (*Source, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = auth.DefaultTimeout
	}
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Host == "" || (u.Scheme != "ldap" && u.Scheme != "ldaps") {
		return nil, fmt.Errorf("url %q: want ldap://host:port or ldaps://host:port", cfg.URL)
	}
	if u.Scheme == "ldaps" && cfg.StartTLS {
		return nil, errors.New("start_tls is for ldap:// URLs: ldaps:// has TLS from the start")
	}
	s := &Source{cfg: cfg, url: u, pool: make(chan *conn, maxConns), slots: make(chan struct{}, maxConns),
		name: "LDAP " + u.Scheme + "://" + u.Host}
	if u.Scheme == "ldaps" || cfg.StartTLS {
		s.tls = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return nil, fmt.Errorf("tls_ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("tls_ca_file %s: no PEM certificate in it", cfg.CAFile)
			}
			s.tls.RootCAs = pool
		}
	}
	switch cfg.Bind {
	case "user":
		s.bind = true
	case "":
	default:
		return nil, fmt.Errorf(`bind %q: say "user" to bind as the user, or leave it out to read password_attribute`, cfg.Bind)
	}
	if cfg.Base == "" {
		return nil, errors.New("base is missing")
	}
	if cfg.Filter == "" {
		return nil, errors.New("filter is missing")
	}
	if err := checkTemplate(cfg.Filter); err != nil {
		return nil, fmt.Errorf("filter: %w", err)
	}
	if _, err := ldap.CompileFilter(expand(cfg.Filter, "x@example.org", ldap.EscapeFilter)); err != nil {
		return nil, fmt.Errorf("filter %q: %w", cfg.Filter, err)
	}
	if cfg.BindPassword != "" && cfg.BindDN == "" {
		return nil, errors.New("bind_password_file without bind_dn")
	}
	if !s.bind {
		if s.cfg.PasswordAttribute == "" {
			s.cfg.PasswordAttribute = "userPassword"
		}
		s.attrs = append(s.attrs, s.cfg.PasswordAttribute)
	}
	known := auth.SettingFields()
	for field, attr := range cfg.Attributes {
		if !slices.Contains(known, field) {
			return nil, fmt.Errorf("attributes: %q is not a setting (%s)", field, strings.Join(known, ", "))
		}
		if attr == "" {
			return nil, fmt.Errorf("attributes: %s names no attribute", field)
		}
		s.attrs = append(s.attrs, attr)
	}
	if s.cfg.UserAttribute == "" {
		s.cfg.UserAttribute = filterAttribute(cfg.Filter)
	}
	s.iterate = cfg.IterateFilter
	if s.iterate == "" {
		s.iterate = expand(cfg.Filter, "", func(string) string { return "*" })
	}
	if _, err := ldap.CompileFilter(s.iterate); err != nil {
		return nil, fmt.Errorf("iterate_filter %q: %w", s.iterate, err)
	}
	if cfg.DomainFilter != "" {
		if _, err := ldap.CompileFilter(expand(cfg.DomainFilter, "x@example.org", ldap.EscapeFilter)); err != nil {
			return nil, fmt.Errorf("domain_filter %q: %w", cfg.DomainFilter, err)
		}
	}
	return s, nil
}

var placeholder = regexp.MustCompile(`%(\{user\}|\{username\}|\{domain\}|[und%])`)

// checkTemplate refuses a template with a % that is no placeholder.
func checkTemplate(t string) error {
	rest := placeholder.ReplaceAllString(t, "")
	if i := strings.IndexByte(rest, '%'); i >= 0 {
		return fmt.Errorf("unknown placeholder in %q (use %%u for user@domain, %%n for the user, %%d for the domain, %%%% for %%)", t)
	}
	return nil
}

// expand fills the placeholders of a template with the parts of name, each
// passed through escape first.
func expand(t, name string, escape func(string) string) string {
	local, domain, _ := auth.SplitAddress(name)
	return placeholder.ReplaceAllStringFunc(t, func(p string) string {
		switch p {
		case "%u", "%{user}":
			return escape(name)
		case "%n", "%{username}":
			return escape(local)
		case "%d", "%{domain}":
			return escape(domain)
		}
		return "%"
	})
}

// filterAttribute is the attribute a filter template compares with %u,
// else with %n: (mail=%u) gives mail.
func filterAttribute(filter string) string {
	for _, p := range []string{"%u", "%{user}", "%n", "%{username}"} {
		if m := regexp.MustCompile(`\(([A-Za-z][A-Za-z0-9-]*)=` + regexp.QuoteMeta(p) + `\)`).FindStringSubmatch(filter); m != nil {
			return m[1]
		}
	}
	return "mail"
}

// String names the directory.
func (s *Source) String() string { return s.name }

// conn is a connection to the directory and whom it is bound as.
type conn struct {
	*ldap.Conn
	boundAs *string // nil: not bound yet, or as a user
	reused  bool    // taken from the idle ones
}

// get returns a connection, idle or new, bound as the service account (or
// anonymously). It blocks while maxConns are in use, until ctx is done.
func (s *Source) get(ctx context.Context) (*conn, error) {
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	var c *conn
	select {
	case c = <-s.pool:
		c.reused = true
		if c.IsClosing() {
			c.Close()
			c = nil
		}
	default:
	}
	if c == nil {
		var err error
		if c, err = s.dial(ctx); err != nil {
			<-s.slots
			return nil, err
		}
	}
	if c.boundAs == nil || *c.boundAs != s.cfg.BindDN {
		if err := s.serviceBind(ctx, c); err != nil {
			s.put(c, err)
			return nil, err
		}
	}
	return c, nil
}

// broken reports whether err is the connection's failure rather than an
// answer of the directory.
func broken(err error) bool {
	var le *ldap.Error
	return err != nil && (!errors.As(err, &le) || le.ResultCode >= ldap.ErrorNetwork)
}

// with runs f on a connection (get), and gives it back (put). When f finds
// a connection taken from the idle ones broken (the directory restarted
// since it was used), the other idle ones are closed too, as they are
// likely as stale, and f runs once more on a new connection: a restart
// costs no look-up its answer.
func (s *Source) with(ctx context.Context, f func(c *conn) error) error {
	for try := 0; ; try++ {
		c, err := s.get(ctx)
		if err != nil {
			return err
		}
		err = f(c)
		s.put(c, err)
		if !broken(err) || !c.reused || try > 0 || ctx.Err() != nil {
			return err
		}
		s.Close() // the idle connections
	}
}

// put gives c back: to the idle ones, or closed after err unless err is
// only a refusal by the directory.
func (s *Source) put(c *conn, err error) {
	if broken(err) {
		c.Close()
	} else {
		select {
		case s.pool <- c:
		default:
			c.Close()
		}
	}
	<-s.slots
}

// dial connects, with StartTLS when asked.
func (s *Source) dial(ctx context.Context) (*conn, error) {
	d := &net.Dialer{Timeout: s.cfg.Timeout}
	if dl, ok := ctx.Deadline(); ok {
		d.Deadline = dl
	}
	opts := []ldap.DialOpt{ldap.DialWithDialer(d)}
	if s.url.Scheme == "ldaps" {
		opts = append(opts, ldap.DialWithTLSConfig(s.tls))
	}
	lc, err := ldap.DialURL(s.url.String(), opts...)
	if err != nil {
		return nil, err
	}
	lc.SetTimeout(s.cfg.Timeout)
	if s.cfg.StartTLS {
		if err := s.during(ctx, lc, func() error { return lc.StartTLS(s.tls) }); err != nil {
			lc.Close()
			return nil, fmt.Errorf("StartTLS: %w", err)
		}
	}
	return &conn{Conn: lc}, nil
}

// during runs f on lc, closing lc if ctx ends first, so that a directory
// that stops answering holds nobody up longer than ctx allows.
func (s *Source) during(ctx context.Context, lc *ldap.Conn, f func() error) error {
	stop := context.AfterFunc(ctx, func() { lc.Close() })
	err := f()
	if !stop() && err != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// serviceBind binds c as the service account, or anonymously.
func (s *Source) serviceBind(ctx context.Context, c *conn) error {
	err := s.during(ctx, c.Conn, func() error {
		if s.cfg.BindDN == "" {
			return c.UnauthenticatedBind("")
		}
		return c.Bind(s.cfg.BindDN, s.cfg.BindPassword)
	})
	if err != nil {
		c.boundAs = nil
		if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
			return fmt.Errorf("bind_dn %s: the directory refuses its password (bind_password_file)", s.cfg.BindDN)
		}
		return fmt.Errorf("bind as %s: %w", cmp(s.cfg.BindDN, "anonymous"), err)
	}
	dn := s.cfg.BindDN
	c.boundAs = &dn
	return nil
}

func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// search runs one search with the service connection.
func (s *Source) search(ctx context.Context, base, filter string, attrs []string, sizeLimit int) (*ldap.SearchResult, error) {
	var res *ldap.SearchResult
	timeLimit := int(s.cfg.Timeout / time.Second)
	err := s.with(ctx, func(c *conn) error {
		return s.during(ctx, c.Conn, func() error {
			var err error
			res, err = c.Search(ldap.NewSearchRequest(base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
				sizeLimit, timeLimit, false, filter, attrs, nil))
			return err
		})
	})
	return res, err
}

// Lookup finds name's entry.
func (s *Source) Lookup(ctx context.Context, name string) (auth.Record, error) {
	base := expand(s.cfg.Base, name, ldap.EscapeDN)
	filter := expand(s.cfg.Filter, name, ldap.EscapeFilter)
	res, err := s.search(ctx, base, filter, s.attrs, 2)
	switch {
	case ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) || err == nil && len(res.Entries) > 1:
		return auth.Record{}, &auth.AccountError{Name: name, Where: s.name + ": " + filter,
			Errs: []error{errors.New("the filter finds more than one entry for this name")}}
	case ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) && base != s.cfg.Base:
		return auth.Record{}, auth.ErrNoSuchUser // a base made of the name (ou=%d) that does not exist
	case err != nil:
		return auth.Record{}, fmt.Errorf("search %s under %s: %w", filter, base, err)
	case len(res.Entries) == 0:
		return auth.Record{}, auth.ErrNoSuchUser
	}
	e := res.Entries[0]
	rec := auth.Record{Where: e.DN, Bind: e.DN, Fields: make(map[string]string)}
	if !s.bind {
		rec.Password = e.GetAttributeValue(s.cfg.PasswordAttribute)
	}
	for field, attr := range s.cfg.Attributes {
		if vals := e.GetAttributeValues(attr); len(vals) > 0 {
			rec.Fields[field] = strings.Join(vals, ",")
		}
	}
	return rec, nil
}

// CheckPassword binds as the entry of rec with password; a zero rec binds
// as an entry that does not exist, which fails as a wrong password does.
func (b binder) CheckPassword(ctx context.Context, rec auth.Record, password string) (bool, error) {
	if password == "" {
		return false, nil // would be an unauthenticated bind (RFC 4513 §5.1.2)
	}
	dn := rec.Bind
	if dn == "" {
		r := make([]byte, 12)
		rand.Read(r)
		dn = "cn=" + hex.EncodeToString(r) + "," + b.cfg.Base
	}
	err := b.with(ctx, func(c *conn) error {
		c.boundAs = nil // whatever happens, no longer the service account
		return b.during(ctx, c.Conn, func() error { return c.Bind(dn, password) })
	})
	switch {
	case err == nil:
		return true, nil
	case ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials),
		ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidDNSyntax),
		ldap.IsErrorWithCode(err, ldap.LDAPResultInappropriateAuthentication),
		ldap.IsErrorWithCode(err, ldap.LDAPResultUnwillingToPerform):
		// A wrong password, or one the directory refuses for that entry
		// (locked by a password policy): a failed login.
		return false, nil
	}
	return false, fmt.Errorf("bind as %s: %w", dn, err)
}

// Ping binds a connection as the service account (or anonymously) and
// reads the root DSE.
func (s *Source) Ping(ctx context.Context) error {
	return s.with(ctx, func(c *conn) error {
		return s.during(ctx, c.Conn, func() error {
			_, err := c.Search(ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases,
				1, int(s.cfg.Timeout/time.Second), false, "(objectClass=*)", []string{"1.1"}, nil))
			return err
		})
	})
}

// Names lists the accounts: the UserAttribute of each entry IterateFilter
// finds, read in pages of 500 (RFC 2696).
func (s *Source) Names(ctx context.Context) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		base := s.cfg.Base
		if placeholder.MatchString(base) {
			yield("", errors.New("base depends on the name: the accounts cannot be listed"))
			return
		}
		var res *ldap.SearchResult
		err := s.with(ctx, func(c *conn) error {
			return s.during(ctx, c.Conn, func() error {
				var err error
				res, err = c.SearchWithPaging(ldap.NewSearchRequest(base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
					0, 0, false, s.iterate, []string{s.cfg.UserAttribute}, nil), 500)
				return err
			})
		})
		if err != nil {
			yield("", fmt.Errorf("search %s under %s: %w", s.iterate, base, err))
			return
		}
		for _, e := range res.Entries {
			for _, name := range e.GetAttributeValues(s.cfg.UserAttribute) {
				if !yield(name, nil) {
					return
				}
			}
		}
	}
}

// HasDomain searches DomainFilter, if set; without it every domain is
// taken.
func (s *Source) HasDomain(ctx context.Context, domain string) (bool, error) {
	if s.cfg.DomainFilter == "" {
		return true, nil
	}
	name := "@" + domain
	template := cmp(s.cfg.DomainBase, s.cfg.Base)
	base := expand(template, name, ldap.EscapeDN)
	res, err := s.search(ctx, base, expand(s.cfg.DomainFilter, name, ldap.EscapeFilter), []string{"1.1"}, 1)
	switch {
	case ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded):
		return true, nil
	case ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) && base != template:
		return false, nil // a base made of the domain (ou=%d) that does not exist
	case err != nil:
		return false, fmt.Errorf("domain_filter: %w", err)
	}
	return len(res.Entries) > 0, nil
}

// Close closes the idle connections.
func (s *Source) Close() error {
	for {
		select {
		case c := <-s.pool:
			c.Close()
		default:
			return nil
		}
	}
}
