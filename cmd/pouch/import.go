package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/migrate"
	"github.com/pouchmail/pouch/store/maildir"
)

const importUsage = `Usage:
  pouch import maildir [--data DIR] [--uidl-format FORMAT] [--control DIR] [--move|--prune]
                       [--pop3-deleted-flag KEYWORD] USER SRC
  pouch import --layout LOCATION [--data DIR] [--uidl-format FORMAT] [--move|--prune]
                       [--pop3-deleted-flag KEYWORD]
  pouch import users [--data DIR] [--replace] [PASSWD-FILE]

Brings a Dovecot or Courier site's mail and accounts into Pouch so that no
client that keeps mail on the server downloads any of it again: every
message keeps the UIDL, the place in the list and the size its clients saw,
and its retrieved state (the Maildir flag S) for the retention policies.

  maildir   imports the Maildir SRC (its INBOX, what POP3 shows) into USER's
            maildrop. UIDLs come from SRC/dovecot-uidlist (saved UIDLs
            first, then --uidl-format, Dovecot's pop3_uidl_format), or else
            from Courier's courierpop3dsizelist, or else the file names.
  --layout  imports every user's Maildir found by LOCATION, Dovecot's
            mail_location ('/var/vmail/%d/%n', 'maildir:/home/%u/Maildir',
            with :CONTROL= if dovecot-uidlist is elsewhere); the user is %u,
            or %n@%d, or %n.
  users     adds the users of PASSWD-FILE (Dovecot's passwd-file format) to
            DATA/users, with their password hashes, and lists those whose
            password scheme Pouch cannot check, to be reset before the
            switch; with --replace, users already there take the file's
            password. Then, or without a file, checks that every maildrop
            has an account.

Imports are safe to stop and to run again: a second run imports only what
the first did not, never a message twice, and never one a client deleted
since. Messages are copied (the source stays as it was) or, with --move,
renamed (SRC must be on the file system of DATA). After a first import made
while the old server still served, the final one with --prune also removes
what clients deleted there meanwhile. The exit status is 1 if anything was
left out or keeps no UIDL its clients know; the summary says what and why.
The steps of a move: docs/migration.md.

Examples:
  pouch import maildir alice /var/vmail/example.org/alice/Maildir
  pouch import --layout 'maildir:/var/vmail/%d/%n/Maildir' --data /var/lib/pouch
  pouch import maildir --uidl-format %f bob /home/bob/Maildir
  pouch import users /etc/dovecot/users

Flags:
`

