package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lmtpConn is a line-level LMTP client.
type lmtpConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

// dialLMTP connects to addr and says LHLO.
func dialLMTP(t *testing.T, addr string) *lmtpConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	l := &lmtpConn{t: t, c: c, r: bufio.NewReader(c)}
	if r := l.reply(); !strings.HasPrefix(r, "220 ") {
		t.Fatalf("greeting %q", r)
	}
	if r := l.cmd("LHLO test.example"); !strings.HasPrefix(r, "250 ") {
		t.Fatalf("LHLO: %q", r)
	}
	return l
}

// reply reads a reply and returns its last line.
func (l *lmtpConn) reply() string {
	l.t.Helper()
	for {
		line, err := l.r.ReadString('\n')
		if err != nil {
			l.t.Fatalf("reading an LMTP reply: %v (%q)", err, line)
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n")
		}
	}
}

// cmd sends a command and returns the last line of its reply.
func (l *lmtpConn) cmd(line string) string {
	l.t.Helper()
	if _, err := io.WriteString(l.c, line+"\r\n"); err != nil {
		l.t.Fatal(err)
	}
	return l.reply()
}

// pop3Login logs in over POP3 and returns the reply to PASS; a session that
// logged in is ended with QUIT.
func pop3Login(t *testing.T, addr, user, pass string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	var replies []string
	for _, command := range []string{"", "USER " + user, "PASS " + pass, "QUIT"} {
		if command != "" {
			fmt.Fprintf(c, "%s\r\n", command)
		}
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("POP3 %q: %v", command, err)
		}
		replies = append(replies, strings.TrimRight(line, "\r\n"))
	}
	return replies[2]
}

// readyz returns the status and body of /readyz.
func readyz(t *testing.T, addr string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// giveToNobody hands the data directory to the user nobody, for a server
// run with --run-as nobody, and lets nobody reach it.
func giveToNobody(t *testing.T, data string) {
	t.Helper()
	err := filepath.WalkDir(data, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, 65534, 65534)
	})
	if err != nil {
		t.Fatal(err)
	}
	for dir := filepath.Dir(data); dir != "/"; dir = filepath.Dir(dir) {
		if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o001 == 0 {
			os.Chmod(dir, fi.Mode().Perm()|0o011)
		}
	}
}

