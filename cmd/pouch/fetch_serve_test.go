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
)

// TestFetchFromPouchServe runs the real binary twice: pouch serve, and
// pouch fetch against it over STLS with the certificate pinned.
func TestFetchFromPouchServe(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "pouch")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	data := filepath.Join(dir, "data")
	add := exec.Command(bin, "user", "add", "--data", data, "alice")
	add.Stdin = strings.NewReader("a long enough secret\n")
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("user add: %v\n%s", err, out)
	}
	for i := range 40 {
		m := fmt.Sprintf("Subject: %d\n\n.dot\nFrom x\n%s\n", i, strings.Repeat("b", i*100))
		os.WriteFile(filepath.Join(data, "mail", "alice", "new", fmt.Sprintf("%d.M%dP1.test", 1700000000+i, i)), []byte(m), 0o600)
	}
	srv := exec.Command(bin, "serve", "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "127.0.0.1:0",
		"--auth-fail-delay", "0", "--hostname", "localhost")
	stderr, _ := srv.StderrPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	re := regexp.MustCompile(`msg=listening protocol=pop3 addr=(\S+)`)
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addrc <- m[1]
			}
		}
	}()
	var addr string
	select {
	case addr = <-addrc:
	case <-time.After(30 * time.Second):
		t.Fatal("pouch serve did not start")
	}
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
