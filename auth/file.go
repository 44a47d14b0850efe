// Package auth is Pouch's accounts: the Account record and the Source
// interface that every package reads users through, the Dovecot
// passwd-file compatible users file that is its first Source, Remote, the
// Source of accounts kept in a database or a directory (with a cache), the
// names accounts are keyed by (AccountName), password hashing and
// verification, and the strength of new passwords.
//
// The users file has one user per line, "name:{SCHEME}secret:uid:gid:gecos:home:shell:extra".
// The name, the password and the extra fields (the account's settings: see
// Account) are used; the other fields may be absent and are kept as they are
// when a password changes. Blank lines and lines starting
// with '#' are ignored and kept on rewrite. A name listed twice means its first
// line (as in Dovecot).
//
// Schemes read: {ARGON2ID}, {BLF-CRYPT} ($2a$, $2b$, $2y$), {SHA512-CRYPT},
// {PLAIN}, {CLEARTEXT} (and its alias {CLEAR}), {CRYPT} or no prefix for a
// crypt(3) string starting with $6$, $2a$, $2b$, $2y$ or $argon2id$, and
// OpenLDAP's {ARGON2} for an $argon2id$ string. Scheme
// names are case-insensitive; user names are case-sensitive, and known in
// their PRECIS form whatever form a line has (NormalizeName). A user whose
// password cannot be used (another scheme, a malformed hash) exists but
// cannot log in. New passwords are always stored as {ARGON2ID}.
//
// The administration functions (AddUser, SetPassword, DeleteUser) each take an
// exclusive flock on the users file's path + ".lock" (waiting for it; the lock
// file is created 0600 and left in place), read the file, change it and replace
// it atomically: a temporary file in the same directory, with mode 0600 and
// the previous file's owner and group, is written and fsynced, renamed over the
// users file, and the directory is fsynced. After they return nil the change
// survives a crash; on error the file is unchanged. Lines they do not change,
// comments and blank lines included, are kept byte for byte. Passwords are
// hashed before the lock is taken, so a slow hash does not hold up other writers.
package auth

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/secure/precis"
)

// maxNameLen is the longest user name in octets.
const maxNameLen = 255

