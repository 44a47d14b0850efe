package fetch

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

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
	renameFn = func(string, string) error { return syscall.EIO }
	defer func() { renameFn = os.Rename }()
	if _, err := Run(context.Background(), a, nil); err == nil {
		t.Fatal("run succeeded")
	}
	renameFn = os.Rename
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

func TestDestinationSyncErrorSticky(t *testing.T) {
	m, err := openMaildir(t.TempDir(), "tag")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	renameFn = func(string, string) error { return syscall.EIO }
	m.Deliver(Msg{Key: "k"}, strings.NewReader("x\r\n"))
	err = m.Sync()
	renameFn = os.Rename
	if err == nil {
		t.Fatal("maildir sync succeeded")
	}
	if err := m.Sync(); err == nil {
		t.Fatal("maildir: second sync after a failure succeeded")
	}

	b := &mbox{path: filepath.Join(t.TempDir(), "mbox")}
	defer b.Close()
	fsyncFile = func(*os.File) error { return syscall.EIO }
	if err := b.Deliver(Msg{}, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	err = b.Sync()
	fsyncFile = (*os.File).Sync
	if err == nil {
		t.Fatal("mbox sync succeeded")
	}
	if err := b.Sync(); err == nil {
		t.Fatal("mbox: second sync after a failure succeeded")
	}
	if err := b.Deliver(Msg{}, strings.NewReader("y\r\n")); err == nil {
		t.Fatal("mbox: deliver after a failed sync succeeded")
	}
}

// A file in the Maildir with the digest of a UIDL the journal has no pending
// record for belongs to an earlier message: a new message reusing the UIDL
// is downloaded, not "recovered" and deleted unread.
func TestReusedUIDLNotRecovered(t *testing.T) {
	a, dir := fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: .
		C: UIDL
		S: +OK
		S: 1 x
		S: .
		C: RETR 1
		S: +OK
		S: new
		S: .
		C: STAT
		S: +OK 1 5
		C: DELE 1
		S: +OK
		C: QUIT
		S: +OK`)
	os.MkdirAll(filepath.Join(dir, "new"), 0o700)
	os.WriteFile(filepath.Join(dir, "new", "1.M1P1Q1.h,S=4,W=5,PF="+a.messageKey("x")), []byte("old\n"), 0o600)
	st, err := Run(context.Background(), a, nil)
	if err != nil || st.Recovered != 0 || st.Fetched != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	checkExactlyOnce(t, dir, []string{"old\n", "new\n"})
}

// Recovery fsyncs new/ and cur/ before journaling a recovered message.
func TestRecoveredSyncsDirs(t *testing.T) {
	a, dir := fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: .
		C: UIDL
		S: +OK
		S: 1 x
		S: .
		C: STAT
		S: +OK 1 5
		C: DELE 1
		S: +OK
		C: QUIT
		S: +OK`)
	os.MkdirAll(a.StateDir, 0o700)
	os.WriteFile(filepath.Join(a.StateDir, a.StateName()+".journal"), []byte("pouch-fetch-journal 2\nP x\n"), 0o600)
	os.MkdirAll(filepath.Join(dir, "new"), 0o700)
	os.WriteFile(filepath.Join(dir, "new", "1.M1P1Q1.h,S=4,W=5,PF="+a.messageKey("x")), []byte("old\n"), 0o600)
	var mu sync.Mutex
	var events []string
	syncDirFn = func(d string) error {
		mu.Lock()
		events = append(events, "dir "+filepath.Base(d))
		mu.Unlock()
		return syncDir(d)
	}
	fdatasyncFn = func(f *os.File) error {
		mu.Lock()
		events = append(events, "journal")
		mu.Unlock()
		return syscall.Fdatasync(int(f.Fd()))
	}
	defer func() {
		syncDirFn = syncDir
		fdatasyncFn = func(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
	}()
	st, err := Run(context.Background(), a, nil)
	if err != nil || st.Recovered != 1 || st.Deleted != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	ev := strings.Join(events, ",")
	i := strings.Index(ev, "dir new")
	k := strings.Index(ev, "dir cur")
	jr := strings.LastIndex(ev, "journal")
	if i < 0 || k < 0 || jr < i || jr < k {
		t.Fatalf("events %s", ev)
	}
	checkExactlyOnce(t, dir, []string{"old\n"})
}

// An MDA pipeline is killed as a whole before it sees the end of a broken
// message, and runs in its own process group.
func TestMDAPipelineDroppedMidMessage(t *testing.T) {
	a, _ := fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: .
		C: UIDL
		S: +OK
		S: 1 a
		S: .
		C: RETR 1
		S: +OK
		`+strings.Repeat("S: start of a long message\n", 5000)+`
		S! half a li
		CLOSE`)
	out := filepath.Join(t.TempDir(), "out")
	a.To = "mda:cat | cat > " + out
	if _, err := Run(context.Background(), a, nil); err == nil || !strings.Contains(err.Error(), "mid-message") {
		t.Fatalf("got %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if b, _ := os.ReadFile(out); len(b) != 0 {
		t.Fatalf("partial message delivered: %d octets", len(b))
	}
}

func TestMDAOwnProcessGroup(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	d := &mda{cmd: "cat >/dev/null; cut -d' ' -f5 /proc/$$/stat > " + out}
	if err := d.Deliver(Msg{}, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	pg, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pg == syscall.Getpgrp() {
		t.Fatalf("MDA process group %q, ours %d", b, syscall.Getpgrp())
	}
}

// mboxMessages splits an mboxrd file into message bodies.
func mboxMessages(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	var cur *strings.Builder
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "From ") {
			if cur != nil {
				out = append(out, strings.TrimSuffix(cur.String(), "\n"))
			}
			cur = &strings.Builder{}
			continue
		}
		if cur == nil {
			t.Fatalf("mbox does not start with From: %q", line)
		}
		if strings.HasPrefix(strings.TrimLeft(line, ">"), "From ") {
			line = line[1:]
		}
		cur.WriteString(line + "\n")
	}
	if cur != nil {
		out = append(out, strings.TrimSuffix(cur.String(), "\n"))
	}
	return out
}

// A kill in the middle of an mbox append leaves nothing visible after the
// next run: the mbox is cut back to its size before the append.
func TestCrashMidMboxAppend(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprint("keep=", keep), func(t *testing.T) {
			p := newPouch(t)
			msgs := testMessages(6)
			p.deliver(t, msgs...)
			a := testAccount(t, p.addr)
			a.KeepForever = keep
			a.Window = 3
			box := filepath.Join(t.TempDir(), "mbox")
			os.WriteFile(box, []byte("From x Thu Jan  1 00:00:00 1970\nearlier\n\n"), 0o600)
			a.To = "mbox:" + box
			if err := child(t, a, "fetch.mbox.mid-append").Wait(); !killed(err) {
				t.Fatalf("child was not killed: %v", err)
			}
			finish(t, a)
			got := mboxMessages(t, box)
			want := append([]string{"earlier\n"}, msgs...)
			if len(got) != len(want) {
				t.Fatalf("mbox has %d messages, want %d: %q", len(got), len(want), got)
			}
			seen := map[string]int{}
			for _, g := range got {
				seen[g]++
			}
			for _, w := range want {
				if seen[w] != 1 {
					t.Fatalf("message %q stored %d times", w, seen[w])
				}
			}
		})
	}
}

func TestPruneEmptyListKeepsJournal(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	j.Add("a", time.Now())
	j.Add("b", time.Now())
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := prune(j); err != nil {
		t.Fatal(err)
	}
	if j.Len() != 2 || len(j.Warnings()) == 0 {
		t.Fatalf("empty LIST pruned the journal: %d, warnings %q", j.Len(), j.Warnings())
	}
	// A partial LIST prunes b into a tombstone, which survives a reopen.
	if err := prune(j, "a"); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j, err = OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, ok := j.Seen("b"); ok || j.Len() != 1 || !j.Tombstoned("b") {
		t.Fatalf("b: len %d tomb %v", j.Len(), j.Tombstoned("b"))
	}
	// Tombstones expire after 30 days.
	j.ids.SetTime(j.ids.FindString("b"), time.Now().Add(-31*24*time.Hour).Unix())
	if err := prune(j, "a"); err != nil {
		t.Fatal(err)
	}
	if j.Tombstoned("b") {
		t.Fatal("old tombstone kept")
	}
}

// A UIDL that vanished from a (partial) LIST and comes back is not
// downloaded a second time, and not deleted.
func TestTombstonedUIDLNotFetchedAgain(t *testing.T) {
	a, dir := fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: .
		C: UIDL
		S: +OK
		S: 1 x
		S: .
		C: QUIT
		S: +OK`)
	os.MkdirAll(a.StateDir, 0o700)
	os.WriteFile(filepath.Join(a.StateDir, a.StateName()+".journal"),
		fmt.Appendf(nil, "pouch-fetch-journal 2\nT %d x\n", time.Now().Unix()), 0o600)
	obs := &recObserver{}
	st, err := Run(context.Background(), a, obs)
	if err != nil || st.Fetched != 0 || st.Deleted != 0 || len(obs.warns) != 1 {
		t.Fatalf("%+v %v %q", st, err, obs.warns)
	}
	checkExactlyOnce(t, dir, nil)
}

