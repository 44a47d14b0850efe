package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/tlsutil"
)

const checkConfigUsage = `Usage: pouch check-config [--config FILE] [--check-user NAME] [serve flags]

Checks pouch serve's configuration without starting it, prints the effective
settings, and fails naming the file and key of the first error. With an SQL
or LDAP source of accounts ([accounts] in the file), it asks the database or
directory once: it lists the accounts, and with --check-user looks NAME up
and shows what came back (the password's scheme, the settings, the columns
or attributes it ignores).

Example:
  pouch check-config --config /etc/pouch/pouch.toml --check-user alice@example.org
`

// runCheckConfig checks pouch serve's configuration (flags and --config
// file) as pouch serve does at start, without serving, and prints the
// effective settings as TOML. Once the settings are valid, it also tries
// what the start would open, without changing anything: it listens on each
// TCP address and closes at once, looks at the directory of the LMTP
// socket, and reads the data directory, the certificates, the client CAs,
// the OAuth key set, the country database, the ban list and the run-as user.
func runCheckConfig(args []string, stdout, stderr io.Writer) error {
	flags, c := serveFlags(stderr)
	flags.Init("pouch check-config", flag.ContinueOnError)
	flags.Usage = func() { fmt.Fprint(flags.Output(), checkConfigUsage) }
	checkUser := flags.String("check-user", "", "look this `name` up in the source of accounts and show what it returns")
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
		s.probe(&bad, stderr, *checkUser)
	}
	printSettings(stdout, flags)
	printAccountsTable(stdout, c.table)
	if len(bad) > 0 {
		for _, p := range bad[1:] {
			fmt.Fprintln(stderr, "pouch: check-config: "+plainError(p))
		}
		return fmt.Errorf("check-config: %v", bad[0])
	}
	fmt.Fprintln(stderr, "configuration OK")
	return nil
}

