package auth

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Users is the users file, as of its last load. Every lookup (Verify,
// APOPSecret, Exists) first stats the file and reloads it when its device,
// inode, size or modification time changed, so changes made by the
// administration functions or by hand take effect on the next lookup. If that
// reload fails, the previous contents stay in use and Warnings says so.
//
// Users are known by their names as NormalizeName gives them, whatever form
// their lines have: lookups take normalized names.
//
// A Users is safe for concurrent use.
type Users struct {
	path string
	mu   sync.Mutex               // serializes loads
	db   atomic.Pointer[database] // never nil after OpenUsers
}

// database is one load of the users file. It is never modified.
type database struct {
	stamp    fileStamp
	users    map[string]secret // a nil secret: the user exists but cannot log in
	warnings []string
	// fields holds the extra fields of users that have any.
	fields map[string]map[string]string
	// scram is whether any user has SCRAM-SHA-256 credentials.
	scram bool
	// maxLoginDelay is the largest login_delay field, in seconds.
	maxLoginDelay int
	// apop is whether any user has a secret that allows APOP.
	apop bool
	// reloadErr is why the file, changed since this load, could not be
	// loaded again.
	reloadErr error
	// verified remembers credentials verified against this load.
	verified *credCache
}

// fileStamp identifies a version of the users file.
type fileStamp struct {
	exists   bool
	dev, ino uint64
	size     int64
	mtime    int64 // ns
}

func stampOf(fi fs.FileInfo) fileStamp {
	s := fileStamp{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.dev, s.ino = uint64(st.Dev), uint64(st.Ino)
	}
	return s
}

// OpenUsers loads the users file at path. A missing file is an empty database,
// not an error; problems with single lines are not errors either (see
// Warnings).
func OpenUsers(path string) (*Users, error) {
	u := &Users{path: path}
	if err := u.Reload(); err != nil {
		return nil, err
	}
	return u, nil
}

// Reload reads the users file now, whether or not it changed. On error the
// previous contents stay in use.
func (u *Users) Reload() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	db, err := load(u.path)
	if err != nil {
		return err
	}
	u.db.Store(db)
	return nil
}

// Warnings describes the problems of the loaded users file, one per string:
// lines that were skipped, users who cannot log in (unsupported scheme or
// malformed hash), duplicate names, and a failed automatic reload. It is
// meant for the log after OpenUsers or Reload, and for a configuration check.
func (u *Users) Warnings() []string {
	db := u.current()
	w := append([]string(nil), db.warnings...)
	if db.reloadErr != nil {
		w = append(w, fmt.Sprintf("%v; still using the users file as loaded before", db.reloadErr))
	}
	return w
}

// current returns the database, reloading it first if the file changed.
func (u *Users) current() *database {
	db := u.db.Load()
	if u.statStamp() == db.stamp {
		return db
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if db = u.db.Load(); u.statStamp() == db.stamp { // another goroutine reloaded it
		return db
	}
	fresh, err := load(u.path)
	if err != nil {
		// Keep the old contents; later lookups retry, since the stamp
		// still differs.
		old := *db
		old.reloadErr = err
		old.verified = &credCache{} // the file changed: trust nothing verified before
		u.db.Store(&old)
		return &old
	}
	u.db.Store(fresh)
	return fresh
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
// change by the next lookup.
func load(path string) (*database, error) {
	db := &database{users: make(map[string]secret), verified: &credCache{}}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return db, nil
	}
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("auth: reading %s: %w", path, err)
	}
	db.stamp = stampOf(fi)
	for i, line := range splitLines(data) {
		l, sec, ok, err := parseLine(line)
		where := fmt.Sprintf("%s:%d", path, i+1)
		if !ok {
			if err != nil {
				db.warnings = append(db.warnings, fmt.Sprintf("%s: line skipped: %v", where, err))
			}
			continue
		}
		// Users are found by their normalized names, whatever form the
		// line has; the line itself stays as it is.
		name := NormalizeName(l.name)
		if _, dup := db.users[name]; dup {
			db.warnings = append(db.warnings,
				fmt.Sprintf("%s: user %s listed again; the first line counts", where, name))
			continue
		}
		if err != nil {
			db.warnings = append(db.warnings, fmt.Sprintf("%s: %v", where, err))
		}
		db.users[name] = sec
		if f := l.extraFields(); f != nil {
			if db.fields == nil {
				db.fields = make(map[string]map[string]string)
			}
			db.fields[name] = f
		}
		if _, ok := scramOf(sec, db.fields[name]); ok {
			db.scram = true
		}
		if p, ok := sec.(plainSecret); ok && p != "" {
			db.apop = true
		}
		if n, err := strconv.Atoi(db.fields[name]["login_delay"]); err == nil && n > db.maxLoginDelay {
			db.maxLoginDelay = n
		}
	}
	return db, nil
}

// lookup returns the secret of a user, nil if the user cannot log in, and
// whether the user exists.
func (u *Users) lookup(name string) (secret, bool) {
	sec, ok := u.current().users[name]
	return sec, ok
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
	sec := db.users[name]
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
	return db.users[name] != nil && db.verified.hit(cacheKey(name, password))
}

// APOPSecret returns the cleartext password of name for APOP (RFC 1939 §7).
// Only users stored as {PLAIN} or {CLEARTEXT} have one; ok is false for all
// others and for unknown users.
func (u *Users) APOPSecret(name string) (secret string, ok bool) {
	sec, _ := u.lookup(name)
	p, ok := sec.(plainSecret)
	return string(p), ok
}

// APOPAvailable reports whether any user has a secret that allows APOP, so
// that the greeting carries an APOP timestamp only when APOP can succeed.
func (u *Users) APOPAvailable() bool {
	return u.current().apop
}

// MaxLoginDelay is the largest LOGIN-DELAY any user has in the login_delay
// extra field (RFC 2449 §6.5: announced before login).
func (u *Users) MaxLoginDelay() time.Duration {
	return time.Duration(u.current().maxLoginDelay) * time.Second
}

// Fields returns the extra fields of name's line (the eighth field of
// Dovecot's passwd-file: space-separated key=value pairs, such as
// "quota_storage=1G"), or nil. The map must not be modified.
func (u *Users) Fields(name string) map[string]string {
	return u.current().fields[name]
}

// AllFields returns the extra fields of every user who has any, by name.
// The map must not be modified; a new one is returned after the users file
// changed.
func (u *Users) AllFields() map[string]map[string]string {
	return u.current().fields
}

// Exists reports whether the users file has a line for name, whether or not
// that user can log in.
func (u *Users) Exists(name string) bool {
	_, ok := u.lookup(name)
	return ok
}
