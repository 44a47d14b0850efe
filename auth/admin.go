package auth

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pouchmail/pouch/internal/filelock"
	"github.com/pouchmail/pouch/internal/fsx"
)

// Errors of the administration functions.
var (
	// ErrUserExists means AddUser was given a name the users file already has.
	ErrUserExists = errors.New("auth: user already exists")
	// ErrNoSuchUser means SetPassword or DeleteUser was given a name the
	// users file does not have.
	ErrNoSuchUser = errors.New("auth: no such user")
)

// AddUser adds name with password, stored as {ARGON2ID}, as the last line
// "name:{ARGON2ID}...::::::" (see the package documentation for how the file
// is changed), the name normalized by NormalizeName. It creates the file
// (mode 0600) and its directory (mode 0700) if they are missing. It fails
// with ErrUserExists if name is in the file already, in any form, and
// refuses an invalid name or an empty password. A password that SCRAM
// cannot use (see SCRAMUsable) is stored without SCRAM-SHA-256 keys.
func AddUser(path, name, password string) error {
	name = NormalizeName(name)
	if err := ValidName(name); err != nil {
		return err
	}
	line, err := newPasswordLine(name, password)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	return update(path, func(lines []string) ([]string, error) {
		if findUser(lines, name) >= 0 {
			return nil, fmt.Errorf("%w: %s", ErrUserExists, name)
		}
		return append(lines, line.String()), nil
	})
}

// SetPassword stores a new password, as {ARGON2ID}, for name (in any form,
// see NormalizeName). Only the password field of the user's line and the
// SCRAM-SHA-256 keys and password date among its extra fields change: the
// other fields are kept, and so is the form of the name. It fails with
// ErrNoSuchUser if name is not in the file, and refuses an empty password.
// A password that SCRAM cannot use (see SCRAMUsable) leaves the user
// without SCRAM-SHA-256 keys.
func SetPassword(path, name, password string) error {
	name = NormalizeName(name)
	fresh, err := newPasswordLine(name, password)
	if err != nil {
		return err
	}
	return updateExisting(path, name, func(lines []string) ([]string, error) {
		i := findUser(lines, name)
		if i < 0 {
			return nil, fmt.Errorf("%w: %s", ErrNoSuchUser, name)
		}
		l, _, _, _ := parseLine(lines[i])
		l.password = fresh.password
		f := fresh.extraFields()
		if v, ok := f[scramField]; ok {
			l.setExtra(scramField, v)
		} else {
			// The old keys would let the old password in.
			l.delExtra(scramField)
		}
		l.setExtra(fieldPasswordChanged, f[fieldPasswordChanged])
		lines[i] = l.String()
		return lines, nil
	})
}

// SetFields sets (value non-nil) or removes (value nil) extra fields of
// name's line (in any form, see NormalizeName), such as "nologin" or
// "login_delay", keeping the rest of the line. It fails with ErrNoSuchUser if
// name is not in the file, and refuses a value that the account's setting
// cannot take (the error names the field), which would refuse the account.
func SetFields(path, name string, fields map[string]*string) error {
	name = NormalizeName(name)
	for k, v := range fields {
		if k == "" || strings.ContainsAny(k, " =:\t\n") || (v != nil && strings.ContainsAny(*v, " :\t\n")) {
			return fmt.Errorf("auth: invalid extra field %q", k)
		}
		if v != nil {
			if err := checkSetting(k, *v); err != nil {
				return fmt.Errorf("auth: %w", err)
			}
		}
	}
	return updateExisting(path, name, func(lines []string) ([]string, error) {
		i := findUser(lines, name)
		if i < 0 {
			return nil, fmt.Errorf("%w: %s", ErrNoSuchUser, name)
		}
		l, _, _, _ := parseLine(lines[i])
		for k, v := range fields {
			if v == nil {
				l.delExtra(k)
			} else {
				l.setExtra(k, *v)
			}
		}
		lines[i] = l.String()
		return lines, nil
	})
}

