// Package tlsutil provides the server's TLS certificates: the operator's
// certificate and key pairs, or a self-signed certificate made on first start
// and kept in the data directory (RFC 8314 asks for TLS on all mail access),
// made anew before it expires. Certificates and the client CAs are reloaded
// without a restart when their files change or when Reload and ReloadClientCA
// are called (SIGHUP), and SNI picks among several certificates.
package tlsutil

import (
	"bytes"
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

	"github.com/pouchmail/pouch/internal/fsx"
)

// checkInterval is how often, at most, the certificate files are looked at
// for changes during handshakes.
const checkInterval = time.Second

// selfSignedValidity is how long a self-signed certificate is valid, and
// renewBefore how long before its end it is made anew.
const (
	selfSignedValidity = 2 * 365 * 24 * time.Hour
	renewBefore        = 30 * 24 * time.Hour
)

// selfSignedOrg is the organization of the certificates Pouch makes; only
// those are ever renewed.
const selfSignedOrg = "Pouch self-signed"

// Manager holds the current certificates and client CAs and reloads them when
// their files change. It is safe for concurrent use.
type Manager struct {
	certFiles, keyFiles []string
	log                 *slog.Logger
	// selfSigned is set when certFiles[0] is the certificate Pouch made in
	// the data directory for hostname; it is renewed before it expires.
	// Operator's files are never written.
	selfSigned bool
	hostname   string
	now        func() time.Time // the clock that decides renewal

	fileMu sync.Mutex // held while the certificate files are read or written

	mu        sync.Mutex
	certs     []*tls.Certificate
	stamps    []time.Time // modification times of certFiles then keyFiles at load
	lastCheck time.Time
	caFile    string         // client CAs, "" for none
	caPool    *x509.CertPool // as last loaded
	caStamp   time.Time      // modification time of caFile at load
}

// NewManager loads the certificate and key pairs (certFiles[i] with
// keyFiles[i]). With none given it uses DIR/cert.pem and DIR/key.pem, making
// a self-signed ECDSA P-256 certificate for hostname there first if they do
// not exist, or anew when the certificate there is one Pouch made and the
// key is missing or not its own (a crash while renewing it); the operator's
// files are never replaced.
func NewManager(certFiles, keyFiles []string, dir, hostname string, log *slog.Logger) (*Manager, error) {
	if len(certFiles) != len(keyFiles) {
		return nil, fmt.Errorf("%d TLS certificates but %d keys: give them in pairs", len(certFiles), len(keyFiles))
	}
	if log == nil {
		log = slog.Default()
	}
	selfSigned := len(certFiles) == 0
	var remade error // why the self-signed pair was made anew, if it was
	if selfSigned {
		cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		if _, err := os.Stat(cert); errors.Is(err, fs.ErrNotExist) {
			if err := SelfSigned(cert, key, hostname); err != nil {
				return nil, fmt.Errorf("making a self-signed certificate: %w", err)
			}
		} else if remade = brokenSelfSigned(cert, key); remade != nil {
			if err := SelfSigned(cert, key, hostname); err != nil {
				return nil, fmt.Errorf("making the self-signed certificate anew (%v): %w", remade, err)
			}
		}
		certFiles, keyFiles = []string{cert}, []string{key}
	}
	m := &Manager{certFiles: certFiles, keyFiles: keyFiles, log: log, selfSigned: selfSigned, hostname: hostname, now: time.Now}
	if err := m.Reload(); err != nil {
		return nil, err
	}
	if remade != nil {
		log.Warn("self-signed TLS certificate made anew: clients that pin the old fingerprint must take the new one",
			"reason", remade.Error(), "sha256", strings.Join(m.Fingerprints(), ","))
	}
	if err := m.renewIfExpiring(); err != nil {
		// The old certificate is still valid for some days.
		log.Error("renewing the self-signed TLS certificate failed; keeping the old one", "err", err)
	}
	return m, nil
}

