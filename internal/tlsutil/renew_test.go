package tlsutil

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/testkit"
)

func leafOf(t *testing.T, m *Manager) *x509.Certificate {
	t.Helper()
	c, err := m.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf
}

// A self-signed certificate in its last 30 days is made anew at start, and
// the new fingerprint is logged.
func TestSelfSignedRenewedAtStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	now := time.Now()
	if err := selfSignedFor(cert, key, "pop.example.org", now.Add(-700*24*time.Hour), now.Add(10*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	var logs testkit.SyncBuffer
	m, err := NewManager(nil, nil, dir, "pop.example.org", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	leaf := leafOf(t, m)
	if leaf.NotAfter.Before(now.Add(700 * 24 * time.Hour)) {
		t.Fatalf("certificate ending %v not renewed", leaf.NotAfter)
	}
	if err := leaf.VerifyHostname("pop.example.org"); err != nil {
		t.Errorf("renewed certificate: %v", err)
	}
	if fp := m.Fingerprints()[0]; !strings.Contains(logs.String(), "self-signed TLS certificate renewed") || !strings.Contains(logs.String(), "sha256="+fp) {
		t.Errorf("renewal not logged with the new fingerprint %s:\n%s", fp, logs.String())
	}
	// The files hold the new pair: the next start uses it as it is.
	m2, err := NewManager(nil, nil, dir, "pop.example.org", quiet())
	if err != nil || m2.Fingerprints()[0] != m.Fingerprints()[0] {
		t.Fatalf("next start: %v", err)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("renewed key file: %v %v", fi, err)
	}
}

// A running server renews the self-signed certificate when it comes within
// 30 days of its end, at the periodic look at the files.
func TestSelfSignedRenewedWhileRunning(t *testing.T) {
	dir := t.TempDir()
	var logs testkit.SyncBuffer
	m, err := NewManager(nil, nil, dir, "localhost", slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	before, first := m.Fingerprints()[0], leafOf(t, m)
	// 31 days before the end: nothing yet.
	m.now = func() time.Time { return first.NotAfter.Add(-31 * 24 * time.Hour) }
	m.mu.Lock()
	m.lastCheck = time.Time{}
	m.mu.Unlock()
	if leafOf(t, m); m.Fingerprints()[0] != before {
		t.Fatal("renewed more than 30 days before the end")
	}
	// 29 days before the end.
	m.now = func() time.Time { return first.NotAfter.Add(-29 * 24 * time.Hour) }
	m.mu.Lock()
	m.lastCheck = time.Time{}
	m.mu.Unlock()
	leaf := leafOf(t, m)
	after := m.Fingerprints()[0]
	if after == before || !leaf.NotAfter.After(first.NotAfter) {
		t.Fatalf("not renewed 29 days before the end (ends %v)", leaf.NotAfter)
	}
	if !strings.Contains(logs.String(), "sha256="+after) {
		t.Errorf("renewal not logged with the new fingerprint %s:\n%s", after, logs.String())
	}
}

// The operator's certificate files are never written, however close their
// end; nor is a certificate in the data directory that Pouch did not make.
func TestOperatorCertificateNeverRenewed(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	now := time.Now()
	if err := selfSignedFor(cert, key, "pop.example.org", now.Add(-time.Hour), now.Add(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	old, _ := os.ReadFile(cert)
	m, err := NewManager([]string{cert}, []string{key}, filepath.Join(dir, "tls"), "pop.example.org", quiet())
	if err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	m.lastCheck = time.Time{}
	m.mu.Unlock()
	leafOf(t, m)
	if now, _ := os.ReadFile(cert); !bytes.Equal(now, old) {
		t.Fatal("the operator's certificate file was rewritten")
	}
	if _, err := os.Stat(filepath.Join(dir, "tls")); err == nil {
		t.Fatal("a self-signed certificate was made beside the operator's")
	}

	// A certificate from elsewhere put in the data directory.
	data := filepath.Join(dir, "data")
	os.MkdirAll(data, 0o700)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Some CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	_, caKey := issue(t, caTmpl, nil, nil)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost", Organization: []string{selfSignedOrg}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), DNSNames: []string{"localhost"}}
	der, leafKey := issue(t, leafTmpl, caTmpl, caKey)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(leafKey)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	os.WriteFile(filepath.Join(data, "cert.pem"), certPEM, 0o600)
	os.WriteFile(filepath.Join(data, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	if _, err := NewManager(nil, nil, data, "localhost", quiet()); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(data, "cert.pem")); !bytes.Equal(got, certPEM) {
		t.Fatal("a certificate Pouch did not make was renewed")
	}
}

// The client CAs are read again when their file changes and by
// ReloadClientCA; a file that cannot be read keeps the CAs in force.
func TestClientCAReload(t *testing.T) {
	dir := t.TempDir()
	m, err := NewManager(nil, nil, filepath.Join(dir, "tls"), "localhost", quiet())
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	writeCA := func(name string) *x509.Certificate {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, _ := issue(t, tmpl, nil, nil)
		os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
		c, _ := x509.ParseCertificate(der)
		return c
	}
	trusts := func(ca *x509.Certificate) bool {
		pool := m.ClientCAs()
		if pool == nil {
			return false
		}
		_, err := ca.Verify(x509.VerifyOptions{Roots: pool})
		return err == nil
	}
	if m.ClientCAs() != nil {
		t.Fatal("client CAs without a file")
	}
	first := writeCA("First")
	cfg, err := m.ServerConfig(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ClientAuth != tls.RequestClientCert {
		t.Errorf("ClientAuth %v: a certificate from another CA would fail the handshake", cfg.ClientAuth)
	}
	if !trusts(first) {
		t.Fatal("the client CA is not in force")
	}
	// A change to the file is picked up at the next look.
	second := writeCA("Second")
	later := time.Now().Add(2 * time.Second)
	os.Chtimes(caFile, later, later)
	m.mu.Lock()
	m.lastCheck = time.Time{}
	m.mu.Unlock()
	leafOf(t, m)
	if trusts(first) || !trusts(second) {
		t.Fatal("a changed client CA file was not picked up")
	}
	os.WriteFile(caFile, []byte("garbage"), 0o600)
	if err := m.ReloadClientCA(); err == nil || !trusts(second) {
		t.Fatalf("a damaged client CA file: %v, and the CAs in force changed", err)
	}
	if _, err := m.ServerConfig(filepath.Join(dir, "missing.pem")); err == nil {
		t.Fatal("a missing client CA file accepted")
	}
}
