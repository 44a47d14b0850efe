package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/guard/pgbans"
	"github.com/pouchmail/pouch/internal/pgtest"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/maildir"
	"github.com/pouchmail/pouch/store/pg"
)

// newDatabase returns the URL of an empty schema of the test binary's
// PostgreSQL.
func newDatabase(t *testing.T) string {
	t.Helper()
	return pgtest.Get(t).Schema(t)
}

// listing is a maildrop as clients see it, and its deletion window.
type listing struct{ live, held []store.Message }

// maildirListing reads user's maildrop under data.
func maildirListing(t *testing.T, data, user string) listing {
	t.Helper()
	m := &migration{src: maildir.New(filepath.Join(data, "mail"))}
	var l listing
	if err := m.src.Export(context.Background(), user, func(x maildir.Exported, _ func() (io.ReadCloser, error)) error {
		if x.Deleted.IsZero() {
			l.live = append(l.live, store.Message{UID: x.UID, Size: x.Size})
		} else {
			l.held = append(l.held, store.Message{UID: x.UID, Size: x.Size})
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return l
}

func dbListing(t *testing.T, url, user string) listing {
	t.Helper()
	s, err := pg.Connect(context.Background(), url, pg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	live, held, err := s.Listing(context.Background(), user)
	if err != nil {
		t.Fatal(err)
	}
	return listing{live, held}
}

// oldInstallation makes a data directory as a Maildir installation has
// it: users, maildrops with retrieved messages, a deletion window and a
// legal hold, messages with bare LF line ends, and bans.
func oldInstallation(t *testing.T) (data string, users []string) {
	t.Helper()
	data = t.TempDir()
	mail := maildir.New(filepath.Join(data, "mail"))
	mail.SetPolicy(func(string) store.Policy { return store.Policy{Window: 30 * 24 * time.Hour} })
	ctx := context.Background()
	for u := range 5 {
		user := fmt.Sprintf("user%d", u)
		users = append(users, user)
		if _, e, code := pouch(t, "correct horse battery staple\n", "user", "add", "--data", data, user); code != 0 {
			t.Fatal(e)
		}
		for i := range 3 + u*7 {
			body := fmt.Sprintf("Subject: %d\n\n%s\n", i, strings.Repeat("line\n", i*40))
			if err := mail.Deliver(ctx, user, strings.NewReader(body)); err != nil {
				t.Fatal(err)
			}
		}
		m, err := mail.Open(ctx, user)
		if err != nil {
			t.Fatal(err)
		}
		m.(store.RetrievalRecorder).Retrieved([]int{0, 1}, time.Now().Add(-time.Hour))
		if err := m.Commit([]int{1}); err != nil { // into the deletion window
			t.Fatal(err)
		}
		m.Close()
	}
	if err := mail.SetHold(ctx, "user3", store.Hold{Set: true, Reason: "case 7"}); err != nil {
		t.Fatal(err)
	}
	g, err := guard.New(guard.Config{StatePath: filepath.Join(data, "bans.json")})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Ban(netip.MustParsePrefix("203.0.113.0/24"), time.Hour, "scanner"); err != nil {
		t.Fatal(err)
	}
	return data, users
}

// pouch migrate copies every maildrop with its UIDLs, sizes, order,
// deletion window and hold, and the bans; a second run copies nothing
// again; --verify finds them equal, and names a difference.
func TestMigrate(t *testing.T) {
	data, users := oldInstallation(t)
	url := newDatabase(t)
	_, e, code := pouch(t, "", "migrate", "--data", data, "--to", url)
	if code != 0 || !strings.Contains(e, "moved 5 users (0 there already) and 5 of 5 maildrops") || !strings.Contains(e, "1 legal holds; 1 bans") {
		t.Fatalf("migrate: exit %d\n%s", code, e)
	}
	for _, u := range users {
		want, got := maildirListing(t, data, u), dbListing(t, url, u)
		if !slices.Equal(want.live, got.live) || !slices.Equal(want.held, got.held) || len(got.held) != 1 {
			t.Fatalf("%s: the database has %+v, the Maildir %+v", u, got, want)
		}
	}
	s, err := pg.Connect(context.Background(), url, pg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := s.Stats(context.Background(), "user3")
	if err != nil || !st.Hold.Set || st.Hold.Reason != "case 7" || st.Retrieved != 1 || st.Held != 1 {
		t.Fatalf("user3 in the database: %+v, %v", st, err)
	}
	// The users, with their passwords and settings as the users file had
	// them.
	for _, u := range users {
		a, err := s.LookupAccount(context.Background(), u)
		if err != nil || !strings.HasPrefix(a.Password, "{ARGON2ID}") || a.Fields["scram_sha_256"] == "" {
			t.Fatalf("%s in the accounts table: %+v, %v", u, a, err)
		}
	}
	bans, err := pgbans.Open(context.Background(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bans.Close()
	if b, err := bans.Load(); err != nil || b[netip.MustParsePrefix("203.0.113.0/24")].Reason != "scanner" {
		t.Fatalf("bans in the database: %v, %v", b, err)
	}

	// Run again: nothing is copied twice.
	_, e, code = pouch(t, "", "migrate", "--data", data, "--to", url)
	if code != 0 || !strings.Contains(e, "0 messages copied") || !strings.Contains(e, "moved 0 users (5 there already)") {
		t.Fatalf("migrate again: exit %d\n%s", code, e)
	}
	if got := dbListing(t, url, "user4"); len(got.live) != 3+4*7-1 {
		t.Fatalf("after a second run user4 has %d messages", len(got.live))
	}
	out, e, code := pouch(t, "", "migrate", "--data", data, "--to", url, "--verify")
	if code != 0 || !strings.Contains(e, "the users and the 5 maildrops match") {
		t.Fatalf("verify: exit %d\n%s%s", code, out, e)
	}
	// A hold that cannot be read is a difference, not taken for no hold.
	hold := filepath.Join(data, "mail", "user4", "pouch-hold")
	if err := os.Mkdir(hold, 0o700); err != nil {
		t.Fatal(err)
	}
	out, e, code = pouch(t, "", "migrate", "--data", data, "--to", url, "--verify")
	if code != 1 || !strings.Contains(out, "user4: the legal hold cannot be read here") || !strings.Contains(e, "1 of 5 maildrops differ") {
		t.Fatalf("verify with an unreadable hold: exit %d\n%s%s", code, out, e)
	}
	if err := os.Remove(hold); err != nil {
		t.Fatal(err)
	}

	// A message lost on the way, and one only in the database: --verify
	// names both.
	m, err := s.Open(context.Background(), "user2")
	if err != nil {
		t.Fatal(err)
	}
	gone := m.Messages()[4].UID
	if err := m.Commit([]int{4}); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if err := s.Deliver(context.Background(), "user0", strings.NewReader("new\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetAccountPassword(context.Background(), "user1", "{PLAIN}changed", nil, nil); err != nil {
		t.Fatal(err)
	}
	out, e, code = pouch(t, "", "migrate", "--data", data, "--to", url, "--verify")
	if code != 1 || !strings.Contains(out, "user2: ") || !strings.Contains(out, gone) || !strings.Contains(out, "user0: messages: 2 ") ||
		!strings.Contains(out, "user user1: another password") || !strings.Contains(e, "2 of 5 maildrops differ") {
		t.Fatalf("verify after changes: exit %d\n%s%s", code, out, e)
	}
}

// A maildrop with a session open (a server still running on the data
// directory) is left out and named; the rest are moved, and a run once it
// is free completes.
func TestMigrateLockedMaildrop(t *testing.T) {
	data, _ := oldInstallation(t)
	url := newDatabase(t)
	m, err := maildir.New(filepath.Join(data, "mail")).Open(context.Background(), "user1")
	if err != nil {
		t.Fatal(err)
	}
	_, e, code := pouch(t, "", "migrate", "--data", data, "--to", url)
	if code != 1 || !strings.Contains(e, "and 4 of 5 maildrops") || !strings.Contains(e, "left out: user1: user1 has a POP3 session open") {
		t.Fatalf("migrate with a session open: exit %d\n%s", code, e)
	}
	m.Close()
	if _, e, code := pouch(t, "", "migrate", "--data", data, "--to", url); code != 0 {
		t.Fatalf("migrate again: exit %d\n%s", code, e)
	}
	if got := dbListing(t, url, "user1"); len(got.live) != 3+7-1 {
		t.Fatalf("user1 has %d messages", len(got.live))
	}
}

// pouch store init, upgrade and version.
func TestStoreCommands(t *testing.T) {
	url := newDatabase(t)
	if out, _, code := pouch(t, "", "store", "version", "--store", url); code != 0 || !strings.HasPrefix(out, "schema 0 ") {
		t.Fatalf("version of an empty database: %d %q", code, out)
	}
	if _, e, code := pouch(t, "", "mailbox", "stats", "--store", url, "alice"); code == 0 || !strings.Contains(e, "pouch store init") {
		t.Fatalf("stats without a schema: %d %q", code, e)
	}
	if _, e, code := pouch(t, "", "store", "init", "--store", url); code != 0 || !strings.Contains(e, fmt.Sprintf("version %d", pg.Version)) {
		t.Fatalf("init: %d %q", code, e)
	}
	if _, e, code := pouch(t, "", "store", "upgrade", "--store", url); code != 0 || !strings.Contains(e, "already") {
		t.Fatalf("upgrade: %d %q", code, e)
	}
	if _, e, code := pouch(t, "", "store", "init"); code == 0 || !strings.Contains(e, "--store") {
		t.Fatalf("init without --store: %d %q", code, e)
	}
}

// pouch user, mailbox policy, deliver, ban and mailbox stats with --store
// work on the database as they do on the data directory.
func TestStoreAccountCommands(t *testing.T) {
	url := newDatabase(t)
	data := t.TempDir()
	pouch(t, "", "store", "init", "--store", url)
	run := func(stdin string, args ...string) (string, string) {
		t.Helper()
		out, e, code := pouch(t, stdin, args...)
		if code != 0 {
			t.Fatalf("pouch %s: exit %d\n%s", strings.Join(args, " "), code, e)
		}
		return out, e
	}
	run("correct horse battery staple\n", "user", "add", "--data", data, "--store", url, "alice@Example.ORG")
	if _, e, code := pouch(t, "correct horse battery staple\n", "user", "add", "--data", data, "--store", url, "alice@example.org"); code == 0 || !strings.Contains(e, "already exists") {
		t.Fatalf("adding alice twice: %d %s", code, e)
	}
	if _, e, code := pouch(t, "short\n", "user", "passwd", "--data", data, "--store", url, "alice@example.org"); code == 0 {
		t.Fatalf("a weak password was taken: %s", e)
	}
	run("another horse battery staple\n", "user", "passwd", "--data", data, "--store", url, "alice@example.org")
	run("", "user", "disable", "--data", data, "--store", url, "alice@example.org")
	if out, _ := run("", "user", "list", "--store", url); out != "alice@example.org\n" {
		t.Fatalf("user list: %q", out)
	}
	out, _ := run("", "mailbox", "policy", "--data", data, "--store", url, "--expire", "30d", "alice@example.org")
	if !strings.Contains(out, "expire = 30d") {
		t.Fatalf("mailbox policy: %q", out)
	}
	s, err := pg.Connect(context.Background(), url, pg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, err := s.LookupAccount(context.Background(), "alice@example.org")
	if err != nil || a.Fields["expire"] != "30d" || a.Fields["nologin"] != "" || a.Fields["scram_sha_256"] == "" {
		t.Fatalf("the account in the table: %+v, %v", a, err)
	}
	if _, ok := a.Fields["nologin"]; !ok {
		t.Fatal("disable did not set nologin")
	}
	// pouch deliver --store finds the account (a disabled one still takes
	// mail) and delivers into the database.
	run("Subject: hi\n\nbody\n", "deliver", "--data", data, "--store", url, "alice@example.org")
	if _, e, code := pouch(t, "x\n", "deliver", "--data", data, "--store", url, "nobody@example.org"); code != exNoUser {
		t.Fatalf("deliver to an unknown user: exit %d, want %d\n%s", code, exNoUser, e)
	}
	if out, _ := run("", "mailbox", "stats", "--store", url, "alice@example.org"); !strings.Contains(out, "messages         1 (") {
		t.Fatalf("mailbox stats: %q", out)
	}
	run("", "user", "del", "--data", data, "--store", url, "alice@example.org")
	if out, _ := run("", "user", "list", "--store", url); out != "" {
		t.Fatalf("user list after del: %q", out)
	}
	run("", "ban", "add", "--data", data, "--store", url, "192.0.2.0/24")
	if out, _ := run("", "ban", "list", "--store", url); !strings.HasPrefix(out, "192.0.2.0/24 ") {
		t.Fatalf("ban list: %q", out)
	}
}
