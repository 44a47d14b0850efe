package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"golang.org/x/term"

	"github.com/pouchmail/pouch/client"
	"github.com/pouchmail/pouch/fetch"
	"github.com/pouchmail/pouch/internal/units"
)

const fetchUsage = `Usage: pouch fetch [flags]
       pouch fetch --config FILE [flags] [ACCOUNT...]

Downloads mail from a POP3 server into a Maildir, an mbox, an MDA, or an
LMTP/SMTP server, exactly once: a message is deleted from the server (when
--keep says so) only after it is safely stored and recorded, and no crash or
network failure loses or duplicates it.

With --config, the TOML file has the flag names as keys: top-level keys apply
to every account, and each [account.NAME] table is one account. Flags on the
command line win over the file. ACCOUNT names select accounts (default: all).
Up to --parallel accounts are fetched at once; each account's lines are
printed together, in the order the accounts are named or sorted.

A server whose replies go out of step with the commands (a body line "."
that it did not dot-stuff, a message whose size disagrees with LIST, an
empty message, a reply that is neither +OK nor -ERR) ends the session
without deleting anything; what arrived of the message is kept in the
Maildir quarantine/ under --state-dir, and the message is left on the
server until --retry-quarantined.

Examples:
  pouch fetch --server pop.example.com:995 --user alice \
      --password-command 'pass show mail/alice' --to maildir:~/Mail/inbox --keep 14d
  pouch fetch --config ~/.config/pouch/fetch.toml --every 5m

Flags:
`

// fetchConfig holds the flags of one account.
type fetchConfig struct {
	configFile        string
	server            string
	tlsMode           string
	caFile            string
	fingerprint       string
	user              string
	passwordFile      string
	passwordCommand   string
	oauthTokenCommand string
	to                string
	rcpt              string
	keep              string
	maxSize           string
	deleteOversized   bool
	stateDir          string
	dryRun            bool
	every             string
	quiet             bool
	window            int
	timeout           time.Duration
	deadline          time.Duration
	parallel          int
	retryQuarantined  bool
}

