package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/xdg-go/scram"
	"golang.org/x/sync/singleflight"
)

// Backend is a database or a directory of accounts: the SQL and LDAP
// sources (auth/sqlsource, auth/ldapsource). A Remote reads accounts
// through it, caches them and tells what it cannot reach from what it does
// not have. Names given to it are normalized (NormalizeName).
type Backend interface {
	// Lookup returns the record of name. The error is ErrNoSuchUser when
	// there is none; an *AccountError when the record cannot be used (such
	// as two records for one name), which refuses the account; anything
	// else means that the backend cannot tell now.
	Lookup(ctx context.Context, name string) (Record, error)
	// Names lists the names of every account; a listing cut short ends
	// with the error.
	Names(ctx context.Context) iter.Seq2[string, error]
	// Ping checks that the backend answers.
	Ping(ctx context.Context) error
	// String names the backend for logs and errors, without any secret,
	// as in "PostgreSQL 127.0.0.1:5432/mail".
	String() string
}

// Record is an account as a Backend reads it: strings, which the Remote
// checks as it checks a line of the users file.
type Record struct {
	// Password is the stored password, in any scheme the users file takes
	// ({ARGON2ID}..., {BLF-CRYPT}..., {PLAIN}...), or "" for none. A
	// Binder leaves it empty.
	Password string
	// Fields are the account's settings, named as the users file's extra
	// fields (quota_storage, login_delay, scram_sha_256, ...; "nologin"
	// and "disabled" are booleans here), with a value for each one the
	// record sets. A setting that is not set is absent, never "".
	Fields map[string]string
	// Ignored names what the record had besides the password and the
	// settings (columns or attributes that Pouch does not read), for
	// check-config.
	Ignored []string
	// Where says where the record is kept, for logs: "password_query",
	// an entry's DN.
	Where string
	// Bind is what a Binder checks a password with: the entry's DN.
	Bind string
}

// Binder is a Backend that checks passwords itself, as an LDAP directory
// does when Pouch binds as the user: no password hash leaves it, so SCRAM
// and APOP cannot be offered for its accounts.
type Binder interface {
	Backend
	// CheckPassword reports whether password is the password of the
	// account of rec (a record that Lookup returned). Given a zero rec, for
	// a name with no account, it takes about as long and returns false.
	// The error means that it could not check.
	CheckPassword(ctx context.Context, rec Record, password string) (bool, error)
}

// DomainBackend is a Backend that knows which domains it has accounts in
// (an SQL domain_query, an LDAP domain_filter).
type DomainBackend interface {
	Backend
	// HasDomain reports whether mail for domain is taken. The error means
	// that it could not tell now.
	HasDomain(ctx context.Context, domain string) (bool, error)
}

// Defaults of RemoteOptions.
const (
	// DefaultCacheTTL is how long a looked-up account is used before it is
	// looked up again: a password change or a disabled account takes
	// effect within it (a new password at once, see Remote).
	DefaultCacheTTL = 5 * time.Minute
	// DefaultNegativeTTL is how long a name with no account stays known as
	// such.
	DefaultNegativeTTL = time.Minute
	// DefaultTimeout bounds each look-up.
	DefaultTimeout = 5 * time.Second
	// DefaultRetryEvery is how often, while the backend cannot be reached,
	// a look-up or Watch tries it again.
	DefaultRetryEvery = time.Second
	// maxCacheEntries bounds the cache.
	maxCacheEntries = 100_000
)

// RemoteOptions are the settings of a Remote.
type RemoteOptions struct {
	// CacheTTL is how long an account looked up is used without asking
	// the backend again (Dovecot's auth_cache_ttl); 0 caches nothing.
	CacheTTL time.Duration
	// NegativeTTL is the same for a name with no account (Dovecot's
	// auth_cache_negative_ttl); 0 caches no such answer.
	NegativeTTL time.Duration
	// Timeout bounds each request to the backend (0: DefaultTimeout); one
	// that takes longer is a failure of the backend.
	Timeout time.Duration
	// RetryEvery is how often, while the backend cannot be reached, a
	// look-up or Watch tries it again (0: DefaultRetryEvery); other
	// look-ups meanwhile fail at once, so that a login storm does not
	// queue behind timeouts.
	RetryEvery time.Duration
	// Logger gets an ERROR when the backend cannot be reached (once for
	// each episode) and an INFO when it answers again; an ERROR for each
	// account refused for its settings and a WARN for each that cannot
	// log in, when they are looked up.
	Logger *slog.Logger
}

