package server

import (
	"context"
	"io"
	"sync"
	"testing"

	"github.com/pouchmail/pouch/store"
)

// leasedStore hands out the maildrops of a Store with a lock that the test
// can take away (store.Leased), as a node of several loses its lease.
type leasedStore struct {
	store.Store
	mu     sync.Mutex
	lost   chan struct{}
	commit chan []int // what Commit was asked to remove
	// gate, when not nil, holds up each message's Open, which first says
	// so on entered, until gate can be received from.
	gate, entered chan struct{}
}

type leasedMaildrop struct {
	store.Maildrop
	s    *leasedStore
	lost chan struct{}
}

func (s *leasedStore) Open(ctx context.Context, user string) (store.Maildrop, error) {
	md, err := s.Store.Open(ctx, user)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lost = make(chan struct{})
	return &leasedMaildrop{Maildrop: md, s: s, lost: s.lost}, nil
}

// lose takes the lock of the last maildrop opened away.
func (s *leasedStore) lose() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.lost)
}

func (m *leasedMaildrop) Lost() <-chan struct{} { return m.lost }

func (m *leasedMaildrop) Open(i int) (io.ReadCloser, error) {
	if m.s.gate != nil {
		m.s.entered <- struct{}{}
		<-m.s.gate
	}
	return m.Maildrop.Open(i)
}

func (m *leasedMaildrop) Commit(del []int) error {
	m.s.commit <- del
	return m.Maildrop.Commit(del)
}

func newLeasedServer(t *testing.T) (*testServer, *leasedStore) {
	var ls *leasedStore
	ts := newTestServer(t, func(c *Config) {
		ls = &leasedStore{Store: c.Store, commit: make(chan []int, 1)}
		c.Store = ls
	})
	return ts, ls
}

// A session whose maildrop lock is lost while it waits for a command ends
// at once with -ERR [SYS/TEMP], deleting nothing it marked.
func TestLostLeaseEndsSession(t *testing.T) {
	ts, ls := newLeasedServer(t)
	ts.deliver(t, "alice", msg1, msg2)
	c := ts.dial(t)
	c.login("alice", "secret")
	c.send("DELE 1\r\n")
	c.expect(`\+OK message 1 deleted`)
	ls.lose()
	c.expect(`-ERR \[SYS/TEMP\] .*nothing was deleted.*`)
	c.closed()
	if n := ts.count(t, "alice"); n != 2 {
		t.Fatalf("%d messages left, want 2", n)
	}
	select {
	case del := <-ls.commit:
		t.Fatalf("committed %v after the lock was lost", del)
	default:
	}
}

// Commands the client pipelined behind the loss are not run: the RETR
// under way when the lock goes finishes, but neither the DELE nor the
// QUIT after it runs.
func TestLostLeaseSkipsBufferedQuit(t *testing.T) {
	ts, ls := newLeasedServer(t)
	ls.gate, ls.entered = make(chan struct{}), make(chan struct{})
	ts.deliver(t, "alice", msg1)
	c := ts.dial(t)
	c.login("alice", "secret")
	c.send("RETR 1\r\nDELE 1\r\nQUIT\r\n")
	<-ls.entered // RETR has begun: the lock goes while it runs
	ls.lose()
	close(ls.gate)
	c.expect(`\+OK \d+ octets`)
	for l := c.line(); l != "."; l = c.line() {
	}
	c.expect(`-ERR \[SYS/TEMP\] .*`)
	c.closed()
	if n := ts.count(t, "alice"); n != 1 {
		t.Fatalf("%d messages left, want 1", n)
	}
	select {
	case del := <-ls.commit:
		t.Fatalf("committed %v after the lock was lost", del)
	default:
	}
}

// Over TLS the goodbye arrives whole, and the connection ends cleanly.
func TestLostLeaseOverTLS(t *testing.T) {
	var ls *leasedStore
	ts := newTLSServer(t, "127.0.0.1", func(c *Config) {
		ls = &leasedStore{Store: c.Store, commit: make(chan []int, 1)}
		c.Store = ls
	})
	ts.deliver(t, "alice", msg1)
	c := ts.dialTLS(t, nil)
	c.expect(`\+OK Pouch ready\.`)
	c.login2("alice", "secret")
	ls.lose()
	c.expect(`-ERR \[SYS/TEMP\] .*`)
	if _, err := c.r.ReadByte(); err != io.EOF {
		t.Fatalf("after the goodbye: %v, want a clean EOF", err)
	}
}

// A session that ended by itself is not disturbed by a later loss (the
// watcher is gone), and a QUIT commits as usual before it.
func TestLeaseKeptQuitCommits(t *testing.T) {
	ts, ls := newLeasedServer(t)
	ts.deliver(t, "alice", msg1, msg2)
	c := ts.dial(t)
	c.login("alice", "secret")
	c.send("DELE 2\r\nQUIT\r\n")
	c.expect(`\+OK message 2 deleted`)
	c.expect(`\+OK Pouch signing off \(1 messages left\)`)
	c.closed()
	if del := <-ls.commit; len(del) != 1 || del[0] != 1 {
		t.Fatalf("commit %v", del)
	}
	ls.lose()
	if n := ts.count(t, "alice"); n != 1 {
		t.Fatalf("%d messages left, want 1", n)
	}
}
