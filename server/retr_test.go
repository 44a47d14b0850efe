package server

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// wireOf is the reference RETR body of a stored message: every LF not
// after a CR becomes CRLF, a last line without line end gets one, lines
// starting with "." get another, then ".\r\n".
func wireOf(msg string) []byte {
	var out []byte
	bol := true
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if bol && c == '.' {
			out = append(out, '.')
		}
		if c == '\n' && (i == 0 || msg[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
		bol = c == '\n'
	}
	if !bol {
		out = append(out, "\r\n"...)
	}
	return append(out, ".\r\n"...)
}

// wireSize is the size RETR announces for msg.
func wireSize(msg string) int {
	n := len(wireOf(msg)) - 3
	for i := 0; i < len(msg); i++ {
		if msg[i] == '.' && (i == 0 || msg[i-1] == '\n') {
			n--
		}
	}
	return n
}

// bigMessages are messages larger than the server's file reads (128 KiB,
// and 512 KiB for messages of 1 MiB or more), with what matters at and
// around the block boundaries.
func bigMessages() map[string]string {
	m := blockMessages(128<<10, "")
	for k, v := range blockMessages(512<<10, "1 MiB+ ") {
		m[k] = v
	}
	return m
}

func blockMessages(block int, prefix string) map[string]string {
	line := strings.Repeat("abcdefghi ", 7) + "abcdefgh\r\n" // 80 octets
	crlf := "Subject: big\r\n\r\n" + strings.Repeat(line, 3*block/len(line))
	// put returns crlf with s written over it at offset off.
	put := func(off int, s string) string { return crlf[:off] + s + crlf[off+len(s):] }
	// A line starts at every multiple of 80 after the 16-octet header.
	lineAt := func(n int) int { return 16 + (n/80)*80 }
	m := map[string]string{
		"crlf clean":                  crlf,
		"crlf no final line end":      crlf + "last",
		"crlf final bare CR":          crlf + "last\r",
		"crlf dot line at block 2":    put(lineAt(block), ".hidden"),
		"crlf dot line before block":  put(lineAt(block)-80, "."),
		"crlf dot at block start":     put(block-2, "\r\n."),
		"crlf dot after block start":  put(block-1, "\r\n."),
		"crlf LF at block start":      put(block-1, "\r\n"),
		"crlf CR ends block, bare LF": put(block-1, "x\n"),
		"crlf bare LF at block start": put(block-1, "x\nx"),
		"crlf lone dot line":          put(lineAt(2*block), ".\r\n"),
		"crlf terminator-like":        put(lineAt(block+500), ".\r\n.\r\n"),
		"lf":                          strings.ReplaceAll(crlf, "\r\n", "\n"),
		"lf dots":                     strings.ReplaceAll(strings.ReplaceAll(crlf, "\r\n", "\n"), "\na", "\n."),
		"mixed":                       strings.Replace(crlf, "\r\n", "\n", 2000),
		"exactly one block":           crlf[:block-2] + "\r\n",
		"exactly two blocks":          crlf[:2*block-2] + "\r\n",
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[prefix+k] = v
	}
	return out
}

// retrExact retrieves message 1 and checks every octet of the response and
// that a pipelined command after it is answered in order.
func retrExact(t *testing.T, c *client, msg string) {
	t.Helper()
	c.send("RETR 1\r\nNOOP\r\n")
	c.expect(fmt.Sprintf(`\+OK %d octets`, wireSize(msg)))
	want := wireOf(msg)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c.r, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && got[i] == want[i] {
			i++
		}
		t.Fatalf("RETR differs at octet %d of %d: got %q, want %q", i, len(want),
			got[max(0, i-20):min(len(got), i+20)], want[max(0, i-20):min(len(want), i+20)])
	}
	c.expect(`\+OK`)
}

// TestRETRByteExact checks large messages of every shape over plain TCP,
// where blocks needing no change go with sendfile, and over TLS, where none
// may.
func TestRETRByteExact(t *testing.T) {
	for name, msg := range bigMessages() {
		t.Run(name, func(t *testing.T) {
			ts := newTLSServer(t, "127.0.0.1", nil)
			ts.deliver(t, "alice", msg)

			before := sendfileOctets.Load()
			c := ts.dial(t)
			c.login("alice", "secret")
			retrExact(t, c, msg)
			if strings.Contains(name, "crlf") && sendfileOctets.Load() == before {
				t.Errorf("no block went with sendfile over plain TCP")
			}
			// What went with sendfile is counted as sent on the connection.
			for _, si := range ts.srv.Who() {
				if si.User == "alice" && si.BytesOut < int64(len(wireOf(msg))) {
					t.Errorf("session sent %d octets, want at least %d", si.BytesOut, len(wireOf(msg)))
				}
			}
			c.send("QUIT\r\n")
			c.expect(`\+OK .*`)

			before = sendfileOctets.Load()
			tc := ts.dialTLS(t, &tls.Config{})
			tc.expect(`\+OK Pouch ready\.`)
			tc.login2("alice", "secret")
			retrExact(t, tc, msg)
			if n := sendfileOctets.Load() - before; n != 0 {
				t.Errorf("%d octets went with sendfile over TLS", n)
			}
		})
	}
}