// Remote is the Source of the accounts that a Backend keeps, with a cache
// of recent look-ups, so that a login storm does not become a storm of
// queries: an account is used for CacheTTL, a name with no account is known
// as such for NegativeTTL, and an answer of "cannot tell now" is never
// cached. A password that does not match the cached account after the last
// one did is checked against a fresh look-up, so that a new password works
// at once (as Dovecot does); the old one works until the account's TTL
// runs out.
//
// When the backend fails or does not answer within Timeout, Fault says so
// until it answers again (Watch pings it meanwhile), names it does not have
// in its cache cannot be confirmed (errors that are ErrUnavailable, the
// server's [SYS/TEMP], LMTP's 451 4.3.0), and accounts it looked up before,
// however long ago, are still used, as Dovecot's auth cache does.
//
// What the accounts add up to (Summary: APOP, SCRAM, the largest
// LOGIN-DELAY, the policies of EXPIRE) counts the accounts looked up since
// the Remote was made.
//
// A Remote is safe for concurrent use. Give the server Source(), which has
// the SCRAM and APOP capabilities only when the backend hands out stored
// passwords.
type Remote struct {
	b      Backend
	binder Binder // b, when it checks passwords itself
	opts   RemoteOptions
	log    *slog.Logger
	flight singleflight.Group

	mu      sync.Mutex
	cache   map[string]*entry
	domains map[string]domainEntry
	down    *UnavailableError // nil while the backend answers
	lastTry time.Time         // of the backend, while down
	summary Summary
	seen    map[Retention]bool
}

// entry is one look-up: an account, a refused one, or none.
type entry struct {
	at      time.Time
	found   bool
	account Account       // found: only Name and Credentials when refused
	refused *AccountError // found and refused for its settings
	rec     Record        // for a Binder

	mu       sync.Mutex
	verified map[[32]byte]time.Time // credentials that matched, and when
	lastOK   bool                   // the last password checked matched
}

type domainEntry struct {
	at  time.Time
	has bool
}

// UnavailableError says why a Backend cannot be used now. It is
// ErrUnavailable.
type UnavailableError struct {
	// Source names the backend, as in "PostgreSQL 127.0.0.1:5432/mail".
	Source string
	Err    error
	// Since is when the backend stopped answering (the start of the
	// episode).
	Since time.Time
}

func (e *UnavailableError) Error() string {
	return "auth: the accounts in " + e.Source + " cannot be looked up now: " + e.Err.Error()
}
func (e *UnavailableError) Unwrap() error        { return e.Err }
func (e *UnavailableError) Is(target error) bool { return target == ErrUnavailable }

