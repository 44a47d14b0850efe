package store

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// BenchmarkCanonicalReader streams a 10 KB LF message in wire form through a
// 32 KiB copy buffer, as RETR does; the allocations are per message.
func BenchmarkCanonicalReader(b *testing.B) {
	msg := []byte("Subject: x\n\n" + strings.Repeat("abcdefghi abcdefghi abcdefghi abcdefghi abcdefghi abcdefghi abcdefghi\n", 140))
	buf := make([]byte, 32<<10)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		io.CopyBuffer(io.Discard, struct{ io.Reader }{NewCanonicalReader(bytes.NewReader(msg))}, buf)
	}
}
