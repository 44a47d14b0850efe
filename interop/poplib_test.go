package interop_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// poplibScript drives Python's poplib. Arguments: host port tls(0/1) cafile
// user password auth(user/apop) mode(keep/delete) outdir.
//
// poplib returns a RETR or TOP body as a list of lines without their CRLF,
// dot-stuffing removed (_getlongresp), and its status line as bytes. The
// script writes, for message N: N.retr (the lines joined with CRLF, plus a
// final CRLF: exactly the wire form), N.top0 and N.top3 (TOP N 0 and TOP N 3,
// the same way), N.status (RETR's status line), and list, uidl and capa.
//
// poplib refuses lines longer than poplib._MAXLINE (2048 octets) with
// error_proto("line too long"); the test messages have a 20,000-octet line
// (RFC 1939 has no line limit), so the script raises that documented module
// setting first.
const poplibScript = `
import os, poplib, ssl, sys
host, port, use_tls, cafile, user, password, auth, mode, out = sys.argv[1:]
poplib._MAXLINE = 1 << 20
if use_tls == "1":
    ctx = ssl.create_default_context(cafile=cafile)
    p = poplib.POP3_SSL(host, int(port), context=ctx, timeout=30)
else:
    p = poplib.POP3(host, int(port), timeout=30)
def w(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
def joined(lines):
    return b"".join(l + b"\r\n" for l in lines)
caps = p.capa()
w("capa", "".join("%s %s\n" % (k, " ".join(v)) for k, v in sorted(caps.items())).encode())
if auth == "apop":
    p.apop(user, password)
else:
    p.user(user)
    p.pass_(password)
count, size = p.stat()
w("stat", b"%d %d" % (count, size))
w("list", joined(p.list()[1]))
w("uidl", joined(p.uidl()[1]))
for n in range(1, count + 1):
    resp, lines, octets = p.retr(n)
    w("%d.status" % n, resp)
    w("%d.retr" % n, joined(lines))
    w("%d.top0" % n, joined(p.top(n, 0)[1]))
    w("%d.top3" % n, joined(p.top(n, 3)[1]))
    if mode == "delete":
        p.dele(n)
w("quit", p.quit())
`

func TestPoplib(t *testing.T) {
	t.Parallel()
	python := requireTool(t, "python3")
	logVersion(t, python, "-c", "import sys; print('Python', sys.version)")
	for _, tc := range []struct {
		name string
		tls  bool
		apop bool
		mode string
	}{
		{"plain/USER/keep", false, false, "keep"},
		{"plain/USER/delete", false, false, "delete"},
		{"plain/APOP/keep", false, true, "keep"},
		{"tls/USER/keep", true, false, "keep"},
		{"tls/USER/delete", true, false, "delete"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			data := newData(t)
			dropAll(t, data, "alice")
			user, pass, method := "alice", "secret one", "PASS"
			if tc.apop {
				addAPOPUser(t, data)
				user, pass, method = "carol", "tanstaaf", "APOP"
			}
			s := startServer(t, data)
			dir, home := clientDir(t)
			out := filepath.Join(dir, "out")
			if err := os.Mkdir(out, 0o700); err != nil {
				t.Fatal(err)
			}
			host, port, tls, auth := s.host(), s.port(), "0", "user"
			if tc.tls {
				host, port, tls = "localhost", s.tlsPort(), "1"
			}
			if tc.apop {
				auth = "apop"
			}
			mustClient(t, dir, home, nil, python, "-c", poplibScript,
				host, port, tls, caFile(data), user, pass, auth, tc.mode, out)
			read := func(name string) string {
				t.Helper()
				b, err := os.ReadFile(filepath.Join(out, name))
				if err != nil {
					t.Fatal(err)
				}
				return string(b)
			}

			// CAPA, parsed by poplib.capa(): the capabilities of the
			// AUTHORIZATION state that the clients here rely on.
			caps := map[string]string{}
			for _, l := range strings.Split(strings.TrimSuffix(read("capa"), "\n"), "\n") {
				k, v, _ := strings.Cut(l, " ")
				caps[k] = v
			}
			for k, v := range map[string]string{"TOP": "", "UIDL": "", "USER": "", "RESP-CODES": "",
				"AUTH-RESP-CODE": "", "PIPELINING": "", "EXPIRE": "NEVER"} {
				if got, ok := caps[k]; !ok || got != v {
					t.Errorf("CAPA %s: got %q (present %v), want %q", k, got, ok, v)
				}
			}
			if !strings.Contains(" "+caps["SASL"]+" ", " PLAIN ") {
				t.Errorf("CAPA SASL %q does not offer PLAIN", caps["SASL"])
			}

			total := 0
			for _, m := range testMessages {
				total += len(canonical(m.content))
			}
			if got, want := read("stat"), fmt.Sprintf("%d %d", len(testMessages), total); got != want {
				t.Errorf("STAT: got %q, want %q", got, want)
			}
			// poplib.list() and uidl() drop the CRLF; joined again.
			if got, want := read("list"), wireSizes(); got != want {
				t.Errorf("LIST: %s", diff(got, want))
			}
			if got, want := read("uidl"), uidList(); got != want {
				t.Errorf("UIDL: %s", diff(got, want))
			}
			got := map[string]string{}
			for i, m := range testMessages {
				n := i + 1
				retr := read(fmt.Sprintf("%d.retr", n))
				got[messageID(retr)] = retr
				wire := canonical(m.content)
				if got, want := read(fmt.Sprintf("%d.status", n)), fmt.Sprintf("+OK %d octets", len(wire)); got != want {
					t.Errorf("RETR %d status: got %q, want %q", n, got, want)
				}
				for _, lines := range []int{0, 3} {
					if got, want := read(fmt.Sprintf("%d.top%d", n, lines)), topOf(m.content, lines); got != want {
						t.Errorf("TOP %d %d: %s", n, lines, diff(got, want))
					}
				}
			}
			checkDelivered(t, "poplib RETR", got, canonical)
			checkLogins(t, s, user+" "+method)

			left := len(testMessages)
			if tc.mode == "delete" {
				left = 0
			}
			if got := read("quit"); !strings.HasPrefix(got, "+OK") {
				t.Errorf("QUIT: got %q, want +OK", got)
			}
			if n := mailFiles(t, data, user); n != left {
				t.Errorf("%d messages left after poplib's QUIT, want %d", n, left)
			}
		})
	}
}
