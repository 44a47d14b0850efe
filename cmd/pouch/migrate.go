package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/guard/pgbans"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/maildir"
	"github.com/pouchmail/pouch/store/pg"
)

const migrateUsage = `Usage: pouch migrate --data DIR --to URL [--verify]

Moves an installation from the Maildirs under --data into the PostgreSQL
database at URL, for pouch serve --store URL: the users (DATA/users, each
with its stored password and settings, into the accounts table), every maildrop
(each message with its UIDL, size, place in the order, delivery and first
retrieval time; the deletion window's messages with their deletion time;
the legal hold) and the bans. Clients that leave mail on the server see
the same UIDLs afterwards and download nothing again.

Stop pouch serve on --data first: a maildrop with a session open is left
out (and named), and the command exits 1. It copies, and changes nothing
under --data. It can be run again, after a failure or an interruption:
messages already in the database (by UIDL) are left as they are, and the
rest are copied. The database gets Pouch's schema if it has none.

--verify copies nothing: it compares the users (names and passwords) and,
maildrop by maildrop, the messages and the deletion window in both places
(counts, octets, UIDL sets and order), and exits 1 naming every difference.

Examples:
  pouch migrate --data /var/lib/pouch --to postgres://pouch@db.example.net/pouch
  pouch migrate --data /var/lib/pouch --to postgres://pouch@db.example.net/pouch --verify

Flags:
`

