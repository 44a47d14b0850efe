package fetch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A failed rename into new/ is sticky: Sync fails, and fails again once
// new/ could take the message.
func TestMaildirSyncErrorSticky(t *testing.T) {
	dir := t.TempDir()
	m, err := openMaildir(dir, "tag", osCalls)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// Every rename into new/ fails while it is away.
	newDir := filepath.Join(dir, "new")
	if err := os.Rename(newDir, newDir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := m.Deliver(Msg{Key: "k"}, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := m.Sync(); err == nil {
		t.Fatal("maildir sync succeeded")
	}
	if err := os.Rename(newDir+".away", newDir); err != nil {
		t.Fatal(err)
	}
	if err := m.Sync(); err == nil {
		t.Fatal("maildir: second sync after a failure succeeded")
	}
	if err := m.Deliver(Msg{Key: "l"}, strings.NewReader("y\r\n")); err == nil {
		t.Fatal("maildir: deliver after a failed sync succeeded")
	}
	checkExactlyOnce(t, dir, nil)
}

// An open that fails leaves no worker behind.
func TestOpenMaildirNoLeak(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	before := runtime.NumGoroutine()
	for range 5 {
		if _, err := openMaildir(file, "t", osCalls); err == nil {
			t.Fatal("open succeeded")
		}
	}
	time.Sleep(10 * time.Millisecond)
	if after := runtime.NumGoroutine(); after > before+2 {
		t.Fatalf("goroutines %d -> %d", before, after)
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
	os.WriteFile(filepath.Join(dir, "new", "1.M1P1Q1.h,S=4,W=5,PF="+a.messageKey("x", -1)), []byte("old\n"), 0o600)
	st, err := Run(context.Background(), a, nil)
	if err != nil || st.Recovered != 0 || st.Fetched != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	checkExactlyOnce(t, dir, []string{"old\n", "new\n"})
}

// Recovery fsyncs new/ and cur/ before any journal record of a recovered
// message is written: also when the run compacts the journal before it
// downloads, and when it only marks what is on the server.
func TestRecoveredSyncsDirs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		journal string // after the pending record of x
		mark    bool
		script  string // after UIDL
		deleted int
	}{
		{name: "download", script: `
			C: STAT
			S: +OK 1 5
			C: DELE 1
			S: +OK
			C: QUIT
			S: +OK`, deleted: 1},
		// A UIDL that left the server makes Prune compact the journal.
		{name: "compacting", journal: "100 gone\n", script: `
			C: STAT
			S: +OK 1 5
			C: DELE 1
			S: +OK
			C: QUIT
			S: +OK`, deleted: 1},
		{name: "mark-existing", mark: true, script: `
			C: QUIT
			S: +OK`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, dir := fakeAccount(t, `
				C: LIST
				S: +OK
				S: 1 5
				S: .
				C: UIDL
				S: +OK
				S: 1 x
				S: .`+tc.script)
			a.MarkExisting = tc.mark
			os.MkdirAll(a.StateDir, 0o700)
			os.WriteFile(filepath.Join(a.StateDir, a.StateName()+".journal"), []byte("pouch-fetch-journal 4\nP x\n"+tc.journal), 0o600)
			os.MkdirAll(filepath.Join(dir, "new"), 0o700)
			os.WriteFile(filepath.Join(dir, "new", "1.M1P1Q1.h,S=4,W=5,PF="+a.messageKey("x", -1)), []byte("old\n"), 0o600)
			var mu sync.Mutex
			var events []string
			sys := osCalls
			sys.syncDir = func(d string) error {
				mu.Lock()
				events = append(events, "dir "+filepath.Base(d))
				mu.Unlock()
				return osCalls.syncDir(d)
			}
			sys.fdatasync = func(f *os.File) error {
				mu.Lock()
				events = append(events, "journal")
				mu.Unlock()
				return osCalls.fdatasync(f)
			}
			st, err := runWith(context.Background(), a, nil, sys)
			if err != nil || st.Recovered != 1 || st.Deleted != tc.deleted {
				t.Fatalf("%+v %v", st, err)
			}
			ev := strings.Join(events, ",")
			i := strings.Index(ev, "dir new")
			k := strings.Index(ev, "dir cur")
			jr := strings.Index(ev, "journal")
			if i < 0 || k < 0 || jr < i || jr < k {
				t.Fatalf("events %s", ev)
			}
			checkExactlyOnce(t, dir, []string{"old\n"})
			j, err := OpenJournal(a.StateDir, a.StateName(), true)
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			if _, ok := j.Seen("x"); !ok {
				t.Fatal("the recovered message is not recorded")
			}
		})
	}
}

// A Maildir or an mbox that a run creates is synced into its directory,
// and each directory made for it into its parent, before the journal
// records a message in it.
func TestNewDestinationSynced(t *testing.T) {
	root := t.TempDir()
	var synced []string
	sys := osCalls
	sys.syncDir = func(d string) error { synced = append(synced, d); return osCalls.syncDir(d) }
	mail := filepath.Join(root, "a", "Mail")
	d, err := openDestination("maildir:"+mail, "", "", sys)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	for _, want := range []string{root, filepath.Join(root, "a"), mail} {
		if !slices.Contains(synced, want) {
			t.Fatalf("maildir: %s not synced: %q", want, synced)
		}
	}
	synced = nil
	d, err = openDestination("mbox:"+filepath.Join(root, "mbox"), "", "", sys)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Deliver(Msg{}, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(synced, root) {
		t.Fatalf("mbox: its directory not synced: %q", synced)
	}
}

// A run reads the names in new/ and cur/ only when a killed run may have
// stored a message there (a pending record); a failure to read them then
// ends the run before anything is downloaded or deleted, rather than
// counting the message as not stored.
func TestMaildirNamesReadAfterKill(t *testing.T) {
	for _, pending := range []bool{false, true} {
		t.Run(fmt.Sprint("pending=", pending), func(t *testing.T) {
			script := `
				C: LIST
				S: +OK
				S: 1 5
				S: .
				C: UIDL
				S: +OK
				S: 1 x
				S: .`
			if !pending {
				script += `
				C: RETR 1
				S: +OK
				S: abc
				S: .
				C: STAT
				S: +OK 1 5
				C: DELE 1
				S: +OK
				C: QUIT
				S: +OK`
			}
			a, dir := fakeAccount(t, script)
			if pending {
				os.MkdirAll(a.StateDir, 0o700)
				os.WriteFile(filepath.Join(a.StateDir, a.StateName()+".journal"), []byte(journalHeader+"P x 5\n"), 0o600)
			}
			reads := 0
			sys := osCalls
			sys.readNames = func(string) ([]string, error) { reads++; return nil, syscall.EIO }
			st, err := runWith(context.Background(), a, nil, sys)
			if !pending {
				if err != nil || reads != 0 || st.Fetched != 1 || st.Deleted != 1 {
					t.Fatalf("%+v %v, %d reads", st, err, reads)
				}
				checkExactlyOnce(t, dir, []string{"abc\n"})
				return
			}
			if !errors.Is(err, syscall.EIO) || st.Fetched != 0 || st.Deleted != 0 {
				t.Fatalf("%+v %v", st, err)
			}
			checkExactlyOnce(t, dir, nil)
		})
	}
}
