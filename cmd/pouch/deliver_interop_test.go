package main

import (
	"bufio"
	"errors"
	"fmt"
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

	"github.com/emersion/go-smtp"
)

// lmtpTestBinary builds this command into the test's temp directory.
func lmtpTestBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pouch")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

var lmtpListeningRE = regexp.MustCompile(`msg=listening protocol=(\w+) addr=(\S+)`)

// serveProc is a pouch serve process run by a test.
type serveProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	addrs  map[string]string // protocol → address, from the "listening" log lines
	exited chan error
	mu     sync.Mutex
	logs   strings.Builder
}

// startServe starts cmd, pouch serve or a shell that runs it, and waits until
// it listens for each protocol in want. The process is killed when the test
// ends, unless stop has stopped it.
func startServe(t *testing.T, cmd *exec.Cmd, want ...string) *serveProc {
	t.Helper()
	p := &serveProc{t: t, cmd: cmd, addrs: map[string]string{}, exited: make(chan error, 1)}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
		}
	})
	addrs := make(chan [2]string, 8)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.logs.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if m := lmtpListeningRE.FindStringSubmatch(sc.Text()); m != nil {
				addrs <- [2]string{m[1], m[2]}
			}
		}
		p.exited <- cmd.Wait()
	}()
	for _, proto := range want {
		for p.addrs[proto] == "" {
			select {
			case a := <-addrs:
				p.addrs[a[0]] = a[1]
			case <-time.After(30 * time.Second):
				t.Fatalf("pouch serve did not start listening for %s:\n%s", proto, p.logText())
			}
		}
	}
	return p
}

// logText returns what the process has logged so far.
func (p *serveProc) logText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// stop sends SIGTERM and returns how the process ended.
func (p *serveProc) stop() error {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		return err
	case <-time.After(20 * time.Second):
		p.t.Fatal("pouch serve did not stop after SIGTERM")
		return nil
	}
}

// pouch serve with --lmtp on a Unix socket, as a real process: a message
// delivered over LMTP is downloaded over POP3, and SIGTERM stops the server
// and removes the socket.
func TestServeWithLMTP(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := lmtpTestBinary(t)
	data := t.TempDir()
	if _, e, code := pouch(t, "Lmtp-test-secret-9\n", "user", "add", "--data", data, "alice"); code != 0 {
		t.Fatalf("user add: %s", e)
	}
	sock := filepath.Join(t.TempDir(), "lmtp.sock")
	p := startServe(t, exec.Command(bin, "serve", "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "",
		"--lmtp", "unix:"+sock, "--lmtp-domains", "example.org", "--quota-messages", "5", "--auth-fail-delay", "0"),
		"pop3", "lmtp")
	pop3Addr := p.addrs["pop3"]
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket: %v, %v", fi, err)
	}

	nc, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClientLMTP(nc)
	c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 10*time.Second
	if err := c.Hello("localhost"); err != nil {
		t.Fatal(err)
	}
	msg := "Subject: through pouch serve\r\n\r\nhello\r\n"
	if err := c.SendMail("s@example.net", []string{"alice@example.org"}, strings.NewReader(msg)); err != nil {
		t.Fatalf("LMTP: %v", err)
	}
	var se *smtp.SMTPError
	if err := c.SendMail("s@example.net", []string{"alice@other.org"}, strings.NewReader(msg)); !errors.As(err, &se) || se.Code != 550 {
		t.Errorf("a domain not in --lmtp-domains: %v", err)
	}
	c.Quit()

	// POP3: the message with the two header lines on top.
	pc, err := net.DialTimeout("tcp", pop3Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(pc)
	var got strings.Builder
	for _, command := range []string{"", "USER alice", "PASS Lmtp-test-secret-9", "RETR 1", "QUIT"} {
		if command != "" {
			fmt.Fprintf(pc, "%s\r\n", command)
		}
		line, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "+OK") {
			t.Fatalf("POP3 %q: %q, %v", command, line, err)
		}
		for command == "RETR 1" {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if line == ".\r\n" {
				break
			}
			got.WriteString(strings.TrimPrefix(line, "."))
		}
	}
	if want := "Return-Path: <s@example.net>\r\nDelivered-To: alice@example.org\r\n" + msg; got.String() != want {
		t.Errorf("RETR 1 = %q, want %q", got.String(), want)
	}

	if err := p.stop(); err != nil {
		t.Errorf("pouch serve after SIGTERM: %v", err)
	}
	if lmtpFileExists(sock) {
		t.Error("the LMTP socket is still there after shutdown")
	}
	if logs := p.logText(); !strings.Contains(logs, "msg=delivered") || !strings.Contains(logs, "session=l") {
		t.Errorf("the delivery is not logged with a session id:\n%s", logs)
	}
}

func lmtpFileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
