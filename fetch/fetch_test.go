package fetch

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseKeep(t *testing.T) {
	for in, want := range map[string]time.Duration{"14d": 14 * 24 * time.Hour, "36h": 36 * time.Hour, "90s": 90 * time.Second, "1d12h": 36 * time.Hour, "0": 0, "2w": 14 * 24 * time.Hour} {
		d, f, err := ParseKeep(in)
		if err != nil || f || d != want {
			t.Errorf("%s: %v %v %v", in, d, f, err)
		}
	}
	if _, f, err := ParseKeep("forever"); !f || err != nil {
		t.Error("forever")
	}
	for _, bad := range []string{"x", "3y", "d"} {
		if _, _, err := ParseKeep(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	// Too long for a time.Duration: refused, never wrapped round to a
	// negative or zero keep, which would delete at once.
	for _, long := range []string{"99999999h", "99999999h99999999h", "1000000w", "106752d", "106751d24h"} {
		if d, f, err := ParseKeep(long); err == nil || !strings.Contains(err.Error(), "is too long") {
			t.Errorf("%s: %v %v %v; want too long", long, d, f, err)
		}
	}
	if d, _, err := ParseKeep("106751d"); err != nil || d != 106751*24*time.Hour {
		t.Errorf("106751d: %v %v", d, err)
	}
}

func TestFetchAndDelete(t *testing.T) {
	p := newPouch(t)
	msgs := testMessages(150)
	p.deliver(t, msgs...)
	a := testAccount(t, p.addr)
	st, err := Run(context.Background(), a, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Fetched != 150 || st.Deleted != 150 {
		t.Fatalf("%+v", st)
	}
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), msgs)
	if n := p.count(t); n != 0 {
		t.Fatalf("%d left on the server", n)
	}
	// The next runs find nothing, and say nothing: pouch fetch deleted
	// those messages itself, so an empty listing is what it expects. The
	// first turns the UIDLs into tombstones.
	for run := range 2 {
		obs := &recObserver{}
		st, err = Run(context.Background(), a, obs)
		if err != nil || st.Fetched != 0 || st.Deleted != 0 || len(obs.warns) != 0 {
			t.Fatalf("empty run %d: %+v %v %q", run, st, err, obs.warns)
		}
	}
	// With one new message on the server, the tombstones stay.
	p.deliver(t, "Subject: new\n\nnew\n")
	st, err = Run(context.Background(), a, nil)
	if err != nil || st.Fetched != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	j, err := OpenJournal(a.StateDir, a.StateName(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if j.Len() != 1 || tombstones(j) != 150 {
		t.Fatalf("journal keeps %d UIDLs, %d tombstones", j.Len(), tombstones(j))
	}
}

func TestKeepPolicy(t *testing.T) {
	p := newPouch(t)
	msgs := testMessages(5)
	p.deliver(t, msgs[:3]...)
	a := testAccount(t, p.addr)
	a.Keep = time.Hour
	st, err := Run(context.Background(), a, nil)
	if err != nil || st.Fetched != 3 || st.Deleted != 0 || st.Kept != 3 {
		t.Fatalf("%+v %v", st, err)
	}
	p.deliver(t, msgs[3:]...)
	st, err = Run(context.Background(), a, nil)
	if err != nil || st.Fetched != 2 || st.Deleted != 0 || st.Kept != 5 {
		t.Fatalf("second run %+v %v", st, err)
	}
	// Age the first three: rewrite their times in the journal.
	j, err := OpenJournal(a.StateDir, a.StateName(), false)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * time.Hour).Unix()
	n := 0
	j.ids.Each(func(r ref) {
		if j.ids.Has(r, fSeen) {
			if n < 3 {
				j.ids.SetTime(r, old)
			}
			n++
		}
	})
	if err := j.rewrite(); err != nil {
		t.Fatal(err)
	}
	j.Close()
	st, err = Run(context.Background(), a, nil)
	if err != nil || st.Fetched != 0 || st.Deleted != 3 || st.Kept != 2 {
		t.Fatalf("third run %+v %v", st, err)
	}
	if c := p.count(t); c != 2 {
		t.Fatalf("%d on server", c)
	}
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), msgs)
	// Short durations: keep 1ns deletes on the next run.
	a.Keep = time.Nanosecond
	st, err = Run(context.Background(), a, nil)
	if err != nil || st.Deleted != 2 {
		t.Fatalf("fourth run %+v %v", st, err)
	}
	// Forever never deletes.
	p.deliver(t, "Subject: x\n\nx\n")
	a.Keep, a.KeepForever = 0, true
	for range 2 {
		if st, err = Run(context.Background(), a, nil); err != nil || st.Deleted != 0 {
			t.Fatalf("forever %+v %v", st, err)
		}
	}
}