func fetchFlags(stderr io.Writer) (*flag.FlagSet, *fetchConfig) {
	c := &fetchConfig{}
	fs := flag.NewFlagSet("pouch fetch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.configFile, "config", "", "read accounts from this TOML `file`")
	fs.StringVar(&c.server, "server", "", "POP3 server `host:port` (995 for implicit TLS, 110 for starttls)")
	fs.StringVar(&c.tlsMode, "tls", "implicit", "`mode`: implicit (POP3S), starttls (STLS, never falls back), or none (cleartext)")
	fs.StringVar(&c.caFile, "ca-file", "", "trust the CA certificates in this PEM `file` instead of the system's")
	fs.StringVar(&c.fingerprint, "tls-fingerprint", "", "accept only the server certificate with this SHA-256 `hex` fingerprint")
	fs.StringVar(&c.user, "user", "", "user `name` on the server")
	fs.StringVar(&c.passwordFile, "password-file", "", "read the password from the first line of this `file`")
	fs.StringVar(&c.passwordCommand, "password-command", "", "run this shell `command` and use the first line it prints as the password")
	fs.StringVar(&c.oauthTokenCommand, "oauth-token-command", "", "run this shell `command` for an OAuth 2.0 access token (OAUTHBEARER, XOAUTH2)")
	fs.StringVar(&c.to, "to", "", "`destination`: maildir:DIR, mbox:FILE, mda:CMD, lmtp:HOST:PORT or smtp:HOST:PORT")
	fs.StringVar(&c.rcpt, "rcpt", os.Getenv("USER"), "envelope recipient `address` for lmtp: and smtp:")
	fs.StringVar(&c.keep, "keep", "0", "leave mail on the server this `long` after its first download (14d, 36h, 90s) or forever; 0 deletes at once")
	fs.StringVar(&c.maxSize, "max-size", "0", "skip messages larger than this `size` (octets, or with K, M, G); 0 means no limit")
	fs.BoolVar(&c.deleteOversized, "delete-oversized", false, "delete messages larger than --max-size from the server without downloading them")
	fs.StringVar(&c.stateDir, "state-dir", fetch.DefaultStateDir(), "`directory` for the per-account journals and locks")
	fs.BoolVar(&c.dryRun, "dry-run", false, "log in and say what would be done, changing nothing")
	fs.StringVar(&c.every, "every", "", "keep running and fetch again every `interval` (5m, 1h)")
	fs.BoolVar(&c.quiet, "q", false, "print nothing but errors")
	fs.IntVar(&c.window, "window", 1024, "RETR commands in flight when the server offers PIPELINING")
	fs.DurationVar(&c.timeout, "timeout", 2*time.Minute, "give up on a server silent this `long`")
	fs.DurationVar(&c.deadline, "deadline", fetch.DefaultDeadline, "cut off an account's run after this `long` in all (the session ends without deleting anything); 0 for none")
	fs.IntVar(&c.parallel, "parallel", 4, "fetch up to `n` accounts at once")
	fs.BoolVar(&c.retryQuarantined, "retry-quarantined", false, "download again the messages an earlier run found damaged and left on the server")
	fs.Usage = func() {
		fmt.Fprint(stderr, fetchUsage)
		printFlags(stderr, fs)
	}
	return fs, c
}

// account turns the flags into an Account.
func (c *fetchConfig) account(name string) (*fetch.Account, error) {
	if c.server == "" {
		return nil, errors.New("--server is required")
	}
	if c.user == "" {
		return nil, errors.New("--user is required")
	}
	n := 0
	for _, s := range []string{c.passwordFile, c.passwordCommand, c.oauthTokenCommand} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("give exactly one of --password-file, --password-command, --oauth-token-command")
	}
	if c.to == "" && !c.dryRun {
		return nil, errors.New("--to is required (for example --to maildir:~/Mail/inbox)")
	}
	mode, err := client.ParseTLSMode(c.tlsMode)
	if err != nil {
		return nil, err
	}
	keep, forever, err := fetch.ParseKeep(c.keep)
	if err != nil {
		return nil, err
	}
	maxSize, err := units.ParseSize(c.maxSize)
	if err != nil {
		return nil, err
	}
	if c.deleteOversized && maxSize == 0 {
		return nil, errors.New("--delete-oversized needs --max-size")
	}
	if c.deadline < 0 {
		return nil, errors.New("--deadline must not be negative")
	}
	deadline := c.deadline
	if deadline == 0 {
		deadline = -1 // none
	}
	return &fetch.Account{
		Name: name, Server: c.server, TLS: mode, CAFile: c.caFile, Fingerprint: c.fingerprint,
		User: c.user, PasswordFile: c.passwordFile, PasswordCommand: c.passwordCommand,
		OAuthTokenCommand: c.oauthTokenCommand, To: c.to, Rcpt: c.rcpt,
		Keep: keep, KeepForever: forever, MaxSize: maxSize, DeleteOversized: c.deleteOversized,
		StateDir: c.stateDir, DryRun: c.dryRun, Window: c.window, Timeout: c.timeout,
		Deadline: deadline, RetryQuarantined: c.retryQuarantined,
	}, nil
}

// topLevelKeys are the keys that apply to the whole command, not to one
// account.
var topLevelKeys = map[string]bool{"parallel": true}

// setFromTOML sets every flag not given on the command line from values
// (an account's table if account).
func setFromTOML(fs *flag.FlagSet, set map[string]bool, values map[string]any, where string, account bool) error {
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		if key == "account" || key == "accounts" {
			continue
		}
		if key == "config" || fs.Lookup(key) == nil {
			return fmt.Errorf("%s: unknown key %q", where, key)
		}
		if account && topLevelKeys[key] {
			return fmt.Errorf("%s: key %q belongs at the top of the file", where, key)
		}
		if set[key] {
			continue
		}
		if err := fs.Set(key, fmt.Sprint(values[key])); err != nil {
			return fmt.Errorf("%s: key %q: %v", where, key, err)
		}
	}
	return nil
}