func runImport(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "users" {
		return importUsers(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("pouch import", flag.ContinueOnError)
	data := fs.String("data", "./pouch-data", "data `directory` (mail in DIR/mail/USER)")
	format := fs.String("uidl-format", migrate.DefaultFormat, "Dovecot's pop3_uidl_format on the old server (%u UID, %v UIDVALIDITY, %f file name, %g GUID, %m header MD5)")
	control := fs.String("control", "", "maildir: the `directory` holding dovecot-uidlist, if not SRC (Dovecot's CONTROL=)")
	move := fs.Bool("move", false, "rename the messages into the maildrops instead of copying them")
	layout := fs.String("layout", "", "import every user's Maildir found at this `location` (Dovecot's mail_location)")
	deletedFlag := fs.String("pop3-deleted-flag", "", "Dovecot's pop3_deleted_flag: leave behind the messages with this `keyword`, which POP3 clients deleted")
	prune := fs.Bool("prune", false, "remove the messages that an earlier run copied and the old server no longer has")
	pos, err := parseCommand(fs, importUsage, args, stderr)
	if err != nil {
		return err
	}
	if _, err := migrate.ParseFormat(*format); err != nil {
		return usageError("import: %v", err)
	}
	if *move && *prune {
		return usageError("import: --prune is for copies; messages moved away are gone from the source by design")
	}
	opt := migrate.ImportOptions{Options: migrate.Options{Format: *format, Control: *control, DeletedFlag: *deletedFlag}, Move: *move, Prune: *prune}
	mail := maildir.New(filepath.Join(*data, "mail"))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	bar := newImportBar(stderr)
	switch {
	case *layout != "" && len(pos) == 0:
		if *control != "" {
			return usageError("import: --control belongs to import maildir; with --layout, give :CONTROL= in the location")
		}
		loc, err := migrate.ParseLocation(*layout)
		if err != nil {
			return usageError("import: %v", err)
		}
		return importTree(ctx, mail, *data, loc, opt, bar, stdout)
	case *layout != "":
		return usageError("import: --layout takes no other arguments (%q)", pos[0])
	case len(pos) == 0:
		fs.Usage()
		return usageError("import: say maildir, users, or give --layout")
	case pos[0] != "maildir":
		return usageError("import: unknown action %q (use maildir, users or --layout)", pos[0])
	case len(pos) != 3:
		return usageError("import maildir takes a user name and a Maildir")
	}
	user := auth.NormalizeName(pos[1])
	if err := auth.ValidName(user); err != nil {
		return usageError("import maildir: %v", err)
	}
	src := pos[2]
	if fi, err := os.Stat(filepath.Join(src, "cur")); err != nil || !fi.IsDir() {
		return fmt.Errorf("import maildir: %s is not a Maildir (it has no cur/ directory)", src)
	}
	opt.Progress = bar.step
	bar.plan(1, migrate.CountFiles(src))
	rep := migrate.ImportMaildir(ctx, mail, user, src, opt)
	bar.userDone()
	bar.clear()
	printReport(stdout, rep)
	if !accountsOf(*data, stdout)(user) {
		fmt.Fprintf(stdout, "warning: %s has no account in %s yet: add it (pouch import users, or pouch user add) before the switch\n",
			user, filepath.Join(*data, "users"))
	}
	if !rep.Complete() {
		return &exitError{code: 1, msg: "import: not everything was imported under the UIDLs its clients know; see the summary"}
	}
	return nil
}

// importTree imports every Maildir of loc.
func importTree(ctx context.Context, mail *maildir.Store, data string, loc *migrate.Location, opt migrate.ImportOptions,
	bar *importBar, stdout io.Writer) error {
	opt.Progress = bar.step
	known := accountsOf(data, stdout)
	start := time.Now()
	sum, err := migrate.ImportTree(ctx, mail, loc, migrate.TreeOptions{
		ImportOptions: opt,
		Known:         func(u string) bool { return known(auth.NormalizeName(u)) },
		Found:         bar.plan,
		UserDone:      func(*migrate.Report) { bar.userDone() },
	})
	bar.clear()
	if err != nil && sum == nil {
		return fmt.Errorf("import: %v", err)
	}
	var users, msgs, imported, kept, fresh, already, pruned, hidden, skipped, changed, differs, failed int
	var octets int64
	for _, r := range sum.Reports {
		users++
		msgs += r.Messages
		imported += r.Imported
		octets += r.Octets
		kept += r.Kept
		fresh += r.New
		already += r.Already
		pruned += r.Pruned
		hidden += r.Hidden
		skipped += len(r.Skipped)
		changed += len(r.Changed)
		differs += r.SizeDiffers
		if r.Err != nil {
			failed++
		}
		if !r.Complete() {
			printReport(stdout, r)
		}
	}
	fmt.Fprintf(stdout, "import: %d users, %d messages: %d imported (%s) in %s, %d under the UIDLs their clients know, %d new to clients, %d imported before\n",
		users, msgs, imported, humanBytes(octets), time.Since(start).Round(time.Millisecond), kept, fresh, already)
	if hidden > 0 {
		fmt.Fprintf(stdout, "import: %d messages left behind: POP3 clients deleted them (pop3_deleted_flag)\n", hidden)
	}
	if pruned > 0 {
		fmt.Fprintf(stdout, "import: %d messages removed: clients deleted them on the old server after an earlier run\n", pruned)
	}
	if differs > 0 {
		fmt.Fprintf(stdout, "import: %d messages list 2 octets more than the old server did: their last line has no line end, and Pouch counts the CRLF that it, like the old server, adds\n", differs)
	}
	if len(sum.NoAccount) > 0 {
		fmt.Fprintf(stdout, "warning: %d maildrops have no account in %s yet (add them before the switch): %s\n",
			len(sum.NoAccount), filepath.Join(data, "users"), strings.Join(sum.NoAccount, " "))
	}
	if err != nil {
		return &exitError{code: 1, msg: "import: stopped by a signal; run it again to go on"}
	}
	if !sum.Complete() {
		var parts []string
		for _, p := range []struct {
			n    int
			what string
		}{{failed, "users failed"}, {skipped, "messages were skipped"}, {changed, "messages keep no UIDL their clients know"}} {
			if p.n > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", p.n, p.what))
			}
		}
		return &exitError{code: 1, msg: "import: " + strings.Join(parts, ", ") + "; see the summary"}
	}
	return nil
}

// printReport prints one user's import.
func printReport(w io.Writer, r *migrate.Report) {
	if r.From == "" {
		fmt.Fprintf(w, "%s: %s\n", r.User, r.Dir) // failed before reading it
	} else {
		fmt.Fprintf(w, "%s: %d messages in %s (UIDLs from %s): %d imported (%s), %d under the UIDLs their clients know, %d new to clients, %d imported before\n",
			r.User, r.Messages, r.Dir, r.From, r.Imported, humanBytes(r.Octets), r.Kept, r.New, r.Already)
	}
	if r.Hidden > 0 {
		fmt.Fprintf(w, "  %d left behind: POP3 clients deleted them (pop3_deleted_flag)\n", r.Hidden)
	}
	if r.Pruned > 0 {
		fmt.Fprintf(w, "  %d removed: clients deleted them on the old server after an earlier run\n", r.Pruned)
	}
	switch {
	case errors.Is(r.Err, context.Canceled):
		fmt.Fprintf(w, "  stopped by a signal: run the import again to go on\n")
	case r.Err != nil:
		fmt.Fprintf(w, "  FAILED: %v\n", r.Err)
	}
	const shown = 20
	for i, s := range r.Skipped {
		if i == shown {
			fmt.Fprintf(w, "  ... and %d more skipped\n", len(r.Skipped)-shown)
			break
		}
		fmt.Fprintf(w, "  skipped %s: %s\n", s.Path, s.Reason)
	}
	for i, s := range r.Changed {
		if i == shown {
			fmt.Fprintf(w, "  ... and %d more under new UIDLs\n", len(r.Changed)-shown)
			break
		}
		fmt.Fprintf(w, "  new UIDL for %s: %s\n", s.Path, s.Reason)
	}
	if r.SizeDiffers > 0 && len(r.Skipped) == 0 {
		fmt.Fprintf(w, "  %d messages list 2 octets more than the old server did (a last line without line end)\n", r.SizeDiffers)
	}
}

// accountsOf returns whether the users file of data lists a user. When the
// file cannot be read it says so on w, and takes every user for known:
// the import cannot tell which maildrops lack an account.
func accountsOf(data string, w io.Writer) func(user string) bool {
	path := filepath.Join(data, "users")
	names, err := auth.ListUsers(path)
	if err != nil {
		fmt.Fprintf(w, "warning: cannot tell which maildrops have an account: %v\n", err)
		return func(string) bool { return true }
	}
	has := make(map[string]bool, len(names))
	for _, n := range names {
		has[n] = true
	}
	return func(user string) bool { return has[user] }
}

// importUsers is pouch import users.
func importUsers(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pouch import users", flag.ContinueOnError)
	data := fs.String("data", "./pouch-data", "data `directory` holding the users file")
	replace := fs.Bool("replace", false, "users already in the users file take the imported password")
	pos, err := parseCommand(fs, importUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError("import users takes at most one passwd-file")
	}
	path := filepath.Join(*data, "users")
	trouble := 0
	if len(pos) == 1 {
		users, bad, err := auth.ReadPasswdFile(pos[0])
		if err != nil {
			return fmt.Errorf("import users: %v", err)
		}
		for _, b := range bad {
			fmt.Fprintf(stdout, "skipped %s\n", b)
			trouble++
		}
		// Every new account must be able to have its Maildir, before
		// the users file takes any.
		known, err := auth.ListUsers(path)
		if err != nil {
			return fmt.Errorf("import users: %v", err)
		}
		names, err := newMailNames(filepath.Join(*data, "mail"), known)
		if err != nil {
			return fmt.Errorf("import users: %v", err)
		}
		all := len(users)
		users = slices.DeleteFunc(users, func(u auth.ForeignUser) bool {
			if names.names[u.Name] {
				return false
			}
			if _, err := names.maildir(u.Name); err != nil {
				fmt.Fprintf(stdout, "skipped %v\n", err)
				trouble++
				return true
			}
			names.add(u.Name)
			return false
		})
		out, err := auth.ImportUsers(path, users, *replace)
		if err != nil {
			return fmt.Errorf("import users: %v", err)
		}
		var added, same, updated, differs int
		for _, u := range users {
			switch out[u.Name] {
			case auth.UserAdded:
				added++
			case auth.UserUnchanged:
				same++
			case auth.UserUpdated:
				updated++
			case auth.UserDiffers:
				differs++
				trouble++
				fmt.Fprintf(stdout, "%s: in %s already with another password, left as it is (--replace takes the imported one)\n", u.Name, path)
			}
		}
		for _, u := range users {
			if u.Problem != nil {
				trouble++
				fmt.Fprintf(stdout, "%s: Pouch cannot check this password (%s: %v); reset it before the switch: pouch user passwd %s\n",
					u.Name, u.Scheme, u.Problem, u.Name)
			}
		}
		fmt.Fprintf(stdout, "import users: %d users in %s: %d added, %d there already, %d passwords replaced, %d left with another password, %d skipped\n",
			all, pos[0], added, same, updated, differs, all-len(users))
	}
	// Every maildrop needs an account.
	names, err := auth.ListUsers(path)
	if err != nil {
		return fmt.Errorf("import users: %v", err)
	}
	has := map[string]bool{}
	for _, n := range names {
		has[n] = true
	}
	drops, err := maildir.New(filepath.Join(*data, "mail")).Users(context.Background())
	if err != nil {
		return fmt.Errorf("import users: %v", err)
	}
	var orphans []string
	for _, d := range drops {
		if !has[auth.NormalizeName(d)] {
			orphans = append(orphans, d)
		}
	}
	if len(orphans) > 0 {
		trouble += len(orphans)
		fmt.Fprintf(stdout, "%d maildrops have no account in %s: %s\n", len(orphans), path, strings.Join(orphans, " "))
	} else {
		fmt.Fprintf(stdout, "import users: every one of the %d maildrops has an account\n", len(drops))
	}
	if trouble > 0 {
		return &exitError{code: 1, msg: "import users: some accounts need attention before the switch; see above"}
	}
	return nil
}

// importBar is the progress bar of an import on a terminal.
type importBar struct {
	w               io.Writer
	on              bool
	users, total    int
	usersDone, done int
	octets          int64
	start, last     time.Time
	drawn           bool
}

func newImportBar(w io.Writer) *importBar {
	b := &importBar{w: w, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		b.on = term.IsTerminal(int(f.Fd()))
	}
	return b
}

func (b *importBar) plan(users, messages int) { b.users, b.total = users, messages }

func (b *importBar) step(messages int, octets int64) {
	b.done += messages
	b.octets += octets
	b.draw(false)
}

func (b *importBar) userDone() {
	b.usersDone++
	b.draw(true)
}

// draw renders "[#####-----] 42% 1200/2857 messages, 3/17 users, 80.1 MiB, 950 msg/s".
func (b *importBar) draw(force bool) {
	if !b.on || !force && time.Since(b.last) < 100*time.Millisecond {
		return
	}
	b.last = time.Now()
	const width = 24
	frac := 1.0
	if b.total > 0 {
		frac = min(float64(b.done)/float64(b.total), 1)
	}
	filled := int(frac * width)
	rate := float64(b.done) / max(time.Since(b.start).Seconds(), 1e-3)
	fmt.Fprintf(b.w, "\r\x1b[K[%s%s] %3.0f%% %d/%d messages, %d/%d users, %s, %.0f msg/s",
		strings.Repeat("#", filled), strings.Repeat("-", width-filled), frac*100,
		b.done, b.total, b.usersDone, b.users, humanBytes(b.octets), rate)
	b.drawn = true
}

func (b *importBar) clear() {
	if b.drawn {
		fmt.Fprint(b.w, "\r\x1b[K")
		b.drawn = false
	}
}
