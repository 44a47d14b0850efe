package interop_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// curl (libcurl's POP3) writes a RETR or TOP body to its output exactly as the
// wire form: CRLF line ends kept, dot-stuffing removed, the terminating "."
// line left out. A URL without a message number sends LIST, and -X sends
// another command, whose multi-line answer is written the same way.
func TestCurl(t *testing.T) {
	t.Parallel()
	requireTool(t, "curl")
	logVersion(t, "curl", "--version")
	for _, tc := range []struct {
		name    string
		tls     bool
		options []string // --login-options
		method  string   // as the server logs it
	}{
		// By default curl uses SASL when CAPA lists it, and of the mechanisms
		// it has (no SCRAM in 7.88) it prefers PLAIN to LOGIN.
		{"plain/default", false, nil, "AUTH PLAIN"},
		{"plain/AUTH=PLAIN", false, []string{"--login-options", "AUTH=PLAIN"}, "AUTH PLAIN"},
		{"tls/default", true, nil, "AUTH PLAIN"},
		{"tls/AUTH=PLAIN", true, []string{"--login-options", "AUTH=PLAIN"}, "AUTH PLAIN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := newData(t)
			dropAll(t, data, "alice")
			s := startServer(t, data)
			dir, home := clientDir(t)
			base := "pop3://" + s.addr + "/"
			if tc.tls {
				// The certificate names localhost (and 127.0.0.1);
				// curl checks the name against it.
				base = "pop3s://localhost:" + s.tlsPort() + "/"
			}
			curl := func(args ...string) string {
				t.Helper()
				all := []string{"-sS", "--max-time", "30", "-u", "alice:secret one"}
				if tc.tls {
					all = append(all, "--cacert", caFile(data))
				}
				all = append(append(all, tc.options...), args...)
				return mustClient(t, dir, home, nil, "curl", all...)
			}
			// LIST
			if got, want := curl(base), wireSizes(); got != want {
				t.Errorf("LIST: %s", diff(got, want))
			}
			// UIDL
			if got, want := curl("-X", "UIDL", base), uidList(); got != want {
				t.Errorf("UIDL: %s", diff(got, want))
			}
			// RETR of every message, in one curl run (one connection
			// per URL or a reused one: curl decides).
			var args []string
			for i := range testMessages {
				args = append(args, fmt.Sprintf("%s%d", base, i+1), "-o", fmt.Sprintf("m%d", i+1))
			}
			curl(args...)
			got := map[string]string{}
			for i := range testMessages {
				b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("m%d", i+1)))
				if err != nil {
					t.Fatal(err)
				}
				got[messageID(string(b))] = string(b)
			}
			checkDelivered(t, "curl RETR", got, canonical)
			// TOP n 0 and TOP n 3
			for i, m := range testMessages {
				for _, lines := range []int{0, 3} {
					cmd := fmt.Sprintf("TOP %d %d", i+1, lines)
					if got, want := curl("-X", cmd, base), topOf(m.content, lines); got != want {
						t.Errorf("%s: %s", cmd, diff(got, want))
					}
				}
			}
			// Every curl run so far logged in (LIST, UIDL, the RETRs
			// at least once, the TOPs), each time with tc.method.
			runs := 3 + 2*len(testMessages)
			logged := s.logins(runs)
			if len(logged) < runs {
				t.Errorf("%d logins logged, want at least %d: %q", len(logged), runs, logged)
			}
			for _, l := range logged {
				if l != "alice "+tc.method {
					t.Errorf("login %q, want %q", l, "alice "+tc.method)
				}
			}
			// Nothing was deleted.
			if n := mailFiles(t, data, "alice"); n != len(testMessages) {
				t.Errorf("%d messages left after reading, want %d", n, len(testMessages))
			}
			// DELE through curl (-X DELE -I on a message URL), then
			// QUIT commits it.
			curl("-X", "DELE", "-I", base+"2")
			if n := mailFiles(t, data, "alice"); n != len(testMessages)-1 {
				t.Errorf("%d messages left after DELE 2, want %d", n, len(testMessages)-1)
			}
			want := ""
			for i, m := range append(testMessages[:1:1], testMessages[2:]...) {
				want += fmt.Sprintf("%d %d\r\n", i+1, len(canonical(m.content)))
			}
			// Message 2 is gone; the others are numbered 1..3 now.
			if got := curl(base); got != want {
				t.Errorf("LIST after DELE: %s", diff(got, want))
			}
		})
	}

	// APOP: curl's --login-options AUTH=+APOP, for a {PLAIN} user.
	t.Run("plain/APOP", func(t *testing.T) {
		t.Parallel()
		data := newData(t)
		addAPOPUser(t, data)
		s := startServer(t, data)
		dir, home := clientDir(t)
		out := mustClient(t, dir, home, nil, "curl", "-sS", "--max-time", "30", "-u", "carol:tanstaaf",
			"--login-options", "AUTH=+APOP", "pop3://"+s.addr+"/3")
		if want := canonical(testMessages[2].content); out != want {
			t.Errorf("RETR 3 after APOP: %s", diff(out, want))
		}
		checkLogins(t, s, "carol APOP")
	})
}
