package pop3

import (
	"bytes"
	"io"
)

// A Stuffer turns a message as stored (LF or CRLF line ends, in any mix)
// into the body of a multi-line response (RFC 1939 §3) one block at a time:
// every LF not preceded by CR becomes CRLF, a "." is added before every line
// that starts with ".", and End gives the end of the response. DotWriter and
// WriteBody convert with it; callers that move the blocks themselves use it
// directly. The zero value is at the start of a body.
type Stuffer struct {
	mid  bool  // inside a line: the next octet does not start one
	cr   bool  // the last octet was CR
	wire int64 // octets of the body in wire form so far, stuffing not counted
}

// Clean returns the length of the longest prefix of p that passes unchanged
// (no LF without CR before it, no line starting with "."), and moves past
// that prefix as Stuff would have. The rest of p, if any, starts where an
// octet must be added.
func (s *Stuffer) Clean(p []byte) int { return s.convert(nil, p) }

// Stuff writes the converted form of src to the front of dst and returns its
// length, at most 2*len(src). dst must have room for that; it may share memory
// with src if it starts at least len(src) octets before src, so that a block
// read into the second half of a buffer can be converted into its front.
func (s *Stuffer) Stuff(dst, src []byte) int { return s.convert(dst, src) }

// convert is Stuff, or with dst nil, Clean. Runs that pass unchanged are
// copied whole, where an octet is added or at the end.
func (s *Stuffer) convert(dst, src []byte) int {
	out, run := 0, 0 // src[run:i] passes unchanged and is not in dst yet
	i := 0
	for i < len(src) {
		if !s.mid && src[i] == '.' {
			if dst == nil {
				break
			}
			out += copy(dst[out:], src[run:i])
			dst[out] = '.'
			out++
			run = i // the "." itself starts the next run
		}
		j := bytes.IndexByte(src[i:], '\n')
		if j < 0 {
			s.mid, s.cr = true, src[len(src)-1] == '\r'
			i = len(src)
			break
		}
		j += i
		if !(j > 0 && src[j-1] == '\r' || j == 0 && s.cr) {
			// A bare LF: CR goes before it.
			if dst == nil { // the clean prefix ends before it
				s.mid = s.mid || j > i
				s.cr = false
				i = j
				break
			}
			out += copy(dst[out:], src[run:j])
			dst[out] = '\r'
			out++
			s.wire++
			run = j // the LF itself starts the next run
		}
		s.mid, s.cr = false, false
		i = j + 1
	}
	s.wire += int64(i)
	if dst == nil {
		return i
	}
	return out + copy(dst[out:], src[run:])
}

// End returns what ends the response after the last block: CRLF ending an
// unterminated last line, if any, and the terminating ".\r\n". Wire counts
// that CRLF from then on.
func (s *Stuffer) End() string {
	if s.mid {
		s.mid, s.cr = false, false
		s.wire += 2
		return "\r\n.\r\n"
	}
	return ".\r\n"
}

// Wire returns the octets converted so far in wire form, without the added
// dots: after End, the size of the message as RETR announces it.
func (s *Stuffer) Wire() int64 { return s.wire }

// minBodyBuf is the smallest work buffer WriteBody accepts.
const minBodyBuf = 64

// WriteBody writes the body of a multi-line response, read from r in stored
// form, converted as a Stuffer does, and the terminating line; it returns
// the size of the body in wire form (what RETR announces) and the first
// error. It is meant to follow the status line, in place of a DotWriter.
//
// buf is the work space, at least 64 octets: blocks of half its size are read
// into its second half and converted into its front in one pass. A block
// that fits in the Writer's buffer is buffered like a reply; a larger one
// goes straight to the connection, after whatever is buffered, so a large
// message costs one copy between the read and the write. As with a
// DotWriter, the end of the body stays buffered until Flush.
func (w *Writer) WriteBody(r io.Reader, buf []byte) (int64, error) {
	return w.WriteBodyFunc(r, buf, nil)
}

// A BlockSender sends n octets of a body that need no change, read from
// offset off of the body's source, to the Writer's connection by another
// way than writing them, such as sendfile(2) from the file they were read
// from. It reports false, having sent nothing, to have them written instead.
type BlockSender func(off int64, n int) (sent bool, err error)

// WriteBodyFunc is WriteBody with send, when not nil, given every block that
// passes unchanged and would go straight to the connection; the Writer's
// buffer is flushed before.
func (w *Writer) WriteBodyFunc(r io.Reader, buf []byte, send BlockSender) (int64, error) {
	if len(buf) < minBodyBuf {
		buf = make([]byte, minBodyBuf)
	}
	half := len(buf) / 2
	var st Stuffer
	var off int64
	for {
		n, rerr := r.Read(buf[half : 2*half])
		if n > 0 {
			block := buf[half : half+n]
			k := st.Clean(block)
			if k < n {
				// Move the clean prefix to the front, then convert the rest
				// behind it: the converted octets never overtake the ones
				// still to be read, which start half a buffer further.
				copy(buf, block[:k])
				block = buf[:k+st.Stuff(buf[k:], block[k:])]
			}
			if err := w.writeBlock(block, k == n, off, send); err != nil {
				return st.Wire(), err
			}
			off += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return st.Wire(), rerr
		}
	}
	_, err := w.bw().WriteString(st.End())
	return st.Wire(), err
}

// writeBlock buffers p if it fits, or else writes what is buffered and then
// p straight to the connection, or has send send it when p is unchanged
// from offset off of the source.
func (w *Writer) writeBlock(p []byte, unchanged bool, off int64, send BlockSender) error {
	bw := w.bw()
	if len(p) <= bw.Available() {
		_, err := bw.Write(p)
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if unchanged && send != nil {
		if sent, err := send(off, len(p)); sent || err != nil {
			return err
		}
	}
	_, err := w.w.Write(p)
	return err
}
