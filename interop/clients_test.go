package interop_test

// Helpers shared by the tests that drive real POP3 clients: running a client
// in its own directory, collecting what it delivered, and comparing it byte for
// byte with the documented transformation of each message's wire form.

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// apopLine is a users-file line for carol with a {PLAIN} password, the only
// kind that allows APOP.
const apopLine = "carol:{PLAIN}tanstaaf::::::\n"

// addAPOPUser appends carol (password "tanstaaf", stored {PLAIN}) to the users
// file and gives her the test messages. A running server picks the change up
// on its next lookup, and from then on its greeting carries an APOP
// timestamp.
func addAPOPUser(t *testing.T, data string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(data, "users"), os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(apopLine); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	dropAll(t, data, "carol")
}

// caFile is the self-signed certificate of the server's implicit TLS
// listener, which clients are given as their only trusted CA.
func caFile(data string) string { return filepath.Join(data, "tls", "cert.pem") }

func (s *server) tlsPort() string { _, p, _ := net.SplitHostPort(s.tls); return p }

// clientDir makes a working directory for one client run, with a home/
// directory inside it for the client's state.
func clientDir(t *testing.T) (dir, home string) {
	t.Helper()
	dir = t.TempDir()
	home = filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir, home
}

// client runs a client program in dir with HOME=home and the given extra
// environment, bounded by ctx(t). It returns the combined output and the exit
// code (-1 if the program could not run or was killed).
func client(t *testing.T, dir, home string, env []string, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx(t), name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+home, "LC_ALL=C")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() >= 0 {
			return string(out), ee.ExitCode()
		}
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), 0
}

// mustClient is client that fails the test unless the program exits 0.
func mustClient(t *testing.T, dir, home string, env []string, name string, args ...string) string {
	t.Helper()
	out, code := client(t, dir, home, env, name, args...)
	if code != 0 {
		t.Fatalf("%s %s: exit %d\n%s", name, strings.Join(args, " "), code, out)
	}
	return out
}

// writeFile writes a file (a client's configuration) with the given mode.
func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // umask-proof
		t.Fatal(err)
	}
}

// lf turns every CRLF into LF: what clients that deliver to local files do
// with the wire form (which has no bare CR or LF).
func lf(s string) string { return strings.ReplaceAll(s, "\r\n", "\n") }

// lfLines is the LF form of canonical(msg).
func lfLines(msg string) string { return lf(canonical(msg)) }

// topOf is what TOP n lines returns for msg once unstuffed, built from the
// wire form independently of the server's code: the header, the empty line
// that ends it, and the first lines of the body (RFC 1939 §7).
func topOf(msg string, lines int) string {
	w := canonical(msg)
	i := strings.Index(w, "\r\n\r\n")
	if i < 0 {
		return w // no body
	}
	out, body := w[:i+4], w[i+4:]
	for ; lines > 0 && body != ""; lines-- {
		j := strings.Index(body, "\r\n")
		out, body = out+body[:j+2], body[j+2:]
	}
	return out
}

// stuffed is the multi-line response body that carries wire: every line that
// starts with "." gets one more, and ".\r\n" ends it (RFC 1939 §3).
func stuffed(wire string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(wire, "\r\n") {
		if strings.HasPrefix(line, ".") {
			b.WriteByte('.')
		}
		b.WriteString(line)
	}
	b.WriteString(".\r\n")
	return b.String()
}

var messageIDRE = regexp.MustCompile(`(?mi)^Message-ID: (<[^>\r\n]*>)\r?$`)

// messageID returns the Message-ID of a message, which tells the test
// messages apart.
func messageID(msg string) string {
	m := messageIDRE.FindStringSubmatch(msg)
	if m == nil {
		return ""
	}
	return m[1]
}

// readMessages reads every file matching the glob patterns and keys them by
// Message-ID.
func readMessages(t *testing.T, patterns ...string) map[string]string {
	t.Helper()
	got := make(map[string]string)
	for _, p := range patterns {
		names, err := filepath.Glob(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			b, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			id := messageID(string(b))
			if _, dup := got[id]; dup {
				t.Errorf("%s: message %s delivered twice", name, id)
			}
			got[id] = string(b)
		}
	}
	return got
}

// checkDelivered compares the messages a client delivered (keyed by
// Message-ID) with want(content) for each of testMessages, byte for byte, and
// checks that nothing else was delivered.
func checkDelivered(t *testing.T, who string, got map[string]string, want func(content string) string) {
	t.Helper()
	for _, m := range testMessages {
		id := messageID(m.content)
		g, ok := got[id]
		if !ok {
			t.Errorf("%s: message %s (%s) was not delivered", who, id, m.name)
			continue
		}
		if w := want(m.content); g != w {
			t.Errorf("%s: message %s differs: %s", who, id, diff(g, w))
		}
	}
	if len(got) != len(testMessages) {
		ids := make([]string, 0, len(got))
		for id := range got {
			ids = append(ids, id)
		}
		t.Errorf("%s: %d messages delivered (%q), want %d", who, len(got), ids, len(testMessages))
	}
}

// diff describes where got first differs from want.
func diff(got, want string) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	from := max(i-40, 0)
	return fmt.Sprintf("%d octets, want %d; first difference at offset %d:\n  got  …%q\n  want …%q",
		len(got), len(want), i, clip(got[from:], 100), clip(want[from:], 100))
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

var loginRE = regexp.MustCompile(`msg=login .*\buser=(\S+) method=("[^"]*"|\S+)`)

// logins returns "user method" for every login in the server's log so far,
// waiting briefly for want of them (the log is read by another goroutine).
func (s *server) logins(want int) []string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out []string
		for _, m := range loginRE.FindAllStringSubmatch(s.logText(), -1) {
			method, err := strconv.Unquote(m[2])
			if err != nil {
				method = m[2]
			}
			out = append(out, m[1]+" "+method)
		}
		if len(out) >= want || time.Now().After(deadline) {
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkLogins checks the user and authentication method of every login the
// server logged, in order.
func checkLogins(t *testing.T, s *server, want ...string) {
	t.Helper()
	got := s.logins(len(want))
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("logins: got %q, want %q", got, want)
	}
}

// wireSizes is the LIST response body that Pouch must send for testMessages.
func wireSizes() string {
	var b bytes.Buffer
	for i, m := range testMessages {
		fmt.Fprintf(&b, "%d %d\r\n", i+1, len(canonical(m.content)))
	}
	return b.String()
}

// uidList is the UIDL response body for testMessages as dropped by drop():
// the Maildir base names, which are valid unique-ids.
func uidList() string {
	var b bytes.Buffer
	for i, m := range testMessages {
		fmt.Fprintf(&b, "%d %s\r\n", i+1, m.name)
	}
	return b.String()
}

// isRoot reports whether the tests run as root (as CI does).
func isRoot() bool { return os.Geteuid() == 0 }

// logVersion logs the first line of what a client says about its version: the
// transformations documented in these tests are those of particular versions.
func logVersion(t *testing.T, name string, args ...string) {
	t.Helper()
	t.Log(strings.SplitN(runTool(t, "", name, args...), "\n", 2)[0])
}