// NewRemote returns the Source of the accounts of b.
func NewRemote(b Backend, opts RemoteOptions) *Remote {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.RetryEvery <= 0 {
		opts.RetryEvery = DefaultRetryEvery
	}
	r := &Remote{b: b, opts: opts, log: opts.Logger,
		cache: make(map[string]*entry), domains: make(map[string]domainEntry), seen: make(map[Retention]bool)}
	r.binder, _ = b.(Binder)
	if r.log == nil {
		r.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return r
}

// Source returns r as the server should see it: a Source that keeps SCRAM
// keys and APOP secrets (SCRAMSource, APOPSource) when the backend hands
// out stored passwords, and without them when it checks passwords itself
// (a Binder), so that neither SCRAM nor APOP is offered.
func (r *Remote) Source() Source {
	if r.binder != nil {
		return r
	}
	return storedRemote{r}
}

// storedRemote is a Remote whose backend hands out stored passwords.
type storedRemote struct{ *Remote }

// SCRAMCredentials returns the SCRAM-SHA-256 keys of name's account, if it
// has some ({SCRAM-SHA-256} passwords, or a scram_sha_256 setting).
func (r storedRemote) SCRAMCredentials(name string) (scram.StoredCredentials, bool) {
	e, err := r.entry(name, false)
	if err != nil || !e.found {
		return scram.StoredCredentials{}, false
	}
	return e.account.Credentials.scramKeys()
}

// APOPSecret returns the cleartext password of name's account, if it is
// stored as {PLAIN} (RFC 1939 §7).
func (r storedRemote) APOPSecret(name string) (string, bool) {
	e, err := r.entry(name, false)
	if err != nil || !e.found {
		return "", false
	}
	return e.account.Credentials.apopSecret()
}

var (
	_ Source         = (*Remote)(nil)
	_ Checker        = (*Remote)(nil)
	_ CachedVerifier = (*Remote)(nil)
	_ DomainSource   = (*Remote)(nil)
	_ SCRAMSource    = storedRemote{}
	_ APOPSource     = storedRemote{}
)

// String names the backend.
func (r *Remote) String() string { return r.b.String() }

// Close closes the backend's connections.
func (r *Remote) Close() error {
	if c, ok := r.b.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Flush forgets every look-up, as Dovecot's doveadm auth cache flush: the
// next one of each name asks the backend.
func (r *Remote) Flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.cache)
	clear(r.domains)
}

// valid reports whether e may be used at now without asking the backend.
func (e *entry) valid(now time.Time, o RemoteOptions) bool {
	if e.found {
		return now.Sub(e.at) < o.CacheTTL
	}
	return now.Sub(e.at) < o.NegativeTTL
}

// entry returns the look-up of name: from the cache while it is valid,
// unless fresh; otherwise from the backend, or, when the backend cannot
// answer, the account cached before however old, or the *UnavailableError.
func (r *Remote) entry(name string, fresh bool) (*entry, error) {
	now := time.Now()
	r.mu.Lock()
	e := r.cache[name]
	r.mu.Unlock()
	if e != nil && !fresh && e.valid(now, r.opts) {
		return e, nil
	}
	if down := r.held(now); down != nil {
		if e != nil && e.found {
			return e, nil
		}
		return nil, down
	}
	v, err, _ := r.flight.Do(name, func() (any, error) { return r.fetch(name) })
	if err != nil {
		if e != nil && e.found {
			r.log.Debug("account source unavailable: using the account looked up before",
				"user", name, "age", now.Sub(e.at).Round(time.Second))
			return e, nil
		}
		return nil, err
	}
	return v.(*entry), nil
}

// held returns the *UnavailableError while the backend is down and was
// tried less than RetryEvery ago, so that a look-up fails at once rather
// than wait for a timeout; otherwise nil, and the caller is the one that
// tries.
func (r *Remote) held(now time.Time) *UnavailableError {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down == nil {
		return nil
	}
	if now.Sub(r.lastTry) < r.opts.RetryEvery {
		return r.down
	}
	r.lastTry = now
	return nil
}

