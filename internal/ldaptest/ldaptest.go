// Package ldaptest runs a private OpenLDAP server for tests: slapd with a
// cn=config directory of its own (made by slaptest from a slapd.conf) and an
// mdb database for dc=example,dc=org with the core, cosine, nis and
// inetorgperson schemas, listening with ldap:// (StartTLS too) and ldaps://
// on free loopback ports, with a certificate made for it. It is stopped and
// removed when the test ends.
//
// Without slapd and ldap-utils (Debian's packages), Start skips the test, or
// fails it when POUCH_REQUIRE_INTEROP=1.
package ldaptest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/testkit"
)

// The directory's suffix and its administrator.
const (
	Base          = "dc=example,dc=org"
	AdminDN       = "cn=admin,dc=example,dc=org"
	AdminPassword = "admin-secret"
)

// Server is a running private slapd.
type Server struct {
	// URL is ldap://127.0.0.1:PORT, which also takes StartTLS.
	URL string
	// LDAPS is ldaps://127.0.0.1:PORT.
	LDAPS string
	// CAFile holds the certificate (PEM) that the server's chains to.
	CAFile string

	dir, conf, slapd string
	daemon           *testkit.Daemon
}

// look finds a program in PATH or the system directories.
func look(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/libexec"} {
		if p := filepath.Join(d, name); fileExists(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("OpenLDAP is not installed (no %s; Debian's slapd and ldap-utils have it)", name)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// skip skips t for a missing program, or fails it under
// POUCH_REQUIRE_INTEROP=1.
func skip(t testing.TB, err error) {
	t.Helper()
	if os.Getenv("POUCH_REQUIRE_INTEROP") == "1" {
		t.Fatal(err)
	}
	t.Skip(err)
}

// Start makes and starts a server with an empty suffix entry and the
// ou=people and ou=services entries under it; it is stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	slapd, err := look("slapd")
	if err != nil {
		skip(t, err)
	}
	slaptest, err := look("slaptest")
	if err != nil {
		skip(t, err)
	}
	slapaddPath, err := look("slapadd")
	if err != nil {
		skip(t, err)
	}
	if _, err := look("ldapadd"); err != nil {
		skip(t, err)
	}
	schema := "/etc/ldap/schema"
	if !fileExists(filepath.Join(schema, "inetorgperson.schema")) {
		skip(t, errors.New("OpenLDAP's schema files are not in /etc/ldap/schema (Debian's slapd has them)"))
	}
	modules := "/usr/lib/ldap"
	dir, err := os.MkdirTemp("", "pouch-slapd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &Server{dir: dir, slapd: slapd, conf: filepath.Join(dir, "slapd.d"),
		daemon: &testkit.Daemon{Name: "slapd", Log: filepath.Join(dir, "slapd.log")}}
	cert, key := s.makeCert(t)
	db := filepath.Join(dir, "db")
	for _, d := range []string{db, s.conf} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var b strings.Builder
	for _, sc := range []string{"core", "cosine", "nis", "inetorgperson"} {
		fmt.Fprintf(&b, "include %s/%s.schema\n", schema, sc)
	}
	fmt.Fprintf(&b, "pidfile %s/slapd.pid\n", dir)
	if fileExists(filepath.Join(modules, "back_mdb.so")) {
		fmt.Fprintf(&b, "modulepath %s\nmoduleload back_mdb\n", modules)
	}
	fmt.Fprintf(&b, "TLSCertificateFile %s\nTLSCertificateKeyFile %s\nTLSCACertificateFile %s\n", cert, key, cert)
	fmt.Fprintf(&b, "database mdb\nmaxsize 67108864\nsuffix %q\nrootdn %q\nrootpw %s\ndirectory %s\n",
		Base, AdminDN, AdminPassword, db)
	// Entries may read their own password (bind), the administrator all;
	// the service account below may read everything but passwords unless
	// granted, as a site's would.
	b.WriteString(`access to attrs=userPassword
  by dn.exact="cn=pouch,ou=services,dc=example,dc=org" read
  by self read
  by anonymous auth
  by * none
access to *
  by * read
`)
	confFile := filepath.Join(dir, "slapd.conf")
	if err := os.WriteFile(confFile, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	// slapadd makes the database with its first entries; then slaptest,
	// which opens it, turns slapd.conf into the cn=config directory.
	slapadd := exec.Command(slapaddPath, "-f", confFile)
	slapadd.Stdin = strings.NewReader(baseEntries)
	if out, err := slapadd.CombinedOutput(); err != nil {
		t.Fatalf("slapadd: %v\n%s", err, out)
	}
	if out, err := exec.Command(slaptest, "-f", confFile, "-F", s.conf).CombinedOutput(); err != nil {
		t.Fatalf("slaptest: %v\n%s", err, out)
	}
	s.URL = "ldap://127.0.0.1:" + strconv.Itoa(testkit.FreePort(t))
	s.LDAPS = "ldaps://127.0.0.1:" + strconv.Itoa(testkit.FreePort(t))
	s.CAFile = cert
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	return s
}

// baseEntries are the suffix entry, ou=people and ou=services.
const baseEntries = `dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=services,dc=example,dc=org
objectClass: organizationalUnit
ou: services
`

// makeCert writes a self-signed certificate for 127.0.0.1 and its key.
func (s *Server) makeCert(t testing.TB) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "ldaptest"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(s.dir, "cert.pem"), filepath.Join(s.dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// Start starts slapd (again, after Stop) and waits until it answers.
// slapd is this process's child (-d 0 keeps it in the foreground) and dies
// with it.
func (s *Server) Start() error {
	cmd := exec.Command(s.slapd, "-d", "0", "-F", s.conf, "-h", s.URL+"/ "+s.LDAPS+"/")
	addr := strings.TrimPrefix(s.URL, "ldap://")
	return s.daemon.Start(cmd, 30*time.Second, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// Stop stops slapd and waits for it to exit.
func (s *Server) Stop() error { return s.daemon.Stop(syscall.SIGTERM, 30*time.Second) }

// Pause stops slapd with SIGSTOP, so that it takes connections and answers
// nothing, as a server that hangs, and returns once the kernel says it is
// stopped; Resume lets it go on.
func (s *Server) Pause() error {
	if err := s.daemon.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	stat := fmt.Sprintf("/proc/%d/stat", s.daemon.Pid())
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		b, err := os.ReadFile(stat)
		if err != nil {
			return err
		}
		// pid (comm) STATE ...: T is stopped by a signal.
		if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'T' {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return errors.New("ldaptest: slapd did not stop within 10 s of SIGSTOP")
}

// Resume undoes Pause.
func (s *Server) Resume() error { return s.daemon.Signal(syscall.SIGCONT) }

// Add adds the entries of an LDIF text with ldapadd, as the administrator.
func (s *Server) Add(t testing.TB, ldif string) {
	t.Helper()
	cmd := exec.Command("ldapadd", "-x", "-H", s.URL, "-D", AdminDN, "-w", AdminPassword)
	cmd.Stdin = strings.NewReader(ldif)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ldapadd: %v\n%s", err, out)
	}
}

// Modify applies an LDIF change record text with ldapmodify, as the
// administrator.
func (s *Server) Modify(t testing.TB, ldif string) {
	t.Helper()
	cmd := exec.Command("ldapmodify", "-x", "-H", s.URL, "-D", AdminDN, "-w", AdminPassword)
	cmd.Stdin = strings.NewReader(ldif)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ldapmodify: %v\n%s", err, out)
	}
}