// DeleteUser removes the line of name (every line, should it be listed more
// than once, in any form: see NormalizeName). It fails with ErrNoSuchUser if
// name is not in the file. A file left with nothing else gets the comment
// line noUsersLine, so that it says "no users" rather than being empty,
// which a running server takes for a fault (see SourceError).
func DeleteUser(path, name string) error {
	name = NormalizeName(name)
	return updateExisting(path, name, func(lines []string) ([]string, error) {
		if findUser(lines, name) < 0 {
			return nil, fmt.Errorf("%w: %s", ErrNoSuchUser, name)
		}
		kept := lines[:0]
		for _, line := range lines {
			if l, _, ok, _ := parseLine(line); !ok || NormalizeName(l.name) != name {
				kept = append(kept, line)
			}
		}
		if strings.TrimSpace(strings.Join(kept, "")) == "" {
			kept = []string{noUsersLine}
		}
		return kept, nil
	})
}

// noUsersLine is what DeleteUser leaves in a file whose last user it removed.
const noUsersLine = "# no users"

// ListUsers returns the names of the users in the file, normalized (see
// NormalizeName), in file order, each once: the users that Exists reports.
// A missing file has none. It takes no lock: the file is only ever replaced
// whole.
func ListUsers(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	var names []string
	seen := make(map[string]bool)
	for _, line := range splitLines(data) {
		if l, _, ok, _ := parseLine(line); ok {
			if name := NormalizeName(l.name); !seen[name] {
				seen[name] = true
				names = append(names, name)
			}
		}
	}
	return names, nil
}

// newPasswordLine returns the line of a new user: the password as {ARGON2ID},
// and its SCRAM-SHA-256 credentials in the extra fields when SCRAM can use
// the password.
func newPasswordLine(name, password string) (userLine, error) {
	hash, err := HashPassword(password)
	if err != nil {
		return userLine{}, err
	}
	l := userLine{name: name, password: hash, rest: "::::::"}
	if creds, err := scramCredentials(password); err == nil {
		l.setExtra(scramField, creds)
	}
	l.setExtra(fieldPasswordChanged, strconv.FormatInt(time.Now().Unix(), 10))
	return l, nil
}

// findUser returns the index of the first line of name, a normalized name,
// whatever the form of the line's name; or -1.
func findUser(lines []string, name string) int {
	for i, line := range lines {
		if l, _, ok, _ := parseLine(line); ok && NormalizeName(l.name) == name {
			return i
		}
	}
	return -1
}

// updateExisting is update for a change that needs the user to exist already:
// a missing users file is ErrNoSuchUser, and neither it nor its directory
// or lock file is created.
func updateExisting(path, name string, change func([]string) ([]string, error)) error {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s", ErrNoSuchUser, name)
	}
	return update(path, change)
}

// update locks the users file at path, reads its lines (none if it is
// missing), and writes back what change returns, unless change fails.
func update(path string, change func([]string) ([]string, error)) error {
	unlock, err := lockFile(path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("auth: %w", err)
	}
	lines, err := change(splitLines(data))
	if err != nil {
		return err
	}
	return writeAtomic(path, lines)
}

// lockFile takes the users file's lock (see filelock.Lock).
func lockFile(path string) (unlock func(), err error) {
	unlock, err = filelock.Lock(path)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	return unlock, nil
}

// writeAtomic replaces the file at path with lines, each ended by "\n",
// through a temporary file as the package documentation describes. The file
// keeps its owner and group, so that a users file edited by root stays
// readable by the server's user; a new users file gets the owner of its
// directory (see owner.Adopt).
func writeAtomic(path string, lines []string) error {
	var b []byte
	for _, line := range lines {
		b = append(b, line...)
		b = append(b, '\n')
	}
	if err := fsx.WriteFile(path, b, fsx.Options{Perm: 0o600, Owner: fsx.OwnKeep}); err != nil {
		return fmt.Errorf("auth: writing %s: %w", path, err)
	}
	return nil
}