// fetch looks name up in the backend and caches the answer.
func (r *Remote) fetch(name string) (*entry, error) {
	ctx, cancel := context.WithTimeout(context.Background(), r.opts.Timeout)
	defer cancel()
	rec, err := r.b.Lookup(ctx, name)
	e := &entry{at: time.Now()}
	var refused *AccountError
	switch {
	case errors.Is(err, ErrNoSuchUser):
	case errors.As(err, &refused):
		e.found, e.refused, e.account = true, refused, Account{Name: name}
	case err != nil:
		return nil, r.failed(ctx, err)
	default:
		e.found, e.rec = true, rec
		e.account, e.refused = r.account(name, rec)
	}
	r.succeeded()
	if e.refused != nil {
		r.log.Error("account refused: its settings cannot be read; "+
			"it cannot log in and its mail is deferred until they are fixed",
			"user", name, "where", e.refused.Where, "err", errors.Join(e.refused.Errs...))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.found {
		r.summary.add(e.account, e.refused != nil, r.seen)
	}
	if e.found && r.opts.CacheTTL > 0 || !e.found && r.opts.NegativeTTL > 0 {
		if len(r.cache) >= maxCacheEntries {
			r.evictLocked(e.at)
		}
		r.cache[name] = e
	} else {
		delete(r.cache, name)
	}
	return e, nil
}

// evictLocked makes room in the cache: expired entries go first, then a
// tenth of the rest, chosen at random. Called with r.mu held.
func (r *Remote) evictLocked(now time.Time) {
	for k, e := range r.cache {
		if !e.valid(now, r.opts) {
			delete(r.cache, k)
		}
	}
	n := len(r.cache) / 10
	for k := range r.cache {
		if len(r.cache) < maxCacheEntries-n {
			break
		}
		delete(r.cache, k)
	}
}

// account reads rec into the account of name, as the users file reads a
// line: a setting that cannot be read refuses the account whole.
func (r *Remote) account(name string, rec Record) (Account, *AccountError) {
	a := Account{Name: name}
	if r.binder == nil {
		sec, err := parseSecret(rec.Password)
		if err != nil {
			r.log.Warn("user cannot log in: the stored password cannot be used", "user", name,
				"where", rec.Where, "err", err)
		}
		a.Credentials.password = sec
	}
	// nologin and disabled are booleans here, where the users file's
	// nologin disables whatever its value.
	fields := make(map[string]string, len(rec.Fields))
	for k, v := range rec.Fields {
		if k == FieldNoLogin || k == FieldDisabled {
			a.Disabled = a.Disabled || !falseValue(v)
			continue
		}
		fields[k] = v
	}
	if errs := parseFields(&a, fields); errs != nil {
		where := r.b.String()
		if rec.Where != "" {
			where += ": " + rec.Where
		}
		return Account{Name: name, Credentials: a.Credentials}, &AccountError{Name: name, Where: where, Errs: errs}
	}
	return a, nil
}

// FieldDisabled is the name of a boolean setting of a database's or a
// directory's records that disables the account, as nologin does.
const FieldDisabled = "disabled"

// SettingFields are the names of the settings a Record's Fields may hold.
func SettingFields() []string {
	names := []string{FieldDisabled, scramField}
	for _, p := range settingParsers {
		names = append(names, p.field)
	}
	return names
}

// falseValue reports whether v says "no" (false, f, no, n, off, 0, in any
// case). For nologin and disabled, any other value disables the account,
// as a nologin field does whatever its value.
func falseValue(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "false", "f", "no", "n", "off", "0":
		return true
	}
	return false
}

// failed records that the backend failed with err, and returns the error
// to give for it. The start of an episode is logged.
func (r *Remote) failed(ctx context.Context, err error) *UnavailableError {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastTry = now
	if r.down != nil {
		r.down = r.unavailable(ctx, err, r.down.Since)
		return r.down
	}
	r.down = r.unavailable(ctx, err, now)
	r.log.Error("account source unavailable: logins of users not looked up before get temporary "+
		"failures and their mail waits until it answers again", "source", r.b.String(), "err", r.down.Err)
	return r.down
}

// unavailable returns the error to give for err, the failure of a request
// made with ctx, in an episode that started at since.
func (r *Remote) unavailable(ctx context.Context, err error, since time.Time) *UnavailableError {
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		err = fmt.Errorf("no answer within %v", r.opts.Timeout)
	}
	return &UnavailableError{Source: r.b.String(), Err: err, Since: since}
}

// succeeded records that the backend answered; the end of an episode is
// logged.
func (r *Remote) succeeded() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down != nil {
		r.log.Info("account source usable again", "source", r.b.String(),
			"after", time.Since(r.down.Since).Round(time.Millisecond))
		r.down = nil
	}
}

