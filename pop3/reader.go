package pop3

import (
	"bufio"
	"bytes"
	"io"
)

// Reader reads lines, replies and dot-stuffed bodies from one connection.
// It is not safe for concurrent use.
type Reader struct {
	br   *bufio.Reader
	line []byte // ReadLine's buffer for lines that span bufio refills
	dot  dotReader
}

// NewReader returns a Reader reading from r through a 4096-octet buffer.
func NewReader(r io.Reader) *Reader {
	return NewReaderSize(r, 4096)
}

// NewReaderSize returns a Reader reading from r through a buffer of size
// octets (at least 16). Lines longer than the buffer are still read whole;
// a server reading only commands can use a small one.
func NewReaderSize(r io.Reader, size int) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, size)}
}

// ReadLine returns the next line without its terminator; the slice is valid
// until the next call of any Reader method.
//
// A line ends at LF, and one CR directly before that LF is stripped too:
// RFC 1939 §3 asks for CRLF, but LF-only lines are accepted as Dovecot does.
// A line longer than max octets, counting its terminator, is read to its end
// and discarded without being buffered, and ErrLineTooLong is returned. A
// line containing NUL or a CR elsewhere than before the final LF is consumed
// and ErrBadLine is returned. At end of input ReadLine returns io.EOF, or
// io.ErrUnexpectedEOF if a partial line was read.
func (r *Reader) ReadLine(max int) ([]byte, error) {
	r.line = r.line[:0]
	total := 0 // octets of this line so far, including discarded ones
	for {
		chunk, err := r.br.ReadSlice('\n')
		total += len(chunk)
		switch {
		case err == bufio.ErrBufferFull:
			// Keep at most max octets; past that the line is only counted.
			if total <= max {
				r.line = append(r.line, chunk...)
			}
			continue
		case err == io.EOF && total > 0:
			return nil, io.ErrUnexpectedEOF
		case err != nil:
			return nil, err
		case total > max:
			return nil, ErrLineTooLong
		}
		line := chunk // common case: the whole line is in the bufio buffer
		if len(r.line) > 0 {
			r.line = append(r.line, chunk...)
			line = r.line
		}
		line = line[:len(line)-1]
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		if bytes.IndexByte(line, 0) >= 0 || bytes.IndexByte(line, '\r') >= 0 {
			return nil, ErrBadLine
		}
		return line, nil
	}
}

// ReadReply reads one status line of at most max octets: "+OK", "-ERR", each
// optionally followed by SP, a response code (RFC 2449 §8) and text, or a
// SASL continuation "+ base64" (RFC 5034 §4). Anything else is ErrProtocol.
// A -ERR reply is not an error here; use Reply.Err.
func (r *Reader) ReadReply(max int) (Reply, error) {
	line, err := r.ReadLine(max)
	if err != nil {
		return Reply{}, err
	}
	return parseReply(line)
}

// Buffered returns the number of octets already received and buffered; a
// server with nothing buffered has no pipelined command waiting and should
// flush its replies (RFC 2449 §6.6).
func (r *Reader) Buffered() int {
	return r.br.Buffered()
}

// Discard drops everything buffered. After STLS (RFC 2595 §4) anything the
// client pipelined behind the command must never be run.
func (r *Reader) Discard() {
	// Discarding no more than Buffered never reads and cannot fail.
	_, _ = r.br.Discard(r.br.Buffered())
}

// DotReader returns a reader of the body of a multi-line response, whose
// status line has already been read (RFC 1939 §3). It removes the leading
// "." of dot-stuffed lines and returns io.EOF after the terminating line,
// leaving what follows it unread; a body cut short by the end of input gives
// io.ErrUnexpectedEOF. The body is returned byte for byte, CRLF included,
// without any line length limit.
//
// Lines end only at CRLF: bare CR, bare LF and NUL are data, and only
// "." CRLF at the start of a line ends the body, so a "." LF after a bare LF
// can never end it early (a smuggling defence). The returned reader is valid
// until the next call of any Reader method.
func (r *Reader) DotReader() io.Reader {
	r.dot = dotReader{br: r.br}
	return &r.dot
}

// dotReader states.
const (
	dotBOL  = iota // at the start of a line
	dotData        // inside a line
	dotCR          // inside a line, just after a CR
	dotEOF         // after the terminating line
)

type dotReader struct {
	br    *bufio.Reader
	state int
}

func (d *dotReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		switch d.state {
		case dotEOF:
			return n, io.EOF
		case dotBOL:
			// A line start is followed by at least the 3 octets of ".\r\n",
			// so peeking 3 never waits for data a valid response lacks. Do
			// not wait at all once something can be returned.
			if n > 0 && d.br.Buffered() < 3 {
				return n, nil
			}
			b, err := d.br.Peek(3)
			if len(b) == 0 || (len(b) < 3 && err != io.EOF) {
				return n, unexpected(err)
			}
			// Short of 3 octets at EOF, the body is cut short: return
			// what is left before io.ErrUnexpectedEOF.
			if b[0] == '.' {
				if len(b) == 3 && b[1] == '\r' && b[2] == '\n' {
					_, _ = d.br.Discard(3)
					d.state = dotEOF
					return n, io.EOF
				}
				_, _ = d.br.Discard(1) // RFC 1939 §3: strip the stuffed dot
			}
			d.state = dotData
		default:
			avail := d.br.Buffered()
			if avail == 0 {
				if n > 0 {
					return n, nil
				}
				if _, err := d.br.Peek(1); err != nil {
					return n, unexpected(err)
				}
				avail = d.br.Buffered()
			}
			buf, _ := d.br.Peek(min(avail, len(p)-n))
			end, bol := d.scan(buf)
			n += copy(p[n:], buf[:end])
			_, _ = d.br.Discard(end)
			switch {
			case bol:
				d.state = dotBOL
			case buf[end-1] == '\r':
				d.state = dotCR
			default:
				d.state = dotData
			}
		}
	}
	return n, nil
}

// scan returns the length of the data at the start of buf that needs no
// unstuffing, and whether it ends at a line start. It stops at a line
// starting with "." and at a line start at the end of buf, where one octet
// of lookahead is missing. A CR ending the previous chunk counts for an LF
// at buf[0].
func (d *dotReader) scan(buf []byte) (int, bool) {
	for i := 0; ; {
		j := bytes.IndexByte(buf[i:], '\n')
		if j < 0 {
			return len(buf), false
		}
		j += i
		i = j + 1
		if (j > 0 && buf[j-1] == '\r') || (j == 0 && d.state == dotCR) {
			if i == len(buf) || buf[i] == '.' {
				return i, true
			}
		}
	}
}

// unexpected turns the end of input inside a body into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