// TestTOPStoredForm checks TOP on messages stored with LF and with CRLF.
func TestTOPStoredForm(t *testing.T) {
	for _, eol := range []string{"\n", "\r\n"} {
		ts := newTestServer(t, nil)
		msg := strings.ReplaceAll("Subject: x\n\n.one\ntwo\nthree", "\n", eol)
		ts.deliver(t, "alice", msg)
		c := ts.dial(t)
		c.login("alice", "secret")
		c.transcript(`
			C: TOP 1 0
			S: \+OK top of message follows
			S: Subject: x
			S:
			S: \.
			C: TOP 1 2
			S: \+OK top of message follows
			S: Subject: x
			S:
			S: \.\.one
			S: two
			S: \.
			C: TOP 1 9
			S: \+OK top of message follows
			S: Subject: x
			S:
			S: \.\.one
			S: two
			S: three
			S: \.`)
	}
}

// TestRETRSlowClient retrieves large messages slower than a whole block (1
// MiB) can go within the idle timeout, but steadily: a slow client is not an
// idle one, whether the blocks are written (LF) or go with sendfile (CRLF).
// The client takes over 1.3 s a block against a 1 s timeout, so only a client
// that makes no progress at all for a second, which a busy machine does not
// cause, could be cut off.
func TestRETRSlowClient(t *testing.T) {
	const idle = time.Second
	for _, eol := range []string{"\n", "\r\n"} {
		ts := newTestServer(t, func(c *Config) { c.IdleTimeout = idle })
		line := strings.Repeat("abcdefghi ", 7) + "abcdefgh" + eol
		msg := strings.Repeat(line, (3<<19)/len(line))
		ts.deliver(t, "alice", msg)
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			// A small receive window, so that the server's writes wait on us.
			return rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
		}}
		conn, err := d.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(60 * time.Second))
		c := &client{t: t, conn: conn, r: bufio.NewReaderSize(conn, 16<<10)}
		c.login("alice", "secret")
		c.send("RETR 1\r\n")
		c.expect(fmt.Sprintf(`\+OK %d octets`, wireSize(msg)))
		want := wireOf(msg)
		got := make([]byte, 0, len(want))
		buf := make([]byte, 32<<10)
		start := time.Now()
		for len(got) < len(want) {
			n, err := c.r.Read(buf[:min(len(buf), len(want)-len(got))])
			got = append(got, buf[:n]...)
			if err != nil {
				t.Fatalf("%q: after %d of %d octets in %v: %v", eol, len(got), len(want), time.Since(start), err)
			}
			time.Sleep(40 * time.Millisecond) // at most 0.8 MB/s
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%q: message differs", eol)
		}
		if time.Since(start) < 3*idle/2 {
			t.Errorf("%q: the client read too fast (%v) to test anything", eol, time.Since(start))
		}
	}
}

// FuzzRETR retrieves messages made of the input repeated past several file
// blocks over plain TCP, where blocks that need no change go with sendfile,
// and checks every octet.
func FuzzRETR(f *testing.F) {
	f.Add([]byte("line\r\n"), uint16(0))
	f.Add([]byte("a\r\n.b\r\n"), uint16(7))
	f.Add([]byte("x\n"), uint16(1))
	f.Add([]byte("\r"), uint16(3))
	ts := newTestServer(f, nil)
	f.Fuzz(func(t *testing.T, piece []byte, tail uint16) {
		if len(piece) == 0 {
			return
		}
		reps := (300<<10)/len(piece) + 1
		msg := strings.Repeat(string(piece), reps)
		msg = msg[:len(msg)-int(tail)%len(msg)]
		ts.deliver(t, "carol", msg)
		c := ts.dial(t)
		c.login("carol", "c")
		retrExact(t, c, msg)
		c.send("DELE 1\r\nQUIT\r\n")
		c.expect(`\+OK message 1 deleted`)
		c.expect(`\+OK .*`)
		c.closed()
	})
}
