package interop_test

// The real clients over STLS (RFC 2595) and implicit TLS with what each needs
// to trust Pouch's self-signed certificate: a CA file (curl, poplib, mpop), a
// pinned fingerprint (fetchmail, mpop), and the cleartext policy of
// --insecure-auth-networks seen from an address outside it.

import (
	"bufio"
	"crypto/md5"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/testkit"
)

// untrusted is the source address of the clients that must be treated as off
// the trusted network: servers in these tests are started with
// --insecure-auth-networks 127.0.0.1/32, and Linux routes all of 127.0.0.0/8
// to the loopback interface, so a client bound to 127.0.0.2 reaches
// 127.0.0.1 from outside that network.
const untrusted = "127.0.0.2"

// untrustedFlags make 127.0.0.1 the only address where passwords may be sent
// without TLS.
var untrustedFlags = []string{"--insecure-auth-networks", "127.0.0.1/32"}

// refusal is the whole reply line, CRLF included, to USER, AUTH PLAIN and
// the other password commands on a connection without TLS from outside
// --insecure-auth-networks (docs/security.md).
const refusal = "-ERR [AUTH] cleartext authentication is not allowed without TLS; use STLS or port 995\r\n"

// requireUntrustedSource skips the test when a socket cannot be bound to
// 127.0.0.2 (systems that give loopback only 127.0.0.1), or fails it under
// POUCH_REQUIRE_INTEROP=1.
func requireUntrustedSource(t *testing.T) {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(untrusted, "0"))
	if err != nil {
		testkit.SkipOrFail(t, "cannot bind %s: %v", untrusted, err)
	}
	l.Close()
}

// certDER returns the DER form of the certificate in DATA/tls/cert.pem: what
// the server presents, and what fingerprints are computed over.
func certDER(t *testing.T, data string) []byte {
	t.Helper()
	b, err := os.ReadFile(caFile(data))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s holds no PEM certificate", caFile(data))
	}
	return block.Bytes
}

// colonHex is b as upper-case hex octets separated by colons, the form of
// `openssl x509 -fingerprint` and of the server's sha256= log value.
func colonHex(b []byte) string {
	pairs := make([]string, len(b))
	for i, c := range b {
		pairs[i] = strings.ToUpper(hex.EncodeToString([]byte{c}))
	}
	return strings.Join(pairs, ":")
}

// wrongFingerprint is fp with its last octet changed.
func wrongFingerprint(fp string) string {
	last := fp[len(fp)-2:]
	if last == "00" {
		return fp[:len(fp)-2] + "01"
	}
	return fp[:len(fp)-2] + "00"
}

var fingerprintLogRE = regexp.MustCompile(`msg="TLS certificate loaded" sha256=(\S+)`)

// loggedFingerprint is the sha256= value of the server's "TLS certificate
// loaded" line, which a user copies into a client.
func (s *server) loggedFingerprint(t *testing.T) string {
	t.Helper()
	m := fingerprintLogRE.FindStringSubmatch(s.logText())
	if m == nil {
		t.Fatalf("no \"TLS certificate loaded\" line with sha256= in the server log:\n%s", s.logText())
	}
	return m[1]
}

var loginTLSRE = regexp.MustCompile(`msg=login session=\S+ remote=(\S+) user=(\S+) method=("[^"]*"|\S+) tls=(\S+)`)

// tlsLogins returns "user method tls=BOOL from IP" for every login in the
// server's log so far, waiting briefly for want of them.
func (s *server) tlsLogins(want int) []string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out []string
		for _, m := range loginTLSRE.FindAllStringSubmatch(s.logText(), -1) {
			method, err := strconv.Unquote(m[3])
			if err != nil {
				method = m[3]
			}
			ip, _, _ := net.SplitHostPort(m[1])
			out = append(out, fmt.Sprintf("%s %s tls=%s from %s", m[2], method, m[4], ip))
		}
		if len(out) >= want || time.Now().After(deadline) {
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkTLSLogins checks every login the server logged, in order, with its TLS
// state and source address. Called after the last successful login of a
// test, it also shows that the failed attempts before it logged none: the
// log is written in order.
func checkTLSLogins(t *testing.T, s *server, want ...string) {
	t.Helper()
	got := s.tlsLogins(len(want))
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("logins: got %q, want %q", got, want)
	}
}