type namedAccount struct {
	acct  *fetch.Account
	quiet bool
}

// fetchRun is what one pouch fetch command does.
type fetchRun struct {
	accts    []namedAccount
	every    time.Duration // 0: once
	parallel int
}

// loadAccounts returns the accounts to fetch, the --every interval and
// --parallel.
func loadAccounts(args []string, stderr io.Writer) (fetchRun, error) {
	fs, c := fetchFlags(stderr)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return fetchRun{}, err
	}
	set := flagNames(fs)
	if c.configFile == "" {
		if len(pos) > 0 {
			return fetchRun{}, usageError("account names need --config; got %q", pos[0])
		}
		a, err := c.account("")
		if err != nil {
			return fetchRun{}, usageError("fetch: %v", err)
		}
		every, err := parseEvery(c.every)
		return fetchRun{[]namedAccount{{a, c.quiet}}, every, 1}, err
	}
	var file map[string]any
	if _, err := toml.DecodeFile(c.configFile, &file); err != nil {
		return fetchRun{}, &exitError{code: 2, msg: fmt.Sprintf("config %s: %v", c.configFile, err)}
	}
	if err := setFromTOML(fs, set, file, "config "+c.configFile, false); err != nil {
		return fetchRun{}, &exitError{code: 2, msg: err.Error()}
	}
	if c.parallel < 1 {
		return fetchRun{}, usageError("--parallel %d: give at least 1", c.parallel)
	}
	table, _ := file["account"].(map[string]any)
	if t2, ok := file["accounts"].(map[string]any); ok {
		if table == nil {
			table = map[string]any{}
		}
		for k, v := range t2 {
			table[k] = v
		}
	}
	if len(table) == 0 {
		return fetchRun{}, usageError("config %s: no [account.NAME] table", c.configFile)
	}
	names := pos
	if len(names) == 0 {
		for n := range table {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	var out []namedAccount
	var every time.Duration
	for _, name := range names {
		vals, ok := table[name].(map[string]any)
		if !ok {
			return fetchRun{}, usageError("config %s: no account %q", c.configFile, name)
		}
		afs, ac := fetchFlags(stderr)
		parseInterleaved(afs, args) // parsed once above without error
		setFromTOML(afs, set, file, "config "+c.configFile, false)
		if err := setFromTOML(afs, set, vals, fmt.Sprintf("config %s: account %s", c.configFile, name), true); err != nil {
			return fetchRun{}, &exitError{code: 2, msg: err.Error()}
		}
		a, err := ac.account(name)
		if err != nil {
			return fetchRun{}, usageError("account %s: %v", name, err)
		}
		e, err := parseEvery(ac.every)
		if err != nil {
			return fetchRun{}, err
		}
		if every == 0 || (e > 0 && e < every) {
			every = e
		}
		out = append(out, namedAccount{a, ac.quiet})
	}
	return fetchRun{out, every, c.parallel}, nil
}

func parseEvery(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, forever, err := fetch.ParseKeep(s)
	if err != nil || forever || d < time.Second {
		return 0, usageError("--every %q: use an interval of at least 1s, like 5m", s)
	}
	return d, nil
}

func runFetch(args []string, stderr io.Writer) error {
	fr, err := loadAccounts(args, stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// After the first signal the current message is finished and the session
	// ends with QUIT; a second signal kills at once.
	context.AfterFunc(ctx, stop)
	tty := false
	if f, ok := stderr.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	// A progress bar only while one account runs at a time.
	bar := tty && (len(fr.accts) == 1 || fr.parallel == 1)
	if fr.every == 0 {
		return fetchOnce(ctx, fr, bar, stderr)
	}
	fetchEvery(ctx, fr, &lockedWriter{w: stderr})
	return nil
}

// fetchOnce fetches every account once, up to fr.parallel at a time, and
// prints each account's lines together, in the accounts' order.
func fetchOnce(ctx context.Context, fr fetchRun, bar bool, stderr io.Writer) error {
	out := newOrderedOutput(stderr, len(fr.accts))
	sem := make(chan struct{}, fr.parallel)
	same := sameMailbox(fr.accts)
	errs := make([]error, len(fr.accts))
	var wg sync.WaitGroup
	for i, na := range fr.accts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer out.finish(i)
			mu := same[i]
			mu.Lock()
			defer mu.Unlock()
			sem <- struct{}{}
			defer func() { <-sem }()
			if ctx.Err() == nil {
				errs[i] = fetchOne(ctx, na, bar, out.writer(i))
			}
		}()
	}
	wg.Wait()
	failed := 0
	for _, err := range errs {
		if err != nil {
			failed++
		}
	}
	if failed > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("fetch failed for %d of %d accounts", failed, len(fr.accts))}
	}
	return nil
}