// Fault returns nil while the backend answers, or the *UnavailableError
// that says why not.
func (r *Remote) Fault() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down != nil {
		return r.down
	}
	return nil
}

// Watch pings the backend until ctx is done: at once, then every interval
// while it answers, so that Fault tells of an outage even while nobody logs in, and
// every second while it does not, so that Fault clears soon after.
func (r *Remote) Watch(ctx context.Context, every time.Duration) {
	t := time.NewTimer(0) // at once: a backend down at the start is seen then
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
		err := r.b.Ping(pctx)
		if ctx.Err() != nil {
			cancel()
			return
		}
		if err != nil {
			r.failed(pctx, err)
		} else {
			r.succeeded()
		}
		cancel()
		if r.Fault() != nil {
			t.Reset(r.opts.RetryEvery)
		} else {
			t.Reset(every)
		}
	}
}

// Account returns the account of name (see Source).
func (r *Remote) Account(name string) (Account, error) {
	e, err := r.entry(name, false)
	switch {
	case err != nil:
		return Account{}, err
	case !e.found:
		return Account{}, fmt.Errorf("%w: %s", ErrNoSuchUser, name)
	case e.refused != nil:
		return Account{Name: name}, e.refused
	}
	return e.account, nil
}

// Verify reports whether password is name's password (see Check).
func (r *Remote) Verify(name, password string) bool {
	ok, _ := r.Check(name, password)
	return ok
}

// Check reports whether password is name's password, and, when it could
// not check, why: an error that is ErrUnavailable. A name with no account
// takes as long as a wrong password: a hash of the parameters of new
// passwords is checked, or, for a Binder, a bind that fails.
func (r *Remote) Check(name, password string) (bool, error) {
	password = normalizePassword(password)
	start := time.Now()
	e, err := r.entry(name, false)
	if err != nil {
		return false, err
	}
	if !e.found || r.binder == nil && e.account.Credentials.password == nil {
		r.dummyCheck(password)
		return false, nil
	}
	key := cacheKey(name, password)
	if e.hit(key, r.opts.CacheTTL) {
		return true, nil
	}
	ok, err := r.check(e, password)
	if err != nil {
		return false, err
	}
	if !ok && r.binder == nil && e.lastMatched() && e.at.Before(start) {
		// The password may have just changed: ask the backend again, once
		// (a Binder checked it with the backend already).
		if fresh, err := r.entry(name, true); err == nil && fresh != e && fresh.found {
			e = fresh
			if ok, err = r.check(e, password); err != nil {
				return false, err
			}
		}
	}
	e.record(key, ok)
	return ok, nil
}

// check checks password against the account of e.
func (r *Remote) check(e *entry, password string) (bool, error) {
	if r.binder != nil {
		ctx, cancel := context.WithTimeout(context.Background(), r.opts.Timeout)
		defer cancel()
		ok, err := r.binder.CheckPassword(ctx, e.rec, password)
		if err != nil {
			return false, r.failed(ctx, err)
		}
		r.succeeded()
		return ok, nil
	}
	sec := e.account.Credentials.password
	if _, ok := sec.(*argon2Secret); !ok {
		dummySecret().verify(password)
	}
	return sec.verify(password), nil
}

// dummyCheck spends the time of checking a password for a name with no
// account.
func (r *Remote) dummyCheck(password string) {
	if r.binder == nil {
		dummySecret().verify(password)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.opts.Timeout)
	defer cancel()
	r.binder.CheckPassword(ctx, Record{}, password)
}

// hit reports whether key matched e less than ttl (and 15 minutes) ago.
func (e *entry) hit(key [32]byte, ttl time.Duration) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	t, ok := e.verified[key]
	return ok && time.Since(t) < min(ttl, cacheTTL)
}

func (e *entry) lastMatched() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastOK
}

// record notes the outcome of checking key against e.
func (e *entry) record(key [32]byte, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lastOK = ok
	if !ok {
		return
	}
	if e.verified == nil || len(e.verified) >= 8 {
		e.verified = make(map[[32]byte]time.Time, 1)
	}
	e.verified[key] = time.Now()
}