// dialPOP3From is dialPOP3 from the local address local.
func dialPOP3From(t *testing.T, local, addr string) *pop3Conn {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { c.Close() })
	p := &pop3Conn{t: t, c: c, r: bufio.NewReader(c)}
	p.expect("+OK")
	return p
}

// raw sends a command and returns the reply line exactly as received, CRLF
// included.
func (p *pop3Conn) raw(command string) string {
	p.t.Helper()
	fmt.Fprintf(p.c, "%s\r\n", command)
	l, err := p.r.ReadString('\n')
	if err != nil {
		p.t.Fatalf("%s: %v (got %q)", command, err, l)
	}
	return l
}

// capa sends CAPA and returns its lines without the status line and the
// final ".".
func (p *pop3Conn) capa() []string {
	p.t.Helper()
	p.cmd("CAPA", "+OK")
	var caps []string
	for {
		l, err := p.line()
		if err != nil {
			p.t.Fatalf("CAPA: %v", err)
		}
		if l == "." {
			return caps
		}
		caps = append(caps, l)
	}
}

// keepMessages checks that the test messages are all still in alice's
// maildrop.
func keepMessages(t *testing.T, data, after string) {
	t.Helper()
	if n := mailFiles(t, data, "alice"); n != len(testMessages) {
		t.Errorf("%d messages left after %s, want %d", n, after, len(testMessages))
	}
}

// curl over STLS (--ssl-reqd on a pop3:// URL): CAPA, STLS, the handshake
// checked against --cacert, CAPA again, then AUTH PLAIN; the output is the
// wire form, as over POP3S (TestCurl).
func TestCurlSTLS(t *testing.T) {
	t.Parallel()
	requireTool(t, "curl")
	logVersion(t, "curl", "--version")
	data := newData(t)
	dropAll(t, data, "alice")
	s := startServer(t, data)
	dir, home := clientDir(t)
	base := "pop3://localhost:" + s.port() + "/"
	curl := func(args ...string) (string, int) {
		t.Helper()
		return client(t, dir, home, nil, "curl",
			append([]string{"-sS", "--max-time", "30", "-u", "alice:secret one"}, args...)...)
	}

	// Without the certificate as its CA, curl refuses it (60:
	// CURLE_PEER_FAILED_VERIFICATION) before it authenticates.
	if out, code := curl("--ssl-reqd", base+"1"); code != 60 {
		t.Errorf("curl --ssl-reqd without --cacert: exit %d, want 60\n%s", code, out)
	}

	tlsArgs := []string{"--ssl-reqd", "--cacert", caFile(data)}
	out, code := curl(append(tlsArgs, base)...)
	if code != 0 {
		t.Fatalf("curl --ssl-reqd LIST: exit %d\n%s", code, out)
	}
	if want := wireSizes(); out != want {
		t.Errorf("LIST over STLS: %s", diff(out, want))
	}
	got := map[string]string{}
	for i := range testMessages {
		out, code := curl(append(tlsArgs, fmt.Sprintf("%s%d", base, i+1))...)
		if code != 0 {
			t.Fatalf("curl --ssl-reqd RETR %d: exit %d\n%s", i+1, code, out)
		}
		got[messageID(out)] = out
	}
	checkDelivered(t, "curl RETR over STLS", got, canonical)
	want := []string{}
	for range 1 + len(testMessages) {
		want = append(want, "alice AUTH PLAIN tls=true from 127.0.0.1")
	}
	checkTLSLogins(t, s, want...)
	keepMessages(t, data, "reading over STLS")
}

// poplibSTLSScript drives poplib through STLS. Arguments: host port cafile
// source user password outdir. source, when not empty, is the address the
// connection is made from: poplib.POP3 has no source_address, so the script
// overrides POP3._create_socket, where it opens its connection.
//
// It writes capa.before and capa.after (poplib.capa() before and after
// stls(), one "NAME ARGS" line each), user.before (the reply to USER before
// STLS, or the error_proto that poplib raised with it), stls (the reply to
// STLS), version (the TLS version), N.retr (the lines of RETR N joined with
// CRLF: the wire form, as in TestPoplib) and quit.
const poplibSTLSScript = `
import os, poplib, socket, ssl, sys
host, port, cafile, source, user, password, out = sys.argv[1:]
poplib._MAXLINE = 1 << 20
class POP3From(poplib.POP3):
    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(source, 0) if source else None)
def w(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
def capa(name):
    w(name, "".join("%s %s\n" % (k, " ".join(v)) for k, v in sorted(p.capa().items())).encode())
p = POP3From(host, int(port), timeout=30)
capa("capa.before")
try:
    w("user.before", p.user(user))
except poplib.error_proto as e:
    w("user.before", e.args[0])
w("stls", p.stls(ssl.create_default_context(cafile=cafile)))
w("version", p.sock.version().encode())
capa("capa.after")
p.user(user)
p.pass_(password)
count, size = p.stat()
for n in range(1, count + 1):
    resp, lines, octets = p.retr(n)
    w("%d.retr" % n, b"".join(l + b"\r\n" for l in lines))
w("quit", p.quit())
`