// fetchEvery fetches each account every fr.every until ctx ends, up to
// fr.parallel at a time; each account keeps its own pace, so a slow server
// holds up only its own account.
func fetchEvery(ctx context.Context, fr fetchRun, stderr io.Writer) {
	sem := make(chan struct{}, fr.parallel)
	same := sameMailbox(fr.accts)
	var wg sync.WaitGroup
	for i, na := range fr.accts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				same[i].Lock()
				sem <- struct{}{}
				if ctx.Err() == nil {
					fetchOne(ctx, na, false, stderr)
				}
				<-sem
				same[i].Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(fr.every):
				}
			}
		}()
	}
	wg.Wait()
}

// sameMailbox returns a mutex per account, shared by the accounts of one
// server and user: a POP3 server locks a maildrop for one session at a
// time, so those run one after another.
func sameMailbox(accts []namedAccount) []*sync.Mutex {
	byKey := map[string]*sync.Mutex{}
	out := make([]*sync.Mutex, len(accts))
	for i, na := range accts {
		k := na.acct.Server + "\x00" + na.acct.User
		if byKey[k] == nil {
			byKey[k] = &sync.Mutex{}
		}
		out[i] = byKey[k]
	}
	return out
}

// lockedWriter keeps each Write whole when several goroutines write.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// orderedOutput prints the lines of accounts fetched at once in the
// accounts' order: the first unfinished account writes through, the others
// are held until every account before them has finished.
type orderedOutput struct {
	mu   sync.Mutex
	w    io.Writer
	held []bytes.Buffer
	done []bool
	head int
}

func newOrderedOutput(w io.Writer, n int) *orderedOutput {
	return &orderedOutput{w: w, held: make([]bytes.Buffer, n), done: make([]bool, n)}
}

// writer returns account i's writer; each Write is kept whole.
func (o *orderedOutput) writer(i int) io.Writer { return orderedWriter{o, i} }

type orderedWriter struct {
	o *orderedOutput
	i int
}

func (w orderedWriter) Write(p []byte) (int, error) {
	o := w.o
	o.mu.Lock()
	defer o.mu.Unlock()
	if w.i == o.head {
		return o.w.Write(p)
	}
	return o.held[w.i].Write(p)
}

// finish marks account i finished and prints what the accounts after it
// held, up to the next unfinished one.
func (o *orderedOutput) finish(i int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.done[i] = true
	for o.head < len(o.done) && o.done[o.head] {
		o.head++
		if o.head < len(o.done) {
			o.w.Write(o.held[o.head].Bytes())
			o.held[o.head] = bytes.Buffer{}
		}
	}
}

