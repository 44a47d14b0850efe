package interop_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// startHAProxy runs haproxy in front of the server's POP3 and POP3S ports,
// sending a PROXY protocol version 2 header on each connection, and returns
// its two front addresses.
func startHAProxy(t *testing.T, s *server) (pop3, pop3s string) {
	t.Helper()
	bin := requireTool(t, "haproxy")
	pop3, pop3s = "127.0.0.1:"+freePort(t), "127.0.0.1:"+freePort(t)
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	conf := fmt.Sprintf(`global
    maxconn 512
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend pop3
    bind %s
    default_backend pouch_pop3
backend pouch_pop3
    server pouch %s send-proxy-v2 check inter 200ms
frontend pop3s
    bind %s
    default_backend pouch_pop3s
backend pouch_pop3s
    server pouch %s send-proxy-v2
`, pop3, s.addr, pop3s, s.tls)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-db", "-f", cfg)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("haproxy:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for _, a := range []string{pop3, pop3s} {
		for {
			c, err := net.Dial("tcp", a)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-exited:
				t.Fatalf("haproxy exited:\n%s", out.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("haproxy does not listen on %s: %v", a, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return pop3, pop3s
}

// dialFrom connects from the loopback address ip to addr.
func dialFrom(t *testing.T, ip, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// Behind haproxy with send-proxy-v2, Pouch sees each client's own address:
// a client on 127.0.0.2 guessing passwords is banned by its address, while a
// client on 127.0.0.3 through the same haproxy logs in, on both ports, and
// the logs name the clients, not haproxy; haproxy's health checks are
// served as its own connections.
func TestHAProxySendsClientAddresses(t *testing.T) {
	data := newData(t)
	s := startServerArgs(t, data, []string{"--proxy-networks", "127.0.0.1/32", "--ban-after", "3", "--log-level", "debug"})
	front, frontTLS := startHAProxy(t, s)

	banned := false
	for i := 0; i < 40 && !banned; i++ {
		c, r := dialFrom(t, "127.0.0.2", front)
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("guess %d: greeting: %v", i, err)
		}
		if strings.HasPrefix(l, "-ERR [SYS/TEMP] too many failed logins from your address") {
			banned = true
			break
		}
		fmt.Fprintf(c, "USER guess%d\r\nPASS wrong%d\r\n", i, i)
		for {
			l, err := r.ReadString('\n')
			if err != nil || strings.HasPrefix(l, "-ERR [SYS/TEMP] too many failed logins") {
				break // banned by this failure: the session ends
			}
			if strings.HasPrefix(l, "-ERR [AUTH]") {
				fmt.Fprintf(c, "QUIT\r\n")
			}
			if strings.HasPrefix(l, "+OK Pouch signing off") {
				break
			}
		}
		c.Close()
	}
	if !banned {
		t.Fatal("the guessing client was never banned")
	}

	// A user elsewhere, through the same haproxy, on the POP3 port...
	c, r := dialFrom(t, "127.0.0.3", front)
	fmt.Fprintf(c, "USER alice\r\nPASS secret one\r\nQUIT\r\n")
	for _, want := range []string{"+OK Pouch ready", "+OK send PASS", "+OK maildrop has 0 messages", "+OK Pouch signing off"} {
		if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, want) {
			t.Fatalf("127.0.0.3 through haproxy: got %q (%v), want %q", l, err, want)
		}
	}
	// ... and on the POP3S port.
	pem, err := os.ReadFile(caFile(data))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	raw, _ := dialFrom(t, "127.0.0.3", frontTLS)
	tc := tls.Client(raw, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	fmt.Fprintf(tc, "USER bob\r\nPASS hQ4v-Lw9xTz2pB\r\nQUIT\r\n")
	tr := bufio.NewReader(tc)
	for _, want := range []string{"+OK Pouch ready", "+OK send PASS", "+OK maildrop has 0 messages", "+OK Pouch signing off"} {
		if l, err := tr.ReadString('\n'); err != nil || !strings.HasPrefix(l, want) {
			t.Fatalf("127.0.0.3 through haproxy over TLS: got %q (%v), want %q", l, err, want)
		}
	}

	bans := pouch(t, "", "ban", "list", "--data", data)
	if !strings.Contains(bans, "127.0.0.2/32") || strings.Contains(bans, "127.0.0.1/") || strings.Contains(bans, "127.0.0.3/") {
		t.Errorf("ban list:\n%s\nwant 127.0.0.2 alone", bans)
	}
	log := s.logText()
	// haproxy's health checks send a LOCAL header: served as the
	// balancer's own connections, never refused.
	if strings.Contains(log, "bad PROXY protocol header") || !strings.Contains(log, "msg=connected session=") ||
		!regexp.MustCompile(`msg=connected session=\S+ remote=127\.0\.0\.1:\d+ via=127\.0\.0\.1:`).MatchString(log) {
		t.Errorf("haproxy's health checks were not served as its own connections:\n%s", log)
	}
	for _, want := range []string{`msg="authentication failed"`, `ip=127.0.0.2 user=guess0`, `remote=127.0.0.3:`, `msg=login`, `user=alice`, `user=bob`} {
		if !strings.Contains(log, want) {
			t.Errorf("server log lacks %q:\n%s", want, log)
		}
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "msg=login ") && !strings.Contains(l, "remote=127.0.0.3:") {
			t.Errorf("a login not logged with the client's address: %s", l)
		}
	}
}

var lmtpListenRE = regexp.MustCompile(`msg=listening protocol=lmtp addr=(\S+)`)

// LMTP's TCP listener takes the PROXY protocol from the balancers'
// networks like the POP3 ones: the client's address is the session's, and a
// header from elsewhere closes the connection.
func TestLMTPProxyHeader(t *testing.T) {
	data := newData(t)
	s := startServerArgs(t, data, []string{"--proxy-networks", "127.0.0.1/32", "--lmtp", "127.0.0.1:0", "--log-level", "debug"})
	var addr string
	for deadline := time.Now().Add(20 * time.Second); addr == ""; {
		if m := lmtpListenRE.FindStringSubmatch(s.logText()); m != nil {
			addr = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("LMTP does not listen:\n%s", s.logText())
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	c, r := dialFrom(t, "127.0.0.1", addr)
	fmt.Fprintf(c, "PROXY TCP4 192.0.2.9 127.0.0.1 1234 24\r\nLHLO client.example\r\nQUIT\r\n")
	var got []string
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			break
		}
		got = append(got, strings.TrimSpace(l))
	}
	if len(got) < 3 || !strings.HasPrefix(got[0], "220 ") || !strings.HasPrefix(got[1], "250") || !strings.HasPrefix(got[len(got)-1], "221 ") {
		t.Errorf("LMTP through a PROXY header: %q", got)
	}
	c, r = dialFrom(t, "127.0.0.2", addr)
	fmt.Fprintf(c, "PROXY TCP4 192.0.2.9 127.0.0.1 1234 24\r\nLHLO client.example\r\n")
	got = nil
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			break
		}
		got = append(got, strings.TrimSpace(l))
	}
	// go-smtp says 421 when a read fails, and closes.
	if len(got) != 2 || !strings.HasPrefix(got[0], "220 ") || !strings.HasPrefix(got[1], "421 ") {
		t.Errorf("a PROXY header from an untrusted address: LMTP answered %q, want the greeting, 421 and the connection closed", got)
	}
	log := s.logText()
	if !strings.Contains(log, "remote=192.0.2.9:1234") {
		t.Errorf("the LMTP session does not have the client's address:\n%s", log)
	}
	// Logged as the connection ends, maybe after the client saw it close.
	refusal := regexp.MustCompile(`127\.0\.0\.2:\d+: PROXY protocol header from an address not trusted to send one`)
	for deadline := time.Now().Add(10 * time.Second); !refusal.MatchString(log); log = s.logText() {
		if time.Now().After(deadline) {
			t.Fatalf("the refused header is not logged:\n%s", log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
