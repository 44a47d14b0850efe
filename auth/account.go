package auth

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/xdg-go/scram"

	"github.com/pouchmail/pouch/internal/netlist"
	"github.com/pouchmail/pouch/internal/units"
)

// Account is one user's record: the name, what the user logs in with, and
// the user's own settings, each of which, when set, overrides the server's.
// A source reads and checks it once, when it loads (the users file: at each
// load and reload), and hands it out as it is: no other package reads the
// users file's fields. An account whose settings cannot all be read is
// refused whole (see AccountError), never given defaults in their place.
type Account struct {
	// Name is the user name, normalized (NormalizeName).
	Name string
	// Credentials are what the user logs in with; only the source uses
	// them.
	Credentials Credentials
	// Disabled refuses every login (the nologin field, as Dovecot's).
	Disabled bool
	// LoginDelay is the least time between two logins (login_delay, in
	// seconds; RFC 2449 §6.5 LOGIN-DELAY).
	LoginDelay Setting[time.Duration]
	// PasswordMaxAge refuses a password older than this (password_max_age,
	// like 90d; 0 is no limit).
	PasswordMaxAge Setting[time.Duration]
	// PasswordChanged is when the password was last set (password_changed,
	// in seconds since 1970); zero when it is not known, which never
	// expires.
	PasswordChanged time.Time
	// Access are the user's own access rules, checked after the server's.
	Access Access
	// Quota is the user's own quota.
	Quota Quota
	// Retention is the user's own retention policy.
	Retention Retention
}

// Setting is one of an account's own settings: when Set, Value overrides
// the server's.
type Setting[T any] struct {
	Value T
	Set   bool
}

// Own returns a setting that is set to v.
func Own[T any](v T) Setting[T] { return Setting[T]{Value: v, Set: true} }

// Or returns the account's value when it is set, and def otherwise.
func (s Setting[T]) Or(def T) T {
	if s.Set {
		return s.Value
	}
	return def
}

// Access are an account's own access rules (allow_nets, deny_nets,
// allow_countries, deny_countries: comma-separated lists, as Dovecot's
// allow_nets). Empty lists set no rule.
type Access struct {
	AllowNets, DenyNets []netip.Prefix
	// AllowCountries and DenyCountries are ISO 3166 codes in upper case.
	AllowCountries, DenyCountries []string
}

// Quota is an account's own quota (quota_storage, quota_messages); 0 lifts
// the server's limit.
type Quota struct {
	Storage  Setting[int64] // octets, as stored
	Messages Setting[int]
}

// Retention is an account's own retention policy: expire, expire_from and
// deletion_window (see ParseExpire, ParseExpireFrom and ParseWindow).
type Retention struct {
	Expire        Setting[Expiry]
	FromRetrieval Setting[bool]
	Window        Setting[time.Duration]
}

// Expiry is how long messages stay on the server: After (0: until a client
// deletes them), or, with DeleteRetrieved, until the end of the session
// that retrieved them with RETR (RFC 2449 §6.7, EXPIRE 0).
type Expiry struct {
	After           time.Duration
	DeleteRetrieved bool
}

// Lines returns the settings that are set as "name = value" lines, in name
// order, in the syntax the users file takes.
func (r Retention) Lines() []string {
	var out []string
	if r.Window.Set {
		out = append(out, FieldWindow+" = "+FormatWindow(r.Window.Value))
	}
	if r.Expire.Set {
		out = append(out, FieldExpire+" = "+r.Expire.Value.String())
	}
	if r.FromRetrieval.Set {
		from := "delivery"
		if r.FromRetrieval.Value {
			from = "retrieval"
		}
		out = append(out, FieldExpireFrom+" = "+from)
	}
	return out
}

// ErrInvalidAccount is wrapped by every AccountError.
var ErrInvalidAccount = errors.New("auth: account refused: its settings cannot be read")

// AccountError means that an account's settings cannot all be read. The
// account is refused until they are fixed: it cannot log in (POP3
// -ERR [SYS/PERM]), and mail for it is deferred (LMTP 451 4.3.0, pouch
// deliver's exit status 75), so that none is bounced or delivered under a
// default that was not meant.
type AccountError struct {
	Name string
	// Where says where the account is kept, like "/var/lib/pouch/users:3".
	Where string
	// Errs has one error for each setting that cannot be read, naming it.
	Errs []error
}

func (e *AccountError) Error() string {
	var b strings.Builder
	b.WriteString("auth: ")
	if e.Where != "" {
		b.WriteString(e.Where + ": ")
	}
	b.WriteString("account " + e.Name + " refused: ")
	for i, err := range e.Errs {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(err.Error())
	}
	return b.String()
}

func (e *AccountError) Is(target error) bool { return target == ErrInvalidAccount }