// writeUsers replaces the users file by renaming a new one over it, as an
// editor or configuration management does, keeping it nobody's when the
// server runs as nobody.
func writeUsers(t *testing.T, path, content string, nobody bool) {
	t.Helper()
	tmp := path + ".edit"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if nobody {
		os.Chown(tmp, 65534, 65534)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// pouch serve while its users file is removed, emptied, garbled or made
// unreadable (mode 000: as root, the server runs as nobody): LMTP answers
// 451 4.3.0 for a name it cannot confirm and never 550, still delivers to
// the users it had, POP3 logs them in and answers others [SYS/TEMP],
// /readyz is 503 naming the reason, and one ERROR is logged; once the file
// is good again, everything is as before and an INFO says so.
func TestServeUsersFileFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := lmtpTestBinary(t)
	data := t.TempDir()
	const secret = "Users-fault-secret-7"
	if _, e, code := pouch(t, secret+"\n", "user", "add", "--data", data, "alice"); code != 0 {
		t.Fatalf("user add: %s", e)
	}
	args := []string{"serve", "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "", "--lmtp", "127.0.0.1:0",
		"--metrics", "127.0.0.1:0", "--auth-fail-delay", "0"}
	asNobody := os.Geteuid() == 0
	if asNobody {
		giveToNobody(t, data)
		args = append(args, "--run-as", "nobody")
	}
	p := startServe(t, exec.Command(bin, args...), "pop3", "lmtp", "metrics")
	usersPath := filepath.Join(data, "users")
	good, err := os.ReadFile(usersPath)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, reason string
		breakIt      func()
	}{
		{"removed", "is missing", func() { os.Remove(usersPath) }},
		{"emptied", "is empty", func() { os.Truncate(usersPath, 0) }},
		{"garbled", "is damaged", func() { os.WriteFile(usersPath, []byte("garbage without a colon\n\x00\x01\n"), 0o600) }},
		{"mode 000", "permission denied", func() { os.Chmod(usersPath, 0) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.breakIt()
			if code, body := readyz(t, p.addrs["metrics"]); code != http.StatusServiceUnavailable || !strings.Contains(body, tc.reason) {
				t.Errorf("/readyz: %d %q, want 503 with %q", code, body, tc.reason)
			}
			l := dialLMTP(t, p.addrs["lmtp"])
			if r := l.cmd("MAIL FROM:<s@example.net>"); !strings.HasPrefix(r, "250 ") {
				t.Fatalf("MAIL: %q", r)
			}
			if r := l.cmd("RCPT TO:<bob@example.org>"); !strings.HasPrefix(r, "451 4.3.0 ") {
				t.Errorf("RCPT for a user the file may list: %q, want 451 4.3.0", r)
			}
			if r := l.cmd("RCPT TO:<alice@example.org>"); !strings.HasPrefix(r, "250 ") {
				t.Errorf("RCPT for a user listed before: %q", r)
			}
			l.cmd("DATA")
			if r := l.cmd("Subject: " + tc.name + "\r\n\r\nbody\r\n."); !strings.HasPrefix(r, "250 2.0.0 ") {
				t.Errorf("delivery to alice: %q", r)
			}
			if r := pop3Login(t, p.addrs["pop3"], "alice", secret); !strings.HasPrefix(r, "+OK") {
				t.Errorf("POP3 login of alice: %q", r)
			}
			if r := pop3Login(t, p.addrs["pop3"], "bob", "bob-secret"); !strings.HasPrefix(r, "-ERR [SYS/TEMP] ") {
				t.Errorf("POP3 login of a name not listed before: %q", r)
			}

			os.Chmod(usersPath, 0o600)
			writeUsers(t, usersPath, string(good)+"bob:{PLAIN}bob-secret\n", asNobody)
			if code, body := readyz(t, p.addrs["metrics"]); code != http.StatusOK {
				t.Errorf("/readyz after the repair: %d %q", code, body)
			}
			l.cmd("RSET")
			l.cmd("MAIL FROM:<s@example.net>")
			if r := l.cmd("RCPT TO:<bob@example.org>"); !strings.HasPrefix(r, "250 ") {
				t.Errorf("RCPT bob after the repair: %q", r)
			}
			if r := l.cmd("RCPT TO:<zed@example.org>"); !strings.HasPrefix(r, "550 5.1.1 ") {
				t.Errorf("RCPT for an unknown user after the repair: %q", r)
			}
			// bob is new again for the next case, once the server has seen
			// this version (it is the last good one when the next breaks).
			writeUsers(t, usersPath, string(good), asNobody)
			if code, body := readyz(t, p.addrs["metrics"]); code != http.StatusOK {
				t.Errorf("/readyz: %d %q", code, body)
			}
		})
	}
	if err := p.stop(); err != nil {
		t.Errorf("pouch serve after SIGTERM: %v", err)
	}
	logs := p.logText()
	if n := strings.Count(logs, `level=ERROR msg="users file unusable`); n != len(cases) {
		t.Errorf("%d ERROR lines for %d episodes:\n%s", n, len(cases), logs)
	}
	if n := strings.Count(logs, `msg="users file usable again"`); n != len(cases) {
		t.Errorf("%d INFO lines for %d recoveries:\n%s", n, len(cases), logs)
	}
	if n := len(deliveredTo(t, data, "alice")); n != len(cases) {
		t.Errorf("alice has %d messages, want %d", n, len(cases))
	}
}

// A first start with no users file at all works as ever: no fault, unknown
// recipients get 550. A data directory that holds Maildirs but no users file
// is not a first start: the server starts, unready, answering 451, until
// the file is back.
func TestServeStartWithoutUsersFile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := lmtpTestBinary(t)
	for _, tc := range []struct {
		name      string
		maildirs  bool
		rcpt      string // the reply to RCPT alice before she is added
		readyCode int
	}{
		{"first start", false, "550 5.1.1 ", http.StatusOK},
		{"maildirs without users file", true, "451 4.3.0 ", http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := t.TempDir()
			if tc.maildirs {
				for _, sub := range []string{"new", "cur", "tmp"} {
					if err := os.MkdirAll(filepath.Join(data, "mail", "alice", sub), 0o700); err != nil {
						t.Fatal(err)
					}
				}
			}
			p := startServe(t, exec.Command(bin, "serve", "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "",
				"--lmtp", "127.0.0.1:0", "--metrics", "127.0.0.1:0"), "pop3", "lmtp", "metrics")
			if code, body := readyz(t, p.addrs["metrics"]); code != tc.readyCode {
				t.Errorf("/readyz: %d %q, want %d", code, body, tc.readyCode)
			}
			l := dialLMTP(t, p.addrs["lmtp"])
			l.cmd("MAIL FROM:<s@example.net>")
			if r := l.cmd("RCPT TO:<alice@example.org>"); !strings.HasPrefix(r, tc.rcpt) {
				t.Errorf("RCPT alice: %q, want %q", r, tc.rcpt)
			}
			if _, e, code := pouch(t, "Start-test-secret-5\n", "user", "add", "--data", data, "alice"); code != 0 {
				t.Fatalf("user add: %s", e)
			}
			if r := l.cmd("RCPT TO:<alice@example.org>"); !strings.HasPrefix(r, "250 ") {
				t.Errorf("RCPT alice once added: %q", r)
			}
			if code, body := readyz(t, p.addrs["metrics"]); code != http.StatusOK {
				t.Errorf("/readyz once alice is added: %d %q", code, body)
			}
			if errs := strings.Count(p.logText(), "level=ERROR"); errs != map[bool]int{false: 0, true: 1}[tc.maildirs] {
				t.Errorf("%d ERROR lines:\n%s", errs, p.logText())
			}
		})
	}
}

