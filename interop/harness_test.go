// Package interop_test runs the real pouch binary and drives it with real POP3
// clients from Debian's packages (curl, Python's poplib, Perl's Net::POP3,
// fetchmail, mpop, getmail6), comparing every downloaded message byte for byte,
// and kills the server at the worst moments to prove that no mail is lost.
//
// A test whose client program is missing skips, unless POUCH_REQUIRE_INTEROP=1,
// in which case it fails.
package interop_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/testkit"
	"github.com/pouchmail/pouch/store/maildir"
)

var pouchBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pouch-interop-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pouchBin = filepath.Join(dir, "pouch")
	build := exec.Command("go", "build", "-race", "-o", pouchBin, "../cmd/pouch")
	if os.Getenv("POUCH_INTEROP_NORACE") != "" {
		build = exec.Command("go", "build", "-o", pouchBin, "../cmd/pouch")
	}
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building pouch:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireTool skips the test when a client program is missing, or fails it
// under POUCH_REQUIRE_INTEROP=1.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		testkit.SkipOrFail(t, "%s is not installed", name)
	}
	return path
}

// pouch runs a pouch subcommand and returns its standard output.
func pouch(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(pouchBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("pouch %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// server is a running `pouch serve`.
type server struct {
	t     *testing.T
	data  string
	addr  string // POP3
	tls   string // POP3S
	cmd   *exec.Cmd
	mu    sync.Mutex
	log   bytes.Buffer
	done  chan struct{}
	state *os.ProcessState
}

// newData makes a data directory with users alice (password "secret one") and
// bob. Alice is added the way `pouch user add` stores a user (auth.AddUser and
// an empty Maildir) but without its strength policy for new passwords, which
// "secret one" does not meet; bob's password meets it.
func newData(t *testing.T) string {
	t.Helper()
	data := t.TempDir()
	if err := auth.AddUser(filepath.Join(data, "users"), "alice", "secret one"); err != nil {
		t.Fatal(err)
	}
	if err := maildir.New(filepath.Join(data, "mail")).Create("alice"); err != nil {
		t.Fatal(err)
	}
	pouch(t, "hQ4v-Lw9xTz2pB\n", "user", "add", "--data", data, "bob")
	return data
}

var listenRE = regexp.MustCompile(`msg=listening protocol=(pop3s?) addr=(\S+)`)

// startServer runs pouch serve on ephemeral loopback ports and waits until it
// listens. env adds environment variables.
func startServer(t *testing.T, data string, env ...string) *server {
	t.Helper()
	return startServerArgs(t, data, nil, env...)
}

// startServerArgs is startServer with more pouch serve flags after the fixed
// ones (a flag given twice takes its last value).
func startServerArgs(t *testing.T, data string, args []string, env ...string) *server {
	t.Helper()
	s := &server{t: t, data: data, done: make(chan struct{})}
	s.cmd = exec.Command(pouchBin, append([]string{"serve", "--data", data,
		"--pop3", "127.0.0.1:0", "--pop3s", "127.0.0.1:0", "--auth-fail-delay", "0", "--hostname", "localhost"}, args...)...)
	s.cmd.Env = append(os.Environ(), env...)
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		found := 0
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.log.WriteString(line + "\n")
			if m := listenRE.FindStringSubmatch(line); m != nil {
				if m[1] == "pop3" {
					s.addr = m[2]
				} else {
					s.tls = m[2]
				}
				if found++; found == 2 {
					close(ready)
				}
			}
			s.mu.Unlock()
		}
		io.Copy(io.Discard, stderr)
		s.cmd.Wait()
		s.state = s.cmd.ProcessState
		close(s.done)
	}()
	select {
	case <-ready:
	case <-s.done:
		t.Fatalf("pouch serve exited before listening:\n%s", s.logText())
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		t.Fatalf("pouch serve did not start:\n%s", s.logText())
	}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("server log:\n%s", s.logText())
		}
	})
	return s
}

func (s *server) logText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// stop ends the server with SIGTERM and waits.
func (s *server) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
		s.t.Errorf("pouch serve ignored SIGTERM")
	}
}

// kill ends the server with SIGKILL and waits.
func (s *server) kill() {
	s.cmd.Process.Kill()
	<-s.done
}

