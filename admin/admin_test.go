package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/store"
)

func TestMain(m *testing.M) {
	// Helper mode: dial the socket as whatever user runs this process and
	// print what happened.
	if path := os.Getenv("POUCH_ADMIN_TEST_DIAL"); path != "" {
		c, err := Dial(path)
		if err == nil {
			_, err = c.Who()
		}
		fmt.Println("result:", err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type fakeHandler struct {
	mu        sync.Mutex
	sessions  []Session
	kicked    []string
	reloads   int
	reloadErr error
	stats     map[string]store.Stats
}

func (f *fakeHandler) Who() []Session {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sessions != nil && f.sessions[0].ID == "panic" {
		panic("who exploded")
	}
	return f.sessions
}

func (f *fakeHandler) Kick(target string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kicked = append(f.kicked, target)
	n := 0
	for _, s := range f.sessions {
		if s.ID == target || s.User == target {
			n++
		}
	}
	return n
}

func (f *fakeHandler) Reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reloads++
	return f.reloadErr
}

func (f *fakeHandler) MailboxStats(_ context.Context, user string) (store.Stats, error) {
	st, ok := f.stats[user]
	if !ok {
		return store.Stats{}, fmt.Errorf("no maildrop for %q", user)
	}
	return st, nil
}

// serve runs Serve on a fresh socket and returns its path; the server stops
// when the test ends, and the test checks that Serve returned.
func serve(t *testing.T, h Handler) string {
	t.Helper()
	return serveAllowing(t, h, peerAllowed)
}

// serveAllowing is serve with the check of a peer's uid, allowed.
func serveAllowing(t *testing.T, h Handler, allowed func(uid int) bool) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "admin.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveWith(ctx, l, h, slog.New(slog.NewTextHandler(io.Discard, nil)), allowed) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return path
}

func dial(t *testing.T, path string) *Client {
	t.Helper()
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestAdminRoundTrip(t *testing.T) {
	since := time.Date(2025, 3, 1, 12, 0, 0, 123, time.UTC)
	h := &fakeHandler{
		sessions: []Session{
			{ID: "a1", User: "alice", Remote: "127.0.0.1:4000", TLS: true, Since: since, BytesIn: 30, BytesOut: 4000, State: "transaction"},
			{ID: "b2", Remote: "[::1]:4001", Since: since.Add(time.Second), BytesIn: 6, BytesOut: 20, State: "authorization"},
		},
		stats: map[string]store.Stats{"alice": {
			Messages: 3, Octets: 1234, Oldest: since, Newest: since.Add(time.Hour), Retrieved: 1,
			Held: 2, HeldOctets: 99, OldestDeleted: since.Add(time.Minute),
			Hold: store.Hold{Set: true, Since: since, Reason: "case 42"},
		}},
	}
	path := serve(t, h)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket: %v %v", fi.Mode(), err)
	}
	c := dial(t, path)
	got, err := c.Who()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != h.sessions[0] && !got[0].Since.Equal(since) || got[1].User != "" || got[0].BytesOut != 4000 || !got[0].TLS {
		t.Fatalf("Who = %+v", got)
	}
	for i := range got {
		got[i].Since = got[i].Since.UTC()
		if got[i] != h.sessions[i] {
			t.Errorf("session %d = %+v, want %+v", i, got[i], h.sessions[i])
		}
	}
	// Several requests on one connection.
	if n, err := c.Kick("alice"); err != nil || n != 1 {
		t.Errorf("Kick(alice) = %d, %v", n, err)
	}
	if n, err := c.Kick("nobody"); err != nil || n != 0 {
		t.Errorf("Kick(nobody) = %d, %v", n, err)
	}
	if _, err := c.Kick(""); err == nil || !strings.Contains(err.Error(), "needs a user name or a session id") {
		t.Errorf("Kick(\"\") = %v", err)
	}
	if err := c.Reload(); err != nil || h.reloads != 1 {
		t.Errorf("Reload = %v (%d reloads)", err, h.reloads)
	}
	h.mu.Lock()
	h.reloadErr = errors.New("keeping the old users file: line 3 is damaged")
	h.mu.Unlock()
	if err := c.Reload(); err == nil || err.Error() != "keeping the old users file: line 3 is damaged" {
		t.Errorf("failed Reload = %v", err)
	}
	st, err := c.MailboxStats("alice")
	if err != nil {
		t.Fatal(err)
	}
	want := h.stats["alice"]
	if st.Messages != want.Messages || st.Octets != want.Octets || !st.Oldest.Equal(want.Oldest) || !st.Newest.Equal(want.Newest) ||
		st.Retrieved != want.Retrieved || st.Held != want.Held || st.HeldOctets != want.HeldOctets ||
		!st.OldestDeleted.Equal(want.OldestDeleted) || st.Hold.Set != true || st.Hold.Reason != "case 42" || !st.Hold.Since.Equal(since) {
		t.Errorf("MailboxStats = %+v, want %+v", st, want)
	}
	if _, err := c.MailboxStats("bob"); err == nil || err.Error() != `no maildrop for "bob"` {
		t.Errorf("MailboxStats(bob) = %v", err)
	}
	// An empty server lists no sessions, as an empty list.
	h.mu.Lock()
	h.sessions = nil
	h.mu.Unlock()
	if got, err := c.Who(); err != nil || got == nil || len(got) != 0 {
		t.Errorf("Who on an idle server = %#v, %v", got, err)
	}
}

// rawConn sends request lines and returns the reply lines as parsed JSON.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func rawDial(t *testing.T, path string) *rawConn {
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &rawConn{t, c, bufio.NewReader(c)}
}

