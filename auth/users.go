package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"iter"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Users is the users file, as of its last load: the Source of the accounts
// it lists. Every lookup (Account, Verify, APOPSecret, Summary, Known,
// Exists, ...) first stats the file and reloads it when its device, inode,
// size, modification time, mode or owner changed, so changes made by the
// administration functions or by hand take effect on the next lookup.
//
// Each load reads every line's settings (the extra fields: see Account)
// once. A line with a setting that cannot be read is refused whole, with an
// *AccountError that Account returns and that the load logs (ERROR, naming
// the line and the fields): never a default in the place of what the line
// says. Its password is still verified, so that only the right password
// learns why it is refused.
//
// The file is the one source of users, so a file that cannot be used is a
// temporary failure, never an empty list: while it is missing, empty,
// unreadable or damaged (see SourceError for when each counts), the users of
// the last usable version stay in use, Known says that any other name cannot
// be confirmed, and Fault says why. An atomic replacement (a new file renamed
// over it, as the administration functions write it) is never seen missing;
// a file rewritten in place may be seen empty for a moment, which is then a
// fault like any other.
//
// Users are known by their names as NormalizeName gives them, whatever form
// their lines have: lookups take normalized names.
//
// A Users is safe for concurrent use.
type Users struct {
	path string
	log  *slog.Logger
	mu   sync.Mutex               // serializes loads; guards expect
	db   atomic.Pointer[database] // never nil after OpenUsers
	// expect is whether the file should list users: the last usable version
	// did (or UsersOptions.Expected, until a version was usable). Then a
	// missing or empty file is a fault, not an empty list.
	expect bool
}

// database is one load of the users file, or the users kept from an earlier
// one while the file cannot be used. It is never modified.
type database struct {
	stamp fileStamp
	// accounts holds every user by name; a user whose password cannot be
	// used has no password in its Credentials, and a refused account has
	// only its Name and Credentials.
	accounts map[string]Account
	// refused holds why the accounts whose settings cannot be read are
	// refused.
	refused map[string]*AccountError
	// names are the users in file order.
	names []string
	// domains are the domains of the users named by an address; bare is
	// whether some user is named without a domain.
	domains  map[string]bool
	bare     bool
	warnings []string
	summary  Summary
	// usable is whether users came from a usable version of the file.
	usable bool
	// fault, when not nil, is why the file as it is now cannot be used;
	// users are then those of the last usable version (or the best there
	// was: see loadLocked).
	fault *SourceError
	// faultStamp is the stamp of the version that fault describes: it is
	// not read again until it changes.
	faultStamp fileStamp
	// verified remembers credentials verified against this load.
	verified *credCache
}

// SourceError says why the users file cannot be used now. It is temporary
// by nature: the users of the last usable version stay in use meanwhile, and
// the next lookup after the file changes tries again.
//
// A file is unusable when it cannot be read (other than missing), when it
// has a line that names no user (damaged: the user that line was meant for
// would be unknown), or when it is missing or empty (no octet but white
// space) while users are expected: the last usable version listed users, or,
// before any version was usable, the caller said so (UsersOptions.Expected).
// A missing or empty file is otherwise an empty list: the first start of a
// server that has no users yet. A file of comment lines only is a usable
// list of no users.
type SourceError struct {
	Path string
	// Reason says what is wrong, as in "is missing".
	Reason string
	// Err is the error of opening or reading the file (one that is
	// fs.ErrNotExist when it is missing), or nil.
	Err error
	// Since is when the file became unusable (the start of the episode).
	Since time.Time
}

func (e *SourceError) Error() string { return "auth: users file " + e.Path + " " + e.Reason }
func (e *SourceError) Unwrap() error { return e.Err }

// Is makes a SourceError ErrUnavailable.
func (e *SourceError) Is(target error) bool { return target == ErrUnavailable }

// fileStamp identifies a version of the users file.
type fileStamp struct {
	exists   bool
	dev, ino uint64
	size     int64
	mtime    int64 // ns
	mode     fs.FileMode
	uid, gid uint32
}

func stampOf(fi fs.FileInfo) fileStamp {
	s := fileStamp{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano(), mode: fi.Mode()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.dev, s.ino = uint64(st.Dev), uint64(st.Ino)
		s.uid, s.gid = st.Uid, st.Gid
	}
	return s
}

