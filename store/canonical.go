package store

import (
	"bytes"
	"io"
)

// A message's wire form, the octets RETR sends before dot-stuffing (RFC 1939 §3):
// every LF that does not follow a CR becomes CRLF, and a message that does not end
// in a line ending gets a final CRLF. Bare CRs and all other octets pass unchanged.
// An empty message stays empty. Size values in Message count this form.

// StoredReader is implemented by readers that a Maildrop's Open returns when
// they can also give the message as stored. Stored form differs from wire form
// only as described above (LF for CRLF, no line end at the end), so a caller
// that makes that conversion itself in a pass it makes anyway, as the POP3
// server does while dot-stuffing (pop3.Stuffer), reads Stored and saves a
// pass over every octet. A caller reads through the reader or through Stored,
// not both; Close closes both.
type StoredReader interface {
	io.Reader
	Stored() io.Reader
}

// canonicalReader turns a stored message into its wire form as it streams.
type canonicalReader struct {
	r       io.Reader
	prevCR  bool // the last octet handed out was CR
	pending []byte
	any     bool // at least one octet was read
	lastLF  bool // the last octet handed out was LF
	done    bool
}

// NewCanonicalReader returns a reader of r in wire form. It reads r directly,
// at most half of each Read's buffer at a time, so it holds no buffer of its
// own: give it large reads (32 KiB or more) for large messages.
func NewCanonicalReader(r io.Reader) io.Reader {
	return &canonicalReader{r: r}
}

var crlf = []byte("\r\n")

func (c *canonicalReader) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	if c.done {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) == 1 {
		// Expansion needs room for two octets; keep the second for the next call.
		var two [2]byte
		n, err := c.Read(two[:])
		if n == 0 {
			return 0, err
		}
		p[0] = two[0]
		c.pending = append(c.pending[:0], two[1:n]...)
		return 1, err
	}
	// Read into the second half of p's capacity worth of space so that an LF can
	// be expanded in place: read at most len(p)/2 octets.
	half := len(p) / 2
	chunk := p[half : 2*half]
	n, err := c.r.Read(chunk)
	if n == 0 {
		if err == io.EOF {
			c.done = true
			if c.any && !c.lastLF {
				k := copy(p, crlf)
				c.lastLF = true
				return k, nil
			}
			return 0, io.EOF
		}
		return 0, err
	}
	c.any = true
	src := chunk[:n]
	// Expand src into p from the front; dst never overtakes src because each
	// source octet produces at most two and the source starts at len(p)/2.
	out := 0
	for len(src) > 0 {
		i := bytes.IndexByte(src, '\n')
		if i < 0 {
			c.prevCR = src[len(src)-1] == '\r'
			out += copy(p[out:], src)
			c.lastLF = false
			break
		}
		before := c.prevCR
		if i > 0 {
			before = src[i-1] == '\r'
		}
		seg := src[:i]
		rest := src[i+1:]
		out += copy(p[out:], seg)
		if !before {
			p[out] = '\r'
			out++
		}
		p[out] = '\n'
		out++
		c.prevCR = false
		c.lastLF = true
		src = rest
	}
	if err == io.EOF {
		err = nil // reported on the next call, after the final CRLF if any
	}
	return out, err
}

// SizeCounter is an io.Writer that counts the octets written to it (Raw) and the
// size of their wire form (Wire). It lets a writer of a message learn both sizes
// in the same pass that stores it.
type SizeCounter struct {
	raw, wire      int64
	prevCR, lastLF bool
}

// Write counts p. It never fails.
func (c *SizeCounter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.raw += int64(len(p))
	c.wire += int64(len(p))
	b := p
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		cr := c.prevCR
		if i > 0 {
			cr = b[i-1] == '\r'
		}
		if !cr {
			c.wire++
		}
		c.prevCR = false
		b = b[i+1:]
	}
	if len(b) > 0 {
		c.prevCR = b[len(b)-1] == '\r'
		c.lastLF = false
	} else {
		c.lastLF = true
	}
	return len(p), nil
}

// Raw is the number of octets written.
func (c *SizeCounter) Raw() int64 { return c.raw }

// Wire is the size of the written octets in wire form, final CRLF included.
func (c *SizeCounter) Wire() int64 {
	if c.raw > 0 && !c.lastLF {
		return c.wire + 2
	}
	return c.wire
}

// CanonicalSize reads r to the end and returns its stored size and the size of its
// wire form.
func CanonicalSize(r io.Reader) (raw, wire int64, err error) {
	var c SizeCounter
	_, err = io.Copy(&c, r)
	return c.Raw(), c.Wire(), err
}
