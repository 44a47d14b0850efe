package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/term"

	"github.com/pouchmail/pouch/audit"
	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/maildir"
)

const userUsage = `Usage: pouch user add|passwd|del|disable|enable|list [--data DIR | --store URL] [--config FILE] [NAME]

Manages the users file DATA/users (Dovecot passwd-file format, mode 0600),
or with --store the accounts table of the database that pouch serve nodes
share (every node sees a change within a second).
A name may be an address, user@domain: its Maildir is then
DATA/mail/DOMAIN/USER/ (in data directories made before Pouch knew domains,
DATA/mail/user@domain/). With --default-domain, a name without a domain gets
that one. With --config, the data directory, the default domain and the
source of accounts are pouch serve's; when the accounts are in an SQL
database or an LDAP directory, only list works (it runs iterate_query), and
accounts are changed there.
add and passwd read the password from the first line of standard input, or
ask for it twice without echo when standard input is a terminal. New
passwords must have at least 12 characters and be hard to guess; with
--breached-passwords they must not be in that list either.
disable turns POP3 access off for a user (the nologin field); enable turns
it on again. Every change is written to the audit log DATA/audit.log.

Examples:
  pouch user add alice
  pouch user add alice@example.org
  echo 'tidy-Walrus-87-kettle' | pouch user passwd --data /var/lib/pouch alice
  pouch user add --breached-passwords pwned-passwords-sha1.txt bob
  pouch user disable bob
  pouch user list

Flags:
`

func runUser(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pouch user", flag.ContinueOnError)
	data := fs.String("data", "./pouch-data", "data `directory` holding the users file")
	configFile := fs.String("config", "", "take --data, --default-domain and the source of accounts from pouch serve's TOML `file` (flags win)")
	var ac accountsConfig
	ac.register(fs)
	breachedList := fs.String("breached-passwords", "", "refuse passwords listed in this `file` (passwords or SHA-1 hashes, one per line)")
	storeURL := fs.String("store", "", "manage the accounts table of the PostgreSQL database at this `URL` (pouch serve --store) instead of the users file")
	pos, err := parseCommand(fs, userUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return usageError("user: say add, passwd, del, disable, enable or list")
	}
	src := configSource{onCommandLine: flagNames(fs)}
	if *configFile != "" {
		sc, err := readServeConfig(*configFile)
		if err != nil {
			return err
		}
		src = configSource{file: *configFile, inFile: sc.src.inFile, onCommandLine: src.onCommandLine}
		if !src.onCommandLine["data"] {
			*data = sc.Data.String()
		}
		if !src.onCommandLine["default-domain"] {
			ac.DefaultDomain = sc.DefaultDomain
		}
		if !src.onCommandLine["store"] {
			*storeURL = sc.Store.String()
		}
		ac.table = sc.table
	}
	var bad problems
	if err := checkStoreURL(*storeURL); err != nil {
		bad.add(src.problem("store", "%v", err))
	}
	ac.store = *storeURL
	accts := ac.validate(src, &bad)
	if err := bad.err(); err != nil {
		return err
	}
	path := filepath.Join(*data, "users")
	action, names := pos[0], pos[1:]
	if action == "list" {
		if len(names) != 0 {
			return usageError("user list takes no name")
		}
		if accts.source != sourcePasswd {
			return listAccounts(accts, stdout)
		}
		list, err := auth.ListUsers(path)
		if err != nil {
			return fmt.Errorf("user list: %v", err)
		}
		for _, n := range list {
			fmt.Fprintln(stdout, n)
		}
		return nil
	}
	switch action {
	case "add", "passwd", "del", "disable", "enable":
	default:
		return usageError("user: unknown action %q (use add, passwd, del, disable, enable or list)", action)
	}
	if len(names) != 1 {
		return usageError("user %s takes exactly one user name", action)
	}
	// The name as logins see it (PRECIS, RFC 8265; the domain in lower
	// case, the default domain added), so that the Maildir is made under
	// the name the server opens.
	name := auth.AccountName(names[0], accts.defaultDomain)
	switch accts.source {
	case sourceStore:
		return storeUser(action, name, accts, *data, *breachedList, stdin, stderr)
	case sourcePasswd:
	default:
		return fmt.Errorf("user %s: the accounts are kept in %s (%s): change them there", action, accts.source, accts.where)
	}
	var done string
	switch action {
	case "add", "passwd":
		if err := auth.ValidName(name); err != nil {
			return usageError("user %s: %v", action, err)
		}
		// Say what is wrong with the name before asking for a password.
		known, listErr := auth.ListUsers(path)
		if listErr == nil {
			exists := slices.Contains(known, name)
			if action == "add" && exists {
				return fmt.Errorf("user add: %v", describe(auth.ErrUserExists, name, path))
			}
			if action == "passwd" && !exists {
				return fmt.Errorf("user passwd: %v", describe(auth.ErrNoSuchUser, name, path))
			}
		}
		mailRoot := filepath.Join(*data, "mail")
		var maildirPath string
		if action == "add" {
			names, err := newMailNames(mailRoot, known)
			if err == nil {
				maildirPath, err = names.maildir(name)
			}
			if err != nil {
				return fmt.Errorf("user add: %v", err)
			}
		}
		pw, err := newPassword(action, name, *breachedList, stdin, stderr)
		if err != nil {
			return err
		}
		if action == "add" {
			// The Maildir first: a user in the users file whose Maildir
			// cannot be made would have mail deferred for ever.
			_, statErr := os.Stat(maildirPath)
			if err := maildir.New(mailRoot).Create(name); err != nil {
				return fmt.Errorf("user add: making the Maildir %s: %v", maildirPath, plainError(err))
			}
			if err = auth.AddUser(path, name, pw); err != nil && errors.Is(statErr, os.ErrNotExist) {
				removeEmptyMaildir(mailRoot, maildirPath)
			}
			done = "added user " + name
		} else {
			err = auth.SetPassword(path, name, pw)
			done = "changed the password of " + name
		}
		if err != nil {
			return fmt.Errorf("user %s: %v", action, describe(err, name, path))
		}
		warnSCRAM(pw, stderr)
	case "del":
		if err := auth.DeleteUser(path, name); err != nil {
			return fmt.Errorf("user del: %v", describe(err, name, path))
		}
		dir, err := maildir.New(filepath.Join(*data, "mail")).Dir(name)
		if err != nil {
			dir = filepath.Join(*data, "mail")
		}
		done = fmt.Sprintf("deleted user %s (the mail in %s is kept)", name, dir)
	case "disable", "enable":
		if err := auth.SetFields(path, name, noLogin(action)); err != nil {
			return fmt.Errorf("user %s: %v", action, describe(err, name, path))
		}
		done = action + "d POP3 access for " + name
	}
	userChanged(*data, action, name, done, stderr)
	return nil
}

