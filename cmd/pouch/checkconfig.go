package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/tlsutil"
	"github.com/pouchmail/pouch/server"
)

// runCheckConfig validates pouch serve's configuration (flags and --config
// file) without serving, and prints the effective settings as TOML.
func runCheckConfig(args []string, stdout, stderr io.Writer) error {
	flags, c := serveFlags(stderr)
	flags.Usage = func() {
		fmt.Fprint(stderr, "Usage: pouch check-config [--config FILE] [serve flags]\n\n"+
			"Checks pouch serve's configuration without starting it, prints the effective\n"+
			"settings, and fails naming the file and key of the first error.\n\n"+
			"Example:\n  pouch check-config --config /etc/pouch/pouch.toml\n")
	}
	pos, err := parseInterleaved(flags, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError("check-config takes no arguments, got %q", pos[0])
	}
	onCommandLine := flagNames(flags)
	if c.configFile != "" {
		if err := applyConfigFile(flags, c.configFile); err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
	}
	where := func(key string) string {
		if c.configFile != "" && !onCommandLine[key] {
			return fmt.Sprintf("%s: key %q", c.configFile, key)
		}
		return "--" + key
	}
	var problems []string
	bad := func(key string, err error) { problems = append(problems, fmt.Sprintf("%s: %v", where(key), err)) }
	for _, key := range []string{"pop3", "pop3s"} {
		if v := flags.Lookup(key).Value.String(); v != "" {
			if _, err := net.ResolveTCPAddr("tcp", v); err != nil {
				bad(key, err)
			}
		}
	}
	if _, _, err := newLogger(io.Discard, c.logLevel, c.logFormat); err != nil {
		bad("log-level", err)
	}
	if err := checkMaxLine(c.maxLine); err != nil {
		bad("max-line-length", err)
	}
	if w := idleTimeoutWarning(c.idleTimeout); w != "" {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if _, err := guard.ParseNets(c.proxyNets); err != nil {
		bad("proxy-networks", err)
	}
	if limit, err := hardFDLimit(); err == nil {
		if w := fdBudgetWarning(limit, fdCaps(c)); w != "" {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
	}
	if fi, err := os.Stat(c.data); errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stderr, "note: %s does not exist yet; pouch serve will create it\n", c.data)
	} else if err != nil || !fi.IsDir() {
		bad("data", fmt.Errorf("%s is not a directory", c.data))
	} else if mailEntries, err := checkDataDir(c.data, splitList(c.tlsKey)...); err != nil {
		bad("data", err)
	} else {
		users := auth.OpenUsersWith(filepath.Join(c.data, "users"), auth.UsersOptions{Expected: usersExpected(mailEntries)})
		if err := users.Fault(); err != nil {
			bad("data", err)
		}
		for _, w := range users.Warnings() {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
		for _, w := range refusedAccounts(users) {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
	}
	if certs, keys := splitList(c.tlsCert), splitList(c.tlsKey); len(certs) > 0 || len(keys) > 0 {
		if _, err := tlsutil.NewManager(certs, keys, "", "", nil); err != nil {
			bad("tls-cert", err)
		}
	}
	if c.oauthIssuer != "" || c.oauthJWKS != "" {
		if _, err := auth.NewTokenVerifier(c.oauthIssuer, c.oauthAudience, c.oauthJWKS, c.oauthUserClaim); err != nil {
			bad("oauth-issuer", err)
		}
	}
	// The defences, without opening the audit log or the metrics port.
	d := c.defence
	d.auditLog, d.metricsAddr = "off", ""
	var cfg server.Config
	if closers, err := d.apply(&cfg, os.TempDir()); err != nil {
		// apply names the flag in its message.
		if c.configFile != "" {
			problems = append(problems, fmt.Sprintf("%s (or the command line): %v", c.configFile, err))
		} else {
			problems = append(problems, err.Error())
		}
	} else {
		for _, cl := range closers {
			cl()
		}
	}
	if _, err := c.retention.policy(); err != nil {
		if c.configFile != "" {
			problems = append(problems, fmt.Sprintf("%s (or the command line): %v", c.configFile, err))
		} else {
			problems = append(problems, err.Error())
		}
	}
	if a := c.defence.metricsAddr; a != "" {
		if _, err := net.ResolveTCPAddr("tcp", a); err != nil {
			bad("metrics", err)
		}
	}
	printEffective(stdout, flags)
	if len(problems) > 0 {
		for _, p := range problems[1:] {
			fmt.Fprintln(stderr, "pouch: check-config: "+p)
		}
		return fmt.Errorf("check-config: %s", problems[0])
	}
	fmt.Fprintln(stderr, "configuration OK")
	return nil
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

// printEffective prints every setting as a TOML line, in name order.
func printEffective(w io.Writer, fs *flag.FlagSet) {
	var lines []string
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" {
			return
		}
		v := f.Value.String()
		switch f.Value.(type) {
		case interface{ IsBoolFlag() bool }:
			lines = append(lines, fmt.Sprintf("%s = %s", f.Name, v))
		default:
			if _, isInt := intFlag(v); isInt {
				lines = append(lines, fmt.Sprintf("%s = %s", f.Name, v))
			} else {
				lines = append(lines, fmt.Sprintf("%s = %q", f.Name, v))
			}
		}
	})
	sort.Strings(lines)
	fmt.Fprintln(w, strings.Join(lines, "\n"))
}

func intFlag(v string) (int, bool) {
	n := 0
	if v == "" {
		return 0, false
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}
