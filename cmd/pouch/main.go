// Command pouch is the Pouch mail system: a POP3 server (pouch serve) and the
// tools around it. This package only turns flags and files into configuration
// and wires the packages together.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

const usage = `Pouch is a POP3 mail server.

Usage:
  pouch serve [flags]                    run the POP3 server
  pouch user add|passwd|del|disable|enable|list [--data DIR] [NAME]
                                         manage the users file
  pouch ban list|add|del [--data DIR] [NETWORK]
                                         manage the bans of failed-login sources
  pouch fetch [flags] [--config FILE [ACCOUNT...]]
                                         download mail from a POP3 server
  pouch fetch [--config FILE] auth login|logout|status [ACCOUNT]
                                         sign a fetch account in with OAuth 2.0
  pouch deliver [--data DIR] [-f SENDER] USER < message
                                         deliver a message into a maildrop
  pouch who [--data DIR] [--json]        list the running server's sessions
  pouch kick [--data DIR] USER|SESSION   close a user's sessions, or one session
  pouch reload [--data DIR]              reload users, certificates and bans, as SIGHUP does
  pouch mailbox stats|restore|hold|release|policy [--data DIR] USER
                                         describe a maildrop, restore deleted mail, legal hold, retention
  pouch store init|upgrade|version --store URL
                                         manage Pouch's schema in PostgreSQL
  pouch migrate --data DIR --to URL [--verify]
                                         move users, maildrops and bans into PostgreSQL
  pouch import maildir|users|--layout    move a Dovecot or Courier site's mail and users to Pouch
  pouch bench [flags] HOST:PORT          POP3 load generator: sessions/s, MB/s, latencies
  pouch check-config [--config FILE] [serve flags]
                                         check the configuration, print the effective one
  pouch version                          show the version and build
  pouch help [COMMAND]                   show help

Run "pouch help COMMAND" for the flags and examples of a command.
`

// exitError carries an exit status and one readable sentence.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usageError reports bad command-line use (exit status 2).
func usageError(format string, args ...any) error {
	return &exitError{code: 2, msg: fmt.Sprintf(format, args...)}
}

func main() {
	err := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	if err == nil {
		return
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "pouch: %v\n", err)
	}
	os.Exit(code)
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &exitError{code: 2, msg: "no command given"}
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		return runServe(rest, stderr)
	case "user":
		return runUser(rest, stdin, stdout, stderr)
	case "ban":
		return runBan(rest, stdout, stderr)
	case "fetch":
		return runFetch(rest, stdin, stderr)
	case "deliver":
		return runDeliver(rest, stdin, stderr)
	case "who":
		return runWho(rest, stdout, stderr)
	case "kick":
		return runKick(rest, stdout, stderr)
	case "reload":
		return runReload(rest, stdout, stderr)
	case "mailbox":
		return runMailbox(rest, stdout, stderr)
	case "store":
		return runStore(rest, stdout, stderr)
	case "migrate":
		return runMigrate(rest, stdout, stderr)
	case "import":
		return runImport(rest, stdout, stderr)
	case "bench":
		return runBench(rest, stdout, stderr)
	case "check-config":
		return runCheckConfig(rest, stdout, stderr)
	case "version", "--version":
		return runVersion(rest, stdout)
	case "help", "-h", "--help", "-help":
		if len(rest) > 0 {
			return run([]string{rest[0], "--help"}, stdin, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return usageError("unknown command %q", cmd)
	}
}

// parseCommand sets up a subcommand's flag set to report to stderr and
// print usage and the flags for --help, then parses args (parseInterleaved).
func parseCommand(fs *flag.FlagSet, usage string, args []string, stderr io.Writer) ([]string, error) {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		printFlags(stderr, fs)
	}
	return parseInterleaved(fs, args)
}

// parseInterleaved parses flags that may come before, between or after the
// positional arguments, and returns the positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &exitError{code: 2, msg: err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// flagNames lists the flags set on the command line.
func flagNames(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