// newPassword reads the new password of name for pouch user add or passwd
// and checks it against the password rules.
func newPassword(action, name, breached string, stdin io.Reader, stderr io.Writer) (string, error) {
	pw, err := readPassword(stdin, stderr)
	if err != nil {
		return "", fmt.Errorf("user %s: %v", action, err)
	}
	if err := auth.CheckStrength(pw, breached, name); err != nil {
		return "", fmt.Errorf("user %s: %v", action, err)
	}
	return pw, nil
}

// warnSCRAM warns when SCRAM logins cannot use the new password pw.
func warnSCRAM(pw string, stderr io.Writer) {
	if err := auth.SCRAMUsable(pw); err != nil {
		fmt.Fprintf(stderr, "pouch: warning: %v\n", strings.TrimPrefix(err.Error(), "auth: "))
	}
}

// noLogin is the change of the nologin field that pouch user disable or
// enable makes.
func noLogin(action string) map[string]*string {
	var v *string
	if action == "disable" {
		empty := ""
		v = &empty
	}
	return map[string]*string{auth.FieldNoLogin: v}
}

// userChanged records a change of pouch user in the audit log of data
// and says what was done.
func userChanged(data, action, name, done string, stderr io.Writer) {
	if err := auditEvent(data, "user_"+action, "user", name); err != nil {
		fmt.Fprintf(stderr, "pouch: warning: %v\n", err)
	}
	fmt.Fprintln(stderr, done)
}

// listAccounts lists the accounts of a database or directory (its iterate
// query or filter), one name a line.
func listAccounts(s accountsSettings, stdout io.Writer) error {
	a, err := openAccounts(s, "", false, nil)
	if err != nil {
		return fmt.Errorf("user list: %v", err)
	}
	defer a.close()
	for name, err := range a.remote.Names() {
		if err != nil {
			return fmt.Errorf("user list: %v", err)
		}
		fmt.Fprintln(stdout, name)
	}
	return nil
}

// auditEvent appends an event to DATA/audit.log, with the actor: who ran
// the command.
func auditEvent(data, event string, fields ...any) error {
	l, err := audit.Open(filepath.Join(data, "audit.log"))
	if err != nil {
		return err
	}
	defer l.Close()
	return l.Event(event, append(fields, "actor", actor())...)
}