func TestJournalPartialWriteThenRetry(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	j.Add("a", time.Unix(100, 0))
	journalWrite = func(f *os.File, b []byte) (int, error) {
		n, _ := f.Write(b[:len(b)/2])
		return n, syscall.ENOSPC
	}
	err = j.Sync()
	journalWrite = (*os.File).Write
	if err == nil {
		t.Fatal("sync succeeded")
	}
	if _, ok := j.Seen("a"); ok {
		t.Fatal("a failed write is seen")
	}
	j.Add("b", time.Unix(200, 0))
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j, err = OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, ok := j.Seen("b"); !ok || j.Len() != 1 {
		t.Fatalf("after retry: %d downloaded", j.Len())
	}
}

func TestJournalFdatasyncErrorSticky(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	j.Add("a", time.Unix(100, 0))
	old := fdatasyncFn
	fdatasyncFn = func(*os.File) error { return syscall.EIO }
	err = j.Sync()
	fdatasyncFn = old
	if err == nil {
		t.Fatal("sync succeeded")
	}
	j.Add("b", time.Unix(200, 0))
	if err := j.Sync(); err == nil {
		t.Fatal("journal usable after a failed fdatasync")
	}
}

func TestJournalValidatesLines(t *testing.T) {
	dir := t.TempDir()
	bad := "pouch-fetch-journal 1\n100 a\n100 b c\n100 " + strings.Repeat("u", 71) + "\nxx y\n100 \x01\n200 d\n"
	os.WriteFile(filepath.Join(dir, "x.journal"), []byte(bad), 0o600)
	j, err := OpenJournal(dir, "x", true)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if j.Len() != 2 || len(j.Warnings()) != 4 {
		t.Fatalf("len %d warnings %q", j.Len(), j.Warnings())
	}
}