// probe tries, read-only, what pouch serve would open with the settings,
// adding what fails to bad and writing notes and warnings to w; user, when
// given, is looked up in the source of accounts.
func (s *serveSettings) probe(bad *problems, w io.Writer, user string) {
	for _, l := range s.listeners {
		probeListen(s.src.where(l.name), l.addr, bad, w)
	}
	if path, unix := strings.CutPrefix(s.lmtp.addr, "unix:"); unix {
		probeSocketDir(path, w)
	} else {
		probeListen(s.src.where("lmtp"), s.lmtp.addr, bad, w)
	}
	probeListen(s.src.where("metrics"), s.defence.metricsAddr, bad, w)
	if fi, err := os.Stat(s.data); errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(w, "note: %s does not exist yet; pouch serve will create it\n", s.data)
	} else if err != nil {
		bad.add(fmt.Errorf("%s: %v", s.src.where("data"), err))
	} else if !fi.IsDir() {
		bad.add(fmt.Errorf("%s: %s is not a directory", s.src.where("data"), s.data))
	} else if mailEntries, err := checkDataDir(s.data, s.tlsKeys...); err != nil {
		bad.add(err)
	} else {
		if s.accounts.source == sourcePasswd {
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
			if s.accounts.defaultDomain != "" {
				for a := range users.Accounts() {
					if !strings.Contains(a.Name, "@") {
						fmt.Fprintf(w, "warning: user %s has no domain: with --default-domain %s, logins as %s are %s@%s; "+
							"its line in the users file should say so\n", a.Name, s.accounts.defaultDomain, a.Name, a.Name, s.accounts.defaultDomain)
					}
				}
			}
			probeAccounts(s.accounts, &accounts{users: users}, user, w, bad)
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
	if s.accounts.source != sourcePasswd {
		if a, err := openAccounts(s.accounts, s.data, false, nil); err != nil {
			bad.add(err)
		} else {
			probeAccounts(s.accounts, a, user, w, bad)
			a.close()
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

// probeListen tries to listen on the TCP address addr ("" is none), set
// where, and closes the listener at once. An address that is not this
// machine's, or does not resolve, is a problem; one in use now (by the
// server running, before a restart) or a port below 1024 that this user may
// not bind is a note, since pouch serve may run when it is free, or with
// the capability to bind it.
func probeListen(where, addr string, bad *problems, w io.Writer) {
	if addr == "" {
		return
	}
	l, err := net.Listen("tcp", addr)
	if err == nil {
		l.Close()
		return
	}
	note, problem := listenProblem(addr, err, os.Geteuid())
	if note != "" {
		fmt.Fprintf(w, "note: %s\n", note)
	}
	if problem != "" {
		bad.add(fmt.Errorf("%s: %s", where, problem))
	}
}

// listenProblem sorts out why listening on addr failed, for a process of
// the user euid: a note, or a problem.
func listenProblem(addr string, err error, euid int) (note, problem string) {
	host, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Sprintf("%s is in use now; pouch serve cannot start on it while it is", addr), ""
	case errors.Is(err, syscall.EACCES) && port > 0 && port < 1024 && euid != 0:
		return fmt.Sprintf("%s: this user may not listen on port %d, below 1024; pouch serve needs root or CAP_NET_BIND_SERVICE for it", addr, port), ""
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "", fmt.Sprintf("%s is not an address of this machine, so pouch serve cannot listen on %s", host, addr)
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return "", fmt.Sprintf("%s does not resolve: %v", host, dns.Err)
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	return "", fmt.Sprintf("cannot listen on %s: %v", addr, err)
}

// probeSocketDir notes what would keep pouch serve from making the Unix
// socket path: its directory missing or not writable, or a file there
// that is no socket. Nothing is made.
func probeSocketDir(path string, w io.Writer) {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		fmt.Fprintf(w, "note: the directory %s of the LMTP socket does not exist; pouch serve cannot make %s until it does\n", dir, path)
		return
	case err != nil:
		fmt.Fprintf(w, "note: the directory %s of the LMTP socket cannot be read: %v\n", dir, errors.Unwrap(err))
		return
	case !fi.IsDir():
		fmt.Fprintf(w, "note: %s, where the LMTP socket goes, is not a directory\n", dir)
		return
	case syscall.Access(dir, 2 /* W_OK */) != nil:
		fmt.Fprintf(w, "note: this user may not write to %s, where the LMTP socket %s goes (pouch serve may run as another)\n", dir, path)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() != fs.ModeSocket {
		fmt.Fprintf(w, "note: %s is there and is not a socket; pouch serve will not replace it\n", path)
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

// printAccountsTable writes the [accounts] table as the file gave it, with
// the password of a DSN hidden.
func printAccountsTable(w io.Writer, table map[string]any) {
	if table == nil {
		return
	}
	fmt.Fprintln(w, "\n[accounts]")
	keys := make([]string, 0, len(table))
	for k := range table {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch v := table[k].(type) {
		case string:
			if k == "dsn" {
				v = hideDSNPassword(v)
			}
			fmt.Fprintf(w, "%s = %s\n", k, strconv.Quote(v))
		case map[string]any:
			fields := make([]string, 0, len(v))
			for f, attr := range v {
				fields = append(fields, fmt.Sprintf("%s = %s", f, strconv.Quote(fmt.Sprint(attr))))
			}
			sort.Strings(fields)
			fmt.Fprintf(w, "%s = { %s }\n", k, strings.Join(fields, ", "))
		default:
			fmt.Fprintf(w, "%s = %v\n", k, v)
		}
	}
}

var (
	dsnKeyPassword  = regexp.MustCompile(`(^|\s)password=('[^']*'|\S+)`)
	dsnUserPassword = regexp.MustCompile(`^([^:@/()]*):([^@]*)@`)
)

// hideDSNPassword replaces the password of a connection URL, a
// PostgreSQL key=value string or a MySQL DSN with xxxxx.
func hideDSNPassword(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
			s, _ := url.PathUnescape(u.String())
			return s
		}
		return dsn
	}
	dsn = dsnKeyPassword.ReplaceAllString(dsn, "${1}password=xxxxx")
	return dsnUserPassword.ReplaceAllString(dsn, "${1}:xxxxx@")
}