// actor names the Unix user who runs the command: the one who called sudo
// (SUDO_USER), or else the user the process runs as.
func actor() string {
	if u := os.Getenv("SUDO_USER"); u != "" {
		return u
	}
	uid := strconv.Itoa(os.Geteuid())
	if u, err := user.LookupId(uid); err == nil {
		return u.Username
	}
	return "uid " + uid
}

// userExists reports whether the users file lists name.
func userExists(path, name string) (bool, error) {
	list, err := auth.ListUsers(path)
	if err != nil {
		return false, err
	}
	return slices.Contains(list, name), nil
}

// mailNames tells where new accounts' Maildirs go under a mail root. In
// the domains layout a domain and a user without a domain would share a
// directory of the mail root: a new account may take neither one that is
// there already nor one that an account will have (the accounts are the
// users file's, and those added since).
type mailNames struct {
	root    string
	mail    *maildir.Store
	layout  maildir.Layout
	names   map[string]bool
	domains map[string]string // a domain: one of its accounts
}

// newMailNames reads the layout of the mail root (a new one takes the
// domains layout, and nothing is written).
func newMailNames(root string, accounts []string) (*mailNames, error) {
	mail := maildir.New(root)
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		mail = maildir.NewWithLayout(root, maildir.Domains)
	}
	layout, err := mail.Layout()
	if err != nil {
		return nil, errors.New(plainError(err))
	}
	m := &mailNames{root: root, mail: mail, layout: layout, names: map[string]bool{}, domains: map[string]string{}}
	for _, a := range accounts {
		m.add(a)
	}
	return m, nil
}

// add counts the account name in.
func (m *mailNames) add(name string) {
	m.names[name] = true
	if _, domain, ok := auth.SplitAddress(name); ok && m.domains[domain] == "" {
		m.domains[domain] = name
	}
}

// maildir returns the Maildir that the new account name gets, or says in a
// sentence why it can get none.
func (m *mailNames) maildir(name string) (string, error) {
	dir, err := m.mail.Dir(name)
	if err != nil && (m.layout != maildir.Domains || !errors.Is(err, store.ErrBadUser)) {
		return "", fmt.Errorf("%s cannot have a Maildir: %v", name, plainError(err))
	}
	if m.layout != maildir.Domains {
		return dir, nil
	}
	_, domain, hasDomain := auth.SplitAddress(name)
	var clash string // what has name's directory
	switch {
	case err != nil && hasDomain:
		clash = fmt.Sprintf("%s is the Maildir of the user %s", filepath.Join(m.root, domain), domain)
	case err != nil:
		clash = fmt.Sprintf("%s holds the Maildirs of the domain %s", filepath.Join(m.root, name), name)
	case hasDomain && m.names[domain]:
		clash = fmt.Sprintf("%s is to be the Maildir of the user %s", filepath.Join(m.root, domain), domain)
	case !hasDomain && m.domains[name] != "":
		clash = fmt.Sprintf("%s is to hold the Maildir of %s", filepath.Join(m.root, name), m.domains[name])
	}
	if clash != "" {
		return "", fmt.Errorf("%s cannot have a Maildir: %s (a domain and a user without a domain would share that directory)", name, clash)
	}
	return dir, nil
}

// removeEmptyMaildir removes the Maildir dir that a failed pouch user add
// made, and the domain's directory above it if that is empty now; a
// directory that holds anything stays.
func removeEmptyMaildir(root, dir string) {
	for _, sub := range []string{"tmp", "new", "cur"} {
		os.Remove(filepath.Join(dir, sub))
	}
	os.Remove(dir)
	if parent := filepath.Dir(dir); parent != filepath.Clean(root) {
		os.Remove(parent)
	}
}

func describe(err error, name, path string) error {
	switch {
	case errors.Is(err, auth.ErrUserExists):
		return fmt.Errorf("user %q already exists in %s", name, path)
	case errors.Is(err, auth.ErrNoSuchUser):
		return fmt.Errorf("no user %q in %s", name, path)
	}
	return err
}

// readPassword reads a password: from a no-echo prompt (asked twice) when
// standard input is a terminal, otherwise from its first line.
func readPassword(stdin io.Reader, stderr io.Writer) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "Password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		fmt.Fprint(stderr, "Again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", errors.New("the passwords differ")
		}
		return string(a), nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", errors.New("no password on standard input")
	}
	return strings.TrimRight(line, "\r\n"), nil
}