func (r *rawConn) ask(line string) map[string]any {
	r.t.Helper()
	if _, err := io.WriteString(r.c, line+"\n"); err != nil {
		r.t.Fatal(err)
	}
	return r.reply()
}

func (r *rawConn) reply() map[string]any {
	r.t.Helper()
	l, err := r.r.ReadString('\n')
	if err != nil {
		r.t.Fatalf("reading the reply: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(l), &m); err != nil {
		r.t.Fatalf("reply %q is not JSON: %v", l, err)
	}
	if m["v"] != float64(Version) {
		r.t.Errorf("reply %q lacks the version", l)
	}
	return m
}

func TestAdminBadRequests(t *testing.T) {
	h := &fakeHandler{sessions: []Session{{ID: "panic"}}}
	path := serve(t, h)
	r := rawDial(t, path)
	for _, tc := range []struct{ req, err string }{
		{"this is not json", "the request is not a JSON object"},
		{`["who"]`, "the request is not a JSON object"},
		{`{"v":1,"cmd":"who"`, "the request is not a JSON object"},
		{`{"cmd":"who"}`, "protocol version 0 is not supported"},
		{`{"v":2,"cmd":"who"}`, "protocol version 2 is not supported"},
		{`{"v":1}`, "the request names no command"},
		{`{"v":1,"cmd":"shutdown"}`, `unknown command "shutdown"`},
		{`{"v":1,"cmd":"kick"}`, "kick needs a user name or a session id"},
		{`{"v":1,"cmd":"mailbox-stats"}`, "mailbox stats needs a user name"},
		{`{"v":1,"cmd":"mailbox-stats","user":"carol"}`, `no maildrop for "carol"`},
		{`{"v":1,"cmd":"who"}`, "the who request failed inside the server; see its log"},
		{`{"v":1,"cmd":"kick","target":{"a":1}}`, "the request is not a JSON object"},
	} {
		m := r.ask(tc.req)
		if e, _ := m["error"].(string); !strings.Contains(e, tc.err) {
			t.Errorf("%s: reply %v, want an error with %q", tc.req, m, tc.err)
		}
	}
	// The connection still works after all that, blank lines are skipped.
	if m := r.ask("\r\n" + `{"v":1,"cmd":"kick","target":"x"}`); m["kicked"] != float64(0) {
		t.Errorf("kick after bad requests: %v", m)
	}
	// A request longer than the limit is refused and the connection closed.
	m := r.ask(`{"v":1,"cmd":"kick","target":"` + strings.Repeat("x", maxRequest) + `"}`)
	if e, _ := m["error"].(string); !strings.Contains(e, "longer than") {
		t.Errorf("long request: %v", m)
	}
	if _, err := r.r.ReadString('\n'); err != io.EOF {
		t.Errorf("connection still open after a long request: %v", err)
	}
	// The server still serves.
	c := dial(t, path)
	if n, err := c.Kick("y"); err != nil || n != 0 {
		t.Errorf("kick on a new connection: %d %v", n, err)
	}
}

func TestAdminListenStaleAndLive(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "admin.sock")
	// A socket file left by a server that died.
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("no stale socket to test with: %v", err)
	}
	l, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	// A live one: a second server on the same data directory is refused,
	// and the first keeps its socket.
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another pouch serve is running") {
		t.Fatalf("second Listen: %v", err)
	}
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
	}()
	if c, err := net.Dial("unix", path); err != nil {
		t.Fatalf("the first server lost its socket: %v", err)
	} else {
		c.Close()
	}
	l.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket still there after Close: %v", err)
	}
	// A file that is not a socket is left alone.
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "keep me" {
		t.Error("Listen changed a regular file")
	}
	long := filepath.Join(dir, strings.Repeat("d", 120), "admin.sock")
	if _, err := Listen(long); err == nil || !strings.Contains(err.Error(), "longer than a Unix socket allows") {
		t.Errorf("Listen on a long path: %v", err)
	}
}

