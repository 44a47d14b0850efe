package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/pouchmail/pouch/internal/testkit"
	"github.com/pouchmail/pouch/pop3"
	"github.com/pouchmail/pouch/store"
)

// The one mapping from a command's error to its reply and the session's
// state: what each kind of error answers, whether the session ends, and
// that the text of a server error is logged, never sent.
func TestReplyMapping(t *testing.T) {
	var logs testkit.SyncBuffer
	srv := New(Config{
		Auth:           fakeAuth{},
		Logger:         slog.New(slog.NewTextHandler(&logs, nil)),
		MaxBadCommands: 3,
	})
	conn, peer := net.Pipe()
	defer conn.Close()
	defer peer.Close()
	s := newSession(srv, conn, false)
	var out bytes.Buffer
	s.w = pop3.NewWriter(&out)
	const secret = "db password=hunter2"
	for _, tc := range []struct {
		name string
		err  error
		want string
		end  bool // the session ends
		more bool // something more may be sent
	}{
		{"nil", nil, "", false, true},
		{"reply", errReply(pop3.CodeInUse, "maildrop in use"), "-ERR [IN-USE] maildrop in use\r\n", false, true},
		{"reply without code", errReply("", "no such message"), "-ERR no such message\r\n", false, true},
		{"wrapped reply", fmt.Errorf("context: %w", errLoginFailed), "-ERR [AUTH] invalid user name or password\r\n", false, true},
		{"ending", ending(errReply(pop3.CodeSysTemp, "bye")), "-ERR [SYS/TEMP] bye\r\n", true, true},
		{"bad command", badCommand("unknown command"), "-ERR unknown command\r\n", false, true},
		{"server error", &sysError{code: pop3.CodeSysTemp, text: "maildrop unavailable, try again later", msg: "opening maildrop", err: errors.New(secret)},
			"-ERR [SYS/TEMP] maildrop unavailable, try again later\r\n", false, true},
		{"ending server error", ending(&sysError{code: pop3.CodeSysPerm, text: "gone", msg: "commit failed", err: errors.New(secret)}),
			"-ERR [SYS/PERM] gone\r\n", true, true},
		{"undescribed error", fmt.Errorf("wrapped: %w", errors.New(secret)), "-ERR [SYS/TEMP] internal server error; try again later\r\n", false, true},
		{"end", errEnd, "", true, true},
		{"aborted", errAborted, "", true, false},
		{"peer gone", &readError{io.EOF}, "", true, false},
		{"idle", &readError{os.ErrDeadlineExceeded}, "-ERR autologout: idle for too long\r\n", true, false},
		{"bad command again", badCommand("unknown command"), "-ERR unknown command\r\n", false, true},
		{"one bad command too many", badCommand("unknown command"), "-ERR too many bad commands; bye\r\n", true, true},
	} {
		s.state = stateAuthorization
		out.Reset()
		more := s.reply(tc.err)
		s.w.Flush()
		if got := out.String(); got != tc.want {
			t.Errorf("%s: reply %q, want %q", tc.name, got, tc.want)
		}
		if end := s.state == stateDone; end != tc.end || more != tc.more {
			t.Errorf("%s: ends %v, more %v; want %v, %v", tc.name, end, more, tc.end, tc.more)
		}
		if strings.Contains(out.String(), "hunter2") {
			t.Errorf("%s: the error's text reached the client", tc.name)
		}
	}
	if n := strings.Count(logs.String(), "hunter2"); n != 3 {
		t.Errorf("the server errors are logged %d times, want 3:\n%s", n, logs.String())
	}
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if strings.Contains(l, "hunter2") && !strings.Contains(l, "session="+s.id) {
			t.Errorf("logged without the session id: %s", l)
		}
	}
}

// brokenStore fails as a storage backend can: opening the maildrop, a
// message, or committing.
type brokenStore struct {
	store.Store
	open, read, commit error
}

func (b brokenStore) Open(ctx context.Context, user string) (store.Maildrop, error) {
	if b.open != nil {
		return nil, b.open
	}
	md, err := b.Store.Open(ctx, user)
	return brokenMaildrop{md, b}, err
}

type brokenMaildrop struct {
	store.Maildrop
	b brokenStore
}

func (m brokenMaildrop) Open(i int) (io.ReadCloser, error) {
	if m.b.read != nil {
		return nil, m.b.read
	}
	return m.Maildrop.Open(i)
}

func (m brokenMaildrop) Commit(deleted []int) error {
	if m.b.commit != nil {
		return m.b.commit
	}
	return m.Maildrop.Commit(deleted)
}

// A failing backend is answered with [SYS/TEMP] or [SYS/PERM] and a fixed
// text; what failed is logged, with the session, for the operator alone.
func TestStorageFailuresAnsweredWithFixedTexts(t *testing.T) {
	secret := errors.New("/srv/mail/alice: input/output error at sector 1234")
	var logs testkit.SyncBuffer
	var st brokenStore
	ts := newTestServer(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		st.Store = c.Store
		c.Store = &st
	})
	ts.deliver(t, "alice", msg1)

	st.open = secret
	c := ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: -ERR \[SYS/TEMP\] maildrop unavailable, try again later`)
	st.open = fmt.Errorf("%w: alice/../x", store.ErrBadUser)
	c.transcript(`
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: -ERR \[SYS/PERM\] maildrop unavailable
		C: QUIT
		S: \+OK Pouch signing off`)

	st.open, st.read, st.commit = nil, secret, secret
	c = ts.dial(t)
	c.login("alice", "secret")
	c.transcript(`
		C: RETR 1
		S: -ERR \[SYS/TEMP\] cannot read message now, try again later
		C: TOP 1 0
		S: -ERR \[SYS/TEMP\] cannot read message now, try again later
		C: DELE 1
		S: \+OK message 1 deleted
		C: QUIT
		S: -ERR \[SYS/TEMP\] some deleted messages not removed`)
	c.closed()
	if n := ts.count(t, "alice"); n != 1 {
		t.Fatalf("%d messages after a failed commit, want 1", n)
	}
	waitFor(t, "the failures to be logged", func() bool {
		return strings.Count(logs.String(), "sector 1234") == 4
	})
	for _, msg := range []string{`msg="opening maildrop"`, `msg="user name cannot name a maildrop"`, `msg="opening message"`, `msg="commit failed"`} {
		if !strings.Contains(logs.String(), msg) {
			t.Errorf("no %s in the log:\n%s", msg, logs.String())
		}
	}
}
