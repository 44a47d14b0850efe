package server

import (
	"bufio"
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pouchmail/pouch/store/maildir"
)

// panicCatcher fails the fuzz run when a session logs a recovered panic.
type panicCatcher struct {
	mu     sync.Mutex
	panics []string
}

func (p *panicCatcher) Enabled(context.Context, slog.Level) bool { return true }
func (p *panicCatcher) WithAttrs([]slog.Attr) slog.Handler       { return p }
func (p *panicCatcher) WithGroup(string) slog.Handler            { return p }
func (p *panicCatcher) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "session panic" {
		p.mu.Lock()
		r.Attrs(func(a slog.Attr) bool { p.panics = append(p.panics, a.String()); return true })
		p.mu.Unlock()
	}
	return nil
}

// FuzzSession feeds arbitrary client input to a whole session over a pipe.
// The server must never panic, must answer only with well-formed lines, and
// must never delete mail without a QUIT in the TRANSACTION state.
func FuzzSession(f *testing.F) {
	for _, seed := range []string{
		"USER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n",
		"CAPA\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nUIDL\r\nTOP 1 0\r\nRSET\r\nQUIT\r\n",
		"AUTH PLAIN\r\n*\r\nAPOP alice 0123\r\nUSER alice\r\nPASS secret\r\nTOP 2 1\r\nLIST 3\r\nUIDL 1\r\nNOOP\r\n",
		"USER alice\r\nPASS secret\r\nDELE 1\r\nDELE 2\r\n",
		"\x00\r\n\r\n\xff\r\nRETR 99999999999999999999\r\n",
	} {
		f.Add([]byte(seed))
	}
	root := f.TempDir()
	st := maildir.New(root)
	for _, m := range []string{msg1, msg2, ".\r\n..\r\n", ""} {
		if err := st.Deliver(context.Background(), "alice", strings.NewReader(m)); err != nil {
			f.Fatal(err)
		}
	}
	catcher := &panicCatcher{}
	srv := New(Config{
		Store:         st,
		Auth:          fakeAuth{users: map[string]string{"alice": "secret"}},
		Logger:        slog.New(catcher),
		Hostname:      "fuzz.example",
		AuthFailDelay: -1,
	})
	f.Fuzz(func(t *testing.T, input []byte) {
		conn := &scriptConn{in: bytes.NewReader(append(input, "\r\nQUIT\r\n"...))}
		newSession(srv, conn, false).run()
		out := conn.out.Bytes()
		catcher.mu.Lock()
		if len(catcher.panics) > 0 {
			t.Fatalf("session panicked: %v", catcher.panics)
		}
		catcher.mu.Unlock()
		// Every reply line ends in CRLF.
		sc := bufio.NewScanner(bytes.NewReader(out))
		sc.Buffer(nil, 1<<20)
		sc.Split(scanCRLF)
		for sc.Scan() {
		}
		if sc.Err() != nil {
			t.Fatalf("malformed output: %v\n%q", sc.Err(), out)
		}
		// Mail is removed only by a committed QUIT in TRANSACTION; then restore
		// it so that every input sees the same maildrop.
		if n := countMessages(t, st); n != 4 {
			if !bytes.Contains(out, []byte("+OK Pouch signing off (")) {
				t.Fatalf("%d messages left without a committed QUIT:\n%q", n, out)
			}
			restore(t, st, n)
		}
	})
}

// countMessages waits for the maildrop lock and returns the message count.
func countMessages(t *testing.T, st *maildir.Store) int {
	m, err := st.Open(context.Background(), "alice")
	if err != nil {
		t.Fatalf("maildrop after session: %v", err)
	}
	defer m.Close()
	return len(m.Messages())
}

func restore(t *testing.T, st *maildir.Store, n int) {
	m, _ := st.Open(context.Background(), "alice")
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	m.Commit(all)
	m.Close()
	for _, msg := range []string{msg1, msg2, ".\r\n..\r\n", ""} {
		st.Deliver(context.Background(), "alice", strings.NewReader(msg))
	}
}

// scriptConn is a connection whose client sends a fixed script and then
// closes; replies are collected.
type scriptConn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *scriptConn) Read(p []byte) (int, error)       { return c.in.Read(p) }
func (c *scriptConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

type errBareLF struct{}

func (errBareLF) Error() string { return "reply line not ended by CRLF" }

func scanCRLF(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		if i == 0 || data[i-1] != '\r' {
			return 0, nil, errBareLF{}
		}
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return 0, nil, errBareLF{}
	}
	return 0, nil, nil
}
