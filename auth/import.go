package auth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ForeignUser is a user line of another server's passwd-file (Dovecot's
// format, which is the users file's), read to be imported.
type ForeignUser struct {
	// Name is the user's name as logins see it (NormalizeName).
	Name string
	// Line is the line as the file has it.
	Line string
	// Scheme is the password's scheme as the line writes it ("{CRAM-MD5}",
	// or "{CRYPT}" for a crypt(3) string without one).
	Scheme string
	// Problem says why Pouch cannot check the password, or is nil.
	Problem error
}

// ReadPasswdFile reads the user lines of a Dovecot passwd-file, in file
// order; a name given twice counts by its first line, as in Dovecot. bad
// lists the lines that name no user, with why.
func ReadPasswdFile(path string) (users []ForeignUser, bad []string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("auth: %w", err)
	}
	seen := map[string]bool{}
	for i, line := range splitLines(data) {
		l, _, ok, perr := parseLine(line)
		if !ok {
			if perr != nil {
				bad = append(bad, fmt.Sprintf("%s:%d: %v", path, i+1, perr))
			}
			continue
		}
		name := NormalizeName(l.name)
		if seen[name] {
			continue
		}
		seen[name] = true
		u := ForeignUser{Name: name, Line: strings.TrimSuffix(line, "\r"), Scheme: "{CRYPT}"}
		if strings.HasPrefix(l.password, "{") {
			if end := strings.IndexByte(l.password, '}'); end > 0 {
				u.Scheme = strings.ToUpper(l.password[:end+1])
			}
		}
		if perr != nil {
			// parseLine says "user NAME cannot log in: WHY".
			var cause error = perr
			if u := errors.Unwrap(perr); u != nil {
				cause = u
			}
			u.Problem = cause
		}
		users = append(users, u)
	}
	return users, bad, nil
}

// ImportOutcome is what ImportUsers did with one user.
type ImportOutcome int

const (
	// UserAdded: the line was added to the users file.
	UserAdded ImportOutcome = iota
	// UserUnchanged: the users file had the user with the same password.
	UserUnchanged
	// UserUpdated: the users file had the user; its password is now the
	// one imported (replace was set).
	UserUpdated
	// UserDiffers: the users file has the user with another password,
	// which was left as it is.
	UserDiffers
)

// ImportUsers adds users to the users file at path in one atomic change
// (see the package documentation), each line as the other server's file
// has it. A user the file has already keeps its line, unless update is set
// and its password field differs: then that field takes the imported one,
// and its SCRAM-SHA-256 keys, which belong to the old password, are
// removed.
func ImportUsers(path string, users []ForeignUser, replace bool) (map[string]ImportOutcome, error) {
	out := make(map[string]ImportOutcome, len(users))
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	err := update(path, func(lines []string) ([]string, error) {
		clear(out)
		first := firstLines(lines) // read once: an import may add many thousands
		for _, u := range users {
			fl, _, ok, _ := parseLine(u.Line)
			if !ok {
				return nil, fmt.Errorf("auth: not a user line: %q", u.Line)
			}
			i, found := first[u.Name]
			if !found {
				if _, dup := first[NormalizeName(fl.name)]; !dup {
					first[NormalizeName(fl.name)] = len(lines)
				}
				lines = append(lines, u.Line)
				out[u.Name] = UserAdded
				continue
			}
			l, _, _, _ := parseLine(lines[i])
			switch {
			case l.password == fl.password:
				out[u.Name] = UserUnchanged
			case !replace:
				out[u.Name] = UserDiffers
			default:
				l.password = fl.password
				l.delExtra(scramField)
				l.delExtra(fieldPasswordChanged) // unknown: a maximum age does not apply
				lines[i] = l.String()
				out[u.Name] = UserUpdated
			}
		}
		return lines, nil
	})
	return out, err
}

// firstLines maps the name of each user of lines (normalized) to the index
// of its first line, as findUser finds it.
func firstLines(lines []string) map[string]int {
	first := make(map[string]int, len(lines))
	for i, line := range lines {
		if l, _, ok, _ := parseLine(line); ok {
			if _, dup := first[NormalizeName(l.name)]; !dup {
				first[NormalizeName(l.name)] = i
			}
		}
	}
	return first
}
