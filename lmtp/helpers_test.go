package lmtp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/testkit"
	"github.com/pouchmail/pouch/store/maildir"
)

// fakeUser is an account: its own quota, or why it is refused.
type fakeUser struct {
	quota   auth.Quota
	refused error
}

// fakeUsers is an account source: name → account.
type fakeUsers map[string]fakeUser

func (u fakeUsers) Account(name string) (auth.Account, error) {
	f, ok := u[name]
	switch {
	case !ok:
		return auth.Account{}, fmt.Errorf("%w: %s", auth.ErrNoSuchUser, name)
	case f.refused != nil:
		return auth.Account{Name: name}, &auth.AccountError{Name: name, Errs: []error{f.refused}}
	}
	return auth.Account{Name: name, Quota: f.quota}, nil
}

// storage and messages are a user's own quota.
func storage(n int64) fakeUser { return fakeUser{quota: auth.Quota{Storage: auth.Own(n)}} }
func messages(n int) fakeUser  { return fakeUser{quota: auth.Quota{Messages: auth.Own(n)}} }

// unsureUsers is an account source that cannot confirm one name, as
// auth.Users cannot while its users file is unusable.
type unsureUsers struct {
	fakeUsers
	unsure string
}

func (u unsureUsers) Account(name string) (auth.Account, error) {
	if name == u.unsure {
		return auth.Account{}, &auth.SourceError{Path: "users", Reason: "is missing"}
	}
	return u.fakeUsers.Account(name)
}

// env is an LMTP server on a loopback port over a Maildir in a temp dir.
type env struct {
	t     testing.TB
	root  string
	store *maildir.Store
	agent *Agent
	srv   *Server
	addr  string
	spool string
	logs  *testkit.SyncBuffer
}

var testUsers = fakeUsers{
	"alice": {},
	"carol": {},
	"bob":   storage(1 << 10),
	"dave":  messages(1),
	"erin":  {refused: errors.New(`quota_storage: "lots" is not a size`)},
	"frank": {},
}

// newEnv starts a server; mod may change the configuration first.
func newEnv(t testing.TB, mod func(*Config)) *env {
	t.Helper()
	root := t.TempDir()
	e := &env{t: t, root: root, store: maildir.New(root), spool: t.TempDir(), logs: &testkit.SyncBuffer{}}
	e.agent = &Agent{Store: e.store, Users: testUsers, MaxMessageSize: 50 << 20}
	cfg := Config{
		Agent:    e.agent,
		Logger:   slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Hostname: "mx.pouch.test",
		SpoolDir: e.spool,
	}
	if mod != nil {
		mod(&cfg)
	}
	e.srv = New(cfg)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = l.Addr().String()
	served := make(chan error, 1)
	go func() { served <- e.srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return e
}

// client connects with go-smtp's LMTP client and says LHLO.
func (e *env) client() *smtp.Client {
	e.t.Helper()
	nc, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
	if err != nil {
		e.t.Fatal(err)
	}
	c := smtp.NewClientLMTP(nc)
	c.CommandTimeout = 10 * time.Second
	c.SubmissionTimeout = 10 * time.Second
	if err := c.Hello("client.pouch.test"); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// send runs one transaction and returns the per-recipient results of DATA
// (nil for success) and the errors of RCPT.
func send(t *testing.T, c *smtp.Client, from string, to []string, msg string) (rcptErrs, dataErrs map[string]*smtp.SMTPError) {
	t.Helper()
	if err := c.Mail(from, nil); err != nil {
		t.Fatalf("MAIL: %v", err)
	}
	rcptErrs = map[string]*smtp.SMTPError{}
	accepted := 0
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				t.Fatalf("RCPT %s: %v", r, err)
			}
			rcptErrs[r] = se
			continue
		}
		accepted++
	}
	dataErrs = map[string]*smtp.SMTPError{}
	if accepted == 0 {
		return rcptErrs, dataErrs
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := io.WriteString(w, msg); err != nil {
		t.Fatalf("writing the message: %v", err)
	}
	_, err = w.CloseWithLMTPResponse()
	var le smtp.LMTPDataError
	if err != nil && !errors.As(err, &le) {
		t.Fatalf("end of DATA: %v", err)
	}
	for r, se := range le {
		dataErrs[r] = se
	}
	return rcptErrs, dataErrs
}

// stored returns the files in user's new/, oldest name first.
func (e *env) stored(user string) []string {
	e.t.Helper()
	dir := filepath.Join(e.root, user, "new")
	names, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n.Name()))
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

// storedNames returns the file names in user's new/.
func (e *env) storedNames(user string) []string {
	entries, _ := os.ReadDir(filepath.Join(e.root, user, "new"))
	var out []string
	for _, n := range entries {
		out = append(out, n.Name())
	}
	slices.Sort(out)
	return out
}

// nothingStored fails unless user has no message and no file in tmp/.
func (e *env) nothingStored(user string) {
	e.t.Helper()
	for _, sub := range []string{"new", "cur", "tmp"} {
		entries, _ := os.ReadDir(filepath.Join(e.root, user, sub))
		if len(entries) != 0 {
			e.t.Errorf("%s/%s holds %d files, want none", user, sub, len(entries))
		}
	}
}

// raw is a line-level client for what go-smtp's client refuses to send.
type raw struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func (e *env) raw() *raw {
	e.t.Helper()
	return e.rawAt(e.addr)
}

// rawAt is raw for a connection to addr, another listener of e.srv.
func (e *env) rawAt(addr string) *raw {
	e.t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		e.t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	e.t.Cleanup(func() { c.Close() })
	r := &raw{t: e.t, c: c, r: bufio.NewReader(c)}
	r.expect("220 ")
	r.send("LHLO client.pouch.test\r\n")
	r.expect("250 ")
	return r
}

func (r *raw) send(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

// mailTo sends MAIL FROM and a RCPT TO for each user at example.org, and
// expects each to be accepted.
func (r *raw) mailTo(users ...string) {
	r.t.Helper()
	r.send("MAIL FROM:<s@example.net>\r\n")
	r.expect("250 ")
	for _, u := range users {
		r.send("RCPT TO:<" + u + "@example.org>\r\n")
		r.expect("250 ")
	}
}

// reply reads one reply and returns its last line, without CRLF.
func (r *raw) reply() string {
	r.t.Helper()
	for {
		line, err := r.r.ReadString('\n')
		if err != nil {
			r.t.Fatalf("reading a reply: %v (got %q)", err, line)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 || line[3] != '-' {
			return line
		}
	}
}

// expect reads one reply and fails unless it starts with prefix.
func (r *raw) expect(prefix string) string {
	r.t.Helper()
	line := r.reply()
	if !strings.HasPrefix(line, prefix) {
		r.t.Fatalf("reply %q, want %q…", line, prefix)
	}
	return line
}

// closed fails unless the server closes the connection (after any replies
// that expect lists).
func (r *raw) closed() {
	r.t.Helper()
	line, err := r.r.ReadString('\n')
	if err == nil {
		r.t.Fatalf("connection still open; read %q", line)
	}
}
