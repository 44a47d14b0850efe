package fetch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/popscript"
)

const loginScript = `
	S: +OK hello
	C: CAPA
	S: +OK
	S: USER
	S: UIDL
	S: .
	C: USER alice
	S: +OK
	C: PASS secret
	S: +OK
	C: CAPA
	S: +OK
	S: UIDL
	S: .`

func fakeAccount(t *testing.T, script string) (*Account, string) {
	fs := newFake(t, loginScript+script)
	a := testAccount(t, fs.Addr)
	return a, strings.TrimPrefix(a.To, "maildir:")
}

func TestDuplicateUIDLs(t *testing.T) {
	a, dir := fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: 2 5
		S: 3 3
		S: .
		C: UIDL
		S: +OK
		S: 1 dup
		S: 2 dup
		S: 3 u3
		S: .
		C: RETR 3
		S: +OK
		S: c
		S: .
		C: STAT
		S: +OK 3 13
		C: DELE 3
		S: +OK
		C: QUIT
		S: +OK`)
	obs := &recObserver{}
	st, err := Run(context.Background(), a, obs)
	if err != nil || st.Fetched != 1 || st.Skipped != 2 || st.Deleted != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	if len(obs.warns) != 2 || !strings.Contains(obs.warns[0], "shared by 2 messages") {
		t.Fatalf("warnings %q", obs.warns)
	}
	checkExactlyOnce(t, dir, []string{"c\n"})
}

func TestNoUIDL(t *testing.T) {
	a, dir := fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: .
		C: UIDL
		S: -ERR not supported
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
	obs := &recObserver{}
	st, err := Run(context.Background(), a, obs)
	if err != nil || st.Fetched != 1 || st.Deleted != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	if len(obs.warns) != 1 || !strings.Contains(obs.warns[0], "does not support UIDL") {
		t.Fatalf("warnings %q", obs.warns)
	}
	checkExactlyOnce(t, dir, []string{"one\n"})

	// Keeping mail needs UIDL: refused clearly, nothing downloaded.
	a, dir = fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: .
		C: UIDL
		S: -ERR not supported`)
	a.Keep = time.Hour
	if _, err := Run(context.Background(), a, nil); err == nil || !strings.Contains(err.Error(), "only download-and-delete") {
		t.Fatalf("got %v", err)
	}
	checkExactlyOnce(t, dir, nil)
}

