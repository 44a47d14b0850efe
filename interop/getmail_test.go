package interop_test

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// getmail6 reads a message with poplib (raising poplib._MAXLINE to 1 MiB
// itself), joins the lines with LF, parses it with Python's email package and
// writes it out again (Message.flatten). The Maildir destination thus gets:
//
//   - LF line ends;
//   - a Return-Path header line first, which getmail always writes (there is
//     no option for it) from the envelope sender it guesses from the
//     message's Return-Path: or Sender: field, or "unknown": for the test
//     messages, which have neither, exactly "Return-Path: <unknown>\n";
//   - no Delivered-To: and no Received: with delivered_to = false and
//     received = false;
//   - the rest unchanged (the generator would refold header fields longer
//     than 78 octets, but the test messages have none).
//
// getmail refuses to deliver to a Maildir as root; as root the tests name
// "nobody" as the destination's user, which getmail switches to for the
// delivery, and make the Maildir reachable and writable for it.
func getmailForm(msg string) string { return "Return-Path: <unknown>\n" + lfLines(msg) }

func TestGetmail(t *testing.T) {
	t.Parallel()
	requireTool(t, "getmail")
	logVersion(t, "getmail", "--version")
	for _, tc := range []struct {
		name   string
		tls    bool
		apop   bool
		delete bool
	}{
		{"plain/USER/keep", false, false, false},
		{"plain/USER/delete", false, false, true},
		{"plain/APOP/delete", false, true, true},
		{"tls/USER/delete", true, false, true},
		{"tls/USER/keep", true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := newData(t)
			dropAll(t, data, "alice")
			username, pass, method := "alice", "secret one", "PASS"
			if tc.apop {
				addAPOPUser(t, data)
				username, pass, method = "carol", "tanstaaf", "APOP"
			}
			s := startServer(t, data)
			dir, home := clientDir(t)
			getmaildir := filepath.Join(dir, "getmail")
			md := filepath.Join(dir, "md")
			for _, d := range []string{getmaildir, filepath.Join(md, "new"), filepath.Join(md, "cur"), filepath.Join(md, "tmp")} {
				if err := os.MkdirAll(d, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			var rc strings.Builder
			rc.WriteString("[retriever]\n")
			if tc.tls {
				fmt.Fprintf(&rc, "type = SimplePOP3SSLRetriever\nserver = localhost\nport = %s\nca_certs = %s\n", s.tlsPort(), caFile(data))
			} else {
				fmt.Fprintf(&rc, "type = SimplePOP3Retriever\nserver = %s\nport = %s\n", s.host(), s.port())
			}
			fmt.Fprintf(&rc, "username = %s\npassword = %s\n", username, pass)
			if tc.apop {
				rc.WriteString("use_apop = true\n")
			}
			fmt.Fprintf(&rc, "\n[destination]\ntype = Maildir\npath = %s/\n", md)
			if isRoot() {
				rc.WriteString("user = nobody\n")
				nobodyMaildir(t, dir, md)
			}
			fmt.Fprintf(&rc, "\n[options]\nverbose = 2\ndelete = %v\nread_all = false\nreceived = false\ndelivered_to = false\n", tc.delete)
			writeFile(t, filepath.Join(getmaildir, "getmailrc"), rc.String(), 0o600)
			run := func() string {
				t.Helper()
				return mustClient(t, dir, home, nil, "getmail", "--getmaildir", getmaildir, "--rcfile", "getmailrc")
			}

			out := run()
			checkDelivered(t, "getmail", readMessages(t, filepath.Join(md, "new", "*")), getmailForm)
			if t.Failed() {
				t.Logf("getmail output:\n%s", out)
			}
			logins := []string{username + " " + method}
			if tc.delete {
				if n := mailFiles(t, data, username); n != 0 {
					t.Errorf("%d messages left after getmail with delete = true, want 0\n%s", n, out)
				}
			} else {
				if n := mailFiles(t, data, username); n != len(testMessages) {
					t.Errorf("%d messages left after getmail with delete = false, want %d", n, len(testMessages))
				}
				// read_all = false: the second run skips every
				// message by the UIDLs getmail recorded.
				out = run()
				if !strings.Contains(out, "0 messages (0 bytes) retrieved, 4 skipped") {
					t.Errorf("second getmail run did not skip all 4 messages:\n%s", out)
				}
				if names, _ := filepath.Glob(filepath.Join(md, "new", "*")); len(names) != len(testMessages) {
					t.Errorf("%d messages delivered after the second run, want %d\n%s", len(names), len(testMessages), out)
				}
				if n := mailFiles(t, data, username); n != len(testMessages) {
					t.Errorf("%d messages left after the second getmail run, want %d", n, len(testMessages))
				}
				logins = append(logins, logins[0])
			}
			checkLogins(t, s, logins...)
		})
	}
}

// nobodyMaildir lets the user nobody reach dir and write to the Maildir md
// inside it (t.TempDir's directories are 0700 and owned by root).
func nobodyMaildir(t *testing.T, dir, md string) {
	t.Helper()
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{md, filepath.Join(md, "new"), filepath.Join(md, "cur"), filepath.Join(md, "tmp")} {
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
}
