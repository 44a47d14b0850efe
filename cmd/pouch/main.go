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
	"regexp"
	"slices"
	"strconv"
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

// exitError carries an exit status and one readable sentence, and
// optionally a second line saying where to read more.
type exitError struct {
	code int
	msg  string
	hint string
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
	fmt.Fprintf(os.Stderr, "pouch: %s\n", plainMessage(err.Error()))
	if ee != nil && ee.hint != "" {
		fmt.Fprintln(os.Stderr, ee.hint)
	}
	os.Exit(code)
}

// run runs the command of args. Help asked for (pouch help COMMAND, or
// --help anywhere on a command line) goes to stdout, and is no failure.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	err := dispatch(args, stdin, stdout, stderr)
	var h *helpRequest
	if errors.As(err, &h) {
		h.show(stdout)
		return nil
	}
	return err
}

func dispatch(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
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
		if len(rest) > 0 && rest[0] != "help" && !strings.HasPrefix(rest[0], "-") {
			// pouch help mailbox stats is pouch mailbox stats --help.
			return dispatch(append(slices.Clone(rest), "--help"), stdin, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return usageError("unknown command %q", cmd)
	}
}

// parseCommand sets up a subcommand's flag set to print usage and the flags
// for --help, and to report to stderr, then parses args (parseInterleaved).
func parseCommand(fs *flag.FlagSet, usage string, args []string, stderr io.Writer) ([]string, error) {
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		printFlags(fs.Output(), fs)
	}
	return parseInterleaved(fs, args)
}

// helpRequest is --help on a command line: show writes the command's
// usage (its flag set's Usage, which writes to the flag set's output).
type helpRequest struct {
	fs    *flag.FlagSet
	usage func()
}

func (h *helpRequest) Error() string { return "help requested" }
func (h *helpRequest) Unwrap() error { return flag.ErrHelp }

func (h *helpRequest) show(w io.Writer) {
	out := h.fs.Output()
	h.fs.SetOutput(w)
	h.usage()
	h.fs.SetOutput(out)
}

// parseInterleaved parses flags that may come before, between or after the
// positional arguments, and returns the positional arguments. --help
// returns a *helpRequest; a bad flag, an error of exit status 2 in one
// sentence, pointing at the command's help.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	// The flag package would print the error and the whole usage itself.
	usage, out := fs.Usage, fs.Output()
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	defer func() {
		fs.Usage = usage
		fs.SetOutput(out)
	}()
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, &helpRequest{fs: fs, usage: usage}
			}
			return nil, flagError(fs, err)
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

// The flag package's errors about a flag's value.
var (
	invalidValue = regexp.MustCompile(`^invalid value (".*") for flag -([^:\s]+): (.*)$`)
	invalidBool  = regexp.MustCompile(`^invalid boolean value (".*") for -([^:\s]+): (.*)$`)
)

// flagError turns an error of fs.Parse into one sentence naming the command
// (serve: flag provided but not defined: -bogus; ban: --for: "9x" is not a
// duration …), with a hint at the command's help.
func flagError(fs *flag.FlagSet, err error) error {
	cmd := strings.TrimPrefix(fs.Name(), "pouch ")
	msg := err.Error()
	m := invalidValue.FindStringSubmatch(msg)
	if m == nil {
		m = invalidBool.FindStringSubmatch(msg)
	}
	if m != nil {
		value, _ := strconv.Unquote(m[1])
		msg = "--" + m[2] + ": " + valueProblem(fs.Lookup(m[2]), value, m[3])
	}
	return &exitError{code: 2, msg: cmd + ": " + msg,
		hint: fmt.Sprintf("Run \"pouch help %s\" for the flags.", cmd)}
}

// valueProblem says what is wrong with value for f, given why its Set
// refused it: the settings' own sentences stay as they are; the flag
// package's kinds say only "parse error" or "value out of range" (its
// durations are not used: durationSetting reads units' durations).
func valueProblem(f *flag.Flag, value, why string) string {
	if why != "parse error" && why != "value out of range" {
		return why
	}
	var v any
	if g, ok := f.Value.(flag.Getter); ok {
		v = g.Get()
	}
	switch v.(type) {
	case int, int64, uint, uint64:
		if why == "value out of range" {
			return fmt.Sprintf("%q is too large", value)
		}
		return fmt.Sprintf("%q is not a whole number", value)
	case float64:
		return fmt.Sprintf("%q is not a number", value)
	case bool:
		return fmt.Sprintf("%q is not true or false", value)
	}
	return fmt.Sprintf("%q: %s", value, why)
}

// internalPrefix is the prefix of a package's errors ("auth: ", "store: ")
// in a message: the sentence a command prints names the command, and needs
// no package's name. "store: " first is pouch store's own.
var internalPrefix = regexp.MustCompile(`(^|: |\()(auth|guard|maildir|audit|pg): |(: |\()store: `)

// plainMessage drops the packages' prefixes from a command's message
// ("user add: auth: empty user name" is "user add: empty user name").
func plainMessage(s string) string {
	for {
		t := internalPrefix.ReplaceAllString(s, "$1$3")
		if t == s {
			return s
		}
		s = t
	}
}

// plainError is err's message without the packages' prefixes.
func plainError(err error) string {
	return strings.TrimPrefix(plainMessage(": "+err.Error()), ": ")
}

// flagNames lists the flags set on the command line.
func flagNames(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}
