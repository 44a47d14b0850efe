package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/term"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/store/maildir"
)

const userUsage = `Usage: pouch user add|passwd|del|list [--data DIR] [NAME]

Manages the users file DATA/users (Dovecot passwd-file format, mode 0600).
add and passwd read the password from the first line of standard input, or
ask for it twice without echo when standard input is a terminal.

Examples:
  pouch user add alice
  echo 'correct horse battery staple' | pouch user passwd --data /var/lib/pouch alice
  pouch user list

Flags:
`

func runUser(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pouch user", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data := fs.String("data", "./pouch-data", "data `directory` holding the users file")
	fs.Usage = func() {
		fmt.Fprint(stderr, userUsage)
		fs.PrintDefaults()
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return usageError("user: say add, passwd, del or list")
	}
	path := filepath.Join(*data, "users")
	action, names := pos[0], pos[1:]
	if action == "list" {
		if len(names) != 0 {
			return usageError("user list takes no name")
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
	if len(names) != 1 {
		return usageError("user %s takes exactly one user name", action)
	}
	name := names[0]
	switch action {
	case "add", "passwd":
		if err := auth.ValidName(name); err != nil {
			return usageError("user %s: %v", action, err)
		}
		if action == "passwd" && !userExists(path, name) {
			return fmt.Errorf("user passwd: no user %q in %s", name, path)
		}
		pw, err := readPassword(stdin, stderr)
		if err != nil {
			return fmt.Errorf("user %s: %v", action, err)
		}
		if action == "add" {
			err = auth.AddUser(path, name, pw)
		} else {
			err = auth.SetPassword(path, name, pw)
		}
		if err != nil {
			return fmt.Errorf("user %s: %v", action, describe(err, name, path))
		}
		if action == "add" {
			if err := maildir.New(filepath.Join(*data, "mail")).Create(name); err != nil {
				return fmt.Errorf("user add: creating the maildir: %v", err)
			}
			fmt.Fprintf(stderr, "added user %s\n", name)
		} else {
			fmt.Fprintf(stderr, "changed the password of %s\n", name)
		}
		return nil
	case "del":
		if err := auth.DeleteUser(path, name); err != nil {
			return fmt.Errorf("user del: %v", describe(err, name, path))
		}
		fmt.Fprintf(stderr, "deleted user %s (the mail in %s is kept)\n", name, filepath.Join(*data, "mail", name))
		return nil
	}
	return usageError("user: unknown action %q (use add, passwd, del or list)", action)
}

func userExists(path, name string) bool {
	list, err := auth.ListUsers(path)
	if err != nil {
		return true // let SetPassword report the real error
	}
	for _, n := range list {
		if n == name {
			return true
		}
	}
	return false
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