// 1,100 idle LMTP connections to a server that may open 1,024 files: those
// past the cap get 421 4.3.2 and are closed, and a POP3 login still works.
func TestLMTPConnectionCapKeepsPOP3(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const conns, fileLimit = 1100, 1024
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 2*conns+100 {
		t.Skipf("this test opens %d files and may open %d", 2*conns+100, lim.Cur)
	}
	bin := lmtpTestBinary(t)
	data := t.TempDir()
	const secret = "Cap-test-secret-3"
	if _, e, code := pouch(t, secret+"\n", "user", "add", "--data", data, "alice"); code != 0 {
		t.Fatalf("user add: %s", e)
	}
	// The shell lowers the hard limit, which the Go runtime cannot raise.
	p := startServe(t, exec.Command("sh", "-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, fileLimit),
		bin, "serve", "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "", "--lmtp", "127.0.0.1:0",
		"--auth-fail-delay", "0"), "pop3", "lmtp")
	if limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", p.cmd.Process.Pid)); err == nil &&
		!strings.Contains(string(limits), fmt.Sprintf("Max open files            %d                 %d", fileLimit, fileLimit)) {
		t.Fatalf("the server's file limit is not %d:\n%s", fileLimit, limits)
	}
	greeted, refused := 0, 0
	for range conns {
		c, err := net.DialTimeout("tcp", p.addrs["lmtp"], 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		switch {
		case strings.HasPrefix(line, "220 "):
			greeted++
		case strings.HasPrefix(line, "421 4.3.2 "):
			refused++
		default:
			t.Fatalf("LMTP connection: %q, %v", line, err)
		}
	}
	if greeted != 100 || refused != conns-100 {
		t.Errorf("%d greeted and %d refused, want 100 and %d", greeted, refused, conns-100)
	}
	if r := pop3Login(t, p.addrs["pop3"], "alice", secret); !strings.HasPrefix(r, "+OK") {
		t.Errorf("POP3 login beside %d idle LMTP connections: %q", conns, r)
	}
	if logs := p.logText(); strings.Contains(logs, "too many open files") {
		t.Errorf("the server ran out of files:\n%s", logs)
	}
}

// pouch deliver exits 75 whenever the users file cannot say whether the
// user exists, 67 only for a name absent from a usable file, and delivers to
// a user on a good line of a damaged file.
func TestDeliverUsersFileFaults(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string // of the users file; "-" for none, "/" for a directory
		user    string
		code    int
		text    string
	}{
		{"missing", "-", "alice", exTempFail, "no users file"},
		{"empty", "", "alice", exTempFail, "the users file cannot be used now, try again later"},
		{"white space", "\n\n  \n", "alice", exTempFail, "the users file cannot be used now"},
		{"garbled", "\x00\x01garbage\n", "alice", exTempFail, "the users file cannot be used now"},
		{"damaged, name not on a good line", "bob:{PLAIN}b\nalice {PLAIN}a\n", "alice", exTempFail, "the users file cannot be used now"},
		{"damaged, name on a good line", "bob:{PLAIN}b\nalice {PLAIN}a\n", "bob", 0, ""},
		{"unreadable", "/", "alice", exTempFail, "the users file cannot be used now"},
		{"comments only", "# no users\n", "alice", exNoUser, "no such user"},
		{"good, name absent", "bob:{PLAIN}b\n", "alice", exNoUser, "no such user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := t.TempDir()
			path := filepath.Join(data, "users")
			switch tc.content {
			case "-":
			case "/":
				os.Mkdir(path, 0o700)
			default:
				os.WriteFile(path, []byte(tc.content), 0o600)
			}
			_, e, code := pouch(t, "Subject: x\n\nbody\n", "deliver", "--data", data, tc.user)
			if code != tc.code || !strings.Contains(e, tc.text) {
				t.Errorf("exit %d, %q; want %d with %q", code, e, tc.code, tc.text)
			}
		})
	}
}

