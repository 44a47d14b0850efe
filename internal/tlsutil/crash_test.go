package tlsutil

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/internal/testkit"
)

// crashedRenewal leaves in dir what a crash between the two renames of a
// renewal leaves: the new key beside the old certificate.
func crashedRenewal(t *testing.T, dir string) {
	t.Helper()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	now := time.Now()
	if err := selfSignedFor(cert, key, "pop.example.org", now.Add(-700*24*time.Hour), now.Add(10*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if err := SelfSigned(filepath.Join(other, "cert.pem"), filepath.Join(other, "key.pem"), "pop.example.org"); err != nil {
		t.Fatal(err)
	}
	newKey, err := os.ReadFile(filepath.Join(other, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := fsx.WriteFile(key, newKey, fsx.Options{Perm: 0o600}); err != nil {
		t.Fatal(err)
	}
}

// A crash in the middle of a renewal does not keep the server from
// starting: the self-signed pair is made anew, and the new fingerprint is
// logged.
func TestSelfSignedMismatchedPairMadeAnew(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	crashedRenewal(t, dir)
	var logs testkit.SyncBuffer
	m, err := NewManager(nil, nil, dir, "pop.example.org", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatalf("start after a crash while renewing: %v", err)
	}
	fp := m.Fingerprints()[0]
	if !strings.Contains(logs.String(), "made anew") || !strings.Contains(logs.String(), "sha256="+fp) {
		t.Errorf("new pair not logged with its fingerprint %s:\n%s", fp, logs.String())
	}
	if err := leafOf(t, m).VerifyHostname("pop.example.org"); err != nil {
		t.Error(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	// The files are a pair again: the next start uses them as they are.
	logs = testkit.SyncBuffer{}
	m2, err := NewManager(nil, nil, dir, "pop.example.org", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil || m2.Fingerprints()[0] != fp {
		t.Fatalf("next start: %v", err)
	}
	if strings.Contains(logs.String(), "made anew") {
		t.Errorf("a matching pair made anew:\n%s", logs.String())
	}
}

// A crash on the first start, after the key was written but before the
// certificate, or a key removed by hand: the pair is made anew.
func TestSelfSignedMissingFileMadeAnew(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := SelfSigned(cert, key, "localhost"); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(cert)
	if err := os.Remove(key); err != nil {
		t.Fatal(err)
	}
	if _, err := NewManager(nil, nil, dir, "localhost", quiet()); err != nil {
		t.Fatalf("start without the key: %v", err)
	}
	if now, _ := os.ReadFile(cert); bytes.Equal(now, old) {
		t.Error("certificate kept without its key")
	}
	if err := os.Remove(cert); err != nil {
		t.Fatal(err)
	}
	if _, err := NewManager(nil, nil, dir, "localhost", quiet()); err != nil {
		t.Fatalf("start without the certificate: %v", err)
	}
}

// Files Pouch did not make are never replaced, in the data directory or
// given with --tls-cert: a key that does not go with them is an error, and
// the files stay as they are.
func TestForeignMismatchedPairKept(t *testing.T) {
	dir := t.TempDir()
	crashedRenewal(t, dir)
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	oldCert, _ := os.ReadFile(cert)
	oldKey, _ := os.ReadFile(key)
	if _, err := NewManager([]string{cert}, []string{key}, filepath.Join(dir, "tls"), "pop.example.org", quiet()); err == nil {
		t.Fatal("operator's mismatched pair accepted")
	}
	nowCert, _ := os.ReadFile(cert)
	nowKey, _ := os.ReadFile(key)
	if !bytes.Equal(nowCert, oldCert) || !bytes.Equal(nowKey, oldKey) {
		t.Fatal("the operator's files were rewritten")
	}
	if _, err := os.Stat(filepath.Join(dir, "tls")); err == nil {
		t.Fatal("a self-signed certificate was made beside the operator's")
	}

	// Certificates that are not Pouch's, in the data directory, with a key
	// that is not theirs: one from the operator and one that does not parse.
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pop.example.org", Organization: []string{"Example"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"pop.example.org"}}
	der, _ := issue(t, tmpl, nil, nil)
	for i, foreign := range [][]byte{
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		[]byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
	} {
		data := filepath.Join(dir, "data"+strconv.Itoa(i))
		if err := os.MkdirAll(data, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(data, "cert.pem"), foreign, 0o644)
		os.WriteFile(filepath.Join(data, "key.pem"), oldKey, 0o600)
		if _, err := NewManager(nil, nil, data, "pop.example.org", quiet()); err == nil {
			t.Fatalf("certificate %d, not Pouch's, accepted with a key not its own", i)
		}
		gotCert, _ := os.ReadFile(filepath.Join(data, "cert.pem"))
		gotKey, _ := os.ReadFile(filepath.Join(data, "key.pem"))
		if !bytes.Equal(gotCert, foreign) || !bytes.Equal(gotKey, oldKey) {
			t.Fatalf("certificate %d, not Pouch's, was replaced", i)
		}
	}
}
