package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// issue makes the certificate tmpl describes, for a new key, signed by
// parent's key parentKey, or by its own key when parent is nil; it returns
// the certificate in DER and the new key.
func issue(t *testing.T, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

func TestSelfSignedOnFirstStart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	m, err := NewManager(nil, nil, dir, "pop.example.org", quiet())
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "key.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	c, _ := m.GetCertificate(&tls.ClientHelloInfo{})
	if err := c.Leaf.VerifyHostname("pop.example.org"); err != nil {
		t.Errorf("certificate names: %v", err)
	}
	// The second start reuses it.
	m2, err := NewManager(nil, nil, dir, "pop.example.org", quiet())
	if err != nil || m2.Fingerprints()[0] != m.Fingerprints()[0] {
		t.Fatalf("second start made a new certificate: %v", err)
	}
}

func TestReloadWhenFilesChange(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := SelfSigned(cert, key, "one.example"); err != nil {
		t.Fatal(err)
	}
	m, err := NewManager([]string{cert}, []string{key}, "", "", quiet())
	if err != nil {
		t.Fatal(err)
	}
	before := m.Fingerprints()[0]
	if err := SelfSigned(cert, key, "one.example"); err != nil {
		t.Fatal(err)
	}
	// Make the change visible even on file systems with coarse times.
	later := time.Now().Add(2 * time.Second)
	os.Chtimes(cert, later, later)
	m.mu.Lock()
	m.lastCheck = time.Time{}
	m.mu.Unlock()
	m.GetCertificate(&tls.ClientHelloInfo{})
	if m.Fingerprints()[0] == before {
		t.Fatal("a changed certificate file was not picked up")
	}
	// A broken file keeps the working certificate.
	now := m.Fingerprints()[0]
	os.WriteFile(cert, []byte("garbage"), 0o600)
	os.Chtimes(cert, later.Add(time.Second), later.Add(time.Second))
	m.mu.Lock()
	m.lastCheck = time.Time{}
	m.mu.Unlock()
	if c, err := m.GetCertificate(&tls.ClientHelloInfo{}); err != nil || c == nil || m.Fingerprints()[0] != now {
		t.Fatal("a broken certificate file replaced the working one")
	}
}

func TestSNI(t *testing.T) {
	dir := t.TempDir()
	var certs, keys []string
	for _, name := range []string{"a.example", "b.example"} {
		c, k := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
		if err := SelfSigned(c, k, name); err != nil {
			t.Fatal(err)
		}
		certs, keys = append(certs, c), append(keys, k)
	}
	m, err := NewManager(certs, keys, "", "", quiet())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a.example", "b.example"} {
		c, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: name, SupportedVersions: []uint16{tls.VersionTLS13}, SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}})
		if err != nil || c.Leaf.VerifyHostname(name) != nil {
			t.Errorf("SNI %s got the wrong certificate (%v)", name, err)
		}
	}
	if _, err := NewManager(certs, keys[:1], "", "", quiet()); err == nil {
		t.Error("unpaired certificates accepted")
	}
}