func TestDryRun(t *testing.T) {
	p := newPouch(t)
	p.deliver(t, testMessages(4)...)
	a := testAccount(t, p.addr)
	a.DryRun = true
	st, err := Run(context.Background(), a, nil)
	if err != nil || st.Fetched != 4 || st.Deleted != 4 || !st.DryRun {
		t.Fatalf("%+v %v", st, err)
	}
	if p.count(t) != 4 {
		t.Fatal("dry run deleted")
	}
	if _, err := os.Stat(strings.TrimPrefix(a.To, "maildir:")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("dry run made the maildir")
	}
}

func TestMaxSize(t *testing.T) {
	p := newPouch(t)
	p.deliver(t, "Subject: small\n\nx\n", "Subject: big\n\n"+strings.Repeat("y", 5000)+"\n")
	a := testAccount(t, p.addr)
	a.MaxSize = 1000
	st, err := Run(context.Background(), a, nil)
	if err != nil || st.Fetched != 1 || st.Skipped != 1 || st.Deleted != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	a.DeleteOversized = true
	st, err = Run(context.Background(), a, nil)
	if err != nil || st.Fetched != 0 || st.Deleted != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	if p.count(t) != 0 {
		t.Fatal("oversized not deleted")
	}
}

func TestMboxAndMDA(t *testing.T) {
	p := newPouch(t)
	msgs := []string{"Subject: a\n\nFrom me\n>From you\nx", "Subject: b\r\n\r\nbody\r\n"}
	p.deliver(t, msgs...)
	a := testAccount(t, p.addr)
	a.KeepForever = true
	mbox := filepath.Join(t.TempDir(), "mbox")
	a.To = "mbox:" + mbox
	if _, err := Run(context.Background(), a, nil); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(mbox)
	got := string(data)
	// Strip the From_ lines' dates.
	lines := strings.Split(got, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "From MAILER-DAEMON ") {
			lines[i] = "From MAILER-DAEMON"
		}
	}
	want := "From MAILER-DAEMON\nSubject: a\n\n>From me\n>>From you\nx\n\nFrom MAILER-DAEMON\nSubject: b\n\nbody\n\n"
	if strings.Join(lines, "\n") != want {
		t.Fatalf("mbox:\n%q\nwant\n%q", strings.Join(lines, "\n"), want)
	}

	out := filepath.Join(t.TempDir(), "mda-out")
	a2 := testAccount(t, p.addr)
	a2.To = `mda:cat >> '` + out + `'; echo >> '` + out + `'`
	if st, err := Run(context.Background(), a2, nil); err != nil || st.Fetched != 2 {
		t.Fatalf("%+v %v", st, err)
	}
	data, _ = os.ReadFile(out)
	if string(data) != "Subject: a\n\nFrom me\n>From you\nx\n\nSubject: b\n\nbody\n\n" {
		t.Fatalf("mda got %q", data)
	}
	// A failing MDA stores nothing, journals nothing, deletes nothing.
	p.deliver(t, "Subject: c\n\nc\n")
	a2.To = "mda:exit 75"
	if _, err := Run(context.Background(), a2, nil); err == nil {
		t.Fatal("failing MDA accepted")
	}
	if p.count(t) != 1 {
		t.Fatal("message deleted after a failed delivery")
	}
}

func TestAccountLock(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, err := OpenJournal(dir, "x", false); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v", err)
	}
}

func TestJournalTornLine(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	j.Add("a", time.Unix(100, 0), -1)
	j.Add("b", time.Unix(200, 0), -1)
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	j.f.WriteString("300 torn-without-newl")
	j.Close()
	j, err = OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := j.Seen("torn-without-newl"); ok || j.Len() != 2 {
		t.Fatalf("len %d", j.Len())
	}
	j.Add("c", time.Unix(400, 0), -1)
	j.Sync()
	j.Close()
	data, _ := os.ReadFile(filepath.Join(dir, "x.journal"))
	if string(data) != journalHeader+"100 a\n200 b\n400 c\n" {
		t.Fatalf("%q", data)
	}
}

func TestLFWriterAndEscaper(t *testing.T) {
	var b strings.Builder
	lw := &lfWriter{w: &b}
	for _, s := range []string{"a\r", "\nb\r", "c\r\n\r", ""} {
		lw.Write([]byte(s))
	}
	lw.Close()
	if b.String() != "a\nb\rc\n\r" {
		t.Fatalf("%q", b.String())
	}
}