// wait waits for the server to exit on its own and returns how it ended.
func (s *server) wait(d time.Duration) *os.ProcessState {
	s.t.Helper()
	select {
	case <-s.done:
		return s.state
	case <-time.After(d):
		s.t.Fatalf("server still running after %v", d)
		return nil
	}
}

func (s *server) host() string { h, _, _ := net.SplitHostPort(s.addr); return h }
func (s *server) port() string { _, p, _ := net.SplitHostPort(s.addr); return p }

// drop puts a message file into user's Maildir the way an MDA does (tmp/,
// then a rename into new/).
func drop(t *testing.T, data, user, name, content string) {
	t.Helper()
	dir := filepath.Join(data, "mail", user)
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, "tmp", name)
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "new", name)); err != nil {
		t.Fatal(err)
	}
}

// mailFiles counts the messages in user's Maildir.
func mailFiles(t *testing.T, data, user string) int {
	t.Helper()
	n := 0
	for _, sub := range []string{"new", "cur"} {
		names, _ := filepath.Glob(filepath.Join(data, "mail", user, sub, "*"))
		n += len(names)
	}
	return n
}

// canonical is a message as POP3 sends it: CRLF line ends, final CRLF.
func canonical(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		if msg[i] == '\n' && (i == 0 || msg[i-1] != '\r') {
			b.WriteByte('\r')
		}
		b.WriteByte(msg[i])
	}
	if msg != "" && !strings.HasSuffix(msg, "\n") {
		b.WriteString("\r\n")
	}
	return b.String()
}

// testMessages are awkward on purpose: leading dots, a line of only ".", LF
// line ends, no final newline, long lines, 8-bit octets.
var testMessages = []struct{ name, content string }{
	{"1700000001.M1P1.mx", "From: a@example.org\r\nTo: alice@example.org\r\nSubject: plain\r\nMessage-ID: <1@example.org>\r\n\r\nHello.\r\n"},
	{"1700000002.M1P1.mx", "From: b@example.org\nTo: alice@example.org\nSubject: dots\nMessage-ID: <2@example.org>\n\n.leading dot\n..two dots\n.\nend\n"},
	{"1700000003.M1P1.mx", "From: c@example.org\r\nTo: alice@example.org\r\nSubject: no final newline\r\nMessage-ID: <3@example.org>\r\n\r\nlast line"},
	{"1700000004.M1P1.mx", "From: d@example.org\r\nTo: alice@example.org\r\nSubject: long and 8bit\r\nMessage-ID: <4@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + strings.Repeat("0123456789", 2000) + "\r\nGr\xc3\xbc\xc3\x9fe\r\n"},
}

// dropAll puts testMessages into user's Maildir.
func dropAll(t *testing.T, data, user string) {
	t.Helper()
	for _, m := range testMessages {
		drop(t, data, user, m.name, m.content)
	}
}

// pop3Conn is a minimal raw client for the tests that need exact control.
type pop3Conn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialPOP3(t *testing.T, addr string) *pop3Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { c.Close() })
	p := &pop3Conn{t: t, c: c, r: bufio.NewReader(c)}
	p.expect("+OK")
	return p
}

func (p *pop3Conn) line() (string, error) {
	l, err := p.r.ReadString('\n')
	return strings.TrimSuffix(l, "\r\n"), err
}

// cmd sends a command and checks that the reply starts with prefix.
func (p *pop3Conn) cmd(command, prefix string) string {
	p.t.Helper()
	fmt.Fprintf(p.c, "%s\r\n", command)
	return p.expect(prefix)
}

func (p *pop3Conn) expect(prefix string) string {
	p.t.Helper()
	l, err := p.line()
	if err != nil || !strings.HasPrefix(l, prefix) {
		p.t.Fatalf("got %q (%v), want %q...", l, err, prefix)
	}
	return l
}

func (p *pop3Conn) login(user, pass string) {
	p.t.Helper()
	p.cmd("USER "+user, "+OK")
	p.cmd("PASS "+pass, "+OK")
}

// ctx returns a context for a client program, bounded so tests end by
// themselves.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// runTool runs a client program and returns its combined output.
func runTool(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx(t), name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