// poplibSTLSResult is what poplibSTLSScript wrote, its CAPA answers parsed.
type poplibSTLSResult struct {
	before, after map[string]string // CAPA name -> arguments
	files         map[string]string
}

// runPoplibSTLS runs poplibSTLSScript as alice against host:port, from
// source when it is not empty.
func runPoplibSTLS(t *testing.T, data, host, port, source string) poplibSTLSResult {
	t.Helper()
	python := requireTool(t, "python3")
	dir, home := clientDir(t)
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	if log, code := client(t, dir, home, nil, python, "-c", poplibSTLSScript,
		host, port, caFile(data), source, "alice", "secret one", out); code != 0 {
		t.Fatalf("poplib over STLS: exit %d\n%s", code, log)
	}
	r := poplibSTLSResult{files: map[string]string{}}
	names, _ := filepath.Glob(filepath.Join(out, "*"))
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		r.files[filepath.Base(name)] = string(b)
	}
	parse := func(s string) map[string]string {
		caps := map[string]string{}
		for _, l := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
			k, v, _ := strings.Cut(l, " ")
			caps[k] = v
		}
		return caps
	}
	r.before, r.after = parse(r.files["capa.before"]), parse(r.files["capa.after"])
	return r
}

// check compares the messages poplib retrieved after STLS with their wire
// form, and its STLS and QUIT replies.
func (r poplibSTLSResult) check(t *testing.T) {
	t.Helper()
	got := map[string]string{}
	for i := range testMessages {
		retr := r.files[fmt.Sprintf("%d.retr", i+1)]
		got[messageID(retr)] = retr
	}
	checkDelivered(t, "poplib RETR after STLS", got, canonical)
	if got := r.files["stls"]; !strings.HasPrefix(got, "+OK") {
		t.Errorf("STLS: got %q, want +OK", got)
	}
	if v := r.files["version"]; v != "TLSv1.2" && v != "TLSv1.3" {
		t.Errorf("TLS version after STLS %q, want TLSv1.2 or TLSv1.3", v)
	}
	if got := r.files["quit"]; !strings.HasPrefix(got, "+OK") {
		t.Errorf("QUIT: got %q, want +OK", got)
	}
}

func hasMech(caps map[string]string, mech string) bool {
	sasl, ok := caps["SASL"]
	return ok && strings.Contains(" "+sasl+" ", " "+mech+" ")
}

// Python's poplib: POP3.stls(context) on the POP3 port (RFC 2595). CAPA
// lists STLS before and not after (RFC 2595 §4: not in the TLS state), and
// SCRAM-SHA-256-PLUS only after, where there is a channel to bind to.
func TestPoplibSTLS(t *testing.T) {
	t.Parallel()
	python := requireTool(t, "python3")
	logVersion(t, python, "-c", "import sys, ssl; print('Python', sys.version.split()[0], ssl.OPENSSL_VERSION)")
	data := newData(t)
	dropAll(t, data, "alice")
	s := startServer(t, data)
	r := runPoplibSTLS(t, data, "localhost", s.port(), "")
	if _, ok := r.before["STLS"]; !ok {
		t.Errorf("CAPA before STLS lacks STLS: %q", r.files["capa.before"])
	}
	if _, ok := r.after["STLS"]; ok {
		t.Errorf("CAPA after STLS still lists STLS: %q", r.files["capa.after"])
	}
	for _, caps := range []map[string]string{r.before, r.after} {
		if _, ok := caps["USER"]; !ok { // loopback is trusted by default
			t.Errorf("CAPA lacks USER on loopback: %q", caps)
		}
		if !hasMech(caps, "PLAIN") || !hasMech(caps, "SCRAM-SHA-256") {
			t.Errorf("CAPA SASL %q lacks PLAIN or SCRAM-SHA-256", caps["SASL"])
		}
	}
	if hasMech(r.before, "SCRAM-SHA-256-PLUS") || !hasMech(r.after, "SCRAM-SHA-256-PLUS") {
		t.Errorf("SCRAM-SHA-256-PLUS should be offered after STLS only: SASL %q before, %q after",
			r.before["SASL"], r.after["SASL"])
	}
	if got := r.files["user.before"]; got != "+OK send PASS" {
		t.Errorf("USER before STLS on loopback: got %q, want %q", got, "+OK send PASS")
	}
	r.check(t)
	checkTLSLogins(t, s, "alice PASS tls=true from 127.0.0.1")
	keepMessages(t, data, "poplib's QUIT")
}

