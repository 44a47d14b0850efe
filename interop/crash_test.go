package interop_test

import (
	"syscall"
	"testing"
	"time"
)

// A server killed in the middle of a session, after DELE but before QUIT,
// deletes nothing.
func TestKillMidSession(t *testing.T) {
	data := newData(t)
	dropAll(t, data, "alice")
	s := startServer(t, data)
	c := dialPOP3(t, s.addr)
	c.login("alice", "secret one")
	c.cmd("RETR 1", "+OK")
	for {
		if l, _ := c.line(); l == "." {
			break
		}
	}
	c.cmd("DELE 1", "+OK")
	c.cmd("DELE 2", "+OK")
	s.kill()
	if n := mailFiles(t, data, "alice"); n != len(testMessages) {
		t.Fatalf("%d messages after kill -9 mid-session, want %d", n, len(testMessages))
	}
	// And a restarted server serves them all again under the same UIDLs.
	s2 := startServer(t, data)
	c2 := dialPOP3(t, s2.addr)
	c2.login("alice", "secret one")
	c2.cmd("STAT", "+OK 4 ")
}

// A server killed at each step of the QUIT commit leaves the maildrop with all
// or none of the deletions, and the next session sees a consistent maildrop.
func TestKillDuringCommit(t *testing.T) {
	for _, tc := range []struct {
		point string
		left  int
	}{
		{"maildir.commit.before-journal", 4},
		{"maildir.commit.journaled", 2},
		{"maildir.commit.first-unlinked", 2},
	} {
		t.Run(tc.point, func(t *testing.T) {
			data := newData(t)
			dropAll(t, data, "alice")
			s := startServer(t, data, "POUCH_CRASHPOINT="+tc.point)
			c := dialPOP3(t, s.addr)
			c.login("alice", "secret one")
			uidl1 := c.cmd("UIDL 2", "+OK")
			c.cmd("DELE 1", "+OK")
			c.cmd("DELE 3", "+OK")
			c.c.Write([]byte("QUIT\r\n"))
			if l, err := c.line(); err == nil {
				t.Fatalf("QUIT answered %q; the server should have died first", l)
			}
			st := s.wait(30 * time.Second)
			if ws, ok := st.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("server ended with %v, want SIGKILL at %s", st, tc.point)
			}

			s2 := startServer(t, data)
			c2 := dialPOP3(t, s2.addr)
			c2.login("alice", "secret one")
			if tc.left == 4 {
				c2.cmd("STAT", "+OK 4 ")
				if got := c2.cmd("UIDL 2", "+OK"); got != uidl1 {
					t.Fatalf("UIDL 2 = %q after the crash, want %q", got, uidl1)
				}
			} else {
				c2.cmd("STAT", "+OK 2 ")
				// Message 2 of the old session is now message 1, same UIDL.
				if got, want := c2.cmd("UIDL 1", "+OK"), "+OK 1"+uidl1[len("+OK 2"):]; got != want {
					t.Fatalf("UIDL 1 = %q after the crash, want %q", got, want)
				}
			}
			c2.cmd("QUIT", "+OK")
		})
	}
}

// SIGTERM lets an open session finish within the grace period.
func TestGracefulStop(t *testing.T) {
	data := newData(t)
	dropAll(t, data, "alice")
	s := startServer(t, data)
	c := dialPOP3(t, s.addr)
	c.login("alice", "secret one")
	c.cmd("DELE 1", "+OK")
	s.cmd.Process.Signal(syscall.SIGTERM)
	time.Sleep(100 * time.Millisecond) // let the signal land; the session must still work
	c.cmd("NOOP", "+OK")
	c.cmd("QUIT", "+OK")
	st := s.wait(15 * time.Second)
	if !st.Success() {
		t.Fatalf("server exit after SIGTERM: %v\n%s", st, s.logText())
	}
	if n := mailFiles(t, data, "alice"); n != 3 {
		t.Fatalf("%d messages, want 3", n)
	}
}
