package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/store/maildir"
)

// testCA is a CA that signs client certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, name string) testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return testCA{cert, key}
}

func (ca testCA) write(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (ca testCA) client(t *testing.T, name string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// --tls-client-ca is read again by a reload (SIGHUP, pouch reload), like the
// certificates; a file that cannot be read keeps the CAs in force.
func TestReloadClientCA(t *testing.T) {
	data := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	usersPath := filepath.Join(data, "users")
	if err := auth.AddUser(usersPath, "alice", "Client-CA-7-heron-lamp"); err != nil {
		t.Fatal(err)
	}
	users, err := auth.OpenUsers(usersPath)
	if err != nil {
		t.Fatal(err)
	}
	first, second := newTestCA(t, "First CA"), newTestCA(t, "Second CA")
	caFile := filepath.Join(data, "client-ca.pem")
	first.write(t, caFile)
	_, s := checkedSettings(t, "--data", data, "--tls-client-ca", caFile, "--hostname", "localhost")
	cfg := server.Config{Store: maildir.New(filepath.Join(data, "mail")), Auth: users, Logger: log, AuthFailDelay: -1}
	certs, err := s.setupTLS("localhost", log, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(cfg)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(l)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	roots := x509.NewCertPool()
	if pemData, err := os.ReadFile(filepath.Join(data, "tls", "cert.pem")); err != nil || !roots.AppendCertsFromPEM(pemData) {
		t.Fatalf("the self-signed certificate: %v", err)
	}
	// external logs in with a certificate and reports whether EXTERNAL
	// was offered and accepted.
	external := func(cert tls.Certificate) bool {
		t.Helper()
		conn, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{
			RootCAs: roots, ServerName: "localhost",
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &cert, nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(conn)
		line := func() string {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("reading: %v", err)
			}
			return strings.TrimSpace(l)
		}
		line() // greeting
		io.WriteString(conn, "AUTH EXTERNAL =\r\nQUIT\r\n")
		reply := line()
		line()
		return strings.HasPrefix(reply, "+OK")
	}
	fromFirst, fromSecond := first.client(t, "alice"), second.client(t, "alice")
	if !external(fromFirst) || external(fromSecond) {
		t.Fatal("before the reload, EXTERNAL must take the first CA's certificates only")
	}

	second.write(t, caFile)
	if err := reload(log, &configReloader{}, certs, &accounts{users: users}, nil, nil); err != nil {
		t.Fatalf("reload: %v", err)
	}
	if external(fromFirst) || !external(fromSecond) {
		t.Fatal("after the reload, EXTERNAL must take the second CA's certificates only")
	}

	os.WriteFile(caFile, []byte("not a certificate"), 0o600)
	err = reload(log, &configReloader{}, certs, &accounts{users: users}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "kept the old client CAs") || strings.Contains(err.Error(), "TLS certificates") {
		t.Fatalf("reload with a damaged client CA file: %v", err)
	}
	if !external(fromSecond) {
		t.Fatal("a damaged client CA file replaced the CAs in force")
	}
}

// RFC 1939 §3 and RFC 2449 §4 let a command line be 255 octets: a shorter
// limit is refused by serve and check-config, in one sentence.
func TestMaxLineLengthAtLeast255(t *testing.T) {
	data := t.TempDir()
	// An address that cannot be listened on ends serve if the value is let
	// through.
	_, e, code := pouch(t, "", "serve", "--data", data, "--max-line-length", "5", "--pop3", "127.0.0.1:notaport", "--pop3s", "")
	if code != 2 || !strings.Contains(e, "--max-line-length: 5 is too short") || strings.Count(strings.TrimSpace(e), "\n") != 0 {
		t.Errorf("serve --max-line-length 5: exit %d, %q", code, e)
	}
	_, e, code = pouch(t, "", "check-config", "--data", data, "--max-line-length", "5")
	if code == 0 || !strings.Contains(e, "--max-line-length: 5 is too short") || strings.Contains(e, "configuration OK") {
		t.Errorf("check-config --max-line-length 5: exit %d, %q", code, e)
	}
	cfgFile := filepath.Join(data, "pouch.toml")
	os.WriteFile(cfgFile, []byte("max-line-length = 254\n"), 0o600)
	if _, e, code = pouch(t, "", "check-config", "--data", data, "--config", cfgFile); code == 0 || !strings.Contains(e, cfgFile+`: key "max-line-length": 254 is too short`) {
		t.Errorf("check-config with max-line-length = 254 in the file: exit %d, %q", code, e)
	}
	if _, e, code = pouch(t, "", "check-config", "--data", data, "--max-line-length", "255"); code != 0 {
		t.Errorf("check-config --max-line-length 255: exit %d, %q", code, e)
	}
}

// An idle timeout below RFC 1939 §3's 10 minutes is allowed, with a warning.
func TestShortIdleTimeoutWarns(t *testing.T) {
	data := t.TempDir()
	const warning = "--idle-timeout 1m0s is shorter than the 10m0s that RFC 1939 §3 asks for"
	// serve warns as it starts, before it listens.
	_, e, code := pouch(t, "", "serve", "--data", data, "--idle-timeout", "1m", "--pop3", "127.0.0.1:notaport", "--pop3s", "")
	if code != 1 || !strings.Contains(e, "listen pop3") || !strings.Contains(e, "level=WARN") || !strings.Contains(e, warning) {
		t.Errorf("serve --idle-timeout 1m: exit %d, %q", code, e)
	}
	_, e, code = pouch(t, "", "check-config", "--data", data, "--idle-timeout", "1m")
	if code != 0 || !strings.Contains(e, "warning: "+warning) || !strings.Contains(e, "configuration OK") {
		t.Errorf("check-config --idle-timeout 1m: exit %d, %q", code, e)
	}
	if _, e, _ = pouch(t, "", "check-config", "--data", data, "--idle-timeout", "10m"); strings.Contains(e, "idle-timeout") {
		t.Errorf("check-config --idle-timeout 10m warns: %q", e)
	}
}