// The extra fields of the users file that Pouch reads (field 8 of Dovecot's
// passwd-file: space-separated key=value pairs, a key alone meaning
// key=). Other fields are kept and ignored.
const (
	// FieldNoLogin disables the account, whatever its value.
	FieldNoLogin         = "nologin"
	fieldLoginDelay      = "login_delay"
	fieldPasswordMaxAge  = "password_max_age"
	fieldPasswordChanged = "password_changed"
	fieldAllowNets       = "allow_nets"
	fieldDenyNets        = "deny_nets"
	fieldAllowCountries  = "allow_countries"
	fieldDenyCountries   = "deny_countries"
	fieldQuotaStorage    = "quota_storage"
	fieldQuotaMessages   = "quota_messages"
	// FieldExpire, FieldExpireFrom and FieldWindow hold the account's own
	// Retention.
	FieldExpire     = "expire"
	FieldExpireFrom = "expire_from"
	FieldWindow     = "deletion_window"
)

// settingParsers read the settings of the users file's fields into an
// Account, in this order; an error names neither the field nor the user.
var settingParsers = []struct {
	field string
	parse func(a *Account, v string) error
}{
	{FieldNoLogin, func(a *Account, _ string) error { a.Disabled = true; return nil }},
	{fieldLoginDelay, func(a *Account, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || n > math.MaxInt64/int64(time.Second) {
			return fmt.Errorf("%q is not a number of seconds", v)
		}
		a.LoginDelay = Own(time.Duration(n) * time.Second)
		return nil
	}},
	{fieldPasswordMaxAge, func(a *Account, v string) error {
		d, err := units.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not an age (like 90d)", v)
		}
		a.PasswordMaxAge = Own(d)
		return nil
	}},
	{fieldPasswordChanged, func(a *Account, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a Unix time", v)
		}
		a.PasswordChanged = time.Unix(n, 0)
		return nil
	}},
	{fieldAllowNets, func(a *Account, v string) error {
		return set(&a.Access.AllowNets, v, netlist.Parse)
	}},
	{fieldDenyNets, func(a *Account, v string) error {
		return set(&a.Access.DenyNets, v, netlist.Parse)
	}},
	{fieldAllowCountries, func(a *Account, v string) error {
		return set(&a.Access.AllowCountries, v, parseCountries)
	}},
	{fieldDenyCountries, func(a *Account, v string) error {
		return set(&a.Access.DenyCountries, v, parseCountries)
	}},
	{fieldQuotaStorage, func(a *Account, v string) error {
		return setOwn(&a.Quota.Storage, v, units.ParseSize)
	}},
	{fieldQuotaMessages, func(a *Account, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("%q is not a number of messages", v)
		}
		a.Quota.Messages = Own(n)
		return nil
	}},
	{FieldExpire, func(a *Account, v string) error {
		return setOwn(&a.Retention.Expire, v, ParseExpire)
	}},
	{FieldExpireFrom, func(a *Account, v string) error {
		return setOwn(&a.Retention.FromRetrieval, v, ParseExpireFrom)
	}},
	{FieldWindow, func(a *Account, v string) error {
		return setOwn(&a.Retention.Window, v, ParseWindow)
	}},
}

// set stores in *dst what parse reads from v, if it can.
func set[T any](dst *T, v string, parse func(string) (T, error)) error {
	x, err := parse(v)
	if err == nil {
		*dst = x
	}
	return err
}

// setOwn sets the setting *dst to what parse reads from v, if it can.
func setOwn[T any](dst *Setting[T], v string, parse func(string) (T, error)) error {
	x, err := parse(v)
	if err == nil {
		*dst = Own(x)
	}
	return err
}

// parseSettings reads the settings among fields into a. It returns one
// error for each field that cannot be read, naming it, in a fixed order.
func parseSettings(a *Account, fields map[string]string) []error {
	var errs []error
	for _, p := range settingParsers {
		if v, ok := fields[p.field]; ok {
			if err := p.parse(a, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", p.field, err))
			}
		}
	}
	return errs
}

// checkSetting reports whether value can be stored in the field named key:
// nil for a field Pouch does not read.
func checkSetting(key, value string) error {
	return errors.Join(parseSettings(&Account{}, map[string]string{key: value})...)
}

// parseCountries reads a comma-separated list of two-letter country codes.
func parseCountries(v string) ([]string, error) {
	var codes []string
	for _, c := range netlist.Split(v) {
		if len(c) != 2 || !isLetter(c[0]) || !isLetter(c[1]) {
			return nil, fmt.Errorf("%q is not a two-letter country code (like DE)", c)
		}
		codes = append(codes, strings.ToUpper(c))
	}
	return codes, nil
}

