package fetch

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/internal/popscript"
)

const childEnv = "POUCH_FETCH_TEST_CHILD"

// TestMain lets the crash tests re-run this binary as a fetch client that
// they can kill.
func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		var a Account
		if err := json.Unmarshal([]byte(spec), &a); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		if _, err := Run(context.Background(), &a, nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child starts the test binary as a fetch client.
func child(t testing.TB, a *Account, point string) *exec.Cmd {
	t.Helper()
	spec, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec), crashpoint.Env+"="+point)
	var errb strings.Builder
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// finish runs clean children until one succeeds (a killed child's session
// may still hold the server's maildrop lock for a moment: [IN-USE]).
func finish(t *testing.T, a *Account) {
	t.Helper()
	for range 50 {
		cmd := child(t, a, "")
		if err := cmd.Wait(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("fetch never succeeded: %s", "")
}

func killed(err error) bool {
	ee, ok := err.(*exec.ExitError)
	if !ok {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// crashPoints are the named points of the exactly-once order, from the
// pending record to QUIT.
var crashPoints = []string{"maildir.deliver.synced", "fetch.delivered", "fetch.synced", "fetch.journaled", "fetch.before-quit"}

// TestCrashAtEveryPoint kills the client at each named point of the
// exactly-once order, then lets a clean run finish: every message must be in
// the Maildir exactly once and, with the default policy, gone from the server.
func TestCrashAtEveryPoint(t *testing.T) {
	for _, keep := range []bool{false, true} {
		for _, point := range crashPoints {
			t.Run(fmt.Sprintf("%s/keep=%v", point, keep), func(t *testing.T) {
				p := newPouch(t)
				msgs := testMessages(10)
				p.deliver(t, msgs...)
				a := testAccount(t, p.addr)
				a.KeepForever = keep
				a.Window = 3
				err := child(t, a, point).Wait()
				if !killed(err) {
					t.Fatalf("child was not killed at %s: %v", point, err)
				}
				finish(t, a)
				checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), msgs)
				want := 0
				if keep {
					want = len(msgs)
				}
				if n := p.count(t); n != want {
					t.Fatalf("%d messages on the server, want %d", n, want)
				}
				// The next poll finds nothing new and has nothing to say.
				obs := &recObserver{}
				if st, err := Run(context.Background(), a, obs); err != nil || st.Fetched != 0 || st.Deleted != 0 || len(obs.warns) != 0 {
					t.Fatalf("next poll: %+v %v %q", st, err, obs.warns)
				}
			})
		}
	}
}

// TestRandomKills kills the client at random moments many times while new
// mail keeps arriving, and checks exactly-once at the end.
func TestRandomKills(t *testing.T) {
	iterations := 40
	if testing.Short() {
		iterations = 10
	}
	p := newPouch(t)
	a := testAccount(t, p.addr)
	a.Window = 8
	var all []string
	rng := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
	kills, midway := 0, 0
	for i := range iterations {
		batch := make([]string, 0, 20)
		for k := range 20 {
			batch = append(batch, fmt.Sprintf("Message-Id: <%d.%d@r>\n\n.x\nbody %s\n", i, k, strings.Repeat("z", rng.IntN(20000))))
		}
		p.deliver(t, batch...)
		all = append(all, batch...)
		if i%3 == 0 {
			a.Keep, a.KeepForever = 0, false
		} else {
			a.Keep = time.Duration(rng.IntN(2)) * time.Nanosecond
		}
		cmd := child(t, a, "")
		before := len(maildirBodies(t, strings.TrimPrefix(a.To, "maildir:")))
		time.AfterFunc(time.Duration(rng.IntN(150))*time.Millisecond, func() { cmd.Process.Kill() })
		if killed(cmd.Wait()) {
			kills++
			if after := len(maildirBodies(t, strings.TrimPrefix(a.To, "maildir:"))); after > before && after < len(all) {
				midway++
			}
		}
	}
	a.Keep = 0
	finish(t, a)
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), all)
	if n := p.count(t); n != 0 {
		t.Fatalf("%d messages left on the server", n)
	}
	t.Logf("%d of %d runs killed, %d of them in the middle of downloading", kills, iterations, midway)
}