// fetchmail 6.4.37's sslfingerprint is the MD5 digest of the server's
// certificate in DER form (X509_digest with EVP_md5: what `openssl x509
// -md5 -fingerprint` prints), as colon-separated hex octets, compared without
// regard to case; fetchmail -v prints it as "HOST key fingerprint: ...". It
// has no other digest: the SHA-256 value that Pouch logs, as it is or with a
// "SHA256:" prefix, is a mismatch. A mismatch ends the poll after the
// handshake, before USER, with "fingerprints do not match!" and exit status 2
// (PS_SOCKET).
//
// "sslproto tls1.2+" makes fetchmail require TLS 1.2 or newer, negotiated
// with STLS on the POP3 port since "ssl" is not given; "no sslcertck" leaves
// the pinned fingerprint as the only check of the self-signed certificate,
// the use the manual gives it.
func TestFetchmailFingerprint(t *testing.T) {
	t.Parallel()
	requireTool(t, "fetchmail")
	data := newData(t)
	dropAll(t, data, "alice")
	s := startServer(t, data)
	der := certDER(t, data)
	md5sum, sha := md5.Sum(der), sha256.Sum256(der)
	pin := colonHex(md5sum[:])
	if logged := s.loggedFingerprint(t); logged != colonHex(sha[:]) {
		t.Fatalf("logged fingerprint %s, want the SHA-256 of %s, %s", logged, caFile(data), colonHex(sha[:]))
	}

	r := newFetchmailRun(t, s, data)
	r.invisible = true
	run := func(fp string) (string, int) {
		t.Helper()
		rc := fmt.Sprintf("set invisible\n"+
			"poll localhost port %s proto pop3 auth password\n"+
			"  user \"alice\" there password \"secret one\" is \"alice\" here\n"+
			"  mda \"%s\"\n"+
			"  sslproto tls1.2+ no sslcertck sslfingerprint \"%s\"\n",
			s.port(), filepath.Join(r.dir, "deliver.sh"), fp)
		rcfile := filepath.Join(r.dir, "fetchmailrc")
		writeFile(t, rcfile, rc, 0o600)
		return client(t, r.dir, r.home, []string{"FETCHMAILHOME=" + r.home}, "fetchmail",
			"-f", rcfile, "--idfile", filepath.Join(r.home, "fetchids"),
			"--pidfile", filepath.Join(r.home, "fetchmail.pid"), "--nosyslog", "-v")
	}

	for _, tc := range []struct{ name, fp string }{
		{"a wrong MD5 fingerprint", wrongFingerprint(pin)},
		{"the SHA-256 fingerprint", colonHex(sha[:])},
		{"the SHA-256 fingerprint with SHA256:", "SHA256:" + colonHex(sha[:])},
	} {
		out, code := run(tc.fp)
		if code == 0 || code == 1 {
			t.Errorf("fetchmail with %s: exit %d, want a failure\n%s", tc.name, code, out)
		}
		if !strings.Contains(out, "fingerprints do not match") {
			t.Errorf("fetchmail with %s does not report a mismatch:\n%s", tc.name, out)
		}
		if !strings.Contains(out, "POP3> STLS") || strings.Contains(out, "POP3> USER") || strings.Contains(out, "POP3> PASS") {
			t.Errorf("fetchmail with %s: want STLS and no USER or PASS:\n%s", tc.name, out)
		}
		if names, _ := filepath.Glob(filepath.Join(r.out, "*")); len(names) != 0 {
			t.Errorf("fetchmail with %s delivered %d messages", tc.name, len(names))
		}
		keepMessages(t, data, "fetchmail with "+tc.name)
	}

	out, code := run(pin)
	if code != 0 {
		t.Fatalf("fetchmail with the MD5 fingerprint %s: exit %d\n%s", pin, code, out)
	}
	if !strings.Contains(out, "localhost key fingerprint: "+pin+"\n") || !strings.Contains(out, "fingerprints match") {
		t.Errorf("fetchmail does not report the fingerprint %s as matching:\n%s", pin, out)
	}
	if !strings.Contains(out, "POP3> STLS") || !strings.Contains(out, "upgrade to TLS succeeded") {
		t.Errorf("fetchmail did not use STLS:\n%s", out)
	}
	r.check(out)
	if n := mailFiles(t, data, "alice"); n != 0 {
		t.Errorf("%d messages left after fetchmail, want 0\n%s", n, out)
	}
	checkTLSLogins(t, s, "alice PASS tls=true from 127.0.0.1")
}

