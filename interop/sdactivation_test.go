package interop_test

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// With systemd socket activation the server serves the sockets it is handed
// (named pop3 here) instead of binding its own.
func TestSocketActivation(t *testing.T) {
	data := newData(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // the duplicate in f keeps the socket listening
	// sh sets LISTEN_PID to its own pid, which exec keeps, as systemd does.
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=pop3 exec "$0" "$@"`,
		pouchBin, "serve", "--data", data, "--pop3", "", "--pop3s", "", "--auth-fail-delay", "0")
	cmd.ExtraFiles = []*os.File{f} // descriptor 3
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	timer := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
	defer timer.Stop()
	sc := bufio.NewScanner(stderr)
	var log strings.Builder
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "msg=listening protocol=pop3 ") {
			break
		}
	}
	go func() {
		for sc.Scan() {
		}
	}()
	if !strings.Contains(log.String(), "addr="+addr) {
		t.Fatalf("the server does not serve the activated socket %s:\n%s", addr, log.String())
	}
	c := dialPOP3(t, addr)
	c.login("bob", "hQ4v-Lw9xTz2pB")
	c.cmd("QUIT", "+OK")
}
