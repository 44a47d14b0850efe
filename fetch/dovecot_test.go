package fetch

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// dovecotPeer is tools/dovecot-peer.sh of the shared directory beside the
// repository (as CI lays it out), or of the developers' workspace.
var dovecotPeer = func() string {
	for _, p := range []string{"../../shared/tools/dovecot-peer.sh", "/work/shared/tools/dovecot-peer.sh"} {
		if abs, err := filepath.Abs(p); err == nil {
			if _, err := os.Stat(abs); err == nil {
				return abs
			}
		}
	}
	return "../../shared/tools/dovecot-peer.sh"
}()

// requireDovecot skips (or fails under POUCH_REQUIRE_INTEROP=1) when Dovecot
// or root is missing.
func requireDovecot(t testing.TB) {
	t.Helper()
	why := ""
	if _, err := exec.LookPath("dovecot"); err != nil {
		why = "dovecot is not installed"
	} else if os.Geteuid() != 0 {
		why = "the Dovecot peer needs root"
	} else if _, err := os.Stat(dovecotPeer); err != nil {
		why = dovecotPeer + " is missing"
	}
	if why == "" {
		return
	}
	if os.Getenv("POUCH_REQUIRE_INTEROP") == "1" {
		t.Fatalf("%s (POUCH_REQUIRE_INTEROP=1)", why)
	}
	t.Skip(why)
}

type dovecot struct {
	dir, addr string
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startDovecot runs Dovecot's POP3 server with user alice/secret, whose
// Maildir first receives msgs.
func startDovecot(t testing.TB, msgs []string) *dovecot {
	t.Helper()
	requireDovecot(t)
	dir, err := os.MkdirTemp("", "pouch-dovecot-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "users"), []byte("alice:{PLAIN}secret\n"), 0o644)
	md := filepath.Join(dir, "mail", "alice")
	for _, sub := range []string{"new", "cur", "tmp"} {
		os.MkdirAll(filepath.Join(md, sub), 0o700)
	}
	for i, m := range msgs {
		name := fmt.Sprintf("%d.M%dP1.test", 1700000000+i, i)
		if err := os.WriteFile(filepath.Join(md, "new", name), []byte(m), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	port := freePort(t)
	env := append(os.Environ(), "DIR="+dir, fmt.Sprintf("PORT=%d", port))
	stopCmd := func() {
		cmd := exec.Command("bash", dovecotPeer, "stop")
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = nil, nil
		cmd.Run()
	}
	// Dovecot keeps the output descriptors: give it a file, not a pipe
	// that Wait would wait on forever.
	outFile, err := os.Create(filepath.Join(dir, "peer.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer outFile.Close()
	cmd := exec.Command("bash", dovecotPeer, "start")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = outFile, outFile
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(outFile.Name())
		stopCmd()
		log, _ := os.ReadFile(filepath.Join(dir, "dovecot.log"))
		os.RemoveAll(dir)
		t.Fatalf("dovecot-peer.sh start: %v\n%s\n%s", err, out, log)
	}
	t.Cleanup(func() {
		stopCmd()
		os.RemoveAll(dir)
	})
	return &dovecot{dir: dir, addr: fmt.Sprintf("127.0.0.1:%d", port)}
}

func (d *dovecot) count(t testing.TB) int {
	n := 0
	for _, sub := range []string{"new", "cur"} {
		e, _ := os.ReadDir(filepath.Join(d.dir, "mail", "alice", sub))
		n += len(e)
	}
	return n
}

func TestAgainstDovecot(t *testing.T) {
	msgs := testMessages(300)
	msgs = append(msgs, "Subject: crlf\r\n\r\n.\r\n..\r\nFrom x\r\n", "Subject: long\n\n"+strings.Repeat("w", 200000)+"\n")
	d := startDovecot(t, msgs)
	a := testAccount(t, d.addr)
	a.Keep = time.Hour
	st, err := Run(context.Background(), a, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Fetched != len(msgs) || st.Deleted != 0 || st.Mechanism != "PLAIN" {
		t.Fatalf("%+v", st)
	}
	want := make([]string, len(msgs))
	for i, m := range msgs {
		want[i] = strings.ReplaceAll(m, "\r\n", "\n")
	}
	dir := strings.TrimPrefix(a.To, "maildir:")
	checkExactlyOnce(t, dir, want)
	st, err = Run(context.Background(), a, nil)
	if err != nil || st.Fetched != 0 || st.Kept != len(msgs) {
		t.Fatalf("second run: %+v %v", st, err)
	}
	a.Keep = 0
	st, err = Run(context.Background(), a, nil)
	if err != nil || st.Deleted != len(msgs) {
		t.Fatalf("third run: %+v %v", st, err)
	}
	if n := d.count(t); n != 0 {
		t.Fatalf("%d messages left in Dovecot", n)
	}
	checkExactlyOnce(t, dir, want)
}