// mpopDir makes a client directory with an empty Maildir md/ for mpop's
// delivery.
func mpopDir(t *testing.T) (dir, home, md string) {
	t.Helper()
	dir, home = clientDir(t)
	md = filepath.Join(dir, "md")
	for _, sub := range []string{"new", "cur", "tmp"} {
		if err := os.MkdirAll(filepath.Join(md, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return dir, home, md
}

var mpopSentRE = regexp.MustCompile(`(?m)^--> (.*?)\r?$`)

// mpopSent returns the lines that mpop --debug shows it sent ("--> LINE").
func mpopSent(debug string) []string {
	var sent []string
	for _, m := range mpopSentRE.FindAllStringSubmatch(debug, -1) {
		sent = append(sent, m[1])
	}
	return sent
}

// The "Done when": a new user runs pouch serve, points a client at
// the POP3S port with the fingerprint that pouch serve logged, and logs in
// with SCRAM-SHA-256. The client is docs/server.md's mpop command, all on the
// command line (no configuration file), with --passwordeval for the password
// it would ask for and --received-header=off so that the delivered files are
// the messages' LF form (TestMpop).
func TestDoneWhenFingerprintAndSCRAM(t *testing.T) {
	t.Parallel()
	requireTool(t, "mpop")
	logVersion(t, "mpop", "--version")
	data := newData(t)
	dropAll(t, data, "alice")
	s := startServer(t, data)
	fp := s.loggedFingerprint(t)
	sha := sha256.Sum256(certDER(t, data))
	if fp != colonHex(sha[:]) {
		t.Fatalf("logged fingerprint %s, want the SHA-256 of %s, %s", fp, caFile(data), colonHex(sha[:]))
	}
	// ... and that is the certificate served on the POP3S port.
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", s.tls,
		&tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	served := sha256.Sum256(c.ConnectionState().PeerCertificates[0].Raw)
	c.Close()
	if colonHex(served[:]) != fp {
		t.Fatalf("POP3S serves a certificate with fingerprint %s, the log says %s", colonHex(served[:]), fp)
	}

	dir, home, md := mpopDir(t)
	mpop := func(fp string) (string, int) {
		t.Helper()
		return client(t, dir, home, nil, "mpop", "--host=localhost", "--port="+s.tlsPort(),
			"--tls=on", "--tls-starttls=off", "--tls-fingerprint="+fp,
			"--auth=scram-sha-256", "--user=alice", "--passwordeval=echo 'secret one'",
			"--delivery=maildir,"+md, "--keep=on", "--received-header=off",
			"--uidls-file="+filepath.Join(home, "uidls"), "--timeout=30", "--debug")
	}

	// Another fingerprint: mpop refuses the certificate and sends nothing.
	if out, code := mpop(wrongFingerprint(fp)); code == 0 || strings.Contains(out, "--> AUTH") {
		t.Errorf("mpop with a wrong fingerprint: exit %d, want a failure before AUTH\n%s", code, out)
	}
	if names, _ := filepath.Glob(filepath.Join(md, "new", "*")); len(names) != 0 {
		t.Errorf("mpop with a wrong fingerprint delivered %d messages", len(names))
	}

	out, code := mpop(fp)
	if code != 0 {
		t.Fatalf("mpop --tls-fingerprint=%s --auth=scram-sha-256: exit %d\n%s", fp, code, out)
	}
	checkDelivered(t, "mpop", readMessages(t, filepath.Join(md, "new", "*")), lfLines)
	if sent := mpopSent(out); !slices.Contains(sent, "AUTH SCRAM-SHA-256") ||
		slices.ContainsFunc(sent, func(c string) bool { return strings.HasPrefix(c, "PASS") || strings.Contains(c, "secret one") }) {
		t.Errorf("mpop should authenticate with SCRAM-SHA-256 and never send the password; it sent %q", sent)
	}
	if !strings.Contains(s.logText(), `method="AUTH SCRAM-SHA-256"`) {
		t.Errorf(`the server log has no method="AUTH SCRAM-SHA-256"`)
	}
	checkTLSLogins(t, s, "alice AUTH SCRAM-SHA-256 tls=true from 127.0.0.1")
	keepMessages(t, data, "mpop --keep=on")
	if t.Failed() {
		t.Logf("mpop --debug:\n%s", out)
	}
}

// mpop with STLS (--tls=on --tls-starttls=on) on the POP3 port, trusting
// the certificate through --tls-trust-file; "untrusted" runs from 127.0.0.2
// (--source-ip) to a server that allows cleartext passwords from 127.0.0.1
// only, where USER works after STLS.
func TestMpopSTLS(t *testing.T) {
	t.Parallel()
	requireTool(t, "mpop")
	for _, tc := range []struct {
		name      string
		auth      string // mpop's
		method    string // as the server logs it
		untrusted bool
	}{
		{"user", "user", "PASS", false},
		{"scram-sha-256", "scram-sha-256", "AUTH SCRAM-SHA-256", false},
		{"untrusted/user", "user", "PASS", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var args []string
			from := "127.0.0.1"
			if tc.untrusted {
				requireUntrustedSource(t)
				args, from = untrustedFlags, untrusted
			}
			data := newData(t)
			dropAll(t, data, "alice")
			s := startServerArgs(t, data, args)
			dir, home, md := mpopDir(t)
			var conf strings.Builder
			fmt.Fprintf(&conf, "account default\nhost localhost\nport %s\ntls on\ntls_starttls on\ntls_trust_file %s\n",
				s.port(), caFile(data))
			fmt.Fprintf(&conf, "user alice\npassword secret one\nauth %s\ndelivery maildir %s\n", tc.auth, md)
			if tc.untrusted {
				fmt.Fprintf(&conf, "source_ip %s\n", untrusted)
			}
			rc := filepath.Join(dir, "mpoprc")
			writeFile(t, rc, conf.String(), 0o600)
			out := mustClient(t, dir, home, nil, "mpop", "-C", rc, "--timeout=30", "--debug",
				"--received-header=off", "--uidls-file="+filepath.Join(home, "uidls"), "--keep=off")
			if !slices.Contains(mpopSent(out), "STLS") {
				t.Errorf("mpop did not send STLS")
			}
			checkDelivered(t, "mpop", readMessages(t, filepath.Join(md, "new", "*")), lfLines)
			if n := mailFiles(t, data, "alice"); n != 0 {
				t.Errorf("%d messages left after mpop --keep=off, want 0", n)
			}
			checkTLSLogins(t, s, "alice "+tc.method+" tls=true from "+from)
			if t.Failed() {
				t.Logf("mpop --debug:\n%s", out)
			}
		})
	}
}

// The cleartext policy seen by clients outside --insecure-auth-networks:
// without TLS no password command is accepted or advertised (CAPA keeps STLS
// and SCRAM-SHA-256 only), and after STLS everything works as on loopback.
func TestCleartextPolicy(t *testing.T) {
	t.Parallel()
	requireUntrustedSource(t)

	t.Run("curl", func(t *testing.T) {
		t.Parallel()
		requireTool(t, "curl")
		data := newData(t)
		dropAll(t, data, "alice")
		s := startServerArgs(t, data, untrustedFlags)
		dir, home := clientDir(t)
		base := "pop3://" + s.addr + "/"
		curl := func(args ...string) (string, int) {
			t.Helper()
			return client(t, dir, home, nil, "curl", append([]string{"-sS", "--max-time", "30",
				"--interface", untrusted, "-u", "alice:secret one"}, args...)...)
		}

		// Without TLS curl finds neither USER nor a SASL mechanism it
		// has in CAPA, sends no credentials and fails (67:
		// CURLE_LOGIN_DENIED).
		if out, code := curl(base); code == 0 {
			t.Errorf("curl without TLS from %s: exit 0, want a failure\n%s", untrusted, out)
		} else {
			t.Logf("curl without TLS from %s: exit %d: %s", untrusted, code, strings.TrimSpace(out))
		}

		// The same commands by hand: CAPA, then each way of sending a
		// password, answered with the refusal, byte for byte.
		p := dialPOP3From(t, untrusted, s.addr)
		caps := strings.Join(p.capa(), "|")
		if strings.Contains("|"+caps+"|", "|USER|") || !strings.Contains("|"+caps+"|", "|STLS|") ||
			!strings.Contains("|"+caps+"|", "|SASL SCRAM-SHA-256|") {
			t.Errorf("CAPA without TLS from %s: %q, want STLS and SASL SCRAM-SHA-256 without USER", untrusted, caps)
		}
		if got := p.raw("USER alice"); got != refusal {
			t.Errorf("USER without TLS from %s: got %q, want %q", untrusted, got, refusal)
		}
		if got := p.raw("AUTH PLAIN AGFsaWNlAHNlY3JldCBvbmU="); got != refusal { // \0alice\0secret one
			t.Errorf("AUTH PLAIN without TLS from %s: got %q, want %q", untrusted, got, refusal)
		}
		if got := p.raw("AUTH LOGIN"); got != refusal {
			t.Errorf("AUTH LOGIN without TLS from %s: got %q, want %q", untrusted, got, refusal)
		}
		p.cmd("QUIT", "+OK")
		// From 127.0.0.1, inside the network, USER is accepted.
		p = dialPOP3From(t, "127.0.0.1", s.addr)
		p.cmd("USER alice", "+OK")
		p.cmd("QUIT", "+OK")

		// With STLS curl logs in and reads the messages.
		tlsArgs := []string{"--ssl-reqd", "--cacert", caFile(data)}
		out, code := curl(append(tlsArgs, base)...)
		if code != 0 {
			t.Fatalf("curl --ssl-reqd from %s: exit %d\n%s", untrusted, code, out)
		}
		if want := wireSizes(); out != want {
			t.Errorf("LIST over STLS: %s", diff(out, want))
		}
		out, code = curl(append(tlsArgs, base+"1")...)
		if code != 0 {
			t.Fatalf("curl --ssl-reqd RETR 1 from %s: exit %d\n%s", untrusted, code, out)
		}
		if want := canonical(testMessages[0].content); out != want {
			t.Errorf("RETR 1 over STLS: %s", diff(out, want))
		}
		// Only the two STLS runs logged in.
		checkTLSLogins(t, s, "alice AUTH PLAIN tls=true from "+untrusted, "alice AUTH PLAIN tls=true from "+untrusted)
		keepMessages(t, data, "reading")
	})

	t.Run("poplib", func(t *testing.T) {
		t.Parallel()
		data := newData(t)
		dropAll(t, data, "alice")
		s := startServerArgs(t, data, untrustedFlags)
		r := runPoplibSTLS(t, data, s.host(), s.port(), untrusted)
		if _, ok := r.before["USER"]; ok {
			t.Errorf("CAPA without TLS from %s lists USER: %q", untrusted, r.files["capa.before"])
		}
		if _, ok := r.before["STLS"]; !ok {
			t.Errorf("CAPA without TLS from %s lacks STLS: %q", untrusted, r.files["capa.before"])
		}
		if got := r.before["SASL"]; got != "SCRAM-SHA-256" {
			t.Errorf("CAPA SASL without TLS from %s: %q, want SCRAM-SHA-256 only", untrusted, got)
		}
		if got, want := r.files["user.before"]+"\r\n", refusal; got != want {
			t.Errorf("USER without TLS from %s: poplib got %q, want %q", untrusted, got, want)
		}
		if _, ok := r.after["USER"]; !ok {
			t.Errorf("CAPA after STLS from %s lacks USER: %q", untrusted, r.files["capa.after"])
		}
		if _, ok := r.after["STLS"]; ok {
			t.Errorf("CAPA after STLS still lists STLS: %q", r.files["capa.after"])
		}
		if !hasMech(r.after, "PLAIN") || !hasMech(r.after, "SCRAM-SHA-256-PLUS") {
			t.Errorf("CAPA SASL after STLS from %s: %q, want PLAIN and SCRAM-SHA-256-PLUS", untrusted, r.after["SASL"])
		}
		r.check(t)
		checkTLSLogins(t, s, "alice PASS tls=true from "+untrusted)
		keepMessages(t, data, "poplib's QUIT")
	})
}
