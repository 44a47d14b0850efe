package interop_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/random"
	"github.com/pouchmail/pouch/store/maildir"
)

// adminPouch runs a pouch command and returns its output and exit status,
// failing the test only when it cannot run at all.
func adminPouch(t *testing.T, cred *syscall.Credential, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(pouchBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("pouch %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), code
}

// adminSession is one session as pouch who --json lists it, spelled out
// here rather than taken from package admin so that the test pins the JSON
// names that scripts read.
type adminSession struct {
	ID       string    `json:"id"`
	User     string    `json:"user"`
	Remote   string    `json:"remote"`
	TLS      bool      `json:"tls"`
	Since    time.Time `json:"since"`
	BytesIn  int64     `json:"bytes_in"`
	BytesOut int64     `json:"bytes_out"`
	State    string    `json:"state"`
}

// who runs pouch who --json and returns the sessions by remote address.
func who(t *testing.T, data string) map[string]adminSession {
	t.Helper()
	out, e, code := adminPouch(t, nil, "who", "--json", "--data", data)
	if code != 0 {
		t.Fatalf("pouch who: exit %d: %s", code, e)
	}
	var list []adminSession
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("pouch who --json: %v\n%s", err, out)
	}
	m := map[string]adminSession{}
	for _, s := range list {
		m[s.Remote] = s
	}
	return m
}

// waitWho polls pouch who until cond holds for its list.
func waitWho(t *testing.T, data, what string, cond func(map[string]adminSession) bool) map[string]adminSession {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		m := who(t, data)
		if cond(m) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("pouch who never showed %s: %+v", what, m)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sent sends a command and returns the octets of the command and its
// one-line reply as they crossed the wire.
func (p *pop3Conn) sent(command, prefix string, in, out *int64) {
	p.t.Helper()
	reply := p.cmd(command, prefix)
	*in += int64(len(command) + 2)
	*out += int64(len(reply) + 2)
}

// pouch who and pouch kick against a running pouch serve with live
// sessions: one before login, one logged in without TLS that marked a
// message deleted, one logged in over POP3S.
func TestAdminWhoKick(t *testing.T) {
	data := newData(t)
	dropAll(t, data, "alice")
	s := startServer(t, data)

	anon := dialPOP3(t, s.addr)
	var aliceIn, aliceOut int64
	alice := dialPOP3(t, s.addr)
	aliceOut = int64(len("+OK Pouch ready.\r\n"))
	alice.sent("USER alice", "+OK", &aliceIn, &aliceOut)
	alice.sent("PASS secret one", "+OK", &aliceIn, &aliceOut)
	alice.sent("DELE 1", "+OK", &aliceIn, &aliceOut)
	alice.sent("LIST 2", "+OK 2 ", &aliceIn, &aliceOut)

	tc, err := tls.Dial("tcp", s.tls, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	tc.SetDeadline(time.Now().Add(60 * time.Second))
	bob := &pop3Conn{t: t, c: tc, r: bufio.NewReader(tc)}
	bob.expect("+OK")
	bob.login("bob", "hQ4v-Lw9xTz2pB")

	list := waitWho(t, data, "alice's octets", func(m map[string]adminSession) bool {
		a := m[alice.c.LocalAddr().String()]
		return a.BytesIn == aliceIn && a.BytesOut == aliceOut
	})
	if len(list) != 3 {
		t.Fatalf("pouch who lists %d sessions, want 3: %+v", len(list), list)
	}
	a, an, b := list[alice.c.LocalAddr().String()], list[anon.c.LocalAddr().String()], list[tc.LocalAddr().String()]
	if a.User != "alice" || a.TLS || a.State != "transaction" {
		t.Errorf("alice's session: %+v", a)
	}
	if an.ID == "" || an.User != "" || an.TLS || an.State != "authorization" || an.BytesIn != 0 || an.BytesOut != int64(len("+OK Pouch ready.\r\n")) {
		t.Errorf("the session before login: %+v", an)
	}
	if b.User != "bob" || !b.TLS || b.BytesIn <= int64(len("USER bob\r\nPASS hQ4v-Lw9xTz2pB\r\n")) || b.BytesOut == 0 {
		t.Errorf("bob's POP3S session: %+v", b)
	}
	if !an.Since.Before(a.Since) || !a.Since.Before(b.Since) || time.Since(an.Since) > time.Minute {
		t.Errorf("since: %v, %v, %v", an.Since, a.Since, b.Since)
	}

	// The table for people.
	out, e, code := adminPouch(t, nil, "who", "--data", data)
	if code != 0 || !strings.HasPrefix(out, "SESSION ") {
		t.Fatalf("pouch who: %d %s %s", code, out, e)
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) != 8 { // the date and the time are two fields
			t.Errorf("pouch who line %q", l)
			continue
		}
		want := map[string][2]string{a.ID: {"alice", "no"}, an.ID: {"-", "no"}, b.ID: {"bob", "yes"}}[f[0]]
		if f[1] != want[0] || f[3] != want[1] {
			t.Errorf("pouch who line %q, want user %s and TLS %s", l, want[0], want[1])
		}
	}

	// Kick alice: her connection closes, her DELE is not committed.
	out, e, code = adminPouch(t, nil, "kick", "--data", data, "alice")
	if code != 0 || out != "closed 1 session\n" {
		t.Fatalf("pouch kick alice: %d %q %s", code, out, e)
	}
	if l, err := alice.line(); err == nil {
		t.Fatalf("alice's connection still open after the kick: %q", l)
	}
	waitWho(t, data, "alice gone", func(m map[string]adminSession) bool { _, ok := m[alice.c.LocalAddr().String()]; return !ok })
	if n := mailFiles(t, data, "alice"); n != len(testMessages) {
		t.Fatalf("%d messages after the kick, want %d", n, len(testMessages))
	}
	again := dialPOP3(t, s.addr)
	again.login("alice", "secret one")
	again.cmd("STAT", fmt.Sprintf("+OK %d ", len(testMessages)))
	again.cmd("QUIT", "+OK")

	// Kick the session before login by its id.
	if out, e, code := adminPouch(t, nil, "kick", "--data", data, an.ID); code != 0 || out != "closed 1 session\n" {
		t.Fatalf("pouch kick %s: %d %q %s", an.ID, code, out, e)
	}
	if l, err := anon.line(); err == nil {
		t.Fatalf("the kicked session is still open: %q", l)
	}
	// Nothing matches: exit 1 and one sentence.
	if _, e, code := adminPouch(t, nil, "kick", "--data", data, "carol"); code != 1 || e != "pouch: kick: no open session is \"carol\" or belongs to a user \"carol\"\n" {
		t.Errorf("pouch kick carol: %d %q", code, e)
	}
	// Bob was not touched.
	bob.cmd("NOOP", "+OK")
	bob.cmd("QUIT", "+OK")

	logs := s.logText()
	for _, want := range []string{"msg=kicked session=" + a.ID, "msg=kicked session=" + an.ID, "user=alice"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %q", want)
		}
	}
	auditLog, _ := os.ReadFile(filepath.Join(data, "audit.log"))
	if !strings.Contains(string(auditLog), `"event":"kick"`) || !strings.Contains(string(auditLog), `"session":"`+a.ID+`"`) {
		t.Errorf("the audit log lacks the kick:\n%s", auditLog)
	}
	if fi, err := os.Stat(filepath.Join(data, "admin.sock")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket: %v %v", fi, err)
	}
	s.stop()
	if _, err := os.Lstat(filepath.Join(data, "admin.sock")); !os.IsNotExist(err) {
		t.Errorf("the admin socket is still there after shutdown: %v", err)
	}
	if _, e, code := adminPouch(t, nil, "who", "--data", data); code != 1 || !strings.Contains(e, "no server is running on "+data) {
		t.Errorf("pouch who after shutdown: %d %q", code, e)
	}
}

// loadClient is a POP3 client for the load goroutines: it returns errors
// instead of failing the test.
type loadClient struct {
	c net.Conn
	r *bufio.Reader
}

func (l *loadClient) cmd(command, prefix string) (string, error) {
	if command != "" {
		if _, err := fmt.Fprintf(l.c, "%s\r\n", command); err != nil {
			return "", fmt.Errorf("%s: %v", command, err)
		}
	}
	line, err := l.r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("%s: %v", command, err)
	}
	if !strings.HasPrefix(line, prefix) {
		return "", fmt.Errorf("%s: got %q", command, line)
	}
	return line, nil
}