// Reload reads every pair again. On error the certificates in use stay.
func (m *Manager) Reload() error {
	m.fileMu.Lock()
	defer m.fileMu.Unlock()
	return m.reloadLocked()
}

// reloadLocked is Reload with fileMu held.
func (m *Manager) reloadLocked() error {
	stamps := m.modTimes()
	certs := make([]*tls.Certificate, len(m.certFiles))
	for i := range m.certFiles {
		c, err := tls.LoadX509KeyPair(m.certFiles[i], m.keyFiles[i])
		if err == nil && c.Leaf == nil {
			c.Leaf, err = x509.ParseCertificate(c.Certificate[0])
		}
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
		t = append(t, modTime(f))
	}
	return t
}

// modTime is f's modification time, or zero when it cannot be read.
func modTime(f string) time.Time {
	if fi, err := os.Stat(f); err == nil {
		return fi.ModTime()
	}
	return time.Time{}
}

// maybeReload reloads when a file changed since the last load, and renews a
// self-signed certificate that is about to expire, looking at most once per
// checkInterval.
func (m *Manager) maybeReload() {
	m.mu.Lock()
	if time.Since(m.lastCheck) < checkInterval {
		m.mu.Unlock()
		return
	}
	m.lastCheck = time.Now()
	old, caFile, caStamp := m.stamps, m.caFile, m.caStamp
	m.mu.Unlock()
	if caFile != "" && !modTime(caFile).Equal(caStamp) {
		if err := m.ReloadClientCA(); err != nil {
			m.log.Error("client CA file changed but cannot be loaded; keeping the old CAs", "err", err)
		} else {
			m.log.Info("client CAs reloaded", "file", caFile)
		}
	}
	if err := m.renewIfExpiring(); err != nil {
		m.log.Error("renewing the self-signed TLS certificate failed; keeping the old one", "err", err)
	}
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
	m.mu.Lock()
	reloaded := !equalTimes(m.stamps, old) // by Reload or a renewal meanwhile
	m.mu.Unlock()
	if reloaded {
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

func equalTimes(a, b []time.Time) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// renewIfExpiring makes the self-signed certificate anew, with a new key,
// when it ends within renewBefore, and loads it. The new fingerprint is
// logged, for the users who pin it. A certificate Pouch did not make is
// never touched.
func (m *Manager) renewIfExpiring() error {
	if !m.selfSigned {
		return nil
	}
	m.fileMu.Lock()
	defer m.fileMu.Unlock()
	m.mu.Lock()
	leaf := m.certs[0].Leaf
	m.mu.Unlock()
	if leaf == nil || !madeByPouch(leaf) || m.now().Add(renewBefore).Before(leaf.NotAfter) {
		return nil
	}
	if err := selfSigned(m.certFiles[0], m.keyFiles[0], m.hostname, m.now()); err != nil {
		return fmt.Errorf("renewing the self-signed certificate: %w", err)
	}
	if err := m.reloadLocked(); err != nil {
		return err
	}
	m.mu.Lock()
	notAfter := m.certs[0].Leaf.NotAfter
	m.mu.Unlock()
	m.log.Warn("self-signed TLS certificate renewed: clients that pin the old fingerprint must take the new one",
		"old_not_after", leaf.NotAfter.UTC().Format(time.RFC3339), "not_after", notAfter.UTC().Format(time.RFC3339),
		"sha256", strings.Join(m.Fingerprints(), ","))
	return nil
}

// brokenSelfSigned says why the certificate and key in the data directory
// are not a usable pair when the certificate is one Pouch made and the key
// is missing or is not the certificate's: what a crash between the two
// renames of selfSignedFor leaves. It returns nil when the pair loads, and
// when the files cannot be read or the certificate is not Pouch's, which are
// left for the loader to report: only the pair Pouch made is ever replaced.
func brokenSelfSigned(certFile, keyFile string) error {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil || !madeByPouch(leaf) {
		return nil
	}
	keyPEM, err := os.ReadFile(keyFile)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("key %s is missing", keyFile)
	}
	if err != nil {
		return nil
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("key %s does not go with certificate %s: %v", keyFile, certFile, err)
	}
	return nil
}

// madeByPouch reports whether c is a self-signed certificate that SelfSigned
// made.
func madeByPouch(c *x509.Certificate) bool {
	return len(c.Subject.Organization) == 1 && c.Subject.Organization[0] == selfSignedOrg &&
		bytes.Equal(c.RawSubject, c.RawIssuer)
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
// TLS 1.2 at least and Go's default cipher suites. With clientCAFile set, the
// CAs in it are loaded (see ClientCAs) and clients are asked for a
// certificate, which is never required: the handshake does not check it, so
// that a client with a certificate from another CA can still log in another
// way. The server checks it against ClientCAs after the handshake (for SASL
// EXTERNAL).
func (m *Manager) ServerConfig(clientCAFile string) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: m.GetCertificate,
	}
	if clientCAFile != "" {
		if err := m.SetClientCA(clientCAFile); err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.RequestClientCert
	}
	return cfg, nil
}

