package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/units"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/maildir"
	"github.com/pouchmail/pouch/store/pg"
)

const mailboxUsage = `Usage: pouch mailbox stats|restore|hold|release|policy [--data DIR | --store URL] [flags] USER

Looks after one user's maildrop on the server.

  stats     messages, size, retrieved, messages in the deletion window, legal hold
  restore   put deleted (or expired) messages back from the deletion window:
            with their original UIDLs, so that a client that kept its copy does
            not download them again, or with new ones (--as-new); --since
            limits it to messages deleted at or after a time
  hold      put the maildrop under legal hold: nothing is purged, whatever the
            policies; messages deleted by clients stay in the deletion window
  release   lift the legal hold
  policy    show the user's own retention settings, or change them with
            --expire, --expire-from and --deletion-window ("default" removes
            the user's own setting, so the server's applies)

restore, hold, release and policy changes are written to the audit log
DATA/audit.log. restore waits for nothing: while the user has a POP3 session
open it fails, and can be run again when the session has ended.

Examples:
  pouch mailbox stats alice
  pouch mailbox restore --since 2026-11-20 alice
  pouch mailbox restore --since 48h --as-new alice
  pouch mailbox hold --reason "case 2026-114" bob
  pouch mailbox release bob
  pouch mailbox policy --expire 90d --deletion-window 30d carol

Flags:
`