// fetchOne runs one account and reports on stderr.
func fetchOne(ctx context.Context, na namedAccount, bar bool, stderr io.Writer) error {
	a := na.acct
	name := a.DisplayName()
	obs := &reporter{w: stderr, name: name, quiet: na.quiet, bar: bar && !na.quiet}
	st, err := fetch.Run(ctx, a, obs)
	obs.clear()
	if err != nil {
		fmt.Fprintf(stderr, "pouch fetch: %s: %v\n", name, err)
	}
	if !na.quiet {
		fmt.Fprintf(stderr, "pouch fetch: %s\n", summary(name, st, err))
	}
	return err
}

// summary is the one line printed per account and run.
func summary(name string, st fetch.Stats, err error) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: ", name)
	if st.DryRun && err != nil {
		b.WriteString("dry run FAILED: nothing could be checked")
		return b.String()
	}
	if st.DryRun {
		fmt.Fprintf(&b, "dry run: would fetch %d (%s), delete %d, keep %d, skip %d", st.Fetched, humanBytes(st.Bytes), st.Deleted, st.Kept, st.Skipped)
		return b.String()
	}
	fmt.Fprintf(&b, "%d fetched (%s) in %s", st.Fetched, humanBytes(st.Bytes), st.Elapsed.Round(time.Millisecond))
	if st.Elapsed > 0 && st.Bytes > 0 {
		fmt.Fprintf(&b, " (%s/s)", humanBytes(int64(float64(st.Bytes)/st.Elapsed.Seconds())))
	}
	fmt.Fprintf(&b, ", %d deleted, %d kept on server, %d skipped", st.Deleted, st.Kept, st.Skipped)
	if st.Recovered > 0 {
		fmt.Fprintf(&b, ", %d recovered from an interrupted run", st.Recovered)
	}
	if st.Stopped {
		b.WriteString(", stopped by a signal")
	}
	if err != nil {
		b.WriteString(", FAILED")
	}
	return b.String()
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// reporter prints warnings and, on a terminal, a progress bar.
type reporter struct {
	w     io.Writer
	name  string
	quiet bool
	bar   bool

	mu          sync.Mutex
	total       int
	totalBytes  int64
	done        int
	doneBytes   int64
	start, last time.Time
	drawn       bool
}

func (r *reporter) Plan(msgs int, bytes int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.total, r.totalBytes, r.start = msgs, bytes, time.Now()
}

func (r *reporter) Fetched(n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done++
	r.doneBytes += n
	if r.bar && (time.Since(r.last) > 100*time.Millisecond || r.done == r.total) {
		r.last = time.Now()
		r.draw()
	}
}

func (r *reporter) Warn(msg string) {
	if r.quiet {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLocked()
	fmt.Fprintf(r.w, "pouch fetch: %s: warning: %s\n", r.name, msg)
}

// draw renders "name [#####-----] 120/2000 480.0 KiB 1.2 MiB/s ETA 3s".
func (r *reporter) draw() {
	const width = 24
	frac := 1.0
	if r.totalBytes > 0 {
		frac = float64(r.doneBytes) / float64(r.totalBytes)
	} else if r.total > 0 {
		frac = float64(r.done) / float64(r.total)
	}
	frac = min(max(frac, 0), 1)
	filled := int(frac * width)
	el := time.Since(r.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(r.doneBytes) / el
	}
	eta := "?"
	if rate > 0 && r.totalBytes >= r.doneBytes {
		eta = time.Duration(float64(r.totalBytes-r.doneBytes) / rate * float64(time.Second)).Round(time.Second).String()
	}
	fmt.Fprintf(r.w, "\r\x1b[K%s [%s%s] %d/%d %s %s/s ETA %s", r.name,
		strings.Repeat("#", filled), strings.Repeat("-", width-filled),
		r.done, r.total, humanBytes(r.doneBytes), humanBytes(int64(rate)), eta)
	r.drawn = true
}

func (r *reporter) clear() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLocked()
}

func (r *reporter) clearLocked() {
	if r.drawn {
		fmt.Fprint(r.w, "\r\x1b[K")
		r.drawn = false
	}
}
