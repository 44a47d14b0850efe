package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/tlsutil"
	"github.com/pouchmail/pouch/pop3"
)

// BenchmarkStalledTLSRETRMemory opens b.N POP3S sessions that each send
// RETR of a 4 MiB message and then read nothing, so that every session's
// write is blocked with the kernel's buffers full, and reports the
// server's heap and stack per session once they are all stalled. The
// client ends of the connections live in the same process; their share
// (a tls.Conn that reads nothing) is included.
func BenchmarkStalledTLSRETRMemory(b *testing.B) {
	ts, l := newBenchTLSServer(b, func(c *Config) { c.Auth = benchUsers(b.N) })
	// One 4 MiB message, linked into every maildrop.
	line := strings.Repeat("abcdefghi ", 7) + "abcdefg\n"
	msg := "Subject: big\n\n" + strings.Repeat(line, (4<<20)/len(line))
	if err := ts.store.Deliver(context.Background(), "u0", strings.NewReader(msg)); err != nil {
		b.Fatal(err)
	}
	first, _ := filepath.Glob(filepath.Join(ts.root, "u0", "new", "*"))
	for i := 1; i < b.N; i++ {
		dir := filepath.Join(ts.root, fmt.Sprintf("u%d", i))
		for _, sub := range []string{"tmp", "new", "cur"} {
			os.MkdirAll(filepath.Join(dir, sub), 0o700)
		}
		if err := os.Link(first[0], filepath.Join(dir, "new", filepath.Base(first[0]))); err != nil {
			b.Fatal(err)
		}
	}
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	rss0 := rss(b)
	for i := range b.N {
		c := loginAs(b, i, func() (net.Conn, error) {
			return tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		})
		fmt.Fprintf(c, "RETR 1\r\n") // and read no more
	}
	// Stalled: no session has sent anything for 200 ms.
	var last int64 = -1
	for stable := 0; stable < 4; {
		time.Sleep(50 * time.Millisecond)
		var out int64
		for _, s := range ts.srv.Who() {
			out += s.BytesOut
		}
		if out == last {
			stable++
		} else {
			stable = 0
		}
		last = out
	}
	rss1 := rss(b)

	runtime.GC()
	runtime.ReadMemStats(&ms1)
	n := float64(b.N)
	b.ReportMetric(float64(rss1-rss0)/n, "rss-B/session")
	b.ReportMetric(float64(ms1.HeapInuse-ms0.HeapInuse)/n, "heap-B/session")
	b.ReportMetric(float64(ms1.StackInuse-ms0.StackInuse)/n, "stack-B/session")
	b.ReportMetric(float64(last)/n, "sent-B/session")
}

// rss returns the process's resident memory (VmRSS), in octets.
func rss(b *testing.B) int64 {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Skip("no /proc/self/status")
	}
	for _, l := range strings.Split(string(st), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			var kb int64
			fmt.Sscan(f[1], &kb)
			return kb << 10
		}
	}
	b.Skip("no VmRSS")
	return 0
}

// newBenchTLSServer is newTestServer with POP3S on a self-signed
// certificate, on the listener it returns.
func newBenchTLSServer(b *testing.B, mod func(*Config)) (*testServer, net.Listener) {
	certs, err := tlsutil.NewManager(nil, nil, b.TempDir(), "localhost", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	tcfg, err := certs.ServerConfig("")
	if err != nil {
		b.Fatal(err)
	}
	ts := newTestServer(b, func(c *Config) {
		c.TLS = tcfg
		if mod != nil {
			mod(c)
		}
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go ts.srv.ServeTLS(l)
	return ts, l
}

// BenchmarkRETRLargeTLS retrieves one 8 MiB message per POP3S session.
func BenchmarkRETRLargeTLS(b *testing.B) {
	ts, l := newBenchTLSServer(b, nil)
	line := strings.Repeat("abcdefghi ", 7) + "abcdefg\n"
	msg := "Subject: big\n\n" + strings.Repeat(line, (8<<20)/len(line))
	if err := ts.store.Deliver(context.Background(), "alice", strings.NewReader(msg)); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 256<<10)
	var n int64
	for b.Loop() {
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			b.Fatal(err)
		}
		r := pop3.NewReader(bufio.NewReaderSize(c, 64<<10))
		fmt.Fprintf(c, "USER alice\r\nPASS secret\r\nRETR 1\r\n")
		for range 4 {
			if rep, err := r.ReadReply(512); err != nil || !rep.OK {
				b.Fatalf("%+v %v", rep, err)
			}
		}
		if n, err = io.CopyBuffer(io.Discard, r.DotReader(), buf); err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(c, "QUIT\r\n")
		r.ReadReply(512)
		c.Close()
	}
	b.SetBytes(n)
}