// SetClientCA loads the CA certificates of file, whose client certificates
// ClientCAs will accept from then on; ReloadClientCA and a change to the
// file read it again.
func (m *Manager) SetClientCA(file string) error {
	pool, stamp, err := loadCAs(file)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.caFile, m.caPool, m.caStamp = file, pool, stamp
	m.mu.Unlock()
	return nil
}

// ReloadClientCA reads the client CA file again. On error the CAs in use
// stay. Without a client CA file it does nothing.
func (m *Manager) ReloadClientCA() error {
	m.mu.Lock()
	file := m.caFile
	m.mu.Unlock()
	if file == "" {
		return nil
	}
	pool, stamp, err := loadCAs(file)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.caStamp = stamp // do not retry until the file changes again
		return err
	}
	m.caPool, m.caStamp = pool, stamp
	return nil
}

// ClientCAs returns the client CAs now in force, or nil when there are none.
// The pool must not be changed.
func (m *Manager) ClientCAs() *x509.CertPool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.caPool
}

// LoadClientCAs reads a PEM file of CA certificates for client
// certificates, as ServerConfig does.
func LoadClientCAs(file string) (*x509.CertPool, error) {
	pool, _, err := loadCAs(file)
	return pool, err
}

// loadCAs reads a PEM file of CA certificates, with its modification time.
func loadCAs(file string) (*x509.CertPool, time.Time, error) {
	stamp := modTime(file)
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, stamp, fmt.Errorf("client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, stamp, fmt.Errorf("client CA %s: no PEM certificate in it", file)
	}
	return pool, stamp, nil
}

// SelfSigned writes a self-signed certificate for hostname (and loopback),
// valid for two years, with a key readable only by its owner.
func SelfSigned(certFile, keyFile, hostname string) error {
	return selfSigned(certFile, keyFile, hostname, time.Now())
}

// selfSigned is SelfSigned with the clock's time now.
func selfSigned(certFile, keyFile, hostname string, now time.Time) error {
	return selfSignedFor(certFile, keyFile, hostname, now.Add(-time.Hour), now.Add(selfSignedValidity))
}

// selfSignedFor is SelfSigned valid from notBefore to notAfter.
func selfSignedFor(certFile, keyFile, hostname string, notBefore, notAfter time.Time) error {
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
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hostname, Organization: []string{selfSignedOrg}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
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
	// Each file is replaced whole (fsx.WriteFile). A crash between the key's
	// rename and the certificate's leaves a new key with the old
	// certificate, which NewManager makes anew at the next start (see
	// brokenSelfSigned).
	if err := fsx.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), fsx.Options{Perm: 0o600}); err != nil {
		return err
	}
	return fsx.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), fsx.Options{Perm: 0o644})
}

// dnsNames are the names a self-signed certificate is made for.
func dnsNames(hostname string) []string {
	if hostname == "" || hostname == "localhost" {
		return []string{"localhost"}
	}
	return []string{hostname, "localhost"}
}
