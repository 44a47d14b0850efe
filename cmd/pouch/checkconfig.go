package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/tlsutil"
)

const checkConfigUsage = `Usage: pouch check-config [--config FILE] [serve flags]

Checks pouch serve's configuration without starting it, prints the effective
settings, and fails naming the file and key of the first error.

Example:
  pouch check-config --config /etc/pouch/pouch.toml
`

// runCheckConfig checks pouch serve's configuration (flags and --config
// file) as pouch serve does at start, without serving, and prints the
// effective settings as TOML. Once the settings are valid, it also tries
// what the start would open, without changing anything: it resolves the
// addresses and reads the data directory, the certificates, the client CAs,
// the OAuth key set, the country database, the ban list and the run-as user.
func runCheckConfig(args []string, stdout, stderr io.Writer) error {
	flags, c := serveFlags(stderr)
	flags.Usage = func() { fmt.Fprint(stderr, checkConfigUsage) }
	pos, err := loadServeConfig(flags, c, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError("check-config takes no arguments, got %q", pos[0])
	}
	var bad problems
	if s, err := c.validate(0); err != nil {
		bad = allProblems(err)
	} else {
		for _, w := range s.warnings {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
		if limit, err := hardFDLimit(); err == nil {
			if w := fdBudgetWarning(limit, fdCaps(s)); w != "" {
				fmt.Fprintf(stderr, "warning: %s\n", w)
			}
		}
		s.probe(&bad, stderr)
	}
	printSettings(stdout, flags)
	if len(bad) > 0 {
		for _, p := range bad[1:] {
			fmt.Fprintln(stderr, "pouch: check-config: "+p.Error())
		}
		return fmt.Errorf("check-config: %v", bad[0])
	}
	fmt.Fprintln(stderr, "configuration OK")
	return nil
}

// probe tries, read-only, what pouch serve would open with the settings,
// adding what fails to bad and writing notes and warnings to w.
func (s *serveSettings) probe(bad *problems, w io.Writer) {
	for _, l := range s.listeners {
		if l.addr != "" {
			if _, err := net.ResolveTCPAddr("tcp", l.addr); err != nil {
				bad.add(fmt.Errorf("%s: %v", s.src.where(l.name), err))
			}
		}
	}
	if a := s.defence.metricsAddr; a != "" {
		if _, err := net.ResolveTCPAddr("tcp", a); err != nil {
			bad.add(fmt.Errorf("%s: %v", s.src.where("metrics"), err))
		}
	}
	if fi, err := os.Stat(s.data); errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(w, "note: %s does not exist yet; pouch serve will create it\n", s.data)
	} else if err != nil || !fi.IsDir() {
		bad.add(fmt.Errorf("%s: %s is not a directory", s.src.where("data"), s.data))
	} else if mailEntries, err := checkDataDir(s.data, s.tlsKeys...); err != nil {
		bad.add(err)
	} else {
		users := auth.OpenUsersWith(filepath.Join(s.data, "users"), auth.UsersOptions{Expected: usersExpected(mailEntries)})
		if err := users.Fault(); err != nil {
			bad.add(fmt.Errorf("%s: %v", s.src.where("data"), err))
		}
		for _, warning := range users.Warnings() {
			fmt.Fprintf(w, "warning: %s\n", warning)
		}
		for _, warning := range refusedAccounts(users) {
			fmt.Fprintf(w, "warning: %s\n", warning)
		}
		if s.defence.guard.MaxFailures > 0 && !s.store.shared() {
			if _, err := guard.New(guard.Config{StatePath: filepath.Join(s.data, "bans.json")}); err != nil {
				bad.add(err)
			}
		}
	}
	if s.store.shared() {
		ctx, cancel := context.WithTimeout(context.Background(), storeConnectTimeout)
		mail, err := openMailStore(ctx, s.store, "")
		cancel()
		if err != nil {
			bad.add(err)
		} else {
			mail.(io.Closer).Close()
		}
	}
	// Without certificates of its own, pouch serve makes a self-signed
	// pair in the data directory: nothing to read yet.
	if len(s.tlsCerts) > 0 || len(s.tlsKeys) > 0 {
		if _, err := tlsutil.NewManager(s.tlsCerts, s.tlsKeys, "", "", nil); err != nil {
			bad.add(s.tlsProblem(err))
		}
	}
	if s.clientCA != "" {
		if _, err := tlsutil.LoadClientCAs(s.clientCA); err != nil {
			bad.add(fmt.Errorf("%s: %v", s.src.where("tls-client-ca"), err))
		}
	}
	if s.oauth.on() {
		if _, err := s.tokenVerifier(); err != nil {
			bad.add(err)
		}
	}
	if r, err := s.defence.rules(s.src); err != nil {
		bad.add(err)
	} else {
		r.Close()
	}
	if s.defence.runAs != "" {
		if _, _, err := lookupRunAs(s.defence.runAs); err != nil {
			bad.add(err)
		}
	}
}

// refusedAccounts lists, one sentence each, the accounts of src refused for
// their settings.
func refusedAccounts(src auth.Source) []string {
	var out []string
	for _, err := range src.Accounts() {
		if errors.Is(err, auth.ErrInvalidAccount) {
			out = append(out, refusedAccount(err))
		}
	}
	return out
}

// refusedAccount says what it means for an account to be refused for its
// settings (an *auth.AccountError).
func refusedAccount(err error) string {
	return strings.TrimPrefix(err.Error(), "auth: ") +
		"; the user cannot log in, and mail for the user waits, until it is fixed"
}
