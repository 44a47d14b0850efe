package pop3_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pouchmail/pouch/pop3"
)

// canonical is the body a DotReader returns for x written to a DotWriter:
// every LF not preceded by CR becomes CRLF, and a non-empty x not ending
// with LF gets a final CRLF.
func canonical(x []byte) []byte {
	var out []byte
	for i, c := range x {
		if c == '\n' && (i == 0 || x[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	if len(x) > 0 && x[len(x)-1] != '\n' {
		out = append(out, '\r', '\n')
	}
	return out
}

// stuffed is the reference wire form of x: canonical(x) with a "." added
// before every line starting with ".", then the terminating ".\r\n".
func stuffed(x []byte) []byte {
	var out []byte
	bol := true
	for _, c := range canonical(x) {
		if bol && c == '.' {
			out = append(out, '.')
		}
		out = append(out, c)
		bol = c == '\n' && len(out) > 1 && out[len(out)-2] == '\r'
	}
	return append(out, ".\r\n"...)
}

// writeDot writes x through a DotWriter in chunks of the sizes next returns.
func writeDot(t testing.TB, x []byte, next func() int) []byte {
	t.Helper()
	var wire bytes.Buffer
	w := pop3.NewWriter(&wire)
	dw := w.DotWriter()
	for p := x; len(p) > 0; {
		n := min(next(), len(p))
		if m, err := dw.Write(p[:n]); m != n || err != nil {
			t.Fatalf("Write = %d, %v; want %d, nil", m, err, n)
		}
		p = p[n:]
	}
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return wire.Bytes()
}

// readDot reads a body from wire with 1-octet reads from a 1-octet source,
// checks the terminator was found, and checks the line after it is intact.
func readDot(t testing.TB, wire []byte) []byte {
	t.Helper()
	src := io.MultiReader(bytes.NewReader(wire), strings.NewReader("+OK next\r\n"))
	r := pop3.NewReader(iotest.OneByteReader(src))
	var got []byte
	dr := r.DotReader()
	p := make([]byte, 1)
	for {
		n, err := dr.Read(p)
		got = append(got, p[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("DotReader: %v after %d octets", err, len(got))
		}
	}
	if line, err := r.ReadLine(512); err != nil || string(line) != "+OK next" {
		t.Fatalf("line after body = %q, %v; want %q", line, err, "+OK next")
	}
	return got
}

func checkRoundTrip(t testing.TB, x []byte, next func() int) {
	t.Helper()
	wire := writeDot(t, x, next)
	if want := stuffed(x); !bytes.Equal(wire, want) {
		t.Fatalf("wire for %s\n got %s\nwant %s", abbrev(x), abbrev(wire), abbrev(want))
	}
	if got, want := readDot(t, wire), canonical(x); !bytes.Equal(got, want) {
		t.Fatalf("round trip of %s\n got %s\nwant %s", abbrev(x), abbrev(got), abbrev(want))
	}
}

// abbrev quotes b, shortened if long.
func abbrev(b []byte) string {
	if len(b) > 200 {
		return fmt.Sprintf("%q...%q (%d octets)", b[:100], b[len(b)-100:], len(b))
	}
	return fmt.Sprintf("%q", b)
}

var pieces = []string{
	".", "..", "...", "\r", "\n", "\r\n", ".\r\n", ".\n", ".\r", "\x00",
	"\r\n.\r\n", "\n.\n", "\r\r\n", "a", "hello world", "From: a@b\r\n",
}

// randomBody builds a body from pieces and random octets.
func randomBody(rng *rand.Rand) []byte {
	var b []byte
	for range rng.IntN(40) {
		if rng.IntN(4) == 0 {
			b = append(b, byte(rng.IntN(256)))
		} else {
			b = append(b, pieces[rng.IntN(len(pieces))]...)
		}
	}
	return b
}

func TestDotRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	chunkers := map[string]func() int{
		"1":      func() int { return 1 },
		"1-7":    func() int { return 1 + rng.IntN(7) },
		"1-5000": func() int { return 1 + rng.IntN(5000) },
		"all":    func() int { return 1 << 30 },
	}
	for name, next := range chunkers {
		t.Run(name, func(t *testing.T) {
			for _, p := range pieces {
				checkRoundTrip(t, []byte(p), next)
			}
			for range 2000 {
				checkRoundTrip(t, randomBody(rng), next)
			}
		})
	}
}

func TestDotRoundTripLongLines(t *testing.T) {
	mb := bytes.Repeat([]byte("x"), 1<<20)
	bodies := map[string][]byte{
		"1MB line":              mb,
		"1MB line with CRLF":    append(append([]byte(".."), mb...), "\r\n.\r\n"...),
		"1MB line with bare CR": append(append(bytes.Clone(mb), '\r'), mb[:1000]...),
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for name, x := range bodies {
		t.Run(name, func(t *testing.T) {
			checkRoundTrip(t, x, func() int { return 1 + rng.IntN(100000) })
		})
	}
}

// TestDotWriterSplitCRLF checks a CR and its LF in separate writes.
func TestDotWriterSplitCRLF(t *testing.T) {
	var wire bytes.Buffer
	w := pop3.NewWriter(&wire)
	dw := w.DotWriter()
	for _, s := range []string{"a\r", "\n", ".b\r", "\r", "\n", "\n", "c\r"} {
		if _, err := io.WriteString(dw, s); err != nil {
			t.Fatal(err)
		}
	}
	dw.Close()
	w.Flush()
	if got, want := wire.String(), "a\r\n..b\r\r\n\r\nc\r\r\n.\r\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestDotWriterWire(t *testing.T) {
	tests := []struct{ body, wire string }{
		{"", ".\r\n"},
		{".", "..\r\n.\r\n"},
		{".\r\n", "..\r\n.\r\n"},
		{"..x", "...x\r\n.\r\n"},
		{"a\n.\nb", "a\r\n..\r\nb\r\n.\r\n"},
		{"\n", "\r\n.\r\n"},
		{"\r", "\r\r\n.\r\n"},
		{"x.\r\ny", "x.\r\ny\r\n.\r\n"},
		{"a\x00b\r\n", "a\x00b\r\n.\r\n"},
		// RFC 1939 §7 TOP example (headers, blank line, no body lines).
		{"From: a\r\n\r\n", "From: a\r\n\r\n.\r\n"},
		// RFC 2449 §5 CAPA example.
		{"TOP\nUSER\nSASL CRAM-MD5 KERBEROS_V4\nRESP-CODES\nLOGIN-DELAY 900\nPIPELINING\nEXPIRE 60\nUIDL\nIMPLEMENTATION Shlemazle-Plotz-v302\n",
			"TOP\r\nUSER\r\nSASL CRAM-MD5 KERBEROS_V4\r\nRESP-CODES\r\nLOGIN-DELAY 900\r\nPIPELINING\r\nEXPIRE 60\r\nUIDL\r\nIMPLEMENTATION Shlemazle-Plotz-v302\r\n.\r\n"},
	}
	for _, tt := range tests {
		for _, size := range []int{1, 2, 3, 1 << 20} {
			var wire bytes.Buffer
			w := pop3.NewWriter(&wire)
			dw := w.DotWriter()
			for p := tt.body; p != ""; {
				n := min(size, len(p))
				io.WriteString(dw, p[:n])
				p = p[n:]
			}
			if err := dw.Close(); err != nil {
				t.Fatal(err)
			}
			if wire.Len() != 0 {
				t.Errorf("Close flushed")
			}
			w.Flush()
			if wire.String() != tt.wire {
				t.Errorf("body %q in writes of %d: got %q, want %q", tt.body, size, wire.String(), tt.wire)
			}
		}
	}
}

func TestDotWriterClose(t *testing.T) {
	var wire bytes.Buffer
	w := pop3.NewWriter(&wire)
	dw := w.DotWriter()
	io.WriteString(dw, "x")
	dw.Close()
	if err := dw.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := io.WriteString(dw, "y"); err == nil {
		t.Errorf("Write after Close succeeded")
	}
	w.Flush()
	if got, want := wire.String(), "x\r\n.\r\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestDotWriterNoAlloc(t *testing.T) {
	w := pop3.NewWriter(io.Discard)
	dw := w.DotWriter()
	line := []byte("..some text\nmore\r\nlast\r")
	if n := testing.AllocsPerRun(100, func() { dw.Write(line) }); n != 0 {
		t.Errorf("Write allocates %v times", n)
	}
}

func TestDotReader(t *testing.T) {
	tests := []struct {
		name, wire, body string
		err              error
	}{
		{"empty", ".\r\n", "", io.EOF},
		{"RFC 1939 RETR", "line 1\r\n..stuffed\r\n\r\n.\r\n", "line 1\r\n.stuffed\r\n\r\n", io.EOF},
		{"dot LF is data", "a\r\n.\nb\r\n.\r\n", "a\r\n\nb\r\n", io.EOF},
		{"dot CR is data", "a\r\n.\rb\r\n.\r\n", "a\r\n\rb\r\n", io.EOF},
		{"dot after bare LF", "a\n.\r\nb\r\n.\r\n", "a\n.\r\nb\r\n", io.EOF},
		{"dot after bare CR", "a\r.\r\n.\r\n", "a\r.\r\n", io.EOF},
		{"dot LF at end", "a\r\n.\n", "a\r\n\n", io.ErrUnexpectedEOF},
		{"bare LF NUL", "a\nb\x00\r\n.\r\n", "a\nb\x00\r\n", io.EOF},
		{"CR CR LF", "\r\r\n.\r\n", "\r\r\n", io.EOF},
		{"no terminator", "a\r\nb", "a\r\nb", io.ErrUnexpectedEOF},
		{"no terminator at BOL", "a\r\n", "a\r\n", io.ErrUnexpectedEOF},
		{"nothing", "", "", io.ErrUnexpectedEOF},
		{"lone dot", "a\r\n.", "a\r\n", io.ErrUnexpectedEOF},
		{"dot CR at end", "a\r\n.\r", "a\r\n\r", io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		for _, oneByte := range []bool{false, true} {
			for _, size := range []int{1, 2, 3, 4096, 1 << 16} {
				var src io.Reader = strings.NewReader(tt.wire)
				if oneByte {
					src = iotest.OneByteReader(src)
				}
				got, err := readWith(pop3.NewReader(src).DotReader(), size)
				if string(got) != tt.body || err != tt.err {
					t.Errorf("%s (1-byte source %v, reads of %d): got %q, %v; want %q, %v",
						tt.name, oneByte, size, got, err, tt.body, tt.err)
				}
			}
		}
	}
}

// readWith reads r to an error with reads of size octets.
func readWith(r io.Reader, size int) ([]byte, error) {
	var out []byte
	p := make([]byte, size)
	for {
		n, err := r.Read(p)
		out = append(out, p[:n]...)
		if err != nil {
			return out, err
		}
	}
}

func TestDotReaderIOTest(t *testing.T) {
	body := "Subject: x\r\n\r\n.leading\r\nbare\nCR\r and NUL\x00\r\nend\r\n"
	wire := "Subject: x\r\n\r\n..leading\r\nbare\nCR\r and NUL\x00\r\nend\r\n.\r\n"
	if err := iotest.TestReader(pop3.NewReader(strings.NewReader(wire)).DotReader(), []byte(body)); err != nil {
		t.Error(err)
	}
}

func TestDotReaderError(t *testing.T) {
	errBoom := errors.New("boom")
	src := io.MultiReader(strings.NewReader("a\r\n"), iotest.ErrReader(errBoom))
	got, err := io.ReadAll(pop3.NewReader(src).DotReader())
	if string(got) != "a\r\n" || err != errBoom {
		t.Errorf("got %q, %v; want %q, %v", got, err, "a\r\n", errBoom)
	}
}

func FuzzDotRoundTrip(f *testing.F) {
	for _, p := range pieces {
		f.Add([]byte(p), uint8(1))
	}
	f.Add([]byte("From: a\r\nSubject: b\r\n\r\n.hidden\n..\r\n.\r\nend"), uint8(3))
	f.Add([]byte("x\r"), uint8(1))
	f.Fuzz(func(t *testing.T, x []byte, seed uint8) {
		rng := rand.New(rand.NewPCG(uint64(seed), 0))
		checkRoundTrip(t, x, func() int { return 1 + rng.IntN(int(seed)+1) })
	})
}

func FuzzDotReader(f *testing.F) {
	f.Add([]byte("line 1\r\n..stuffed\r\n.\r\n"))
	f.Add([]byte("a\r\n.\nb\r\n.\r\n"))
	f.Add([]byte("a\n.\r\n"))
	f.Add([]byte(".\r"))
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, size := range []int{1, 7, 4096} {
			got, err := readWith(pop3.NewReader(bytes.NewReader(in)).DotReader(), size)
			if err != io.EOF && err != io.ErrUnexpectedEOF {
				t.Fatalf("error %v", err)
			}
			if len(got) > len(in) {
				t.Fatalf("output of %d octets from %d", len(got), len(in))
			}
			if err == io.EOF && !bytes.HasSuffix(got, []byte("\r\n")) && len(got) > 0 {
				t.Fatalf("terminated body %q does not end with CRLF", got)
			}
		}
	})
}