func runMailbox(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "stats" {
		// Asks the running server, or reads the Maildir (admin.go).
		return mailboxStats(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("pouch mailbox", flag.ContinueOnError)
	data := fs.String("data", "./pouch-data", "data `directory` (mail in DIR/mail/USER)")
	sf := storeFlag(fs, nil, data)
	since := fs.String("since", "", "restore: only messages deleted at or after this `time` (2026-11-20, 2026-11-20T15:04:05Z, or an age like 48h or 7d)")
	asNew := fs.Bool("as-new", false, "restore: give the messages new UIDLs, so that clients download them again")
	reason := fs.String("reason", "", "hold: the `reason`, kept with the hold and in the audit log")
	expire := fs.String("expire", "", "policy: remove the user's messages this `long` after delivery (or retrieval), \"never\", 0, or \"default\"")
	expireFrom := fs.String("expire-from", "", "policy: `delivery`, retrieval, or \"default\"")
	window := fs.String("deletion-window", "", "policy: keep the user's deleted messages restorable this `long`, or \"default\"")
	pos, err := parseCommand(fs, mailboxUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return usageError("mailbox: say stats, restore, hold, release or policy")
	}
	action := pos[0]
	switch action {
	case "restore", "hold", "release", "policy":
	default:
		return usageError("mailbox: unknown action %q (use stats, restore, hold, release or policy)", action)
	}
	if len(pos) != 2 {
		return usageError("mailbox %s takes exactly one user name", action)
	}
	user := pos[1]
	set := flagNames(fs)
	for name, only := range map[string]string{"since": "restore", "as-new": "restore", "reason": "hold",
		"expire": "policy", "expire-from": "policy", "deletion-window": "policy"} {
		if set[name] && action != only {
			return usageError("mailbox %s: --%s belongs to mailbox %s", action, name, only)
		}
	}
	storeURL, err := sf.url(fs, false)
	if err != nil {
		return fmt.Errorf("mailbox %s: %v", action, err)
	}
	ctx := context.Background()
	mail, err := openMailStore(ctx, storeSettings{url: storeURL, data: *data}, "")
	if err != nil {
		return fmt.Errorf("mailbox %s: %v", action, err)
	}
	if c, ok := mail.(io.Closer); ok {
		defer c.Close()
	}
	switch action {
	case "restore":
		from := time.Time{}
		if *since != "" {
			if from, err = parseSince(*since, time.Now()); err != nil {
				return usageError("mailbox restore: --since: %v", err)
			}
		}
		return mailboxRestore(ctx, mail, *data, user, from, *asNew, stdout, stderr)
	case "hold", "release":
		h := store.Hold{Set: action == "hold", Reason: *reason}
		if err := mailboxExists(ctx, mail, *data, user); err != nil && action == "release" {
			return fmt.Errorf("mailbox release: %v", err)
		}
		before, err := mail.Hold(ctx, user)
		if err != nil {
			return fmt.Errorf("mailbox %s: %v", action, describeStoreErr(err, user))
		}
		if err := mail.SetHold(ctx, user, h); err != nil {
			return fmt.Errorf("mailbox %s: %v", action, describeStoreErr(err, user))
		}
		event := "hold_set"
		msg := fmt.Sprintf("%s is under legal hold: nothing of it is purged until pouch mailbox release", user)
		if !h.Set {
			event = "hold_released"
			msg = fmt.Sprintf("lifted the legal hold on %s; the retention policy applies again", user)
			if !before.Set {
				msg = fmt.Sprintf("%s was not under legal hold", user)
			}
		}
		if h.Set || before.Set {
			if err := auditEvent(*data, event, "user", user, "reason", h.Reason); err != nil {
				fmt.Fprintf(stderr, "pouch: warning: %v\n", err)
			}
		}
		fmt.Fprintln(stderr, msg)
		return nil
	case "policy":
		return mailboxPolicy(mail, storeURL, *data, user, set, *expire, *expireFrom, *window, stdout, stderr)
	}
	return nil
}

// storeAccount reads user's account from the accounts table of the
// database at url, as the nodes read it.
func storeAccount(url, user string) (auth.Account, error) {
	var bad problems
	s := (&accountsConfig{store: url}).validate(configSource{}, &bad)
	if err := bad.err(); err != nil {
		return auth.Account{}, err
	}
	a, err := openAccounts(s, "", false, nil)
	if err != nil {
		return auth.Account{}, err
	}
	defer a.close()
	return a.remote.Account(user)
}

// mailboxExists says whether user has a maildrop in mail or an account. A
// store or users file that cannot be read is that error, not "no maildrop".
func mailboxExists(ctx context.Context, mail mailStore, data, user string) error {
	var err error
	if md, ok := mail.(*maildir.Store); ok {
		var dir string
		if dir, err = md.Dir(user); err == nil {
			var fi os.FileInfo
			if fi, err = os.Stat(filepath.Join(dir, "cur")); err == nil && fi.IsDir() {
				return nil
			}
		}
	} else if _, err = mail.Stats(ctx, user); err == nil {
		return nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, store.ErrBadUser) {
		return err
	}
	ok, err := userExists(filepath.Join(data, "users"), user)
	switch {
	case err != nil:
		return err
	case ok:
		return nil
	}
	return fmt.Errorf("no maildrop and no user %q in %s", user, data)
}

func describeStoreErr(err error, user string) error {
	switch {
	case errors.Is(err, store.ErrLocked):
		return fmt.Errorf("%s has a POP3 session open (or a retention sweep is running); run this again when it has ended (pouch who lists sessions)", user)
	case errors.Is(err, store.ErrBadUser):
		return fmt.Errorf("%q cannot be a user name", user)
	}
	return err
}

// parseSince reads --since: a date, a date and time (RFC 3339), or an age.
func parseSince(v string, now time.Time) (time.Time, error) {
	var tooLong *units.RangeError
	if d, err := units.ParseDuration(v); err == nil {
		return now.Add(-d), nil
	} else if errors.As(err, &tooLong) {
		return time.Time{}, err
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, v, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a date (2026-11-20), a time (2026-11-20T15:04:05Z) or an age (48h, 7d)", v)
}

func mailboxRestore(ctx context.Context, mail mailStore, data, user string, since time.Time, asNew bool, stdout, stderr io.Writer) error {
	if err := mailboxExists(ctx, mail, data, user); err != nil {
		return fmt.Errorf("mailbox restore: %v", err)
	}
	restored, err := mail.Restore(ctx, user, since, asNew)
	for _, r := range restored {
		if aerr := auditEvent(data, "restore", "user", user, "uid", r.UID, "size", r.Size,
			"deleted", r.Deleted.UTC().Format(time.RFC3339), "as_new", asNew); aerr != nil {
			fmt.Fprintf(stderr, "pouch: warning: %v\n", aerr)
			break
		}
	}
	if err != nil {
		if len(restored) > 0 {
			fmt.Fprintf(stderr, "restored %d messages before the failure\n", len(restored))
		}
		return fmt.Errorf("mailbox restore: %v", describeStoreErr(err, user))
	}
	what := "with their original UIDLs"
	if asNew {
		what = "as new messages"
	}
	switch len(restored) {
	case 0:
		fmt.Fprintf(stderr, "nothing to restore for %s\n", user)
	case 1:
		fmt.Fprintf(stderr, "restored 1 message to %s %s\n", user, what)
	default:
		fmt.Fprintf(stderr, "restored %d messages to %s %s\n", len(restored), user, what)
	}
	return nil
}

// mailboxPolicy shows or changes the user's own retention settings.
func mailboxPolicy(mail mailStore, storeURL, data, user string, set map[string]bool, expire, from, window string, stdout, stderr io.Writer) error {
	path := filepath.Join(data, "users")
	db, shared := mail.(*pg.Store) // the accounts table of the --store database
	if shared {
		path = "the accounts table"
	}
	changes := map[string]*string{}
	for _, f := range []struct {
		flag, field, value string
		check              func(string) error
	}{
		{"expire", auth.FieldExpire, expire, func(v string) error { _, err := auth.ParseExpire(v); return err }},
		{"expire-from", auth.FieldExpireFrom, from, func(v string) error { _, err := auth.ParseExpireFrom(v); return err }},
		{"deletion-window", auth.FieldWindow, window, func(v string) error { _, err := auth.ParseWindow(v); return err }},
	} {
		switch {
		case !set[f.flag]:
		case f.value == "default":
			changes[f.field] = nil
		case f.check(f.value) != nil:
			return usageError("mailbox policy: --%s: %v", f.flag, f.check(f.value))
		default:
			changes[f.field] = &f.value
		}
	}
	if len(changes) > 0 {
		var err error
		if shared {
			err = db.SetAccountFields(context.Background(), user, changes)
			if errors.Is(err, pg.ErrNoAccount) {
				err = auth.ErrNoSuchUser
			}
		} else {
			err = auth.SetFields(path, user, changes)
		}
		if err != nil {
			return fmt.Errorf("mailbox policy: %v", describe(err, user, path))
		}
		var fields []any
		fields = append(fields, "user", user)
		for k, v := range changes {
			val := "default"
			if v != nil {
				val = *v
			}
			fields = append(fields, k, val)
		}
		if err := auditEvent(data, "policy_set", fields...); err != nil {
			fmt.Fprintf(stderr, "pouch: warning: %v\n", err)
		}
	}
	var a auth.Account
	var err error
	if shared {
		a, err = storeAccount(storeURL, user)
	} else {
		var users *auth.Users
		if users, err = auth.OpenUsers(path); err != nil {
			return fmt.Errorf("mailbox policy: %v", err)
		}
		a, err = users.Account(user)
	}
	switch {
	case errors.Is(err, auth.ErrInvalidAccount):
		fmt.Fprintf(stderr, "warning: %s\n", refusedAccount(err))
		return nil
	case err != nil:
		return fmt.Errorf("mailbox policy: %v", describe(err, user, path))
	}
	lines := a.Retention.Lines()
	if len(lines) == 0 {
		fmt.Fprintf(stdout, "%s has no retention settings of its own: the server's --expire, --expire-from and --deletion-window apply\n", user)
	}
	for _, l := range lines {
		fmt.Fprintln(stdout, l)
	}
	return nil
}