func runMigrate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pouch migrate", flag.ContinueOnError)
	data := fs.String("data", "./pouch-data", "the data `directory` to move from")
	to := fs.String("to", "", "the PostgreSQL `URL` to move into (postgres://user@host/db)")
	verify := fs.Bool("verify", false, "compare the two, copying nothing")
	pos, err := parseCommand(fs, migrateUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError("migrate takes no arguments, got %q", pos[0])
	}
	if *to == "" {
		return usageError("migrate: give the database with --to postgres://…")
	}
	if err := checkStoreURL(*to); err != nil {
		return usageError("migrate: --to: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(*data, "mail")); err != nil || !fi.IsDir() {
		return fmt.Errorf("migrate: %s has no mail directory; check --data", *data)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if !*verify {
		if err := pg.Init(ctx, *to); err != nil {
			return fmt.Errorf("migrate: %v", storeError(err, *to))
		}
	}
	dst, err := pg.Connect(ctx, *to, pg.Options{})
	if err != nil {
		return fmt.Errorf("migrate: %v", storeError(err, *to))
	}
	defer dst.Close()
	m := &migration{data: *data, url: *to, src: maildir.New(filepath.Join(*data, "mail")), dst: dst,
		out: stderr, bar: newImportBar(stderr)}
	if *verify {
		err = m.verify(ctx, stdout)
	} else {
		err = m.run(ctx)
	}
	if ctx.Err() != nil {
		return errors.New("migrate: stopped; run it again to finish")
	}
	return err
}

// migration is one run of pouch migrate.
type migration struct {
	data, url string
	src       *maildir.Store
	dst       *pg.Store
	out       io.Writer
	bar       *importBar // pouch import's
}

// migrateCounts is what a run did.
type migrateCounts struct {
	users, usersPresent        int
	maildrops, copied, present int
	octets                     int64
	holds                      int
	skipped                    []string // one sentence each
}

// run copies the maildrops and the bans.
func (m *migration) run(ctx context.Context) error {
	users, err := m.src.Users(ctx)
	if err != nil {
		return fmt.Errorf("migrate: listing the maildrops: %v", err)
	}
	slices.Sort(users)
	var c migrateCounts
	if err := m.accounts(ctx, &c); err != nil {
		return fmt.Errorf("migrate: the users: %v", err)
	}
	m.bar.plan(len(users), m.count(ctx, users))
	for _, u := range users {
		if ctx.Err() != nil {
			m.bar.clear()
			return ctx.Err()
		}
		if err := m.maildrop(ctx, u, &c); err != nil {
			if ctx.Err() != nil {
				m.bar.clear()
				return ctx.Err()
			}
			c.skipped = append(c.skipped, fmt.Sprintf("%s: %v", u, describeStoreErr(err, u)))
		}
		m.bar.userDone()
	}
	m.bar.clear()
	bans, err := m.bans()
	if err != nil {
		c.skipped = append(c.skipped, fmt.Sprintf("the bans: %v", err))
	}
	fmt.Fprintf(m.out, "moved %d users (%d there already) and %d of %d maildrops into %s: %d messages copied (%d octets), %d there already; %d legal holds; %d bans\n",
		c.users, c.usersPresent, c.maildrops, len(users), redactedURL(m.url), c.copied, c.octets, c.present, c.holds, bans)
	if len(c.skipped) > 0 {
		for _, s := range c.skipped {
			fmt.Fprintf(m.out, "left out: %s\n", s)
		}
		return fmt.Errorf("migrate: %d left out (named above); stop pouch serve on %s if it runs, and run this again", len(c.skipped), m.data)
	}
	return nil
}

// accounts copies the users file's users into the accounts table: each
// with its stored password and settings as its line has them. A user the
// table has already is left as it is (its password may have changed
// there since).
func (m *migration) accounts(ctx context.Context, c *migrateCounts) error {
	path := filepath.Join(m.data, "users")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	users, bad, err := auth.ReadPasswdFile(path)
	if err != nil {
		return err
	}
	for _, b := range bad {
		fmt.Fprintf(m.out, "left out: %s\n", b)
	}
	for _, u := range users {
		l, ok := auth.ParseUserLine(u.Line)
		if !ok {
			continue
		}
		added, err := m.dst.ImportAccount(ctx, pg.Account{Name: l.Name, Password: l.Password, Fields: l.Fields})
		if err != nil {
			return fmt.Errorf("%s: %v", l.Name, err)
		}
		if added {
			c.users++
		} else {
			c.usersPresent++
		}
	}
	return nil
}

// maildrop copies user's maildrop under its lock: the messages not in the
// database yet, and the legal hold.
func (m *migration) maildrop(ctx context.Context, user string, c *migrateCounts) error {
	if err := m.dst.Create(user); err != nil {
		return err
	}
	err := m.src.Export(ctx, user, func(x maildir.Exported, open func() (io.ReadCloser, error)) error {
		r, err := open()
		if errors.Is(err, store.ErrNotFound) {
			return nil // removed by someone else meanwhile
		}
		if err != nil {
			return err
		}
		defer r.Close()
		err = m.dst.Import(ctx, user, pg.Imported{UID: x.UID, Delivered: x.Delivered, Retrieved: x.Retrieved, Deleted: x.Deleted}, r)
		switch {
		case errors.Is(err, pg.ErrExists):
			c.present++
		case err != nil:
			return fmt.Errorf("message %s: %w", x.UID, err)
		default:
			c.copied++
			c.octets += x.Size
		}
		m.bar.step(1, x.Size)
		return nil
	})
	if err != nil {
		return err
	}
	h, err := m.src.Hold(ctx, user)
	if err != nil {
		return err
	}
	if h.Set {
		if err := m.dst.SetHold(ctx, user, h); err != nil {
			return err
		}
		c.holds++
	}
	c.maildrops++
	return nil
}

// bans copies the bans of DATA/bans.json that the database does not have
// (or has an older version of), and returns how many it holds then.
func (m *migration) bans() (int, error) {
	file := &guard.FileBans{Path: filepath.Join(m.data, "bans.json")}
	mine, err := file.Load()
	if err != nil || len(mine) == 0 {
		return 0, err
	}
	db, err := pgbans.Open(context.Background(), m.url, nil)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	kept, err := db.Update(func(bans map[netip.Prefix]guard.Ban) {
		for k, b := range mine {
			if old, ok := bans[k]; !ok || b.Since.After(old.Since) {
				bans[k] = b
			}
		}
	})
	return len(kept), err
}

// verify compares every maildrop of the Maildirs with the database's, and
// writes each difference to w.
func (m *migration) verify(ctx context.Context, w io.Writer) error {
	users, err := m.src.Users(ctx)
	if err != nil {
		return fmt.Errorf("migrate: listing the maildrops: %v", err)
	}
	slices.Sort(users)
	var diffs, messages int
	userDiffs, err := m.verifyAccounts(ctx, w)
	if err != nil {
		return fmt.Errorf("migrate: %v", err)
	}
	m.bar.plan(len(users), m.count(ctx, users))
	var octets int64
	for _, u := range users {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var live, held []store.Message
		err := m.src.Export(ctx, u, func(x maildir.Exported, _ func() (io.ReadCloser, error)) error {
			m.bar.step(1, x.Size)
			msg := store.Message{UID: x.UID, Size: x.Size}
			if x.Deleted.IsZero() {
				live = append(live, msg)
			} else {
				held = append(held, msg)
			}
			return nil
		})
		if err != nil {
			m.bar.clear()
			fmt.Fprintf(w, "%s: cannot be read here: %v\n", u, describeStoreErr(err, u))
			diffs++
			continue
		}
		dlive, dheld, err := m.dst.Listing(ctx, u)
		if err != nil {
			return fmt.Errorf("migrate: reading %s in the database: %v", u, err)
		}
		problems := compareListings("messages", live, dlive)
		problems = append(problems, compareListings("deletion window", held, dheld)...)
		if h, err := m.src.Hold(ctx, u); err != nil {
			problems = append(problems, fmt.Sprintf("the legal hold cannot be read here: %v", err))
		} else if h.Set {
			if dh, err := m.dst.Hold(ctx, u); err != nil {
				problems = append(problems, fmt.Sprintf("the legal hold cannot be read in the database: %v", err))
			} else if !dh.Set {
				problems = append(problems, "the legal hold is missing")
			}
		}
		if len(problems) > 0 {
			m.bar.clear()
			fmt.Fprintf(w, "%s: %s\n", u, strings.Join(problems, "; "))
			diffs++
		}
		messages += len(live) + len(held)
		for _, x := range slices.Concat(live, held) {
			octets += x.Size
		}
		m.bar.userDone()
	}
	m.bar.clear()
	switch {
	case diffs > 0:
		return fmt.Errorf("migrate: %d of %d maildrops differ (named above)", diffs, len(users))
	case userDiffs > 0:
		return fmt.Errorf("migrate: %d users differ (named above)", userDiffs)
	}
	fmt.Fprintf(m.out, "the users and the %d maildrops match: %d messages (%d octets), with the same UIDLs in the same order\n",
		len(users), messages, octets)
	return nil
}

// verifyAccounts writes to w each user of the users file that the
// accounts table lacks, or has with another password, and returns how many.
func (m *migration) verifyAccounts(ctx context.Context, w io.Writer) (int, error) {
	path := filepath.Join(m.data, "users")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	users, _, err := auth.ReadPasswdFile(path)
	if err != nil {
		return 0, err
	}
	diffs := 0
	for _, u := range users {
		l, ok := auth.ParseUserLine(u.Line)
		if !ok {
			continue
		}
		a, err := m.dst.LookupAccount(ctx, l.Name)
		switch {
		case errors.Is(err, pg.ErrNoAccount):
			fmt.Fprintf(w, "user %s: not in the accounts table\n", l.Name)
			diffs++
		case err != nil:
			return diffs, err
		case a.Password != l.Password:
			fmt.Fprintf(w, "user %s: another password in the accounts table\n", l.Name)
			diffs++
		}
	}
	return diffs, nil
}

// count is how many messages the maildrops of users hold, the deletion
// window's included, for the progress bar.
func (m *migration) count(ctx context.Context, users []string) int {
	n := 0
	for _, u := range users {
		if st, err := m.src.Stats(ctx, u); err == nil {
			n += st.Messages + st.Held
		}
	}
	return n
}

// compareListings describes how the database's listing b differs from the
// Maildir's a: counts, octets, the UIDLs missing or extra, sizes, order.
func compareListings(what string, a, b []store.Message) []string {
	var out []string
	sum := func(ms []store.Message) (n int64) {
		for _, m := range ms {
			n += m.Size
		}
		return n
	}
	if len(a) != len(b) || sum(a) != sum(b) {
		out = append(out, fmt.Sprintf("%s: %d (%d octets) here, %d (%d octets) in the database", what, len(a), sum(a), len(b), sum(b)))
	}
	sizes := func(ms []store.Message) map[string]int64 {
		m := make(map[string]int64, len(ms))
		for _, x := range ms {
			m[x.UID] = x.Size
		}
		return m
	}
	sa, sb := sizes(a), sizes(b)
	var missing, extra, resized []string
	for _, uid := range slices.Sorted(maps.Keys(sa)) {
		if sz, ok := sb[uid]; !ok {
			missing = append(missing, uid)
		} else if sz != sa[uid] {
			resized = append(resized, uid)
		}
	}
	for _, uid := range slices.Sorted(maps.Keys(sb)) {
		if _, ok := sa[uid]; !ok {
			extra = append(extra, uid)
		}
	}
	list := func(uids []string) string {
		if len(uids) > 5 {
			return strings.Join(uids[:5], " ") + fmt.Sprintf(" and %d more", len(uids)-5)
		}
		return strings.Join(uids, " ")
	}
	if len(missing) > 0 {
		out = append(out, fmt.Sprintf("%s: UIDLs missing in the database: %s", what, list(missing)))
	}
	if len(extra) > 0 {
		out = append(out, fmt.Sprintf("%s: UIDLs only in the database: %s", what, list(extra)))
	}
	if len(resized) > 0 {
		out = append(out, fmt.Sprintf("%s: sizes differ for %s", what, list(resized)))
	}
	if len(out) == 0 && what == "messages" {
		for i := range a {
			if a[i].UID != b[i].UID {
				out = append(out, fmt.Sprintf("%s: the order differs from message %d on", what, i+1))
				break
			}
		}
	}
	return out
}