// ValidName reports whether name may be a user name: 1–255 octets of valid
// UTF-8, no control characters, no white space (POP3 USER takes one argument),
// no ':' (the users file separator), no '/' or '\\', and not starting with '.'
// (so never "." or ".."). The error says what is wrong.
func ValidName(name string) error {
	switch {
	case name == "":
		return errors.New("auth: empty user name")
	case len(name) > maxNameLen:
		return fmt.Errorf("auth: user name is %d octets long, more than %d", len(name), maxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("auth: user name %q is not valid UTF-8", name)
	case name[0] == '.':
		return fmt.Errorf("auth: user name %q starts with '.'", name)
	}
	for _, r := range name {
		switch {
		case unicode.IsControl(r):
			return fmt.Errorf("auth: user name %q contains a control character", name)
		case unicode.IsSpace(r):
			return fmt.Errorf("auth: user name %q contains white space", name)
		case r == ':', r == '/', r == '\\':
			return fmt.Errorf("auth: user name %q contains %q", name, r)
		}
	}
	return nil
}

// NormalizeName applies the PRECIS UsernameCasePreserved profile (RFC 8265
// §3.4) to a user name, as the POP3 server does with every name a client
// gives (RFC 6856 §4), so that a name composed differently (NFC or NFD, or
// in full-width forms) is the same user; and it writes the domain of an
// address (the part after the last '@') in lower case, since domains are
// not case-sensitive (RFC 5321 §2.4), while the local part keeps its case.
// A name the profile refuses keeps its form. Names of printable ASCII
// without an upper-case domain are returned unchanged.
//
// Names are normalized when users are added or changed, and when the users
// file is loaded: a line written in another form is found under the
// normalized name, and the file is not rewritten.
func NormalizeName(name string) string {
	ascii := true
	for i := 0; i < len(name) && ascii; i++ {
		ascii = name[i] > ' ' && name[i] < 0x7f
	}
	if !ascii {
		if n, err := precis.UsernameCasePreserved.String(name); err == nil {
			name = n
		}
	}
	if local, domain, ok := SplitAddress(name); ok {
		if d := NormalizeDomain(domain); d != domain {
			return local + "@" + d
		}
	}
	return name
}

// SplitAddress splits an address at its last '@' into its local part and
// its domain; ok is false for a name without '@'.
func SplitAddress(name string) (local, domain string, ok bool) {
	i := strings.LastIndexByte(name, '@')
	if i < 0 {
		return name, "", false
	}
	return name[:i], name[i+1:], true
}

// NormalizeDomain writes a domain as accounts are keyed by: in lower case,
// without a final dot.
func NormalizeDomain(domain string) string {
	domain = strings.TrimSuffix(domain, ".")
	for i := 0; i < len(domain); i++ {
		if c := domain[i]; c >= 0x80 || c >= 'A' && c <= 'Z' {
			return strings.ToLower(domain)
		}
	}
	return domain
}

// AccountName is the account a login name stands for: the name normalized
// (NormalizeName), and a name without a domain completed with
// defaultDomain, when that is set (Dovecot's auth_default_realm). Accounts
// are keyed by these names: the full address where there are domains.
func AccountName(name, defaultDomain string) string {
	name = NormalizeName(name)
	if defaultDomain != "" && !strings.Contains(name, "@") {
		return name + "@" + NormalizeDomain(defaultDomain)
	}
	return name
}

// userLine is a line of the users file split into its fields.
type userLine struct {
	name     string // field 1
	password string // field 2
	rest     string // fields 3..n with their leading ':', or ""
}

// String returns the line in file form.
func (l userLine) String() string {
	return l.name + ":" + l.password + l.rest
}

// parseLine parses one line of the users file, given without its line ending
// (a trailing CR is ignored). It reports ok false for a blank or comment line
// and for a line that names no valid user, with err saying why in the last
// case. For a user line (ok true) sec is the parsed password, or nil with an
// error saying why the user cannot log in. It never panics.
func parseLine(line string) (l userLine, sec secret, ok bool, err error) {
	line = strings.TrimSuffix(line, "\r")
	if strings.TrimSpace(line) == "" || line[0] == '#' {
		return userLine{}, nil, false, nil
	}
	name, after, found := strings.Cut(line, ":")
	if !found {
		return userLine{}, nil, false, errors.New("no ':' after the user name")
	}
	if err := ValidName(name); err != nil {
		return userLine{}, nil, false, err
	}
	l.name = name
	l.password, l.rest = after, ""
	if i := strings.IndexByte(after, ':'); i >= 0 {
		l.password, l.rest = after[:i], after[i:]
	}
	sec, err = parseSecret(l.password)
	if err != nil {
		err = fmt.Errorf("user %s cannot log in: %w", name, err)
	}
	return l, sec, true, err
}

// extraFields parses the eighth field of a user line, Dovecot's extra fields:
// space-separated "key=value" pairs (a key alone means "key=").
func (l userLine) extraFields() map[string]string {
	if l.rest == "" {
		return nil
	}
	parts := strings.SplitN(l.rest[1:], ":", 6) // uid gid gecos home shell extra
	if len(parts) < 6 || strings.TrimSpace(parts[5]) == "" {
		return nil
	}
	fields := make(map[string]string)
	for _, kv := range strings.Fields(parts[5]) {
		k, v, _ := strings.Cut(kv, "=")
		fields[k] = v
	}
	return fields
}

// splitLines splits the contents of a users file into lines, without their
// line endings. A missing final newline is tolerated.
func splitLines(data []byte) []string {
	if len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
}
