package pop3

import (
	"bufio"
	"io"
	"strings"
	"sync"
)

// Writer writes replies, commands and dot-stuffed bodies to one connection
// through a buffer; nothing reaches the connection before Flush. It is not
// safe for concurrent use.
//
// The methods writing one line return ErrBadLine, writing nothing, if their
// text contains CR, LF or NUL, so that no caller can inject a reply.
//
// The 32 KiB buffer is taken from a pool when something is written and given
// back by a Flush that empties it, so an idle connection holds none.
type Writer struct {
	w   io.Writer
	buf *bufio.Writer // nil while nothing is buffered
	dot dotWriter
}

// NewWriter returns a Writer writing to w through a 32 KiB buffer.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w}
}

// BufferSize is the size of a Writer's buffer.
const BufferSize = 32 << 10

var writeBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, BufferSize) }}

// bw returns the buffer, taking one from the pool if needed.
func (w *Writer) bw() *bufio.Writer {
	if w.buf == nil {
		w.buf = writeBufs.Get().(*bufio.Writer)
		w.buf.Reset(w.w)
	}
	return w.buf
}

// OK writes "+OK text" (RFC 1939 §3), or "+OK" alone if text is empty.
func (w *Writer) OK(text string) error {
	return w.status("+OK", "", text)
}

// Err writes "-ERR [code] text" (RFC 2449 §8), or "-ERR text" if code is
// empty.
func (w *Writer) Err(code Code, text string) error {
	return w.status("-ERR", code, text)
}

func (w *Writer) status(status string, code Code, text string) error {
	if !safe(string(code)) || !safe(text) {
		return ErrBadLine
	}
	bw := w.bw()
	bw.WriteString(status)
	if code != "" {
		bw.WriteString(" [")
		bw.WriteString(string(code))
		bw.WriteString("]")
	}
	if text != "" {
		bw.WriteString(" ")
		bw.WriteString(text)
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// Continue writes a SASL challenge "+ b64" (RFC 5034 §4), keeping the space
// when b64 is empty.
func (w *Writer) Continue(b64 string) error {
	return w.Line("+ " + b64)
}

// Line writes s followed by CRLF, unstuffed: it is meant for lines that can
// never start with ".", such as "1 120" in a LIST response.
func (w *Writer) Line(s string) error {
	if !safe(s) {
		return ErrBadLine
	}
	bw := w.bw()
	bw.WriteString(s)
	_, err := bw.WriteString("\r\n")
	return err
}

// WriteCommand writes the command "name arg arg" followed by CRLF
// (RFC 1939 §3) without flushing.
func WriteCommand(w *Writer, name string, args ...string) error {
	if !safe(name) {
		return ErrBadLine
	}
	for _, a := range args {
		if !safe(a) {
			return ErrBadLine
		}
	}
	bw := w.bw()
	bw.WriteString(name)
	for _, a := range args {
		bw.WriteString(" ")
		bw.WriteString(a)
	}
	_, err := bw.WriteString("\r\n")
	return err
}

// Flush writes any buffered data to the connection, and returns the buffer
// to the pool unless a DotWriter is open or the write failed.
func (w *Writer) Flush() error {
	if w.buf == nil {
		return nil
	}
	if err := w.buf.Flush(); err != nil {
		return err
	}
	if w.dot.open {
		return nil
	}
	w.buf.Reset(nil)
	writeBufs.Put(w.buf)
	w.buf = nil
	return nil
}

// Buffered returns the number of octets written but not yet flushed.
func (w *Writer) Buffered() int {
	if w.buf == nil {
		return 0
	}
	return w.buf.Buffered()
}

// DotWriter returns a writer of the body of a multi-line response, to be
// used after its status line (RFC 1939 §3). It turns every LF not preceded
// by CR into CRLF and stuffs a "." before every line starting with ".".
// Close ends an unterminated last line with CRLF and writes the terminating
// ".\r\n" but does not flush. No other Writer method may be called until
// Close; the returned writer is valid until the next DotWriter call.
func (w *Writer) DotWriter() io.WriteCloser {
	w.dot = dotWriter{bw: w.bw(), open: true}
	return &w.dot
}

type dotWriter struct {
	bw     *bufio.Writer
	st     Stuffer
	open   bool // between DotWriter and Close: Flush keeps the buffer
	closed bool
}

// Write converts p with a Stuffer straight into the free space of the
// buffer, as much at a time as fits even if every octet needs another.
func (d *dotWriter) Write(p []byte) (int, error) {
	if d.closed {
		return 0, errClosed
	}
	for done := 0; done < len(p); {
		if d.bw.Available() < 2 {
			if err := d.bw.Flush(); err != nil {
				return done, err
			}
		}
		n := min(len(p)-done, d.bw.Available()/2)
		free := d.bw.AvailableBuffer()
		free = free[:d.st.Stuff(free[:cap(free)], p[done:done+n])]
		if _, err := d.bw.Write(free); err != nil {
			return done, err
		}
		done += n
	}
	return len(p), nil
}

// Close ends the last line with CRLF unless the body is empty or already
// ends with LF, and writes the terminating ".\r\n". Calling Close again does
// nothing.
func (d *dotWriter) Close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	d.open = false
	_, err := d.bw.WriteString(d.st.End())
	return err
}

// safe reports whether s can be written inside one line.
func safe(s string) bool {
	return !strings.ContainsAny(s, "\r\n\x00")
}
