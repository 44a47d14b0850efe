package client

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/xdg-go/scram"

	"github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/server/servertest"
	"github.com/pouchmail/pouch/store/maildir"
)

// testCert makes a self-signed certificate for 127.0.0.1 and a pool that
// trusts it.
func testCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
}

// pouchServer runs a real Pouch server in-process; it returns the POP3 and
// POP3S addresses, the store, and a pool trusting its certificate.
func pouchServer(t *testing.T) (plain, implicit string, st *maildir.Store, pool *x509.CertPool) {
	t.Helper()
	cert, pool := testCert(t)
	st = maildir.New(t.TempDir())
	_, plain, implicit = servertest.Start(t, server.Config{
		Store: st, Auth: servertest.Users{"alice": "secret"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Hostname: "localhost",
		AuthFailDelay: -1, TLS: &tls.Config{Certificates: []tls.Certificate{cert}},
	})
	return plain, implicit, st, pool
}

func TestAgainstPouchServer(t *testing.T) {
	plain, implicit, st, pool := pouchServer(t)
	const n = 60
	for i := range n {
		msg := fmt.Sprintf("Subject: %d\n\n.dot\nbody %d\n", i, i)
		if err := st.Deliver(context.Background(), "alice", strings.NewReader(msg)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		addr string
		mode TLSMode
	}{{"implicit", implicit, TLSImplicit}, {"starttls", plain, TLSStartTLS}} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Dial(context.Background(), tc.addr, Options{TLS: tc.mode, TLSConfig: &tls.Config{RootCAs: pool}, Timeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if !c.TLS() {
				t.Fatal("not TLS")
			}
			if _, err := c.Login(Credentials{User: "alice", Password: "secret"}); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Capa(); err != nil {
				t.Fatal(err)
			}
			if !c.Pipelining() {
				t.Fatal("pouch offers PIPELINING")
			}
			l, err := c.List()
			if err != nil || len(l) != n {
				t.Fatalf("list: %d %v", len(l), err)
			}
			// A window of 16 RETRs in flight.
			sent := 0
			for got := 0; got < n; got++ {
				for sent < n && sent-got < 16 {
					if err := c.SendRetr(l[sent].Num); err != nil {
						t.Fatal(err)
					}
					sent++
				}
				rc, err := c.ReadRetr()
				body := readAll(t, rc, err)
				want := fmt.Sprintf("Subject: %d\r\n\r\n.dot\r\nbody %d\r\n", got, got)
				if body != want {
					t.Fatalf("message %d: %q", got+1, body)
				}
				if int64(len(body)) != l[got].Size {
					t.Fatalf("size %d, LIST said %d", len(body), l[got].Size)
				}
			}
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestImplicitTLSRejectsUnknownCert(t *testing.T) {
	_, implicit, _, _ := pouchServer(t)
	_, err := Dial(context.Background(), implicit, Options{TLS: TLSImplicit, Timeout: 5 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("got %v", err)
	}
}

// scramServer answers one AUTH SCRAM-SHA-256[-PLUS] exchange with the
// xdg-go/scram server, over TLS when cert is given.
func scramServer(t *testing.T, plus bool) (string, *x509.CertPool) {
	t.Helper()
	return scramServerOpt(t, plus, false)
}

// scramServerOpt with skipFinal answers the client-final with a bare +OK,
// never sending the server-final (and its signature).
func scramServerOpt(t *testing.T, plus, skipFinal bool) (string, *x509.CertPool) {
	t.Helper()
	cert, pool := testCert(t)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		defer l.Close()
		errc <- func() error {
			conn, err := l.Accept()
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			tc := conn.(*tls.Conn)
			if err := tc.Handshake(); err != nil {
				return err
			}
			kf := scram.KeyFactors{Salt: "saltsalt", Iters: 4096}
			cl, _ := scram.SHA256.NewClient("alice", "pencil", "")
			creds, err := cl.GetStoredCredentialsWithError(kf)
			if err != nil {
				return err
			}
			srv, _ := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) { return creds, nil })
			var conv *scram.ServerConversation
			mech := "SCRAM-SHA-256"
			if plus {
				st := tc.ConnectionState()
				cb, err := scram.NewTLSExporterBinding(&st)
				if err != nil {
					return err
				}
				conv = srv.NewConversationWithChannelBinding(cb)
				mech += "-PLUS"
			} else {
				conv = srv.NewConversation()
			}
			br := bufio.NewReader(conn)
			fmt.Fprintf(conn, "+OK hi\r\n")
			line, _ := br.ReadString('\n')
			if line != "CAPA\r\n" {
				return fmt.Errorf("got %q", line)
			}
			fmt.Fprintf(conn, "+OK\r\nSASL PLAIN %s\r\n.\r\n", mech)
			line, _ = br.ReadString('\n')
			f := strings.Fields(line)
			if len(f) != 3 || f[0] != "AUTH" || f[1] != mech {
				return fmt.Errorf("got %q", line)
			}
			msg := f[2]
			for !conv.Done() {
				in, err := base64.StdEncoding.DecodeString(msg)
				if err != nil {
					return err
				}
				out, err := conv.Step(string(in))
				if err != nil {
					fmt.Fprintf(conn, "-ERR [AUTH] %v\r\n", err)
					return err
				}
				if skipFinal && conv.Done() {
					fmt.Fprintf(conn, "+OK welcome\r\n")
					return nil
				}
				fmt.Fprintf(conn, "+ %s\r\n", base64.StdEncoding.EncodeToString([]byte(out)))
				line, _ = br.ReadString('\n')
				msg = strings.TrimSpace(line)
			}
			if !conv.Valid() {
				return fmt.Errorf("not valid")
			}
			fmt.Fprintf(conn, "+OK welcome\r\n")
			return nil
		}()
	}()
	t.Cleanup(func() {
		if err := <-errc; err != nil {
			t.Errorf("scram server: %v", err)
		}
	})
	return l.Addr().String(), pool
}

func TestSCRAM(t *testing.T) {
	for _, plus := range []bool{false, true} {
		t.Run(fmt.Sprint("plus=", plus), func(t *testing.T) {
			addr, pool := scramServer(t, plus)
			c, err := Dial(context.Background(), addr, Options{TLS: TLSImplicit, TLSConfig: &tls.Config{RootCAs: pool}, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			mech, err := c.Login(Credentials{User: "alice", Password: "pencil"})
			want := "SCRAM-SHA-256"
			if plus {
				want += "-PLUS"
			}
			if err != nil || mech != want {
				t.Fatalf("%s %v", mech, err)
			}
		})
	}
}

// A server that answers +OK without the SCRAM server-final has not proved
// it knows the password: the login fails.
func TestSCRAMWithoutServerFinal(t *testing.T) {
	addr, pool := scramServerOpt(t, false, true)
	c, err := Dial(context.Background(), addr, Options{TLS: TLSImplicit, TLSConfig: &tls.Config{RootCAs: pool}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mech, err := c.Login(Credentials{User: "alice", Password: "pencil"})
	if err == nil || !strings.Contains(err.Error(), "server signature") {
		t.Fatalf("login succeeded: %s %v", mech, err)
	}
}
