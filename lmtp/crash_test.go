package lmtp

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/store/maildir"
)

// The crash tests run this test binary again as an LMTP server with
// POUCH_CRASHPOINT set, so that it is SIGKILLed at that moment of a delivery,
// and then check that the message was either acknowledged and stored whole,
// or not acknowledged (and then stored whole or not at all: the client sends
// it again).
const crashEnv = "POUCH_LMTP_CRASH_ROOT"

func TestMain(m *testing.M) {
	if root := os.Getenv(crashEnv); root != "" {
		crashServer(root)
		return
	}
	os.Exit(m.Run())
}

func crashServer(root string) {
	srv := New(Config{
		Agent:  &Agent{Store: maildir.New(root), Users: testUsers},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Println(l.Addr())
	srv.Serve(l)
	os.Exit(0)
}

func TestCrashDuringDelivery(t *testing.T) {
	if testing.Short() {
		t.Skip("runs child processes")
	}
	msg := "Subject: crash\r\n\r\n" + strings.Repeat("line of the message\r\n", 2000)
	for _, tc := range []struct {
		point  string
		rcpts  []string
		stored bool // the message is in new/ (whole) though not acknowledged
	}{
		{"maildir.deliver.synced", []string{"alice"}, false},
		{"maildir.deliver.synced", []string{"alice", "carol"}, false},
		{"lmtp.delivered", []string{"alice"}, true},
		{"lmtp.delivered", []string{"alice", "carol"}, true},
	} {
		t.Run(fmt.Sprintf("%s/%d", tc.point, len(tc.rcpts)), func(t *testing.T) {
			root := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashEnv+"="+root, crashpoint.Env+"="+tc.point)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			addrc := make(chan string, 1)
			go func() {
				line, _ := bufio.NewReader(out).ReadString('\n')
				addrc <- strings.TrimSpace(line)
			}()
			var addr string
			select {
			case addr = <-addrc:
			case <-time.After(30 * time.Second):
				t.Fatal("the child server did not start")
			}
			nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatalf("dial %q: %v", addr, err)
			}
			c := smtp.NewClientLMTP(nc)
			c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 10*time.Second
			defer c.Close()
			var to []string
			for _, u := range tc.rcpts {
				to = append(to, u+"@example.org")
			}
			sendErr := c.SendMail("s@example.net", to, strings.NewReader(msg))
			waitErr := make(chan error, 1)
			go func() { waitErr <- cmd.Wait() }()
			var ws syscall.WaitStatus
			select {
			case err := <-waitErr:
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					ws, _ = ee.Sys().(syscall.WaitStatus)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the child did not die")
			}
			if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("child was not killed at %s (send: %v)\n%s", tc.point, sendErr, stderr.String())
			}
			if sendErr == nil {
				t.Fatal("a delivery interrupted by a crash was acknowledged")
			}
			for _, u := range tc.rcpts {
				entries, _ := os.ReadDir(filepath.Join(root, u, "new"))
				if !tc.stored {
					if len(entries) != 0 {
						t.Errorf("%s: %d messages in new/ after a crash before the rename", u, len(entries))
					}
					continue
				}
				if len(entries) != 1 {
					t.Fatalf("%s: %d messages in new/, want the whole message", u, len(entries))
				}
				got, _ := os.ReadFile(filepath.Join(root, u, "new", entries[0].Name()))
				want := "Return-Path: <s@example.net>\r\nDelivered-To: " + u + "@example.org\r\n" + msg
				if string(got) != want {
					t.Errorf("%s: stored %d octets, want the whole message of %d", u, len(got), len(want))
				}
			}
		})
	}
}
