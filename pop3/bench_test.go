package pop3_test

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/pouchmail/pouch/pop3"
)

// message returns a 10 KB message of 80-character lines (78 octets of text
// and CRLF), some starting with ".".
func message() []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < 10<<10; i++ {
		if i%10 == 0 {
			b.WriteString(".")
		} else {
			b.WriteString("x")
		}
		b.WriteString(strings.Repeat("abcdefghi ", 8)[:77])
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// cycleReader returns b over and over.
type cycleReader struct {
	b   []byte
	off int
}

func (c *cycleReader) Read(p []byte) (int, error) {
	n := copy(p, c.b[c.off:])
	c.off = (c.off + n) % len(c.b)
	return n, nil
}

func BenchmarkDotWriter(b *testing.B) {
	for _, ending := range []string{"CRLF", "LF"} {
		b.Run(ending, func(b *testing.B) {
			msg := message()
			if ending == "LF" {
				msg = bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
			}
			w := pop3.NewWriter(io.Discard)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				dw := w.DotWriter()
				dw.Write(msg)
				dw.Close()
			}
		})
	}
}

func BenchmarkDotReader(b *testing.B) {
	msg := message()
	var wire bytes.Buffer
	w := pop3.NewWriter(&wire)
	dw := w.DotWriter()
	dw.Write(msg)
	dw.Close()
	w.Flush()
	r := pop3.NewReader(&cycleReader{b: wire.Bytes()})
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		dr := r.DotReader()
		n := 0
		for {
			m, err := dr.Read(buf)
			n += m
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		if n != len(msg) {
			b.Fatalf("read %d octets, want %d", n, len(msg))
		}
	}
}

func BenchmarkReadLine(b *testing.B) {
	line := strings.Repeat("x", 78) + "\r\n"
	r := pop3.NewReader(&cycleReader{b: []byte(strings.Repeat(line, 100))})
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.ReadLine(512); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteBody converts a 1 MiB message, stored with CRLF or LF line
// ends (one line in ten starting with "."), as RETR of a large message does:
// 512 KiB reads into a 1 MiB work buffer.
func BenchmarkWriteBody(b *testing.B) {
	for _, ending := range []string{"CRLF", "LF"} {
		b.Run(ending, func(b *testing.B) {
			msg := bytes.Repeat(message(), 100)
			if ending == "LF" {
				msg = bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
			}
			w := pop3.NewWriter(io.Discard)
			buf := make([]byte, 1<<20)
			r := bytes.NewReader(msg)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(msg)
				if _, err := w.WriteBody(r, buf); err != nil {
					b.Fatal(err)
				}
				w.Flush()
			}
		})
	}
}
