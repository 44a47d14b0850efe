package lmtp

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/testkit"
)

// usersEnv is an LMTP server whose users come from a real users file
// listing alice, through auth.Users.
func usersEnv(t *testing.T) (*env, string, *testkit.SyncBuffer) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte("alice:{PLAIN}a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &testkit.SyncBuffer{}
	users := auth.OpenUsersWith(path, auth.UsersOptions{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	e := newEnv(t, func(c *Config) { c.Agent.Users = users })
	return e, path, logs
}

// replaceUsers writes the users file anew and renames it over the old one.
func replaceUsers(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// While the users file is missing, empty, garbled, damaged or unreadable,
// a recipient in the users loaded before is delivered to and any other gets
// 451 4.3.0, never 550; once the file is good, an unknown user gets 550.
func TestUsersFileFaultsDeferRecipients(t *testing.T) {
	for _, tc := range []struct {
		name    string
		breakIt func(t *testing.T, path string)
	}{
		{"removed", func(t *testing.T, path string) { os.Remove(path) }},
		{"emptied", func(t *testing.T, path string) { os.Truncate(path, 0) }},
		{"garbled", func(t *testing.T, path string) { os.WriteFile(path, []byte("\x89PNG\r\n\x1a\n\x00\x00"), 0o600) }},
		{"damaged line", func(t *testing.T, path string) { replaceUsers(t, path, "bob:{PLAIN}b\nalice {PLAIN}a\n") }},
		{"directory in its place", func(t *testing.T, path string) { os.Remove(path); os.Mkdir(path, 0o700) }},
		{"mode 000", func(t *testing.T, path string) {
			if os.Geteuid() == 0 {
				t.Skip("root reads a file of mode 000 (cmd/pouch tests it with --run-as)")
			}
			os.Chmod(path, 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, path, logs := usersEnv(t)
			tc.breakIt(t, path)
			r := e.raw()
			r.send("MAIL FROM:<s@example.net>\r\n")
			r.expect("250 ")
			r.send("RCPT TO:<bob@example.org>\r\n")
			r.expect("451 4.3.0 ")
			r.send("RCPT TO:<alice@example.org>\r\n")
			r.expect("250 ")
			r.send("DATA\r\n")
			r.expect("354 ")
			r.send("Subject: kept\r\n\r\nbody\r\n.\r\n")
			r.expect("250 2.0.0 ")
			if n := len(e.stored("alice")); n != 1 {
				t.Errorf("alice has %d messages, want 1", n)
			}
			if strings.Count(logs.String(), "level=ERROR") != 1 {
				t.Errorf("want one ERROR for the users file:\n%s", logs)
			}
			if strings.Contains(e.logs.String(), "level=ERROR") {
				t.Errorf("the LMTP log has errors for a deferred recipient:\n%s", e.logs)
			}

			os.Remove(path) // a directory, if it was one
			os.Chmod(path, 0o600)
			replaceUsers(t, path, "alice:{PLAIN}a\nbob:{PLAIN}b\n")
			r.send("RSET\r\nMAIL FROM:<s@example.net>\r\n")
			r.expect("250 ")
			r.expect("250 ")
			r.send("RCPT TO:<bob@example.org>\r\n")
			r.expect("250 ")
			r.send("RCPT TO:<zed@example.org>\r\n")
			r.expect("550 5.1.1 ")
		})
	}
}

// Replacing the users file again and again, by renaming a new one over it
// or by rewriting it in place (truncate, then write: the moment it is empty
// is seen), never makes a listed user unknown: not one 550 for alice.
func TestReplacingUsersFileNeverBounces(t *testing.T) {
	for _, inPlace := range []bool{false, true} {
		t.Run(fmt.Sprintf("in place %v", inPlace), func(t *testing.T) {
			e, path, _ := usersEnv(t)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					content := fmt.Sprintf("alice:{PLAIN}a%d\n", i)
					if inPlace {
						f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0o600)
						if err != nil {
							t.Error(err)
							return
						}
						f.WriteString(content)
						f.Close()
					} else {
						os.WriteFile(path+".tmp", []byte(content), 0o600)
						os.Rename(path+".tmp", path)
					}
				}
			}()
			r := e.raw()
			r.send("MAIL FROM:<s@example.net>\r\n")
			r.expect("250 ")
			for range 500 {
				r.send("RCPT TO:<alice@example.org>\r\n")
				if line := r.reply(); !strings.HasPrefix(line, "250 ") {
					t.Errorf("RCPT alice while the file is replaced: %q", line)
					break
				}
			}
			close(stop)
			wg.Wait()
		})
	}
}

// Connections over MaxConnections get 421 4.3.2 and are closed at once; a
// connection that ends frees its place for the next.
func TestConnectionCap(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxConnections = 3 })
	var open []*raw
	for range 3 {
		open = append(open, e.raw())
	}
	for range 5 {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		line, _ := br.ReadString('\n')
		if line != "421 4.3.2 mx.pouch.test Too many connections, try again later\r\n" {
			t.Fatalf("over the cap: %q", line)
		}
		if rest, err := br.ReadString('\n'); err == nil {
			t.Fatalf("connection over the cap still open: %q", rest)
		}
		c.Close()
	}
	if n := strings.Count(e.logs.String(), "connections refused"); n != 1 {
		t.Errorf("%d log lines for 5 refusals, want 1:\n%s", n, e.logs)
	}
	// The connections within the cap still work.
	open[1].mailTo("alice")
	open[1].send("RSET\r\n")
	open[1].expect("250 ")
	open[0].send("QUIT\r\n")
	open[0].expect("221 ")
	open[0].closed()
	e.raw().mailTo("alice") // in the place that QUIT freed
}

// A connection that sends no command outside a transaction is closed after
// IdleTimeout with 421 4.4.2; inside a transaction, ReadTimeout applies.
func TestIdleTimeout(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.IdleTimeout = 100 * time.Millisecond
		c.ReadTimeout = 20 * time.Second
	})
	start := time.Now()
	r := e.raw()
	r.expect("421 4.4.2 ")
	r.closed()
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("idle connection closed after %v", took)
	}

	// Also before LHLO.
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got, _ := readAll(c)
	if !strings.HasPrefix(got, "220 ") || !strings.Contains(got, "\r\n421 4.4.2 ") {
		t.Errorf("before LHLO: %q", got)
	}

	r = e.raw()
	r.mailTo("alice")
	time.Sleep(300 * time.Millisecond) // three idle timeouts, inside a transaction
	r.send("DATA\r\n")
	r.expect("354 ")
	r.send("Subject: slow\r\n\r\nbody\r\n.\r\n")
	r.expect("250 ")
}

// readAll reads c until the server closes it or the deadline passes.
func readAll(c net.Conn) (string, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(c)
	return b.String(), err
}
