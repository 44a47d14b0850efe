package fetch

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/popscript"
)

// reuseBox is a server whose only message, UIDL x, the first run of a
// downloads and deletes.
func reuseBox(t *testing.T) (*popscript.Box, *Account) {
	t.Helper()
	b := (&popscript.Box{Messages: []popscript.Message{{UID: "x", Body: "old\n"}}, Pipelining: true}).Start(t)
	a := testAccount(t, b.Addr)
	if st, err := Run(context.Background(), a, nil); err != nil || st.Fetched != 1 || st.Deleted != 1 {
		t.Fatalf("first run: %+v %v", st, err)
	}
	return b, a
}

// newX is a new message that the server lists under the UIDL x again.
var newX = popscript.Message{UID: "x", Body: "a new message\n"}

// quietPoll checks that a run finds nothing to do and nothing to say.
func quietPoll(t *testing.T, a *Account, kept int) {
	t.Helper()
	obs := &recObserver{}
	if st, err := Run(context.Background(), a, obs); err != nil || st.Fetched != 0 || st.Deleted != 0 || st.Kept != kept || len(obs.warns) != 0 {
		t.Fatalf("next poll: %+v %v %q", st, err, obs.warns)
	}
}

// A server that gives a new message the UIDL of one deleted before (RFC
// 1939 §7 forbids it) lists it with another size: it is downloaded as a new
// message, with one warning, and deleted only after it is stored.
func TestReusedUIDLAnotherSize(t *testing.T) {
	b, a := reuseBox(t)
	b.Append(newX)
	obs := &recObserver{}
	st, err := Run(context.Background(), a, obs)
	if err != nil || st.Fetched != 1 || st.Deleted != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	if len(obs.warns) != 1 || !strings.Contains(obs.warns[0], `message 1: UIDL "x" came back with another size (15 octets, was 5): taken as a new message`) {
		t.Fatalf("warnings %q", obs.warns)
	}
	s := b.Sessions()[1]
	if r, d := slices.Index(s, "RETR 1"), slices.Index(s, "DELE 1"); r < 0 || d < r {
		t.Fatalf("session %q", s)
	}
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), []string{"old\n", "a new message\n"})
	if d := b.Deleted(); !slices.Equal(d, []string{"x", "x"}) {
		t.Fatalf("deleted %v", d)
	}
	quietPoll(t, a, 0)
}

// A server that keeps a message after DELE (Outlook.com's "don't let other
// programs delete", Gmail's recent mode) lists it again under its UIDL with
// its size: it is deleted again, not stored twice, and nothing is said.
func TestReusedUIDLSameSize(t *testing.T) {
	b, a := reuseBox(t)
	b.Append(popscript.Message{UID: "x", Body: "old\n"})
	obs := &recObserver{}
	st, err := Run(context.Background(), a, obs)
	if err != nil || st.Fetched != 0 || st.Deleted != 1 || len(obs.warns) != 0 {
		t.Fatalf("%+v %v %q", st, err, obs.warns)
	}
	if s := b.Sessions()[1]; sent(s, "RETR") {
		t.Fatalf("session %q", s)
	}
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), []string{"old\n"})
	quietPoll(t, a, 0)
}

// Under --keep a reused UIDL with another size is downloaded too (and then
// kept), not taken for the message kept before.
func TestReusedUIDLKeep(t *testing.T) {
	b, a := reuseBox(t)
	b.Append(newX)
	a.Keep = time.Hour
	obs := &recObserver{}
	st, err := Run(context.Background(), a, obs)
	if err != nil || st.Fetched != 1 || st.Deleted != 0 || st.Kept != 1 || len(obs.warns) != 1 {
		t.Fatalf("%+v %v %q", st, err, obs.warns)
	}
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), []string{"old\n", "a new message\n"})
	if d := b.Deleted(); !slices.Equal(d, []string{"x"}) {
		t.Fatalf("deleted %v", d)
	}
	quietPoll(t, a, 1)
}

// A UIDL that left the server (a tombstone) and comes back with another
// size is a new message under a reused UIDL: downloaded, not left on the
// server for 30 days.
func TestReusedUIDLAfterEmptyListing(t *testing.T) {
	b, a := reuseBox(t)
	quietPoll(t, a, 0) // the server lists nothing: x is remembered as gone
	b.Append(newX)
	obs := &recObserver{}
	st, err := Run(context.Background(), a, obs)
	if err != nil || st.Fetched != 1 || st.Deleted != 1 || len(obs.warns) != 1 || !strings.Contains(obs.warns[0], "came back with another size") {
		t.Fatalf("%+v %v %q", st, err, obs.warns)
	}
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), []string{"old\n", "a new message\n"})
	quietPoll(t, a, 0)
}

// TestCrashReusedUIDL kills the client at each point of the exactly-once
// order while it downloads a new message under a reused UIDL, then lets a
// clean run finish: the new message is stored exactly once, and deleted
// only under the default policy.
func TestCrashReusedUIDL(t *testing.T) {
	for _, keep := range []bool{false, true} {
		for _, point := range crashPoints {
			t.Run(fmt.Sprintf("%s/keep=%v", point, keep), func(t *testing.T) {
				b, a := reuseBox(t)
				b.Append(newX)
				a.KeepForever = keep
				if err := child(t, a, point).Wait(); !killed(err) {
					t.Fatalf("child was not killed at %s: %v", point, err)
				}
				finish(t, a)
				checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), []string{"old\n", "a new message\n"})
				want, kept := []string{"x", "x"}, 0
				if keep {
					want, kept = want[:1], 1
				}
				if d := b.Deleted(); !slices.Equal(d, want) {
					t.Fatalf("deleted %v, want %v", d, want)
				}
				quietPoll(t, a, kept)
			})
		}
	}
}
