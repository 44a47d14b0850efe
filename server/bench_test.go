package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"

	"github.com/pouchmail/pouch/pop3"
)

// benchSession runs one whole session against addr: USER, PASS, STAT, LIST,
// UIDL, RETR of every message, QUIT, and returns the message octets read.
func benchSession(b *testing.B, addr string, msgs int, buf []byte) int64 {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	r, w := pop3.NewReader(bufio.NewReaderSize(c, 64<<10)), pop3.NewWriter(c)
	reply := func() {
		rep, err := r.ReadReply(512)
		if err != nil || !rep.OK {
			b.Fatalf("reply %+v %v", rep, err)
		}
	}
	multi := func() {
		for {
			l, err := r.ReadLine(512)
			if err != nil {
				b.Fatal(err)
			}
			if string(l) == "." {
				return
			}
		}
	}
	cmd := func(s string) {
		w.Line(s)
		w.Flush()
		reply()
	}
	reply()
	cmd("USER alice")
	cmd("PASS secret")
	cmd("STAT")
	cmd("LIST")
	multi()
	cmd("UIDL")
	multi()
	var n int64
	for i := 1; i <= msgs; i++ {
		cmd(fmt.Sprintf("RETR %d", i))
		m, err := io.CopyBuffer(io.Discard, r.DotReader(), buf)
		if err != nil {
			b.Fatal(err)
		}
		n += m
	}
	cmd("QUIT")
	return n
}

// BenchmarkSessionRETR is the S1 session of bench/compare.sh in process: a
// whole download session of 50 messages of 10 KB over loopback.
func BenchmarkSessionRETR(b *testing.B) {
	ts := newTestServer(b, nil)
	msg := "Subject: bench\n\n" + strings.Repeat(".abcdefghi abcdefghi abcdefghi abcdefghi abcdefghi abcdefghi abcdefghi\n", 140)
	for range 50 {
		if err := ts.store.Deliver(context.Background(), "alice", strings.NewReader(msg)); err != nil {
			b.Fatal(err)
		}
	}
	benchSessions(b, ts, 50, 32<<10)
}

// benchSessions runs benchSession against ts in a loop with a read buffer
// of bufSize octets, counting the message octets read per session.
func benchSessions(b *testing.B, ts *testServer, msgs, bufSize int) {
	buf := make([]byte, bufSize)
	var n int64
	b.ReportAllocs()
	for b.Loop() {
		n = benchSession(b, ts.addr, msgs, buf)
	}
	b.SetBytes(n)
}

// BenchmarkRETRLarge retrieves one 8 MiB message per session (the S4 path).
func BenchmarkRETRLarge(b *testing.B) {
	ts := newTestServer(b, nil)
	line := strings.Repeat("abcdefghi ", 7) + "abcdefg\n"
	msg := "Subject: big\n\n" + strings.Repeat(line, (8<<20)/len(line))
	if err := ts.store.Deliver(context.Background(), "alice", strings.NewReader(msg)); err != nil {
		b.Fatal(err)
	}
	benchSessions(b, ts, 1, 64<<10)
}

// BenchmarkIdleSessionMemory opens b.N idle logged-in sessions and reports
// the server's heap and stack per session (the S5 budget). The client side
// of the connections lives in the same process; its share (a net.Conn and a
// 4 KiB read buffer) is included.
func BenchmarkIdleSessionMemory(b *testing.B) {
	ts := newTestServer(b, func(c *Config) { c.Auth = benchUsers(b.N) })
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	for i := range b.N {
		loginAs(b, i, func() (net.Conn, error) { return net.Dial("tcp", ts.addr) })
	}
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	n := float64(b.N)
	b.ReportMetric(float64(ms1.HeapInuse-ms0.HeapInuse)/n, "heap-B/session")
	b.ReportMetric(float64(ms1.StackInuse-ms0.StackInuse)/n, "stack-B/session")
}

// benchUsers has the users u0 … u(n-1), password "pw".
func benchUsers(n int) fakeAuth {
	users := map[string]string{}
	for i := range n {
		users[fmt.Sprintf("u%d", i)] = "pw"
	}
	return fakeAuth{users: users}
}

// loginAs logs in as user ui on a connection made by dial, which is closed
// when the benchmark ends, and returns it.
func loginAs(b *testing.B, i int, dial func() (net.Conn, error)) net.Conn {
	c, err := dial()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	r := bufio.NewReader(c)
	fmt.Fprintf(c, "USER u%d\r\nPASS pw\r\n", i)
	for range 3 {
		if l, err := r.ReadString('\n'); err != nil || l[0] != '+' {
			b.Fatalf("%q %v", l, err)
		}
	}
	return c
}

// genMessage streams a message of about size octets like bench/gendata.py's:
// 78-octet lines, one in ten starting with ".", ended by eol ("\n" or "\r\n");
// with dots false no line starts with ".".
type genMessage struct {
	left int
	line []byte
	dot  []byte
	i    int
	cur  []byte
}

func newGenMessage(size int, eol string, dots bool) *genMessage {
	body := strings.Repeat("abcdefghi ", 8)[:77]
	g := &genMessage{left: size, line: []byte("x" + body + eol), dot: []byte("." + body + eol)}
	if !dots {
		g.dot = g.line
	}
	g.cur = []byte("From: bench@example.org" + eol + "Subject: big" + eol + eol)
	return g
}

func (g *genMessage) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && g.left > 0 {
		if len(g.cur) == 0 {
			if g.i%10 == 0 {
				g.cur = g.dot
			} else {
				g.cur = g.line
			}
			g.i++
		}
		k := copy(p[n:min(len(p), n+g.left)], g.cur)
		g.cur = g.cur[k:]
		n += k
		g.left -= k
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// BenchmarkRETR100MB is S4 of bench/compare.sh in process: one session
// retrieving one 100 MB message over loopback TCP. "lf-dots" is the form
// bench/gendata.py writes (LF line ends, one line in ten starting with "."),
// which needs both CRLF conversion and dot-stuffing; "crlf" is a message
// already in wire form with no line starting with "."; "crlf-dots" is in wire
// form but needs stuffing.
func BenchmarkRETR100MB(b *testing.B) {
	for _, tc := range []struct {
		name string
		eol  string
		dots bool
	}{{"lf-dots", "\n", true}, {"crlf", "\r\n", false}, {"crlf-dots", "\r\n", true}} {
		b.Run(tc.name, func(b *testing.B) {
			ts := newTestServer(b, nil)
			if err := ts.store.Deliver(context.Background(), "alice", newGenMessage(100<<20, tc.eol, tc.dots)); err != nil {
				b.Fatal(err)
			}
			benchSessions(b, ts, 1, 64<<10)
		})
	}
}
