package server

import (
	"bytes"
	"io"
)

// topReader passes through a message, in wire form or as stored (CRLF or LF
// line ends), up to the end of its header, the empty line after it, and then
// at most n lines of the body (TOP, RFC 1939 §7). It streams: lines of any
// length pass in pieces.
type topReader struct {
	r        io.Reader
	n        int  // body lines still to pass
	inHeader bool // still in the header
	lineLen  int  // octets of the current line so far
	lastCR   bool // the last octet read was CR
	done     bool
}

func newTopReader(r io.Reader, n int) *topReader {
	return &topReader{r: r, n: n, inHeader: true}
}

func (t *topReader) Read(p []byte) (int, error) {
	if t.done {
		return 0, io.EOF
	}
	if !t.inHeader && t.n == 0 {
		t.done = true
		return 0, io.EOF
	}
	n, err := t.r.Read(p)
	b := p[:n]
	pos := 0
	for pos < len(b) {
		i := bytes.IndexByte(b[pos:], '\n')
		if i < 0 {
			t.lineLen += len(b) - pos
			t.lastCR = b[len(b)-1] == '\r'
			break
		}
		t.lineLen += i
		if i > 0 {
			t.lastCR = b[pos+i-1] == '\r'
		}
		end := pos + i + 1
		if t.inHeader {
			if t.lineLen == 0 || t.lineLen == 1 && t.lastCR {
				t.inHeader = false // the empty line that ends the header
			}
		} else {
			t.n--
		}
		t.lineLen, t.lastCR = 0, false
		pos = end
		if !t.inHeader && t.n == 0 {
			t.done = true
			return end, nil
		}
	}
	return n, err
}