// A server that refuses UIDL while the journal expects messages there
// that must not be deleted (from --mark-existing here) is not taken for one
// without UIDL: nothing is downloaded or deleted.
func TestUIDLRefusedWithJournal(t *testing.T) {
	a, dir := fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: .
		C: UIDL
		S: -ERR [SYS/TEMP] try again later`)
	os.MkdirAll(a.StateDir, 0o700)
	os.WriteFile(filepath.Join(a.StateDir, a.StateName()+".journal"), []byte(journalHeader+"E 100 u1 5\n"), 0o600)
	st, err := Run(context.Background(), a, nil)
	if err == nil || !strings.Contains(err.Error(), "expects 1 messages there") || st.Fetched != 0 || st.Deleted != 0 {
		t.Fatalf("%+v %v", st, err)
	}
	checkExactlyOnce(t, dir, nil)
}

// A password file whose first line is empty is said so, and nothing is
// sent to the server: it would take an empty password for a wrong one.
func TestEmptyPasswordFile(t *testing.T) {
	b := (&popscript.Box{Messages: []popscript.Message{{UID: "u1", Body: "x\n"}}}).Start(t)
	a := testAccount(t, b.Addr)
	os.WriteFile(a.PasswordFile, []byte("\nsecret\n"), 0o600)
	if _, err := Run(context.Background(), a, nil); err == nil || !strings.Contains(err.Error(), "first line is empty") {
		t.Fatalf("got %v", err)
	}
	if c := b.Connects(); len(c) != 0 {
		t.Fatalf("%d connections", len(c))
	}
}

// A 4 MiB line is no problem when LIST tells its size; when LIST tells
// another, the message is not stored but kept whole in quarantine (past the
// in-memory part of the copy), and nothing is deleted.
func TestSizeMismatchAndHugeLine(t *testing.T) {
	big := strings.Repeat("L", 4<<20)
	wire := int64(len(big) + len("\r\n.x\r\n"))
	for _, size := range []int64{wire, wire - 2, 999} {
		a, dir := fakeAccount(t, fmt.Sprintf(`
			C: LIST
			S: +OK
			S: 1 %d
			S: .
			C: UIDL
			S: +OK
			S: 1 a
			S: .
			C: RETR 1
			S: +OK
			S: %s
			S: ..x
			S: .`, size, big)+map[bool]string{true: `
			C: STAT
			S: +OK 1 1
			C: DELE 1
			S: +OK
			C: QUIT
			S: +OK`}[size != 999])
		st, err := Run(context.Background(), a, nil)
		if size != 999 {
			// wire-2 is the size with LF line ends (two lines).
			if err != nil || st.Fetched != 1 || st.Deleted != 1 {
				t.Fatalf("LIST %d: %+v %v", size, st, err)
			}
			checkExactlyOnce(t, dir, []string{big + "\n.x\n"})
			continue
		}
		if !errors.Is(err, ErrBrokenServer) || !strings.Contains(err.Error(), "where LIST announced 999") || st.Fetched != 0 {
			t.Fatalf("LIST 999: %+v %v", st, err)
		}
		checkExactlyOnce(t, dir, nil)
		checkExactlyOnce(t, quarantineDir(a), []string{big + "\n.x\n"})
	}
}

func TestDroppedMidMessage(t *testing.T) {
	for _, tail := range []string{"S! half a li", "S: whole line but no dot"} {
		a, dir := fakeAccount(t, `
			C: LIST
			S: +OK
			S: 1 7
			S: 2 5
			S: .
			C: UIDL
			S: +OK
			S: 1 a
			S: 2 b
			S: .
			C: RETR 1
			S: +OK
			S: first
			S: .
			C: RETR 2
			S: +OK
			S: start
			`+tail+`
			CLOSE`)
		st, err := Run(context.Background(), a, nil)
		if err == nil || !strings.Contains(err.Error(), "mid-message") {
			t.Fatalf("got %+v %v", st, err)
		}
		// The first message is stored and journaled; the second left no
		// file; no DELE or QUIT was sent, so the server deletes nothing.
		checkExactlyOnce(t, dir, []string{"first\n"})
		j, err := OpenJournal(a.StateDir, a.StateName(), true)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := j.Seen("a"); !ok || j.Len() != 1 {
			t.Fatalf("journal: %d downloaded", j.Len())
		}
		j.Close()
	}
}

func TestGreetingNeverComes(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			buf := make([]byte, 10)
			c.Read(buf) // waits for the client to give up
		}
	}()
	a := testAccount(t, l.Addr().String())
	a.DialTimeout = 300 * time.Millisecond
	start := time.Now()
	_, err = Run(context.Background(), a, nil)
	if err == nil || !strings.Contains(err.Error(), "no greeting") || time.Since(start) > 5*time.Second {
		t.Fatalf("got %v after %v", err, time.Since(start))
	}
}

func TestSignalFinishesAndQuits(t *testing.T) {
	// The context is cancelled as message 1 is stored: it is journaled,
	// message 2 is never asked for, and the session ends with DELE and QUIT.
	fs := newFake(t, loginScript+`
		C: LIST
		S: +OK
		S: 1 7
		S: 2 5
		S: .
		C: UIDL
		S: +OK
		S: 1 a
		S: 2 b
		S: .
		C: RETR 1
		S: +OK
		S: first
		S: .
		C: STAT
		S: +OK 2 12
		C: DELE 1
		S: +OK
		C: QUIT
		S: +OK`)
	a := testAccount(t, fs.Addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := filepath.Join(t.TempDir(), "out")
	a.To = "mda:cat > " + out
	obs := &cancelObserver{cancel: cancel}
	a2 := *a
	st, err := Run(ctx, &a2, obs)
	if err != nil || st.Fetched != 1 || !st.Stopped || st.Deleted != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	if b, _ := os.ReadFile(out); string(b) != "first\n" {
		t.Fatalf("%q", b)
	}
}

type cancelObserver struct {
	recObserver
	cancel func()
}

func (c *cancelObserver) Fetched(int64) { c.cancel() }
