package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/tlsutil"
	"github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/server/servertest"
	"github.com/pouchmail/pouch/store/maildir"
)

// startPouch runs an in-process Pouch with users u0…u(n-1), each with msgs
// messages, on a plaintext and an implicit-TLS listener.
func startPouch(t *testing.T, users, msgs int) (plain, tlsAddr string, creds []Cred) {
	t.Helper()
	dir := t.TempDir()
	st := maildir.New(filepath.Join(dir, "mail"))
	auth := servertest.Users{}
	for i := range users {
		name := fmt.Sprintf("u%d", i)
		auth[name] = "pw" + name
		creds = append(creds, Cred{name, "pw" + name})
		for j := range msgs {
			body := fmt.Sprintf("Subject: %d\n\n.leading dot\n%s\n", j, strings.Repeat("x", 100*j))
			if err := st.Deliver(context.Background(), name, strings.NewReader(body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := tlsutil.SelfSigned(cert, key, "localhost"); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	_, plain, implicit := servertest.Start(t, server.Config{
		Store: st, Auth: auth, AuthFailDelay: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		TLS:    &tls.Config{Certificates: []tls.Certificate{pair}},
	})
	return plain, implicit, creds
}

func TestMixes(t *testing.T) {
	plain, tlsAddr, creds := startPouch(t, 4, 5)
	var want int64
	for j := range 5 {
		want += int64(len(fmt.Sprintf("Subject: %d\r\n\r\n.leading dot\r\n%s\r\n", j, strings.Repeat("x", 100*j))))
	}
	for _, tc := range []struct {
		name     string
		addr     string
		tls      string
		mix      Mix
		pipeline bool
	}{
		{"full", plain, TLSNone, MixFull, false},
		{"full-pipelined", plain, TLSNone, MixFull, true},
		{"full-tls", tlsAddr, TLSImplicit, MixFull, true},
		{"full-starttls", plain, TLSStartTLS, MixFull, false},
		{"top", plain, TLSNone, MixTop, true},
		{"login", plain, TLSNone, MixLogin, false},
		{"uidl", plain, TLSNone, MixUIDL, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := Run(context.Background(), Config{Addr: tc.addr, Users: creds, Clients: 4, Sessions: 8,
				Mix: tc.mix, TLS: tc.tls, Pipeline: tc.pipeline, PipelineDepth: 3, Timeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Failed != 0 || rep.Sessions != 8 {
				t.Fatalf("sessions %d, failed %d: %v", rep.Sessions, rep.Failed, rep.Errors)
			}
			switch tc.mix {
			case MixFull:
				if rep.Messages != 40 || rep.Bytes != 8*want {
					t.Errorf("messages %d octets %d, want 40 and %d", rep.Messages, rep.Bytes, 8*want)
				}
				if h := rep.Commands["RETR"]; h == nil || h.Count() != 40 {
					t.Errorf("RETR latencies: %+v", h)
				}
			case MixTop:
				if rep.Messages != 40 || rep.Commands["TOP"].Count() != 40 {
					t.Errorf("messages %d", rep.Messages)
				}
			case MixUIDL:
				if rep.Commands["UIDL"].Count() != 8 {
					t.Errorf("UIDL count %d", rep.Commands["UIDL"].Count())
				}
			case MixLogin:
				if rep.Messages != 0 || rep.Commands["PASS"].Count() != 8 {
					t.Errorf("messages %d", rep.Messages)
				}
			}
			var b strings.Builder
			rep.Write(&b)
			if !strings.Contains(b.String(), "sessions/s") {
				t.Errorf("report: %s", b.String())
			}
			b.Reset()
			if err := rep.WriteJSON(&b); err != nil || !strings.Contains(b.String(), `"sessions":8`) {
				t.Errorf("JSON report %v: %s", err, b.String())
			}
		})
	}
}

func TestIdleAndProbe(t *testing.T) {
	plain, _, creds := startPouch(t, 6, 1)
	var ready strings.Builder
	rep, err := Run(context.Background(), Config{Addr: plain, Users: creds, Clients: 5, Mix: MixIdle,
		Duration: 500 * time.Millisecond, Probe: 20 * time.Millisecond, Ready: &ready})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sessions != 5 || rep.Peak != 5 || rep.Failed != 0 {
		t.Errorf("sessions %d peak %d failed %d: %v", rep.Sessions, rep.Peak, rep.Failed, rep.Errors)
	}
	if !strings.Contains(ready.String(), "all 5 idle sessions") {
		t.Errorf("ready line: %q", ready.String())
	}
	if rep.Probe == nil || rep.Probe.Count() < 5 {
		t.Errorf("probe: %+v", rep.Probe)
	}
}

// TestSizeMismatch: a server whose RETR sends fewer octets than LIST said
// fails the session.
func TestSizeMismatch(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		fmt.Fprint(c, "+OK hi\r\n")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch strings.Fields(line)[0] {
			case "LIST":
				fmt.Fprint(c, "+OK\r\n1 100\r\n.\r\n")
			case "UIDL":
				fmt.Fprint(c, "+OK\r\n1 a\r\n.\r\n")
			case "RETR":
				fmt.Fprint(c, "+OK\r\nshort\r\n.\r\n")
			default:
				fmt.Fprint(c, "+OK\r\n")
			}
		}
	}()
	rep, err := Run(context.Background(), Config{Addr: l.Addr().String(), Users: []Cred{{"a", "b"}}, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 1 || len(rep.Errors) != 1 {
		t.Fatalf("failed %d, errors %v", rep.Failed, rep.Errors)
	}
	for k := range rep.Errors {
		if !strings.Contains(k, "LIST said 100") {
			t.Errorf("error %q", k)
		}
	}
}

func TestReadUsers(t *testing.T) {
	got, err := ReadUsers(strings.NewReader("# comment\nalice:{PLAIN}se:cret\n\nbob:pw\r\n"))
	if err != nil || len(got) != 2 || got[0] != (Cred{"alice", "se:cret"}) || got[1] != (Cred{"bob", "pw"}) {
		t.Fatalf("%v %v", got, err)
	}
	if _, err := ReadUsers(strings.NewReader("nocolon\n")); err == nil {
		t.Error("no error for a line without a colon")
	}
}

func TestHistogram(t *testing.T) {
	var h Histogram
	for i := 1; i <= 100; i++ {
		h.Record(time.Duration(i) * time.Millisecond)
	}
	if p := h.Quantile(0.5); p < 49*time.Millisecond || p > 52*time.Millisecond {
		t.Errorf("p50 %v", p)
	}
	if p := h.Quantile(0.99); p < 98*time.Millisecond || p > 100*time.Millisecond {
		t.Errorf("p99 %v", p)
	}
	var o Histogram
	o.Merge(&h)
	if o.Count() != 100 || o.Max() != 100*time.Millisecond {
		t.Errorf("merge: %d %v", o.Count(), o.Max())
	}
}

func TestUserIndex(t *testing.T) {
	const c, n = 64, 200
	for k := range 10 {
		seen := map[int]bool{}
		for i := range c {
			u := userIndex(i, k, c, n)
			if u < 0 || u >= n || u%c != i || seen[u] {
				t.Fatalf("client %d session %d: user %d", i, k, u)
			}
			seen[u] = true
		}
	}
	used := map[int]bool{}
	for i := range c {
		for k := range 4 {
			used[userIndex(i, k, c, n)] = true
		}
	}
	if len(used) != n {
		t.Errorf("%d of %d users used", len(used), n)
	}
}
