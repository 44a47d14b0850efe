package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/oauthtest"
	"github.com/pouchmail/pouch/internal/testkit"
)

// TestFetchFromPouchServe runs the real binary twice: pouch serve, and
// pouch fetch against it over STLS with the certificate pinned.
func TestFetchFromPouchServe(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	var msgs []string
	for i := range 40 {
		msgs = append(msgs, fmt.Sprintf("Subject: %d\n\n.dot\nFrom x\n%s\n", i, strings.Repeat("b", i*100)))
	}
	ps := startPouchServe(t, msgs)
	dir, bin, data, addr := t.TempDir(), ps.bin, ps.data, ps.addr
	fp := certFingerprint(t, filepath.Join(data, "tls"))
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("a long enough secret\n"), 0o600)
	mail := filepath.Join(dir, "Mail")
	fetch := exec.Command(bin, "fetch", "--server", addr, "--tls", "starttls", "--tls-fingerprint", fp,
		"--user", "alice", "--password-file", pw, "--to", "maildir:"+mail, "--state-dir", filepath.Join(dir, "state"))
	out, err := fetch.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "40 fetched") || !strings.Contains(string(out), "40 deleted") {
		t.Fatalf("fetch: %v\n%s", err, out)
	}
	if n := countFiles(t, mail); n != 40 {
		t.Fatalf("%d messages stored", n)
	}
	if n := countFiles(t, filepath.Join(data, "mail", "alice")); n != 0 {
		t.Fatalf("%d messages left on the server", n)
	}
	// A wrong pin is refused before any password is sent.
	fetch = exec.Command(bin, "fetch", "--server", addr, "--tls", "starttls", "--tls-fingerprint", strings.Repeat("ab", 32),
		"--user", "alice", "--password-file", pw, "--to", "maildir:"+mail, "--state-dir", filepath.Join(dir, "state"))
	out, err = fetch.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "does not match --tls-fingerprint") {
		t.Fatalf("wrong pin: %v\n%s", err, out)
	}
}

// pouchServe is the real binary serving alice's maildrop.
type pouchServe struct {
	bin, data, addr string
	logs            *testkit.SyncBuffer // the server's log lines
}

// startPouchServe builds the binary, adds alice (password "a long enough
// secret") with msgs in her maildrop, and runs pouch serve with args added
// until the test ends.
func startPouchServe(t *testing.T, msgs []string, args ...string) *pouchServe {
	t.Helper()
	dir := t.TempDir()
	p := &pouchServe{bin: filepath.Join(dir, "pouch"), data: filepath.Join(dir, "data"), logs: &testkit.SyncBuffer{}}
	if out, err := exec.Command("go", "build", "-o", p.bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	add := exec.Command(p.bin, "user", "add", "--data", p.data, "alice")
	add.Stdin = strings.NewReader("a long enough secret\n")
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("user add: %v\n%s", err, out)
	}
	for i, m := range msgs {
		os.WriteFile(filepath.Join(p.data, "mail", "alice", "new", fmt.Sprintf("%d.M%dP1.test", 1700000000+i, i)), []byte(m), 0o600)
	}
	srv := exec.Command(p.bin, append([]string{"serve", "--data", p.data, "--pop3", "127.0.0.1:0", "--pop3s", "127.0.0.1:0",
		"--auth-fail-delay", "0", "--hostname", "localhost"}, args...)...)
	stderr, _ := srv.StderrPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	re := regexp.MustCompile(`msg=listening protocol=pop3 addr=(\S+)`)
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			fmt.Fprintln(p.logs, sc.Text())
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addrc <- m[1]
			}
		}
	}()
	select {
	case p.addr = <-addrc:
	case <-time.After(30 * time.Second):
		t.Fatal("pouch serve did not start")
	}
	return p
}

// certFingerprint returns the SHA-256 of the first certificate found in dir.
func certFingerprint(t *testing.T, dir string) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range files {
		data, _ := os.ReadFile(f)
		for {
			var b *pem.Block
			b, data = pem.Decode(data)
			if b == nil {
				break
			}
			if b.Type == "CERTIFICATE" {
				sum := sha256.Sum256(b.Bytes)
				return hex.EncodeToString(sum[:])
			}
		}
	}
	t.Fatalf("no certificate in %s", dir)
	return ""
}

// TestFetchOAuthBearerFromPouchServe signs an account in with the test
// authorization server and fetches from pouch serve, which checks the
// tokens against that server's key set: OAUTHBEARER end to end.
func TestFetchOAuthBearerFromPouchServe(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	useTestBrowser(t)
	srv := oauthtest.New(t, oauthtest.Options{})
	var msgs []string
	for i := range 3 {
		msgs = append(msgs, fmt.Sprintf("Subject: %d\n\nbody %d\n", i, i))
	}
	ps := startPouchServe(t, msgs,
		"--oauth-issuer", srv.URL, "--oauth-audience", srv.ClientID(), "--oauth-jwks", srv.JWKSURL(), "--oauth-domains", "example.org")
	dir, data, addr, logs := t.TempDir(), ps.data, ps.addr, ps.logs
	cfg := filepath.Join(dir, "fetch.toml")
	os.WriteFile(cfg, []byte(`
state-dir = "`+dir+`/state"

[account.home]
server = "`+addr+`"
tls = "starttls"
tls-fingerprint = "`+certFingerprint(t, filepath.Join(data, "tls"))+`"
user = "alice@example.org"
to = "maildir:`+dir+`/Mail"
provider = "custom"
issuer = "`+srv.URL+`"
client-id = "`+srv.ClientID()+`"
scopes = ["pop", "offline_access"]
`), 0o600)
	var shown strings.Builder
	_, out, code := pouch(t, "", "fetch", "--config", cfg, "auth", "login", "--browser", "home")
	shown.WriteString(out)
	if code != 0 {
		t.Fatalf("login: exit %d:\n%s", code, out)
	}
	_, out, code = pouch(t, "", "fetch", "--config", cfg)
	shown.WriteString(out)
	if code != 0 || !strings.Contains(out, "home: 3 fetched") || countFiles(t, dir+"/Mail") != 3 {
		t.Fatalf("fetch: exit %d:\n%s", code, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	loginLine := regexp.MustCompile(`msg=login .*user=alice method="AUTH OAUTHBEARER" tls=true`)
	for !loginLine.MatchString(logs.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("no OAUTHBEARER login in the server's log:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A token the server does not take: RFC 7628's error challenge,
	// answered with 0x01, told plainly, and status 3.
	_, out, code = pouch(t, "", "fetch", "--server", addr, "--tls", "starttls", "--tls-fingerprint", certFingerprint(t, filepath.Join(data, "tls")),
		"--user", "alice@example.org", "--oauth-token-command", "echo eyJ.not-a-token.x", "--to", "maildir:"+dir+"/Mail", "--state-dir", dir+"/state")
	shown.WriteString(out)
	if code != 3 || !strings.Contains(out, "login with OAUTHBEARER failed: the server refused the access token as invalid or expired") || strings.Contains(out, "not-a-token") {
		t.Fatalf("bad token: exit %d:\n%s", code, out)
	}
	noSecrets(t, srv, shown.String()+logs.String())
}