// UsersOptions are the settings of OpenUsersWith.
type UsersOptions struct {
	// Expected says that the file should list users from the start: a
	// missing or empty file is then a fault rather than a first start with
	// no users (pouch serve sets it when the data directory holds Maildirs;
	// pouch deliver, which never has a first start, always).
	Expected bool
	// Logger, if set, gets an ERROR when the file becomes unusable (once
	// for each episode, and a WARN if it changes and is still unusable),
	// and an INFO when it is usable again; and an ERROR for each account
	// refused for its settings, at each load that puts it in use.
	Logger *slog.Logger
}

// OpenUsersWith loads the users file at path. It does not fail: a file that
// cannot be used is a fault (see Fault), and Known cannot confirm any name
// until it is fixed, except those listed on the usable lines of a damaged
// file, which are the best there is.
func OpenUsersWith(path string, opts UsersOptions) *Users {
	u := &Users{path: path, log: opts.Logger, expect: opts.Expected}
	u.mu.Lock()
	u.loadLocked(u.statStamp())
	u.mu.Unlock()
	return u
}

// OpenUsers loads the users file at path, as OpenUsersWith with no
// expectation: a missing or empty file is an empty database. It fails only
// when the file cannot be read; a damaged one opens, with a Fault.
func OpenUsers(path string) (*Users, error) {
	u := OpenUsersWith(path, UsersOptions{})
	if f := u.db.Load().fault; f != nil && f.Err != nil {
		return nil, f
	}
	return u, nil
}

// Reload reads the users file now, whether or not it changed. When it cannot
// be used, the users in use stay as they were and Reload returns the
// *SourceError.
func (u *Users) Reload() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if db := u.loadLocked(u.statStamp()); db.fault != nil {
		return db.fault
	}
	return nil
}

// Fault returns nil when the users in use are those of the file as it is
// now, or the *SourceError that says why the file cannot be used. It checks
// the file first, as every lookup does.
func (u *Users) Fault() error {
	if f := u.current().fault; f != nil {
		return f
	}
	return nil
}

// Watch checks the users file every interval until ctx is done, so that a
// fault is logged (and its end) even while no lookup happens.
func (u *Users) Watch(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			u.current()
		}
	}
}

// Warnings describes the problems of the users in use, one per string:
// lines that were skipped, users who cannot log in (unsupported scheme or
// malformed hash) and duplicate names. It is meant for the log after
// OpenUsers or Reload, and for a configuration check; a file that cannot be
// used is not a warning but a Fault.
func (u *Users) Warnings() []string {
	return append([]string(nil), u.current().warnings...)
}

