package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/maildir"
)

func TestMailboxHoldAndPolicy(t *testing.T) {
	data := t.TempDir()
	if _, e, code := pouch(t, "carols Passw0rd-long\n", "user", "add", "--data", data, "carol"); code != 0 {
		t.Fatalf("add: %d %s", code, e)
	}
	_, e, code := pouch(t, "", "mailbox", "hold", "--reason", "case 9", "--data", data, "carol")
	if code != 0 || !strings.Contains(e, "carol is under legal hold") {
		t.Fatalf("hold: %d %s", code, e)
	}
	h, err := maildir.New(filepath.Join(data, "mail")).Hold(context.Background(), "carol")
	if err != nil || !h.Set || h.Reason != "case 9" {
		t.Fatalf("hold = %+v, %v", h, err)
	}
	if _, e, code = pouch(t, "", "mailbox", "release", "--data", data, "carol"); code != 0 || !strings.Contains(e, "lifted") {
		t.Fatalf("release: %d %s", code, e)
	}
	if _, e, code = pouch(t, "", "mailbox", "release", "--data", data, "nobody"); code != 1 || !strings.Contains(e, "no maildrop") {
		t.Fatalf("release of an unknown user: %d %s", code, e)
	}

	out, e, code := pouch(t, "", "mailbox", "policy", "--data", data, "carol")
	if code != 0 || !strings.Contains(out, "no retention settings of its own") {
		t.Fatalf("policy: %d %q %s", code, out, e)
	}
	out, e, code = pouch(t, "", "mailbox", "policy", "--expire", "90d", "--deletion-window", "30d", "--data", data, "carol")
	if code != 0 || out != "deletion_window = 30d\nexpire = 90d\n" {
		t.Fatalf("policy set: %d %q %s", code, out, e)
	}
	out, _, code = pouch(t, "", "mailbox", "policy", "--expire", "default", "--data", data, "carol")
	if code != 0 || out != "deletion_window = 30d\n" {
		t.Fatalf("policy default: %d %q", code, out)
	}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"policy", "--expire", "soon", "carol"}, 2, `--expire: "soon" is not`},
		{[]string{"policy", "--expire", "9d", "dave"}, 1, `no user "dave"`},
		{[]string{"hold", "--since", "1d", "carol"}, 2, "--since belongs to mailbox restore"},
		{[]string{"frobnicate", "carol"}, 2, "unknown action"},
		{[]string{"restore"}, 2, "exactly one user name"},
		{[]string{"restore", "--since", "yesterday", "carol"}, 2, `"yesterday" is not a date`},
	} {
		_, e, code := pouch(t, "", append([]string{"mailbox", "--data", data}, tc.args...)...)
		if code != tc.code || !strings.Contains(e, tc.msg) {
			t.Errorf("mailbox %v: %d %q, want %d %q", tc.args, code, e, tc.code, tc.msg)
		}
	}
	audit, _ := os.ReadFile(filepath.Join(data, "audit.log"))
	for _, ev := range []string{`"event":"hold_set"`, `"reason":"case 9"`, `"event":"hold_released"`, `"event":"policy_set"`} {
		if !strings.Contains(string(audit), ev) {
			t.Errorf("audit log lacks %s:\n%s", ev, audit)
		}
	}
}

func TestMailboxRestore(t *testing.T) {
	data := t.TempDir()
	ctx := context.Background()
	mail := maildir.New(filepath.Join(data, "mail"))
	mail.SetPolicy(func(string) store.Policy { return store.Policy{Window: time.Hour} })
	for _, m := range []string{"one\r\n", "two\r\n"} {
		if err := mail.Deliver(ctx, "dora", strings.NewReader(m)); err != nil {
			t.Fatal(err)
		}
	}
	md, err := mail.Open(ctx, "dora")
	if err != nil {
		t.Fatal(err)
	}
	uid := md.Messages()[0].UID
	if err := md.Commit([]int{0, 1}); err != nil {
		t.Fatal(err)
	}
	md.Close()
	// While a session is open, restore says so and changes nothing.
	busy, err := mail.Open(ctx, "dora")
	if err != nil {
		t.Fatal(err)
	}
	_, e, code := pouch(t, "", "mailbox", "restore", "--data", data, "dora")
	if code != 1 || !strings.Contains(e, "dora has a POP3 session open") {
		t.Fatalf("restore during a session: %d %s", code, e)
	}
	busy.Close()
	if _, e, code = pouch(t, "", "mailbox", "restore", "--since", "1h", "--data", data, "dora"); code != 0 || !strings.Contains(e, "restored 2 messages to dora with their original UIDLs") {
		t.Fatalf("restore: %d %s", code, e)
	}
	md, err = mail.Open(ctx, "dora")
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	if msgs := md.Messages(); len(msgs) != 2 || (msgs[0].UID != uid && msgs[1].UID != uid) {
		t.Fatalf("after restore: %+v", msgs)
	}
	if _, e, code = pouch(t, "", "mailbox", "restore", "--data", data, "nobody"); code != 1 || !strings.Contains(e, "no maildrop") {
		t.Fatalf("restore of an unknown user: %d %s", code, e)
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"48h":                  now.Add(-48 * time.Hour),
		"7d":                   now.Add(-7 * 24 * time.Hour),
		"2026-11-20T15:04:05Z": time.Date(2026, 11, 20, 15, 4, 5, 0, time.UTC),
	} {
		if got, err := parseSince(in, now); err != nil || !got.Equal(want) {
			t.Errorf("parseSince(%q) = %v, %v", in, got, err)
		}
	}
	if got, err := parseSince("2026-11-20", now); err != nil || got.Day() != 20 {
		t.Errorf("parseSince(date) = %v, %v", got, err)
	}
	// An age too long says so, not that it is no date.
	if _, err := parseSince("99999999h", now); err == nil || !strings.Contains(err.Error(), `"99999999h" is too long: at most 106751d`) {
		t.Errorf("parseSince(99999999h): %v", err)
	}
}

// A users file that cannot be read is said to be so, not taken for a user
// that does not exist.
func TestMailboxUnreadableUsersFile(t *testing.T) {
	data := t.TempDir()
	if err := os.Mkdir(filepath.Join(data, "users"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, action := range []string{"restore", "release"} {
		_, e, code := pouch(t, "", "mailbox", action, "--data", data, "erin")
		if code != 1 || strings.Contains(e, "no maildrop") || !strings.Contains(e, "is a directory") {
			t.Errorf("mailbox %s with the users file unreadable: %d %s", action, code, e)
		}
	}
}
