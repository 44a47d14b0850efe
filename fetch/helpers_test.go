package fetch

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/client"
	"github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/server/servertest"
	"github.com/pouchmail/pouch/store/maildir"
)

type pouchSrv struct {
	addr  string
	store *maildir.Store
}

// newPouch runs a real Pouch server in-process with user alice/secret.
func newPouch(t *testing.T) *pouchSrv {
	t.Helper()
	st := maildir.New(t.TempDir())
	_, addr, _ := servertest.Start(t, server.Config{
		Store: st, Auth: servertest.Users{"alice": "secret"},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Hostname: "localhost", AuthFailDelay: -1,
	})
	return &pouchSrv{addr: addr, store: st}
}

func (p *pouchSrv) deliver(t *testing.T, msgs ...string) {
	t.Helper()
	for _, m := range msgs {
		if err := p.store.Deliver(context.Background(), "alice", strings.NewReader(m)); err != nil {
			t.Fatal(err)
		}
	}
}

func (p *pouchSrv) count(t *testing.T) int {
	t.Helper()
	for range 100 {
		m, err := p.store.Open(context.Background(), "alice")
		if err != nil {
			// A session of a killed client may still hold the lock for a moment.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		defer m.Close()
		return len(m.Messages())
	}
	t.Fatal("maildrop stays locked")
	return 0
}

// remove deletes the messages at the given indexes (from 0) from the
// server's maildrop, as another client's QUIT would.
func (p *pouchSrv) remove(t *testing.T, idx ...int) {
	t.Helper()
	m, err := p.store.Open(context.Background(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Commit(idx); err != nil {
		t.Fatal(err)
	}
}

// testMessages returns n distinct messages with dots and From lines.
func testMessages(n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("Message-Id: <%d@test>\nSubject: message %d\n\n.leading dot\nFrom here\n>From there\nline %d\n", i, i, i))
	}
	return out
}

// account returns an account for alice on addr storing into a Maildir.
func testAccount(t testing.TB, addr string) *Account {
	t.Helper()
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	return &Account{
		Server: addr, TLS: client.TLSNone, User: "alice", PasswordFile: pw,
		To: "maildir:" + filepath.Join(dir, "Mail"), StateDir: filepath.Join(dir, "state"),
		Timeout: 10 * time.Second, DialTimeout: 10 * time.Second,
	}
}

// maildirBodies returns the contents of every message in a Maildir's new/
// and cur/, sorted.
func maildirBodies(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, sub := range []string{"new", "cur"} {
		names, _ := os.ReadDir(filepath.Join(dir, sub))
		for _, n := range names {
			b, err := os.ReadFile(filepath.Join(dir, sub, n.Name()))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, string(b))
		}
	}
	sort.Strings(out)
	return out
}

// checkExactlyOnce checks that dir holds exactly the messages msgs.
func checkExactlyOnce(t *testing.T, dir string, msgs []string) {
	t.Helper()
	got := maildirBodies(t, dir)
	want := append([]string(nil), msgs...)
	sort.Strings(want)
	if len(got) != len(want) {
		t.Fatalf("maildir has %d messages, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("message differs:\ngot  %q\nwant %q", got[i], want[i])
		}
	}
	tmp, _ := os.ReadDir(filepath.Join(dir, "tmp"))
	if len(tmp) != 0 {
		t.Fatalf("%d files left in tmp/", len(tmp))
	}
}

type recObserver struct {
	warns []string
}

func (r *recObserver) Plan(int, int64) {}
func (r *recObserver) Fetched(int64)   {}
func (r *recObserver) Warn(s string)   { r.warns = append(r.warns, s) }

// tombstones counts the journal's tombstones.
func tombstones(j *Journal) int {
	n := 0
	j.ids.Each(func(r ref) {
		if j.ids.Has(r, fTomb) {
			n++
		}
	})
	return n
}

// prune runs Prune as if the server listed exactly uids, with the default
// keep policy (every downloaded message is due for deletion).
func prune(j *Journal, uids ...string) error {
	return pruneKeep(j, &Account{}, uids...)
}

// pruneKeep is prune with a's keep policy.
func pruneKeep(j *Journal, a *Account, uids ...string) error {
	j.ids.Each(func(r ref) { j.ids.Clear(r, fListed|fDup) })
	j.nListed = 0
	for _, u := range uids {
		if _, _, err := j.Listed([]byte(u)); err != nil {
			return err
		}
	}
	now := time.Now()
	return j.Prune(func(t time.Time) bool { return a.due(t, now) })
}

// quarantineDir is the account's quarantine Maildir.
func quarantineDir(a *Account) string {
	return filepath.Join(a.StateDir, "quarantine", a.StateName())
}