// current returns the database, reloading it first if the file changed.
func (u *Users) current() *database {
	db := u.db.Load()
	if db.holds(u.statStamp()) {
		return db
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.statStamp()
	if db = u.db.Load(); db.holds(st) { // another goroutine reloaded it
		return db
	}
	return u.loadLocked(st)
}

// holds reports whether db is up to date with the file whose stamp is st.
func (db *database) holds(st fileStamp) bool {
	if st.size < 0 { // stat failed: try again
		return false
	}
	if db.fault != nil {
		return st == db.faultStamp
	}
	return st == db.stamp
}

// loadLocked loads the file, which had the stamp st just before, and puts
// the result in use: the new version when it is usable, else the users kept
// from before with the fault. It logs the start and the end of a fault.
// Called with u.mu held.
func (u *Users) loadLocked(st fileStamp) *database {
	prev := u.db.Load() // nil at open
	fresh, fault := load(u.path, u.expect)
	if fault == nil {
		u.expect = len(fresh.accounts) > 0
		fresh.usable = true
		if prev != nil && prev.fault != nil && u.log != nil {
			u.log.Info("users file usable again", "path", u.path, "users", len(fresh.accounts),
				"after", time.Since(prev.fault.Since).Round(time.Millisecond))
		}
		u.logRefused(fresh)
		u.db.Store(fresh)
		return fresh
	}
	var db database
	switch {
	case prev != nil && (prev.usable || fresh == nil):
		db = *prev // the last usable users, or the best there was
	case fresh != nil:
		db = *fresh // a damaged file before any usable one: its good lines
		u.logRefused(fresh)
	default:
		db = database{accounts: map[string]Account{}}
	}
	db.verified = &credCache{} // the file changed: trust nothing verified before
	fault.Since = time.Now()
	if prev != nil && prev.fault != nil {
		fault.Since = prev.fault.Since // the same episode
	}
	db.fault, db.faultStamp = fault, st
	if fresh != nil {
		db.faultStamp = fresh.stamp // the version that was read
	}
	if u.log != nil {
		kept := []any{"path", u.path, "reason", fault.Reason, "users_kept", len(db.accounts)}
		switch {
		case prev == nil || prev.fault == nil:
			u.log.Error("users file unusable: keeping the users loaded before; "+
				"other names get temporary failures until it is fixed", kept...)
		case prev.fault.Reason != fault.Reason:
			u.log.Warn("users file changed and is still unusable", kept...)
		}
	}
	u.db.Store(&db)
	return &db
}

// logRefused logs, once for each load that is put in use, each account
// refused for its settings.
func (u *Users) logRefused(db *database) {
	if u.log == nil {
		return
	}
	for _, name := range db.names {
		if e := db.refused[name]; e != nil {
			u.log.Error("account refused: its settings in the users file cannot be read; "+
				"it cannot log in and its mail is deferred until they are fixed",
				"user", name, "where", e.Where, "err", errors.Join(e.Errs...))
		}
	}
}

// statStamp returns the stamp of the file at u.path. Any error other than a
// missing file gives a stamp that matches no load, forcing a reload attempt.
func (u *Users) statStamp() fileStamp {
	fi, err := os.Stat(u.path)
	switch {
	case err == nil:
		return stampOf(fi)
	case errors.Is(err, fs.ErrNotExist):
		return fileStamp{}
	}
	return fileStamp{exists: true, size: -1}
}

// load reads and parses the users file at path. The stamp is taken from the
// open file before reading it, so a change during the read is seen as a
// change by the next lookup. On a fault, the database is what could be read
// (the usable lines of a damaged file, or an empty one), or nil.
func load(path string, expect bool) (*database, *SourceError) {
	db := &database{accounts: make(map[string]Account), verified: &credCache{}}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		if expect {
			return nil, &SourceError{Path: path, Reason: "is missing", Err: err}
		}
		return db, nil
	}
	if err != nil {
		return nil, &SourceError{Path: path, Reason: "cannot be read: " + errText(err), Err: err}
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, &SourceError{Path: path, Reason: "cannot be read: " + errText(err), Err: err}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, &SourceError{Path: path, Reason: "cannot be read: " + errText(err), Err: err}
	}
	db.stamp = stampOf(fi)
	if len(bytes.TrimSpace(data)) == 0 {
		if expect {
			return db, &SourceError{Path: path, Reason: "is empty"}
		}
		return db, nil
	}
	var skipped []string
	seen := make(map[Retention]bool)
	for i, line := range splitLines(data) {
		l, sec, ok, err := parseLine(line)
		where := fmt.Sprintf("%s:%d", path, i+1)
		if !ok {
			if err != nil {
				db.warnings = append(db.warnings, fmt.Sprintf("%s: line skipped: %v", where, err))
				skipped = append(skipped, fmt.Sprintf("line %d: %v", i+1, err))
			}
			continue
		}
		// Users are found by their normalized names, whatever form the
		// line has; the line itself stays as it is.
		name := NormalizeName(l.name)
		if _, dup := db.accounts[name]; dup {
			db.warnings = append(db.warnings,
				fmt.Sprintf("%s: user %s listed again; the first line counts", where, name))
			continue
		}
		if err != nil {
			db.warnings = append(db.warnings, fmt.Sprintf("%s: %v", where, err))
		}
		a, errs := parseAccount(name, l, sec)
		if errs != nil {
			// Refused whole: no setting of a line that is partly wrong is
			// trusted.
			a = Account{Name: name, Credentials: a.Credentials}
			if db.refused == nil {
				db.refused = make(map[string]*AccountError)
			}
			db.refused[name] = &AccountError{Name: name, Where: where, Errs: errs}
		}
		db.accounts[name] = a
		db.names = append(db.names, name)
		if _, domain, ok := SplitAddress(name); ok {
			if db.domains == nil {
				db.domains = make(map[string]bool)
			}
			db.domains[domain] = true
		} else {
			db.bare = true
		}
		db.summary.add(a, errs != nil, seen)
	}
	switch len(skipped) {
	case 0:
		return db, nil
	case 1:
		return db, &SourceError{Path: path, Reason: "is damaged: " + skipped[0]}
	}
	return db, &SourceError{Path: path,
		Reason: fmt.Sprintf("is damaged: %d lines name no user (the first, %s)", len(skipped), skipped[0])}
}