// retrCounter counts the RETR commands a client writes, and in how many
// writes.
type retrCounter struct {
	net.Conn
	fetched *atomic.Int64
	mu      sync.Mutex
	sent    int
	writes  int
	maxOut  int64
}

func (c *retrCounter) Write(p []byte) (int, error) {
	if n := bytes.Count(p, []byte("RETR ")); n > 0 {
		c.mu.Lock()
		c.sent += n
		c.writes++
		c.maxOut = max(c.maxOut, int64(c.sent)-c.fetched.Load())
		c.mu.Unlock()
	}
	return c.Conn.Write(p)
}

type countObserver struct {
	nopObserver
	n *atomic.Int64
}

func (o countObserver) Fetched(int64) { o.n.Add(1) }

// The RETR window holds at most Window commands, and is topped up in
// groups once half of it is free, not one command per message.
func TestRetrWindow(t *testing.T) {
	p := newPouch(t)
	msgs := testMessages(100)
	p.deliver(t, msgs...)
	a := testAccount(t, p.addr)
	a.Window = 10
	var fetched atomic.Int64
	var rc *retrCounter
	a.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		rc = &retrCounter{Conn: c, fetched: &fetched}
		return rc, err
	}
	st, err := Run(context.Background(), a, countObserver{n: &fetched})
	if err != nil || st.Fetched != 100 {
		t.Fatalf("%+v %v", st, err)
	}
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), msgs)
	if rc.sent != 100 || rc.maxOut > 10 {
		t.Fatalf("%d RETRs sent, up to %d in flight (window 10)", rc.sent, rc.maxOut)
	}
	// 100 messages in groups of at least 5: at most 20 writes.
	if rc.writes > 20 {
		t.Fatalf("RETRs sent in %d writes, want at most 20", rc.writes)
	}
}

// A state directory written "~/..." (as in a TOML file, where no shell
// expands it) is under the home directory, not a directory named "~".
func TestStateDirTilde(t *testing.T) {
	p := newPouch(t)
	p.deliver(t, testMessages(2)...)
	a := testAccount(t, p.addr)
	home := t.TempDir()
	t.Setenv("HOME", home)
	a.StateDir = "~/state"
	if _, err := Run(context.Background(), a, nil); err != nil {
		t.Fatal(err)
	}
	if names, err := os.ReadDir(filepath.Join(home, "state")); err != nil || len(names) == 0 {
		t.Fatalf("nothing in ~/state: %v", err)
	}
}

// A failed destination sync drops the whole batch: nothing of it is
// journaled (so nothing of it is ever deleted), and the destination stays
// unusable.
func TestSyncFailureDropsBatch(t *testing.T) {
	a, dir := fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: .
		C: UIDL
		S: +OK
		S: 1 u1
		S: .
		C: RETR 1
		S: +OK
		S: one
		S: .`)
	// Once the run has opened the Maildir and commits its pending
	// records, new/ goes away: the message's rename into it fails.
	newDir := filepath.Join(dir, "new")
	sys := osCalls
	sys.fdatasync = func(f *os.File) error {
		os.Rename(newDir, newDir+".away")
		return osCalls.fdatasync(f)
	}
	if _, err := runWith(context.Background(), a, nil, sys); err == nil {
		t.Fatal("run succeeded")
	}
	if err := os.Rename(newDir+".away", newDir); err != nil {
		t.Fatal(err)
	}
	checkExactlyOnce(t, dir, nil)
	j, err := OpenJournal(a.StateDir, a.StateName(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, ok := j.Seen("u1"); ok {
		t.Fatal("a message whose sync failed was journaled")
	}
}

// With PIPELINING before login, no second CAPA is sent and LIST and UIDL
// share a round trip.
func TestFewerRoundTrips(t *testing.T) {
	fs := newFake(t, `
		S: +OK hello
		C: CAPA
		S: +OK
		S: USER
		S: UIDL
		S: PIPELINING
		S: .
		C: USER alice
		S: +OK
		C: PASS secret
		S: +OK
		C: LIST
		C: UIDL
		S: +OK
		S: 1 5
		S: .
		S: +OK
		S: 1 a
		S: .
		C: RETR 1
		S: +OK
		S: one
		S: .
		C: STAT
		S: +OK 1 5
		C: DELE 1
		S: +OK
		C: QUIT
		S: +OK`)
	a := testAccount(t, fs.Addr)
	st, err := Run(context.Background(), a, nil)
	if err != nil || st.Fetched != 1 || st.Deleted != 1 {
		t.Fatalf("%+v %v", st, err)
	}
}