// loadSession runs one whole session: login, STAT, RETR 1, QUIT.
func loadSession(addr, user, pass string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	l := &loadClient{c: c, r: bufio.NewReader(c)}
	for _, step := range [][2]string{{"", "+OK"}, {"USER " + user, "+OK"}, {"PASS " + pass, "+OK"}, {"STAT", "+OK 2 "}, {"RETR 1", "+OK"}} {
		if _, err := l.cmd(step[0], step[1]); err != nil {
			return err
		}
	}
	for {
		line, err := l.r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("RETR 1: %v", err)
		}
		if line == ".\r\n" {
			break
		}
	}
	if _, err := l.cmd("QUIT", "+OK"); err != nil {
		return err
	}
	if _, err := l.r.ReadByte(); err != io.EOF {
		return fmt.Errorf("after QUIT: %v", err)
	}
	return nil
}

// pouch reload, several times and by SIGHUP, while 20 clients run whole
// sessions: every session ends with +OK at QUIT, no connection fails.
func TestAdminReloadUnderLoad(t *testing.T) {
	data := newData(t)
	const clients = 20
	passwords := make([]string, clients)
	mail := maildir.New(filepath.Join(data, "mail"))
	for i := range clients {
		name := fmt.Sprintf("load%02d", i)
		passwords[i] = random.Hex(12)
		if err := auth.AddUser(filepath.Join(data, "users"), name, passwords[i]); err != nil {
			t.Fatal(err)
		}
		if err := mail.Create(name); err != nil {
			t.Fatal(err)
		}
		drop(t, data, name, "1700000001.M1P1.mx", testMessages[0].content)
		drop(t, data, name, "1700000004.M1P1.mx", testMessages[3].content)
	}
	s := startServerArgs(t, data, []string{"--max-connections-per-ip", "0"})

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	done := make([]int, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := loadSession(s.addr, fmt.Sprintf("load%02d", i), passwords[i]); err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("client %d, session %d: %v", i, done[i]+1, err))
					mu.Unlock()
					return
				}
				done[i]++
			}
		}()
	}
	// Reload while the load runs: five times over the admin socket, once by
	// SIGHUP, and once after the users file changed.
	start := time.Now()
	reloads := 0
	for reloads < 6 || time.Since(start) < 2*time.Second {
		if reloads == 3 {
			s.cmd.Process.Signal(syscall.SIGHUP)
		}
		if reloads == 4 {
			if err := auth.AddUser(filepath.Join(data, "users"), "latecomer", random.Hex(12)); err != nil {
				t.Fatal(err)
			}
		}
		out, e, code := adminPouch(t, nil, "reload", "--data", data)
		if code != 0 || out != "reloaded\n" {
			t.Errorf("pouch reload: %d %q %s", code, out, e)
		}
		reloads++
	}
	if m := who(t, data); len(m) == 0 {
		t.Error("pouch who lists no session while 20 clients run")
	}
	close(stop)
	wg.Wait()
	for _, f := range failures {
		t.Error(f)
	}
	for i, n := range done {
		if n == 0 {
			t.Errorf("client %d completed no session", i)
		}
	}
	if got := strings.Count(s.logText(), "msg=reloaded"); got < reloads {
		t.Errorf("%d reloads logged, want at least %d", got, reloads)
	}
	total := 0
	for _, n := range done {
		total += n
	}
	t.Logf("%d sessions completed during %d reloads", total, reloads+1)
}

// Started as root with --run-as, the server makes its admin socket before
// giving up root and hands it to the service user; root and that user may
// use it.
func TestAdminSocketRunAs(t *testing.T) {
	data, uid, gid := nobodysData(t)
	os.Chmod(filepath.Dir(pouchBin), 0o711) // for pouch reload as nobody
	startServerArgs(t, data, []string{"--run-as", "nobody"})
	sock := filepath.Join(data, "admin.sock")
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket owned by uid %d, mode %04o; want uid %d, 0600", st.Uid, fi.Mode().Perm(), uid)
	}
	if out, e, code := adminPouch(t, nil, "who", "--data", data); code != 0 || out != "no open sessions\n" {
		t.Errorf("pouch who as root: %d %q %s", code, out, e)
	}
	if out, e, code := adminPouch(t, &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, "reload", "--data", data); code != 0 || out != "reloaded\n" {
		t.Errorf("pouch reload as the service user: %d %q %s", code, out, e)
	}
}