// VerifyCached reports whether name and password matched the account of
// name as looked up within the cache's TTL (and in the last 15 minutes). It
// asks the backend nothing: false means only "not known".
func (r *Remote) VerifyCached(name, password string) bool {
	r.mu.Lock()
	e := r.cache[name]
	r.mu.Unlock()
	if e == nil || !e.found || !e.valid(time.Now(), r.opts) {
		return false
	}
	return e.hit(cacheKey(name, normalizePassword(password)), r.opts.CacheTTL)
}

// Summary says what the accounts looked up since r was made add up to.
func (r *Remote) Summary() Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.summary
}

// Accounts lists the accounts of the backend (see Source): each name it
// lists, looked up.
func (r *Remote) Accounts() iter.Seq2[Account, error] {
	return func(yield func(Account, error) bool) {
		for name, err := range r.Names() {
			if err != nil {
				yield(Account{}, err)
				return
			}
			a, err := r.Account(name)
			if errors.Is(err, ErrUnavailable) {
				yield(Account{}, err)
				return
			}
			if errors.Is(err, ErrNoSuchUser) {
				continue // listed, but gone meanwhile or not found under that name
			}
			if !yield(a, err) {
				return
			}
		}
	}
}

// Names lists the names of the backend's accounts, without looking each up.
// A listing cut short ends with an *UnavailableError, but is no outage:
// Fault and the look-ups do not heed it, since a backend that cannot list
// (no iterate_query, a base made of the name, a wrong iterate query) may
// still look every account up.
func (r *Remote) Names() iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		ctx, cancel := context.WithTimeout(context.Background(), max(12*r.opts.Timeout, time.Minute))
		defer cancel()
		for name, err := range r.b.Names(ctx) {
			if err != nil {
				yield("", r.unavailable(ctx, err, time.Now()))
				return
			}
			if !yield(NormalizeName(name), nil) {
				return
			}
		}
	}
}

// HasDomain reports whether mail for domain is taken: what the backend says
// when it knows its domains (a DomainBackend), cached as accounts are, and
// otherwise true, each recipient being then looked up alone.
func (r *Remote) HasDomain(domain string) (bool, error) {
	db, ok := r.b.(DomainBackend)
	if !ok {
		return true, nil
	}
	domain = NormalizeDomain(domain)
	now := time.Now()
	r.mu.Lock()
	d, cached := r.domains[domain]
	down := r.down
	r.mu.Unlock()
	if cached && (d.has && now.Sub(d.at) < r.opts.CacheTTL || !d.has && now.Sub(d.at) < r.opts.NegativeTTL) {
		return d.has, nil
	}
	if down != nil && cached && d.has {
		return true, nil
	}
	if down := r.held(now); down != nil {
		return false, down
	}
	v, err, _ := r.flight.Do("\x00domain "+domain, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), r.opts.Timeout)
		defer cancel()
		has, err := db.HasDomain(ctx, domain)
		if err != nil {
			return false, r.failed(ctx, err)
		}
		r.succeeded()
		return has, nil
	})
	if err != nil {
		if cached && d.has {
			return true, nil
		}
		return false, err
	}
	has := v.(bool)
	if has && r.opts.CacheTTL > 0 || !has && r.opts.NegativeTTL > 0 {
		r.mu.Lock()
		if len(r.domains) >= maxCacheEntries {
			clear(r.domains)
		}
		r.domains[domain] = domainEntry{at: now, has: has}
		r.mu.Unlock()
	}
	return has, nil
}

// Inspect looks name up in the backend now, bypassing the cache, and
// returns the record as the backend gave it with the account read from it:
// what check-config shows for --check-user.
func (r *Remote) Inspect(ctx context.Context, name string) (Record, Account, error) {
	rec, err := r.b.Lookup(ctx, name)
	if err != nil {
		return rec, Account{}, err
	}
	a, refused := r.account(name, rec)
	if refused != nil {
		return rec, a, refused
	}
	return rec, a, nil
}
