// Package tlsutil provides the server's TLS certificates: the operator's
// certificate and key pairs, or a self-signed certificate made on first start
// and kept in the data directory (RFC 8314 asks for TLS on all mail access).
// Certificates are reloaded without a restart when their files change or when
// Reload is called (SIGHUP), and SNI picks among several.
package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// checkInterval is how often, at most, the certificate files are looked at
// for changes during handshakes.
const checkInterval = time.Second

// Manager holds the current certificates and reloads them when their files
// change. It is safe for concurrent use.
type Manager struct {
	certFiles, keyFiles []string
	log                 *slog.Logger

	mu        sync.Mutex
	certs     []*tls.Certificate
	stamps    []time.Time // modification times of certFiles then keyFiles at load
	lastCheck time.Time
}

// NewManager loads the certificate and key pairs (certFiles[i] with
// keyFiles[i]). With none given it uses DIR/cert.pem and DIR/key.pem, making
// a self-signed ECDSA P-256 certificate for hostname there first if they do
// not exist.
func NewManager(certFiles, keyFiles []string, dir, hostname string, log *slog.Logger) (*Manager, error) {
	if len(certFiles) != len(keyFiles) {
		return nil, fmt.Errorf("%d TLS certificates but %d keys: give them in pairs", len(certFiles), len(keyFiles))
	}
	if len(certFiles) == 0 {
		cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		if _, err := os.Stat(cert); errors.Is(err, fs.ErrNotExist) {
			if err := SelfSigned(cert, key, hostname); err != nil {
				return nil, fmt.Errorf("making a self-signed certificate: %w", err)
			}
		}
		certFiles, keyFiles = []string{cert}, []string{key}
	}
	if log == nil {
		log = slog.Default()
	}
	m := &Manager{certFiles: certFiles, keyFiles: keyFiles, log: log}
	if err := m.Reload(); err != nil {
		return nil, err
	}
	return m, nil
}

// Reload reads every pair again. On error the certificates in use stay.
func (m *Manager) Reload() error {
	stamps := m.modTimes()
	certs := make([]*tls.Certificate, len(m.certFiles))
	for i := range m.certFiles {
		c, err := tls.LoadX509KeyPair(m.certFiles[i], m.keyFiles[i])
		if err != nil {
			return fmt.Errorf("loading TLS certificate %s: %w", m.certFiles[i], err)
		}
		certs[i] = &c
	}
	m.mu.Lock()
	m.certs, m.stamps, m.lastCheck = certs, stamps, time.Now()
	m.mu.Unlock()
	return nil
}

func (m *Manager) modTimes() []time.Time {
	var t []time.Time
	for _, f := range append(append([]string{}, m.certFiles...), m.keyFiles...) {
		var mt time.Time
		if fi, err := os.Stat(f); err == nil {
			mt = fi.ModTime()
		}
		t = append(t, mt)
	}
	return t
}

// maybeReload reloads when a file changed since the last load, looking at
// most once per checkInterval.
func (m *Manager) maybeReload() {
	m.mu.Lock()
	if time.Since(m.lastCheck) < checkInterval {
		m.mu.Unlock()
		return
	}
	m.lastCheck = time.Now()
	old := m.stamps
	m.mu.Unlock()
	now := m.modTimes()
	changed := false
	for i := range now {
		if !now[i].Equal(old[i]) {
			changed = true
		}
	}
	if !changed {
		return
	}
	if err := m.Reload(); err != nil {
		m.log.Error("TLS certificate changed but cannot be loaded; keeping the old one", "err", err)
		m.mu.Lock()
		m.stamps = now // do not retry until the files change again
		m.mu.Unlock()
		return
	}
	m.log.Info("TLS certificates reloaded", "sha256", m.Fingerprints())
}

// GetCertificate picks the certificate for a handshake: the first that suits
// the client's server name (SNI) and algorithms, or else the first.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	m.maybeReload()
	m.mu.Lock()
	certs := m.certs
	m.mu.Unlock()
	if len(certs) > 1 {
		for _, c := range certs {
			if hello.SupportsCertificate(c) == nil {
				return c, nil
			}
		}
	}
	return certs[0], nil
}

// Fingerprints returns the SHA-256 fingerprint of each leaf certificate for
// users who pin it, in the form of "openssl x509 -fingerprint -sha256",
// which mpop and fetchmail take: uppercase hex pairs joined by colons.
func (m *Manager) Fingerprints() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var fps []string
	for _, c := range m.certs {
		sum := sha256.Sum256(c.Certificate[0])
		pairs := make([]string, len(sum))
		for i, b := range sum {
			pairs[i] = strings.ToUpper(hex.EncodeToString([]byte{b}))
		}
		fps = append(fps, strings.Join(pairs, ":"))
	}
	return fps
}

// ServerConfig returns a TLS configuration using the manager's certificates:
// TLS 1.2 at least and Go's default cipher suites. With clientCAFile set,
// clients may present a certificate signed by one of its CAs (for SASL
// EXTERNAL); it is verified when given, never required.
func (m *Manager) ServerConfig(clientCAFile string) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: m.GetCertificate,
	}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA %s: no PEM certificate in it", clientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// selfSigned writes a self-signed certificate for hostname (and loopback) with a
// key readable only by its owner.
func SelfSigned(certFile, keyFile, hostname string) error {
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hostname, Organization: []string{"Pouch self-signed"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(2, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              dnsNames(hostname),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeAtomic(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// dnsNames are the names a self-signed certificate is made for.
func dnsNames(hostname string) []string {
	if hostname == "" || hostname == "localhost" {
		return []string{"localhost"}
	}
	return []string{hostname, "localhost"}
}
