package fetch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/popscript"
)

func boxMessages(from, to int) (msgs []popscript.Message, bodies []string) {
	for i := from; i <= to; i++ {
		body := fmt.Sprintf("Subject: %d\n\nbody %d\n", i, i)
		msgs = append(msgs, popscript.Message{UID: fmt.Sprintf("u%d", i), Body: body})
		bodies = append(bodies, body)
	}
	return msgs, bodies
}

// --mark-existing records what is on the server and touches nothing: no
// RETR, no DELE, even for messages an earlier run stored and the policy
// says to delete now. Later runs fetch only new mail, and delete only
// what they stored, never the marked messages.
func TestMarkExisting(t *testing.T) {
	for _, policy := range []string{"delete", "keep 14d", "keep forever"} {
		t.Run(policy, func(t *testing.T) {
			old, oldBodies := boxMessages(1, 2)
			b := (&popscript.Box{Messages: old, Pipelining: true}).Start(t)
			a := testAccount(t, b.Addr)
			dir := strings.TrimPrefix(a.To, "maildir:")
			// Two messages fetched earlier and kept, due for deletion now
			// under the "delete" policy.
			a.KeepForever = true
			if st, err := Run(context.Background(), a, nil); err != nil || st.Fetched != 2 {
				t.Fatalf("%+v %v", st, err)
			}
			switch policy {
			case "delete":
				a.KeepForever = false
			case "keep 14d":
				a.KeepForever, a.Keep = false, 14*24*time.Hour
			}
			existing, _ := boxMessages(3, 7)
			b.Append(existing...)

			a.MarkExisting = true
			a.DryRun = true
			st, err := Run(context.Background(), a, nil)
			if err != nil || st.Marked != 5 || st.Fetched != 0 || st.Deleted != 0 {
				t.Fatalf("dry run: %+v %v", st, err)
			}
			a.DryRun = false
			st, err = Run(context.Background(), a, nil)
			if err != nil || st.Marked != 5 || st.Fetched != 0 || st.Deleted != 0 || st.Kept != 2 {
				t.Fatalf("marking: %+v %v", st, err)
			}
			sessions := b.Sessions()
			last := sessions[len(sessions)-1]
			if sent(last, "RETR") || sent(last, "DELE") || !sent(last, "QUIT") {
				t.Fatalf("the marking session: %q", last)
			}
			if len(b.Deleted()) != 0 {
				t.Fatalf("deleted %v", b.Deleted())
			}
			checkExactlyOnce(t, dir, oldBodies)

			a.MarkExisting = false
			fresh, freshBodies := boxMessages(8, 9)
			b.Append(fresh...)
			st, err = Run(context.Background(), a, nil)
			if err != nil || st.Fetched != 2 {
				t.Fatalf("after marking: %+v %v", st, err)
			}
			checkExactlyOnce(t, dir, append(oldBodies, freshBodies...))
			var want []string
			if policy == "delete" {
				want = []string{"u1", "u2", "u8", "u9"}
			}
			if d := b.Deleted(); !slices.Equal(d, want) {
				t.Fatalf("deleted %v, want %v", d, want)
			}
			// The marked messages stay, run after run.
			st, err = Run(context.Background(), a, nil)
			if err != nil || st.Fetched != 0 || st.Deleted != 0 {
				t.Fatalf("again: %+v %v", st, err)
			}
			if d := b.Deleted(); !slices.Equal(d, want) {
				t.Fatalf("deleted %v, want %v", d, want)
			}
		})
	}
}

// Without UIDL nothing can be recorded: --mark-existing says so and
// changes nothing.
func TestMarkExistingNeedsUIDL(t *testing.T) {
	a, _ := fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: .
		C: UIDL
		S: -ERR not supported`)
	a.MarkExisting = true
	_, err := Run(context.Background(), a, nil)
	if err == nil || !strings.Contains(err.Error(), "--mark-existing cannot record its messages (nothing was changed)") {
		t.Fatal(err)
	}
}

// Killed right after the marks are durable: the next ordinary run fetches
// and deletes none of the marked messages. Killed before (while the marks
// are only in memory), nothing was recorded and nothing deleted.
func TestMarkExistingCrash(t *testing.T) {
	msgs, _ := boxMessages(1, 4)
	b := (&popscript.Box{Messages: msgs, Pipelining: true}).Start(t)
	a := testAccount(t, b.Addr)
	a.MarkExisting = true
	if err := child(t, a, "fetch.marked").Wait(); !killed(err) {
		t.Fatalf("child was not killed: %v", err)
	}
	a.MarkExisting = false
	finish(t, a)
	if n := len(maildirBodies(t, strings.TrimPrefix(a.To, "maildir:"))); n != 0 {
		t.Fatalf("%d messages downloaded", n)
	}
	if d := b.Deleted(); len(d) != 0 {
		t.Fatalf("deleted %v", d)
	}
	for _, s := range b.Sessions() {
		if sent(s, "RETR") || sent(s, "DELE") {
			t.Fatalf("%q", s)
		}
	}
}

// The E record survives compaction and reopening; version 3 journals are
// read and upgraded; an E line in a version 3 file is not understood.
func TestJournalExistingRecords(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"a", "b"} {
		r, _, _ := j.Listed([]byte(u))
		j.addExistingRef(r, time.Unix(100, 0), -1)
	}
	j.Add("c", time.Unix(200, 0), -1)
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	if !j.Existing("a") || j.Existing("c") || j.Len() != 3 {
		t.Fatalf("existing a %v c %v len %d", j.Existing("a"), j.Existing("c"), j.Len())
	}
	if err := j.rewrite(); err != nil {
		t.Fatal(err)
	}
	j.Close()
	path := filepath.Join(dir, "x.journal")
	data, _ := os.ReadFile(path)
	if string(data) != journalHeader+"E 100 a\nE 100 b\n200 c\n" {
		t.Fatalf("%q", data)
	}
	// b leaves the server: a tombstone, and no longer marked.
	j, err = OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := prune(j, "a", "c"); err != nil {
		t.Fatal(err)
	}
	if !j.Existing("a") || j.Existing("b") || !j.Tombstoned("b") {
		t.Fatal("after prune")
	}
	j.Close()

	os.WriteFile(path, []byte(journalHeaderV3+"100 a\nE 100 b\nQ c\n"), 0o600)
	j, err = OpenJournal(dir, "x", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Warnings()) != 1 || j.Existing("b") || !j.Suspect("c") {
		t.Fatalf("warnings %q", j.Warnings())
	}
	j.Close()
	if data, _ := os.ReadFile(path); string(data) != journalHeader+"100 a\nQ c\n" {
		t.Fatalf("%q", data)
	}
}
