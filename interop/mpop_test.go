package interop_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// mpop's "delivery maildir DIR" writes each message to DIR/new/ with its CRLF
// line ends turned into LF and nothing else changed once --received-header=off
// stops it from prepending its Received header. It pipelines its RETR
// commands when CAPA lists PIPELINING, and records the UIDLs it has retrieved
// in its UIDLs file (--uidls-file) so that a keep run does not download them
// again.
func TestMpop(t *testing.T) {
	t.Parallel()
	requireTool(t, "mpop")
	logVersion(t, "mpop", "--version")
	for _, tc := range []struct {
		name   string
		tls    bool
		auth   string // mpop's auth method
		method string // as the server logs it
		keep   bool
	}{
		{"plain/user/keep", false, "user", "PASS", true},
		{"plain/user/delete", false, "user", "PASS", false},
		{"plain/apop/delete", false, "apop", "APOP", false},
		{"tls/plain/delete", true, "plain", "AUTH PLAIN", false},
		{"tls/user/keep", true, "user", "PASS", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := newData(t)
			dropAll(t, data, "alice")
			user, pass := "alice", "secret one"
			if tc.auth == "apop" {
				addAPOPUser(t, data)
				user, pass = "carol", "tanstaaf"
			}
			s := startServer(t, data)
			dir, home := clientDir(t)
			md := filepath.Join(dir, "md")
			for _, sub := range []string{"new", "cur", "tmp"} {
				if err := os.MkdirAll(filepath.Join(md, sub), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			var conf strings.Builder
			conf.WriteString("account default\n")
			if tc.tls {
				fmt.Fprintf(&conf, "host localhost\nport %s\ntls on\ntls_starttls off\ntls_trust_file %s\n", s.tlsPort(), caFile(data))
			} else {
				fmt.Fprintf(&conf, "host %s\nport %s\ntls off\n", s.host(), s.port())
			}
			fmt.Fprintf(&conf, "user %s\npassword %s\nauth %s\n", user, pass, tc.auth)
			fmt.Fprintf(&conf, "delivery maildir %s\n", md)
			keep := "--keep=off"
			if tc.keep {
				keep = "--keep=on"
			}
			rc := filepath.Join(dir, "mpoprc")
			writeFile(t, rc, conf.String(), 0o600) // mpop refuses a readable file with a password
			run := func() string {
				t.Helper()
				return mustClient(t, dir, home, nil, "mpop", "-C", rc, "--timeout=30", "--debug",
					"--received-header=off", "--uidls-file="+filepath.Join(home, "uidls"), keep)
			}

			out := run()
			checkDelivered(t, "mpop", readMessages(t, filepath.Join(md, "new", "*")), lfLines)
			if t.Failed() {
				t.Logf("mpop --debug:\n%s", out)
			}
			logins := []string{user + " " + tc.method}
			if tc.keep {
				if n := mailFiles(t, data, user); n != len(testMessages) {
					t.Errorf("%d messages left after mpop --keep=on, want %d", n, len(testMessages))
				}
				uidls, err := os.ReadFile(filepath.Join(home, "uidls"))
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range testMessages {
					if !strings.Contains(string(uidls), "\n"+m.name+"\n") {
						t.Errorf("mpop's uidls file does not list %s:\n%s", m.name, uidls)
					}
				}
				// The second run finds nothing new by UIDL.
				out = run()
				if names, _ := filepath.Glob(filepath.Join(md, "new", "*")); len(names) != len(testMessages) {
					t.Errorf("%d messages delivered after the second run, want %d\n%s", len(names), len(testMessages), out)
				}
				if n := mailFiles(t, data, user); n != len(testMessages) {
					t.Errorf("%d messages left after the second mpop run, want %d", n, len(testMessages))
				}
				logins = append(logins, logins[0])
			} else if n := mailFiles(t, data, user); n != 0 {
				t.Errorf("%d messages left after mpop --keep=off, want 0\n%s", n, out)
			}
			checkLogins(t, s, logins...)
		})
	}
}
