package fetch

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/popscript"
)

// emptyWarning reports whether warns holds the warning of an empty listing
// that contradicts the journal, and the count it gives.
func emptyWarning(warns []string) (int, bool) {
	for _, w := range warns {
		var n int
		if _, err := fmt.Sscanf(w, "the server lists no messages, but the journal expects %d there", &n); err == nil {
			return n, true
		}
	}
	return 0, false
}

// ageJournal moves the download times of uids back by d, as if they had
// been downloaded d earlier.
func ageJournal(t *testing.T, a *Account, d time.Duration, uids ...string) {
	t.Helper()
	j, err := OpenJournal(a.StateDir, a.StateName(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	for _, u := range uids {
		r := j.ids.FindString(u)
		if !j.ids.Has(r, fSeen) {
			t.Fatalf("%s is not recorded as downloaded", u)
		}
		j.ids.SetTime(r, j.ids.Time(r)-int64(d/time.Second))
	}
	if err := j.rewrite(); err != nil {
		t.Fatal(err)
	}
}

// With --keep forever the journal expects every message it downloaded on
// the server: a server that then lists none gets a warning at every run,
// and the journal forgets nothing, so that the messages are not downloaded
// again when they come back.
func TestEmptyListingKeptForever(t *testing.T) {
	msgs, bodies := boxMessages(1, 2)
	b := (&popscript.Box{Messages: msgs}).Start(t)
	a := testAccount(t, b.Addr)
	a.KeepForever = true
	obs := &recObserver{}
	if st, err := Run(context.Background(), a, obs); err != nil || st.Fetched != 2 || st.Kept != 2 || len(obs.warns) != 0 {
		t.Fatalf("%+v %v %q", st, err, obs.warns)
	}
	b.WaitIdle(t)
	b.Messages = nil // the server loses its maildrop for a while
	for run := range 2 {
		obs := &recObserver{}
		st, err := Run(context.Background(), a, obs)
		if n, ok := emptyWarning(obs.warns); err != nil || st.Fetched != 0 || !ok || n != 2 || len(obs.warns) != 1 {
			t.Fatalf("empty run %d: %+v %v %q", run, st, err, obs.warns)
		}
		b.WaitIdle(t)
	}
	j, err := OpenJournal(a.StateDir, a.StateName(), true)
	if err != nil {
		t.Fatal(err)
	}
	if j.Len() != 2 || tombstones(j) != 0 {
		t.Fatalf("journal: %d downloaded, %d tombstones", j.Len(), tombstones(j))
	}
	j.Close()
	b.Messages = msgs
	obs = &recObserver{}
	if st, err := Run(context.Background(), a, obs); err != nil || st.Fetched != 0 || st.Kept != 2 || st.Deleted != 0 || len(obs.warns) != 0 {
		t.Fatalf("the messages came back: %+v %v %q", st, err, obs.warns)
	}
	checkExactlyOnce(t, a.To[len("maildir:"):], bodies)
}

// Messages pouch fetch deleted itself, messages kept by --keep and a
// quarantined one, in one journal: an empty listing warns about those the
// journal expects on the server (kept and quarantined), not the deleted
// ones, and forgets nothing.
func TestEmptyListingMixed(t *testing.T) {
	msgs, bodies := fiveMessages(2, func(m *popscript.Message) {
		m.Wire = "Subject: 2\r\n\r\nfirst half\r\n.\r\nother text\r\n.\r\n"
	})
	b := (&popscript.Box{Messages: msgs}).Start(t)
	a := testAccount(t, b.Addr)
	a.Keep = time.Hour
	_, err := Run(context.Background(), a, nil)
	checkBrokenRun(t, b, a, err, bodies) // u1 stored, u2 quarantined
	if st, err := Run(context.Background(), a, nil); err != nil || st.Fetched != 3 || st.Kept != 4 {
		t.Fatalf("second run: %+v %v", st, err)
	}
	b.WaitIdle(t)
	ageJournal(t, a, 2*time.Hour, "u1", "u3")
	if st, err := Run(context.Background(), a, nil); err != nil || st.Deleted != 2 || st.Kept != 2 {
		t.Fatalf("third run: %+v %v", st, err)
	}
	b.WaitIdle(t)
	if d := b.Deleted(); !slices.Equal(d, []string{"u1", "u3"}) {
		t.Fatalf("deleted %v", d)
	}
	b.Messages = nil
	obs := &recObserver{}
	st, err := Run(context.Background(), a, obs)
	if n, ok := emptyWarning(obs.warns); err != nil || st.Fetched != 0 || !ok || n != 3 || len(obs.warns) != 1 {
		t.Fatalf("empty run: %+v %v %q", st, err, obs.warns)
	}
	b.WaitIdle(t)
	j, err := OpenJournal(a.StateDir, a.StateName(), true)
	if err != nil {
		t.Fatal(err)
	}
	if j.Len() != 4 || !j.Suspect("u2") || tombstones(j) != 0 {
		t.Fatalf("journal: %d downloaded, u2 suspect %v, %d tombstones", j.Len(), j.Suspect("u2"), tombstones(j))
	}
	j.Close()
	b.Messages = msgs
	obs = &recObserver{}
	if st, err := Run(context.Background(), a, obs); err != nil || st.Fetched != 0 || st.Kept != 2 || st.Deleted != 0 {
		t.Fatalf("the messages came back: %+v %v %q", st, err, obs.warns)
	}
	if _, ok := emptyWarning(obs.warns); ok || len(obs.warns) != 1 || !strings.Contains(obs.warns[0], `UIDL "u2" arrived damaged`) {
		t.Fatalf("warnings %q", obs.warns)
	}
	checkExactlyOnce(t, a.To[len("maildir:"):], []string{bodies[0], bodies[2], bodies[3], bodies[4]})
}

// scriptedAccount returns an account whose every run talks to the script
// server next last started: one account (so one journal) for many scripted
// sessions.
func scriptedAccount(t *testing.T) (a *Account, next func(script string)) {
	var addr string
	next = func(script string) { addr = newFake(t, loginScript+script).Addr }
	a = testAccount(t, "pop.example.test:110")
	a.Dialer = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	return a, next
}

const (
	listTwo = `
		C: LIST
		S: +OK
		S: 1 5
		S: 2 5
		S: .
		C: UIDL
		S: +OK
		S: 1 u1
		S: 2 u2
		S: .`
	listNone = `
		C: LIST
		S: +OK
		S: .
		C: UIDL
		S: +OK
		S: .
		C: QUIT
		S: +OK`
	deleteTwo = `
		C: STAT
		S: +OK 2 10
		C: DELE 1
		S: +OK
		C: DELE 2
		S: +OK
		C: QUIT`
)

// The connection drops after DELE, before the reply to QUIT: the server
// may have deleted the messages or not. If it did not, the next listing
// names them and they are deleted then; if it did, the next listing is
// empty, which is what the journal expects of messages due for deletion:
// no warning either way, and the later empty polls are quiet.
func TestQuitNotAnswered(t *testing.T) {
	for _, committed := range []bool{false, true} {
		t.Run(fmt.Sprintf("committed=%v", committed), func(t *testing.T) {
			a, next := scriptedAccount(t)
			next(listTwo + `
				C: RETR 1
				S: +OK
				S: one
				S: .
				C: RETR 2
				S: +OK
				S: two
				S: .` + deleteTwo + `
				CLOSE`)
			st, err := Run(context.Background(), a, nil)
			if err == nil || !strings.Contains(err.Error(), "QUIT failed") || st.Fetched != 2 {
				t.Fatalf("%+v %v", st, err)
			}
			if !committed {
				next(listTwo + deleteTwo + `
					S: +OK`)
				obs := &recObserver{}
				st, err := Run(context.Background(), a, obs)
				if err != nil || st.Fetched != 0 || st.Deleted != 2 || len(obs.warns) != 0 {
					t.Fatalf("%+v %v %q", st, err, obs.warns)
				}
			}
			for run := range 2 {
				next(listNone)
				obs := &recObserver{}
				st, err := Run(context.Background(), a, obs)
				if err != nil || st.Fetched != 0 || st.Deleted != 0 || len(obs.warns) != 0 {
					t.Fatalf("empty run %d: %+v %v %q", run, st, err, obs.warns)
				}
			}
			checkExactlyOnce(t, a.To[len("maildir:"):], []string{"one\n", "two\n"})
			j, err := OpenJournal(a.StateDir, a.StateName(), true)
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			if j.Len() != 0 || !j.Tombstoned("u1") || !j.Tombstoned("u2") {
				t.Fatalf("journal: %d downloaded, tombstones u1 %v u2 %v", j.Len(), j.Tombstoned("u1"), j.Tombstoned("u2"))
			}
		})
	}
}