func TestJournalOpenCleansAndSyncsParent(t *testing.T) {
	dir := t.TempDir()
	stray := filepath.Join(dir, "x.journal.tmp12345")
	os.WriteFile(stray, []byte("junk"), 0o600)
	other := filepath.Join(dir, "y.journal.tmp1")
	os.WriteFile(other, []byte("junk"), 0o600)
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
	if _, err := os.Stat(stray); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("stray temporary journal left")
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatal("another account's file removed")
	}
	var synced []string
	syncDirFn = func(d string) error { synced = append(synced, d); return syncDir(d) }
	defer func() { syncDirFn = syncDir }()
	sub := filepath.Join(dir, "a", "state")
	j, err = OpenJournal(sub, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
	if !strings.Contains(strings.Join(synced, ","), filepath.Join(dir, "a")+",") && !strings.HasSuffix(strings.Join(synced, ","), filepath.Join(dir, "a")) {
		t.Fatalf("parent not synced: %q", synced)
	}
}

func TestFromEscaperLinear(t *testing.T) {
	var b strings.Builder
	bw := bufio.NewWriter(&b)
	e := &fromEscaper{w: bw, bol: true}
	long := strings.Repeat(">", 100000)
	start := time.Now()
	e.Write([]byte(long + "From x\n>>From y\n>Fro\nFrom"))
	e.finish()
	bw.Flush()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %v", d)
	}
	if want := ">" + long + "From x\n>>>From y\n>Fro\nFrom\n\n"; b.String() != want {
		t.Fatalf("got %q", b.String()[len(long)-5:])
	}
	for in, want := range map[string]string{"From ": ">From \n\n", ">>F": ">>F\n\n", "a\nFrom b": "a\n>From b\n\n", ">": ">\n\n", ">From": ">From\n\n"} {
		var b strings.Builder
		bw := bufio.NewWriter(&b)
		e := &fromEscaper{w: bw, bol: true}
		for i := range in { // byte by byte
			e.Write([]byte{in[i]})
		}
		e.finish()
		bw.Flush()
		if b.String() != want {
			t.Errorf("%q: got %q want %q", in, b.String(), want)
		}
	}
}

func TestOpenMaildirNoLeak(t *testing.T) {
	dir := t.TempDir()
	readNamesFn = func(string) ([]string, error) { return nil, syscall.EIO }
	defer func() { readNamesFn = readNames }()
	before := runtime.NumGoroutine()
	for range 5 {
		if _, err := openMaildir(dir, "t"); err == nil {
			t.Fatal("open succeeded")
		}
	}
	time.Sleep(10 * time.Millisecond)
	if after := runtime.NumGoroutine(); after > before+2 {
		t.Fatalf("goroutines %d -> %d", before, after)
	}
}

// Messages larger than the in-memory limit go through a temporary file.
func TestMDALargeMessage(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	d := &mda{cmd: "cat > " + out}
	body := strings.Repeat("0123456789abcdef\r\n", (mdaMemMax/18)+1000)
	if err := d.Deliver(Msg{}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if string(b) != strings.ReplaceAll(body, "\r\n", "\n") {
		t.Fatalf("got %d octets", len(b))
	}
	// An MDA that stops reading early has not stored the message.
	d = &mda{cmd: "head -c 10 >/dev/null"}
	if err := d.Deliver(Msg{}, strings.NewReader(body)); err == nil {
		t.Fatal("early exit accepted")
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
