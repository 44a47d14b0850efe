package pop3_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pouchmail/pouch/pop3"
)

// chunkReader returns x in reads of the sizes next returns.
type chunkReader struct {
	x    []byte
	next func() int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.x) == 0 {
		return 0, io.EOF
	}
	n := min(c.next(), len(c.x), len(p))
	copy(p, c.x[:n])
	c.x = c.x[n:]
	return n, nil
}

// checkWriteBody writes "+OK" and x with a work buffer of bufSize octets and
// reads of the sizes next returns, through WriteBody and then through
// WriteBodyFunc with a BlockSender that writes the unchanged blocks itself
// from x, as sendfile would from the file, and every third time declines.
func checkWriteBody(t testing.TB, x []byte, bufSize int, next func() int) {
	t.Helper()
	for _, sender := range []bool{false, true} {
		var wire bytes.Buffer
		w := pop3.NewWriter(&wire)
		w.OK("")
		name, body := "WriteBody", w.WriteBody
		if sender {
			calls := 0
			send := func(off int64, n int) (bool, error) {
				if calls++; calls%3 == 0 {
					return false, nil
				}
				if off < 0 || off+int64(n) > int64(len(x)) || w.Buffered() != 0 {
					t.Fatalf("send(%d, %d) of %d octets, %d buffered", off, n, len(x), w.Buffered())
				}
				wire.Write(x[off : off+int64(n)])
				return true, nil
			}
			name, body = "WriteBodyFunc", func(r io.Reader, buf []byte) (int64, error) { return w.WriteBodyFunc(r, buf, send) }
		}
		n, err := body(&chunkReader{x, next}, make([]byte, bufSize))
		if err != nil {
			t.Fatal(err)
		}
		if want := int64(len(canonical(x))); n != want {
			t.Fatalf("%s of %s = %d, want %d", name, abbrev(x), n, want)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		got, ok := bytes.CutPrefix(wire.Bytes(), []byte("+OK\r\n"))
		if !ok {
			t.Fatalf("status line lost or out of order: %s", abbrev(wire.Bytes()))
		}
		if want := stuffed(x); !bytes.Equal(got, want) {
			t.Fatalf("%s (buffer %d) of %s\n got %s\nwant %s", name, bufSize, abbrev(x), abbrev(got), abbrev(want))
		}
	}
}

// stuffBlocks runs x through a Stuffer in blocks of the sizes next returns,
// alternating Clean and Stuff as a caller that sends clean runs itself does.
func stuffBlocks(x []byte, next func() int, clean bool) ([]byte, int64) {
	var s pop3.Stuffer
	var out []byte
	for len(x) > 0 {
		n := min(next(), len(x))
		b := x[:n]
		x = x[n:]
		if clean {
			k := s.Clean(b)
			out = append(out, b[:k]...)
			b = b[k:]
		}
		dst := make([]byte, 2*len(b))
		out = append(out, dst[:s.Stuff(dst, b)]...)
	}
	out = append(out, s.End()...)
	return out, s.Wire()
}

func TestWriteBody(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	chunkers := map[string]func() int{
		"1":      func() int { return 1 },
		"1-7":    func() int { return 1 + rng.IntN(7) },
		"1-5000": func() int { return 1 + rng.IntN(5000) },
		"all":    func() int { return 1 << 30 },
	}
	for name, next := range chunkers {
		t.Run(name, func(t *testing.T) {
			for _, size := range []int{0, 64, 65, 100, 4096, 256 << 10} {
				for _, p := range pieces {
					checkWriteBody(t, []byte(p), size, next)
				}
				for range 300 {
					checkWriteBody(t, randomBody(rng), size, next)
				}
			}
		})
	}
}

// TestWriteBodyBoundaries puts every piece at every offset around the
// boundary of a 32-octet block (a 64-octet buffer): dots, CR and LF split
// across blocks, bare LF, and a last line without line end.
func TestWriteBodyBoundaries(t *testing.T) {
	for _, p := range append(pieces, "\r\n.", "\n.", ".\r\n.", "\n\n.\r", "x\r\r\n..") {
		for pad := 25; pad <= 40; pad++ {
			for _, fill := range []string{"a", "\n", "\r\n", "."} {
				x := []byte(strings.Repeat(fill, pad) + p + strings.Repeat(fill, 40))
				checkWriteBody(t, x, 64, func() int { return 1 << 30 })
				checkWriteBody(t, x[:pad+len(p)], 64, func() int { return 1 << 30 })
			}
		}
	}
}

// checkStuffer checks the body and Wire that stuffBlocks gives for x.
func checkStuffer(t testing.TB, x []byte, next func() int, clean bool) {
	t.Helper()
	got, wire := stuffBlocks(x, next, clean)
	if want := stuffed(x); !bytes.Equal(got, want) {
		t.Fatalf("Stuffer (clean %v) of %s\n got %s\nwant %s", clean, abbrev(x), abbrev(got), abbrev(want))
	}
	if want := int64(len(canonical(x))); wire != want {
		t.Fatalf("Wire of %s = %d, want %d", abbrev(x), wire, want)
	}
}

func TestStufferBlocks(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for range 3000 {
		x := randomBody(rng)
		for _, clean := range []bool{false, true} {
			checkStuffer(t, x, func() int { return 1 + rng.IntN(9) }, clean)
		}
	}
}

func TestStufferClean(t *testing.T) {
	tests := []struct {
		prev, p string
		want    int
	}{
		{"", "", 0},
		{"", "abc\r\ndef\r\n", 10},
		{"", ".abc\r\n", 0},
		{"", "abc\r\n.def\r\n", 5},
		{"", "abc\ndef", 3},
		{"", "\n", 0},
		{"", "abc\r\n\n", 5},
		{"x\r", "\nabc", 4},
		{"x", "\nabc", 0},
		{"x\r\n", ".", 0},
		{"x\n", ".", 0},
		{"x", ".", 1},
		{"x\r", ".\r\n", 3},
		{"", "a.\r\nb", 5},
		{"", "\r\r\n", 3},
	}
	for _, tt := range tests {
		var s pop3.Stuffer
		dst := make([]byte, 2*len(tt.prev))
		s.Stuff(dst, []byte(tt.prev))
		if got := s.Clean([]byte(tt.p)); got != tt.want {
			t.Errorf("after %q, Clean(%q) = %d, want %d", tt.prev, tt.p, got, tt.want)
		}
	}
}

// TestWriteBodyDirect checks that a large body bypasses the buffer in
// blocks, after what was buffered before it, and that the end stays
// buffered.
func TestWriteBodyDirect(t *testing.T) {
	var rec writeRecorder
	w := pop3.NewWriter(&rec)
	w.OK("1 follows")
	x := bytes.Repeat([]byte("line of text\r\n"), 40000) // 560,000 octets
	if _, err := w.WriteBody(bytes.NewReader(x), make([]byte, 256<<10)); err != nil {
		t.Fatal(err)
	}
	if len(rec.writes) < 2 || string(rec.writes[0]) != "+OK 1 follows\r\n" {
		t.Fatalf("first write %q of %d", rec.writes[0], len(rec.writes))
	}
	for _, p := range rec.writes[1:] {
		if len(p) > 256<<10 {
			t.Fatalf("write of %d octets", len(p))
		}
	}
	if w.Buffered() != 3 {
		t.Errorf("Buffered = %d after WriteBody, want 3 (the end)", w.Buffered())
	}
	w.Flush()
	if got := bytes.Join(rec.writes, nil); !bytes.Equal(got, append(append([]byte("+OK 1 follows\r\n"), x...), ".\r\n"...)) {
		t.Errorf("wire differs")
	}
}

type writeRecorder struct{ writes [][]byte }

func (r *writeRecorder) Write(p []byte) (int, error) {
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

// TestWriteBodyFuncSends checks that the clean blocks of a large message
// in wire form go to the BlockSender, at the right offsets, and the others
// are written.
func TestWriteBodyFuncSends(t *testing.T) {
	line := "line of text\r\n"
	x := []byte(strings.Repeat(line, 20000) + "." + strings.Repeat(line, 20000)) // a dot line in the third block
	var rec writeRecorder
	w := pop3.NewWriter(&rec)
	w.OK("")
	var sent []int64
	send := func(off int64, n int) (bool, error) {
		sent = append(sent, off, int64(n))
		rec.Write(x[off : off+int64(n)])
		return true, nil
	}
	if _, err := w.WriteBodyFunc(bytes.NewReader(x), make([]byte, 256<<10), send); err != nil {
		t.Fatal(err)
	}
	w.Flush()
	if want := []int64{0, 128 << 10, 128 << 10, 128 << 10, 384 << 10, 128 << 10, 512 << 10, int64(len(x)) - 512<<10}; !slices.Equal(sent, want) {
		t.Errorf("sent (offset, length) %v, want %v", sent, want)
	}
	if got := bytes.Join(rec.writes, nil); !bytes.Equal(got, append([]byte("+OK\r\n"), stuffed(x)...)) {
		t.Errorf("wire differs")
	}
	errBoom := errors.New("boom")
	w = pop3.NewWriter(io.Discard)
	if _, err := w.WriteBodyFunc(bytes.NewReader(x), make([]byte, 256<<10), func(int64, int) (bool, error) { return false, errBoom }); err != errBoom {
		t.Errorf("send error: got %v, want %v", err, errBoom)
	}
}

func TestWriteBodyErrors(t *testing.T) {
	errBoom := errors.New("boom")
	w := pop3.NewWriter(io.Discard)
	src := io.MultiReader(strings.NewReader("a\nb"), iotest.ErrReader(errBoom))
	if n, err := w.WriteBody(src, make([]byte, 64)); err != errBoom || n != 4 {
		t.Errorf("read error: got %d, %v; want 4, %v", n, err, errBoom)
	}
	w = pop3.NewWriter(failWriter{errBoom})
	if _, err := w.WriteBody(bytes.NewReader(make([]byte, 1<<20)), make([]byte, 64<<10)); err != errBoom {
		t.Errorf("write error: got %v, want %v", err, errBoom)
	}
}

type failWriter struct{ err error }

func (f failWriter) Write([]byte) (int, error) { return 0, f.err }

func TestWriteBodyNoAlloc(t *testing.T) {
	w := pop3.NewWriter(io.Discard)
	msg := bytes.ReplaceAll(message(), []byte("\r\n"), []byte("\n"))
	buf := make([]byte, 64<<10)
	r := bytes.NewReader(msg)
	if n := testing.AllocsPerRun(100, func() {
		r.Reset(msg)
		w.WriteBody(r, buf)
		w.Flush()
	}); n != 0 {
		t.Errorf("WriteBody allocates %v times", n)
	}
}

func FuzzWriteBody(f *testing.F) {
	for _, p := range pieces {
		f.Add([]byte(p), uint8(1), uint8(0))
	}
	f.Add([]byte("From: a\r\nSubject: b\r\n\r\n.hidden\n..\r\n.\r\nend"), uint8(3), uint8(5))
	f.Add([]byte("x\r"), uint8(1), uint8(1))
	f.Fuzz(func(t *testing.T, x []byte, seed, buf uint8) {
		rng := rand.New(rand.NewPCG(uint64(seed), 0))
		next := func() int { return 1 + rng.IntN(int(seed)+1) }
		checkWriteBody(t, x, 64+int(buf), next)
		checkStuffer(t, x, next, seed%2 == 0)
	})
}