// pouch deliver, run by a user who cannot read the users file (mode 000),
// exits 75.
func TestDeliverUnreadableUsersFile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	data := t.TempDir()
	path := filepath.Join(data, "users")
	if err := os.WriteFile(path, []byte("alice:{PLAIN}a\n"), 0); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(lmtpTestBinary(t), "deliver", "--data", data, "alice")
	if os.Geteuid() == 0 {
		// root reads any file: run as nobody, who can reach it but not read it.
		giveToNobody(t, data)
		giveToNobody(t, cmd.Path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	cmd.Stdin = strings.NewReader("Subject: x\n\nbody\n")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exTempFail || !strings.Contains(string(out), "the users file cannot be used now") {
		t.Errorf("exit %v, %q; want %d", err, out, exTempFail)
	}
}

// pouch serve with an account whose settings cannot be read: it is refused
// whole and said so in the log at start and at each reload; its mail waits
// (LMTP 451 4.3.0), its right password gets -ERR [SYS/PERM]; the others are
// served as ever, and once the line is fixed the account is in use without
// a restart.
func TestServeRefusedAccount(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := lmtpTestBinary(t)
	data := t.TempDir()
	const secret = "Users-fault-secret-7"
	if _, e, code := pouch(t, secret+"\n", "user", "add", "--data", data, "alice"); code != 0 {
		t.Fatalf("user add: %s", e)
	}
	usersPath := filepath.Join(data, "users")
	good, err := os.ReadFile(usersPath)
	if err != nil {
		t.Fatal(err)
	}
	writeUsers(t, usersPath, string(good)+"carol:{PLAIN}carol-secret::::::expire=7d quota_storage=lots\n", false)
	args := []string{"serve", "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "", "--lmtp", "127.0.0.1:0",
		"--auth-fail-delay", "0"}
	asNobody := os.Geteuid() == 0
	if asNobody {
		giveToNobody(t, data)
		args = append(args, "--run-as", "nobody")
	}
	p := startServe(t, exec.Command(bin, args...), "pop3", "lmtp")

	l := dialLMTP(t, p.addrs["lmtp"])
	l.cmd("MAIL FROM:<s@example.net>")
	if r := l.cmd("RCPT TO:<carol@example.org>"); !strings.HasPrefix(r, "451 4.3.0 ") || strings.Contains(r, "lots") {
		t.Errorf("RCPT for the refused account: %q, want 451 4.3.0 without the reason", r)
	}
	if r := l.cmd("RCPT TO:<alice@example.org>"); !strings.HasPrefix(r, "250 ") {
		t.Errorf("RCPT alice: %q", r)
	}
	l.cmd("DATA")
	if r := l.cmd("Subject: x\r\n\r\nbody\r\n."); !strings.HasPrefix(r, "250 2.0.0 ") {
		t.Errorf("delivery to alice: %q", r)
	}
	if r := pop3Login(t, p.addrs["pop3"], "carol", "carol-secret"); !strings.HasPrefix(r, "-ERR [SYS/PERM] ") {
		t.Errorf("POP3 login of the refused account: %q", r)
	}
	if r := pop3Login(t, p.addrs["pop3"], "alice", secret); !strings.HasPrefix(r, "+OK") {
		t.Errorf("POP3 login of alice: %q", r)
	}

	writeUsers(t, usersPath, string(good)+"carol:{PLAIN}carol-secret::::::expire=7d quota_storage=1G\n", asNobody)
	if r := pop3Login(t, p.addrs["pop3"], "carol", "carol-secret"); !strings.HasPrefix(r, "+OK") {
		t.Errorf("POP3 login of carol once fixed: %q", r)
	}
	l.cmd("RSET")
	l.cmd("MAIL FROM:<s@example.net>")
	if r := l.cmd("RCPT TO:<carol@example.org>"); !strings.HasPrefix(r, "250 ") {
		t.Errorf("RCPT carol once fixed: %q", r)
	}
	if err := p.stop(); err != nil {
		t.Errorf("pouch serve after SIGTERM: %v", err)
	}
	logs := p.logText()
	if n := strings.Count(logs, `level=ERROR msg="account refused`); n != 1 || !strings.Contains(logs, "user=carol") ||
		!strings.Contains(logs, `quota_storage: \"lots\"`) || !strings.Contains(logs, "users:2") {
		t.Errorf("want one ERROR at start naming carol, the line and the field:\n%s", logs)
	}
}