func TestAdminDialNoServer(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "admin.sock")
	if _, err := Dial(path); !errors.Is(err, ErrNoServer) || !strings.Contains(err.Error(), path) {
		t.Errorf("Dial without a socket: %v", err)
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	if _, err := Dial(path); !errors.Is(err, ErrNoServer) {
		t.Errorf("Dial to a stale socket: %v", err)
	}
}

// A peer that is neither root nor the server's user is refused.
func TestAdminPeerCheck(t *testing.T) {
	h := &fakeHandler{}
	path := serveAllowing(t, h, func(uid int) bool { return uid != os.Geteuid() })
	c := dial(t, path)
	_, err := c.Who()
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("uid %d may not use the admin socket", os.Geteuid())) {
		t.Fatalf("Who by a refused user: %v", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.kicked) != 0 || h.reloads != 0 {
		t.Error("the handler ran for a refused user")
	}
}

// The same with a real other user: as root, a helper process running as
// nobody connects to a socket opened up to everyone, and is refused by the
// peer check alone.
func TestAdminPeerCheckOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a process as another user")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	h := &fakeHandler{sessions: []Session{{ID: "s1"}}}
	path := serve(t, h)
	for d := filepath.Dir(path); d != "/"; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
			os.Chmod(d, fi.Mode().Perm()|0o011)
		}
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(path), "helper")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(cred *syscall.Credential) string {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "POUCH_ADMIN_TEST_DIAL="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		return string(out)
	}
	if out := run(&syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}); !strings.Contains(out, fmt.Sprintf("uid %d may not use the admin socket", uid)) {
		t.Errorf("as nobody: %s", out)
	}
	if out := run(nil); !strings.Contains(out, "result: <nil>") {
		t.Errorf("as root: %s", out)
	}
}

// Ending Serve's context closes the listener, its socket file and the open
// connections.
func TestAdminServeStops(t *testing.T) {
	path := filepath.Join(t.TempDir(), "admin.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, l, &fakeHandler{}, nil) }()
	r := rawDial(t, path)
	if m := r.ask(`{"v":1,"cmd":"who"}`); m["sessions"] == nil {
		t.Fatalf("who: %v", m)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := r.r.ReadString('\n'); err == nil {
		t.Error("connection still open after Serve returned")
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket file still there: %v", err)
	}
}