// errText is the system error of a failed file operation, without the path
// that SourceError names already.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// Verify reports whether name is a known user whose stored password matches
// password. So that its time does not tell whether a user exists, it always
// costs at least one Argon2id computation with the parameters of new
// passwords: for an unknown user, or one who cannot log in, it checks password
// against a dummy hash of that kind and returns false; for a user stored with
// a scheme other than Argon2id it does that dummy check besides the real one.
// (A scheme much slower than that, such as bcrypt at a high cost, still
// stands out.)
//
// Each call holds about 19 MiB (more for stored Argon2id hashes with a higher
// m) while it runs: callers should bound concurrent verifications.
//
// A success is remembered for 15 minutes, as long as the users file does not
// change: checking the same name and password again then costs no hash
// computation (see VerifyCached).
func (u *Users) Verify(name, password string) bool {
	password = normalizePassword(password)
	db := u.current()
	sec := db.accounts[name].Credentials.password
	key := cacheKey(name, password)
	if sec != nil && db.verified.hit(key) {
		return true
	}
	if _, ok := sec.(*argon2Secret); !ok {
		dummySecret().verify(password)
	}
	ok := sec != nil && sec.verify(password)
	if ok {
		db.verified.add(key)
	}
	return ok
}

// VerifyCached reports whether name and password were verified by Verify in
// the last 15 minutes against the users file as it is now. It computes no
// hash: false means only "not known", and the caller then uses Verify.
func (u *Users) VerifyCached(name, password string) bool {
	password = normalizePassword(password)
	db := u.current()
	return db.accounts[name].Credentials.password != nil && db.verified.hit(cacheKey(name, password))
}

// APOPSecret returns the cleartext password of name for APOP (RFC 1939 §7).
// Only users stored as {PLAIN} or {CLEARTEXT} have one; ok is false for all
// others and for unknown users.
func (u *Users) APOPSecret(name string) (secret string, ok bool) {
	return u.current().accounts[name].Credentials.apopSecret()
}

// Account returns the account of name (see Source). While the file cannot
// be used (see Fault), a name that is not among the users kept from before
// cannot be confirmed either way: the error is then the *SourceError.
func (u *Users) Account(name string) (Account, error) {
	db := u.current()
	a, ok := db.accounts[name]
	switch {
	case !ok && db.fault != nil:
		return Account{}, db.fault
	case !ok:
		return Account{}, fmt.Errorf("%w: %s", ErrNoSuchUser, name)
	case db.refused[name] != nil:
		return Account{Name: name}, db.refused[name]
	}
	return a, nil
}

// Accounts lists the users in use, in file order (see Source). While the
// file cannot be used, the listing ends with the *SourceError.
func (u *Users) Accounts() iter.Seq2[Account, error] {
	return func(yield func(Account, error) bool) {
		db := u.current()
		for _, name := range db.names {
			a, err := db.accounts[name], error(nil)
			if e := db.refused[name]; e != nil {
				a, err = Account{Name: name}, e
			}
			if !yield(a, err) {
				return
			}
		}
		if db.fault != nil {
			yield(Account{}, db.fault)
		}
	}
}

// Summary says what the users in use add up to.
func (u *Users) Summary() Summary {
	return u.current().summary
}

// HasDomain reports whether mail for domain is taken: true when some user
// is named by an address in domain, and for any domain when some user is
// named without one (that user takes mail at every domain, as before there
// were domains) or when there are no users at all. While the file cannot be
// used, a domain of none of the users kept from before cannot be confirmed:
// the error is then the *SourceError.
func (u *Users) HasDomain(domain string) (bool, error) {
	db := u.current()
	switch {
	case db.bare, len(db.names) == 0 && db.fault == nil, db.domains[NormalizeDomain(domain)]:
		return true, nil
	case db.fault != nil:
		return false, db.fault
	}
	return false, nil
}

// Exists reports whether name is among the users in use (see Known), whether
// or not that user can log in.
func (u *Users) Exists(name string) bool {
	_, ok := u.current().accounts[name]
	return ok
}

// Known reports whether name is a user. While the file cannot be used (see
// Fault), a name that is not among the users kept from before cannot be
// confirmed either way: Known then returns false and the *SourceError, which
// callers answer with a temporary failure, never as an unknown user.
func (u *Users) Known(name string) (bool, error) {
	db := u.current()
	if _, ok := db.accounts[name]; ok {
		return true, nil
	}
	if db.fault != nil {
		return false, db.fault
	}
	return false, nil
}