// TestCrashWhileQuarantining kills the client after it kept a damaged
// message in quarantine, before and after the journal records it as
// suspect; later runs must store the others once, delete them, and never
// store or delete the damaged one.
func TestCrashWhileQuarantining(t *testing.T) {
	for _, point := range []string{"fetch.quarantined", "fetch.suspect-journaled"} {
		t.Run(point, func(t *testing.T) {
			msgs, bodies := fiveMessages(2, func(m *popscript.Message) {
				m.Wire = "Subject: 2\r\n\r\nfirst half\r\n.\r\nother text\r\n.\r\n"
			})
			b := (&popscript.Box{Messages: msgs, Pipelining: true}).Start(t)
			a := testAccount(t, b.Addr)
			if err := child(t, a, point).Wait(); !killed(err) {
				t.Fatalf("child was not killed at %s: %v", point, err)
			}
			if d := b.Deleted(); len(d) != 0 {
				t.Fatalf("deleted %v", d)
			}
			finish(t, a)
			for _, s := range b.Sessions() {
				if sent(s, "DELE 2") {
					t.Fatalf("a session deleted message 2: %q", s)
				}
			}
			if d := b.Deleted(); !slices.Equal(d, []string{"u1", "u3", "u4", "u5"}) {
				t.Fatalf("deleted %v", d)
			}
			checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), []string{bodies[0], bodies[2], bodies[3], bodies[4]})
			copies := maildirBodies(t, quarantineDir(a))
			if len(copies) == 0 || slices.ContainsFunc(copies, func(c string) bool { return c != "Subject: 2\n\nfirst half\n" }) {
				t.Fatalf("quarantine %q", copies)
			}
		})
	}
}

// TestCrashWhileCompacting kills the client while it compacts its journal
// (UIDLs left the server), once the new file is synced and once it is
// renamed over the old one before the directory is synced: no record of a
// stored message is lost, so a later run downloads nothing twice and keeps
// what the policy keeps.
func TestCrashWhileCompacting(t *testing.T) {
	for _, point := range []string{"fetch.journal.compact-synced", "fetch.journal.compact-renamed"} {
		t.Run(point, func(t *testing.T) {
			p := newPouch(t)
			msgs := testMessages(10)
			p.deliver(t, msgs[:6]...)
			a := testAccount(t, p.addr)
			a.Keep = time.Hour
			if st, err := Run(context.Background(), a, nil); err != nil || st.Fetched != 6 || st.Kept != 6 {
				t.Fatalf("first run: %+v %v", st, err)
			}
			// Three leave the server another way: their UIDLs become
			// tombstones, and the next run compacts the journal.
			p.remove(t, 0, 1, 2)
			p.deliver(t, msgs[6:]...)
			if err := child(t, a, point).Wait(); !killed(err) {
				t.Fatalf("child was not killed at %s: %v", point, err)
			}
			finish(t, a)
			checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), msgs)
			if n := p.count(t); n != 7 {
				t.Fatalf("%d messages on the server, want 7", n)
			}
			quietPoll(t, a, 7)
		})
	}
}

// TestCrashAfterRecovery kills a run once it stored a message but before
// it journaled it, then kills the next run, which records that message as
// downloaded from its Maildir digest (and deletes it), at each point
// of the exactly-once order: a clean run must then leave every message
// stored exactly once and none on the server.
func TestCrashAfterRecovery(t *testing.T) {
	for _, point := range crashPoints {
		t.Run(point, func(t *testing.T) {
			p := newPouch(t)
			msgs := testMessages(10)
			p.deliver(t, msgs...)
			a := testAccount(t, p.addr)
			a.Window = 1 // a batch of one message
			if err := child(t, a, "fetch.synced").Wait(); !killed(err) {
				t.Fatalf("first child was not killed at fetch.synced: %v", err)
			}
			if n := len(maildirBodies(t, strings.TrimPrefix(a.To, "maildir:"))); n != 1 {
				t.Fatalf("the first child stored %d messages, want 1", n)
			}
			a.Window = 3
			if err := child(t, a, point).Wait(); !killed(err) {
				t.Fatalf("second child was not killed at %s: %v", point, err)
			}
			finish(t, a)
			checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), msgs)
			if n := p.count(t); n != 0 {
				t.Fatalf("%d messages on the server, want 0", n)
			}
			quietPoll(t, a, 0)
		})
	}
}

// crashHandOver kills the client at each point of the exactly-once order
// that a destination which cannot be asked what it stored passes (an MDA,
// LMTP, SMTP), then lets a clean run finish: a message handed over just
// before the kill may arrive twice, but every message arrives and, with the
// default policy, is gone from the server. dest points the account at the
// destination and returns what it has received, with LF line ends.
func crashHandOver(t *testing.T, dest func(t *testing.T, a *Account) (received func() []string)) {
	for _, point := range crashPoints {
		if strings.HasPrefix(point, "maildir.") {
			continue
		}
		t.Run(point, func(t *testing.T) {
			p := newPouch(t)
			msgs := testMessages(6)
			p.deliver(t, msgs...)
			a := testAccount(t, p.addr)
			a.Window = 3
			received := dest(t, a)
			if err := child(t, a, point).Wait(); !killed(err) {
				t.Fatalf("child was not killed at %s: %v", point, err)
			}
			finish(t, a)
			seen := map[string]int{}
			for _, m := range received() {
				seen[m]++
			}
			for _, m := range msgs {
				if seen[m] == 0 {
					t.Fatalf("message %q never arrived", m)
				}
				delete(seen, m)
			}
			if len(seen) != 0 {
				t.Fatalf("what was not sent arrived: %v", seen)
			}
			if n := p.count(t); n != 0 {
				t.Fatalf("%d messages on the server, want 0", n)
			}
		})
	}
}