func isLetter(b byte) bool { return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' }

// ParseExpire reads an expiry, as the expire field and pouch serve's
// --expire take it: "never" (keep messages until a client deletes them),
// "0" (RFC 2449's EXPIRE 0: messages retrieved with RETR are deleted at
// QUIT), or a duration ("30d", "12h").
func ParseExpire(v string) (Expiry, error) {
	switch v {
	case "never", "":
		return Expiry{}, nil
	case "0", "0d", "0s":
		return Expiry{DeleteRetrieved: true}, nil
	}
	d, err := units.ParseDuration(v)
	if re := (*units.RangeError)(nil); errors.As(err, &re) {
		return Expiry{}, err
	}
	if err != nil || d == 0 {
		return Expiry{}, fmt.Errorf("%q is not \"never\", \"0\" or a duration such as 30d", v)
	}
	return Expiry{After: d}, nil
}

// String writes e the way ParseExpire reads it.
func (e Expiry) String() string {
	switch {
	case e.DeleteRetrieved:
		return "0"
	case e.After == 0:
		return "never"
	}
	return units.FormatDuration(e.After)
}

// ParseExpireFrom reads what an expiry counts from, as the expire_from
// field and pouch serve's --expire-from take it: "delivery" or "retrieval".
func ParseExpireFrom(v string) (fromRetrieval bool, err error) {
	switch v {
	case "delivery", "":
		return false, nil
	case "retrieval":
		return true, nil
	}
	return false, fmt.Errorf("%q is not \"delivery\" or \"retrieval\"", v)
}

// ParseWindow reads a deletion window, as the deletion_window field and
// pouch serve's --deletion-window take it: a duration, 0 for none.
func ParseWindow(v string) (time.Duration, error) {
	if v == "0" {
		return 0, nil
	}
	d, err := units.ParseDuration(v)
	if re := (*units.RangeError)(nil); errors.As(err, &re) {
		return 0, err
	}
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration such as 30d (or 0)", v)
	}
	return d, nil
}

// FormatWindow writes a deletion window the way ParseWindow reads it.
func FormatWindow(d time.Duration) string {
	if d == 0 {
		return "0"
	}
	return units.FormatDuration(d)
}

// Summary is what the accounts of a source add up to: what the server
// announces before login, when it does not know the user yet.
type Summary struct {
	// SCRAM is whether some account has SCRAM-SHA-256 keys.
	SCRAM bool
	// APOP is whether some account has a secret that allows APOP.
	APOP bool
	// MaxLoginDelay is the longest LoginDelay of any account (RFC 2449
	// §6.5: LOGIN-DELAY before login is the largest).
	MaxLoginDelay time.Duration
	// Retention lists, once each, the retention policies of the accounts
	// with their own Expire or FromRetrieval (RFC 2449 §6.7: EXPIRE before
	// login is the shortest). It must not be modified.
	Retention []Retention
}

// add counts a into s; seen holds the retention policies listed already.
// A refused account adds its credentials only: its settings are not known.
func (s *Summary) add(a Account, refused bool, seen map[Retention]bool) {
	if _, ok := a.Credentials.scramKeys(); ok {
		s.SCRAM = true
	}
	if _, ok := a.Credentials.apopSecret(); ok {
		s.APOP = true
	}
	if refused {
		return
	}
	s.MaxLoginDelay = max(s.MaxLoginDelay, a.LoginDelay.Value)
	if r := a.Retention; (r.Expire.Set || r.FromRetrieval.Set) && !seen[r] {
		seen[r] = true
		s.Retention = append(s.Retention, r)
	}
}

// Credentials are what an account logs in with: its stored password, and
// SCRAM-SHA-256 keys. Only the source that holds them uses them; printed,
// they say which kinds they hold, never the secrets. The zero value lets
// nobody in.
type Credentials struct {
	password secret                   // nil: no usable password
	scram    *scram.StoredCredentials // from the scram_sha_256 field
}

func (c Credentials) String() string {
	kinds := "none"
	if c.password != nil {
		kinds = "password"
	}
	if _, ok := c.scramKeys(); ok {
		kinds += ", SCRAM-SHA-256"
	}
	return kinds
}

func (c Credentials) GoString() string { return "auth.Credentials{" + c.String() + "}" }

// scramKeys returns the SCRAM-SHA-256 keys: those of a {SCRAM-SHA-256}
// password, or else those of the scram_sha_256 field of a user who has a
// usable password.
func (c Credentials) scramKeys() (scram.StoredCredentials, bool) {
	if s, ok := c.password.(*scramSecret); ok {
		return s.creds, true
	}
	if c.scram == nil || c.password == nil {
		return scram.StoredCredentials{}, false
	}
	return *c.scram, true
}

// apopSecret returns the cleartext password that APOP needs (RFC 1939 §7):
// only {PLAIN} and {CLEARTEXT} passwords have one.
func (c Credentials) apopSecret() (string, bool) {
	p, ok := c.password.(plainSecret)
	return string(p), ok && p != ""
}

// parseAccount reads the account of a user line whose password is sec (nil
// when it cannot be used: the user exists and cannot log in). errs has one
// error for each of the line's fields that cannot be read, naming it: the
// account is then refused.
func parseAccount(name string, l userLine, sec secret) (a Account, errs []error) {
	a.Name = name
	a.Credentials.password = sec
	return a, parseFields(&a, l.extraFields())
}

// parseFields reads an account's fields into a: its SCRAM-SHA-256 keys and
// its settings. It returns one error for each field that cannot be read,
// naming it.
func parseFields(a *Account, fields map[string]string) (errs []error) {
	if v, ok := fields[scramField]; ok {
		keys, err := parseSCRAMField(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", scramField, err))
		}
		a.Credentials.scram = keys
	}
	return append(errs, parseSettings(a, fields)...)
}
