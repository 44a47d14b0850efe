package server

import (
	"errors"
	"net"
	"sync/atomic"
	"time"

	"github.com/pouchmail/pouch/pop3"
)

// abort ends the session from any goroutine (kick, shutdown, a failed
// send): the session's reads fail at once and its writes within closeWait,
// and it ends without UPDATE. A plaintext connection, or one still in its
// handshake, is closed here; over TLS the session's own goroutine closes it
// in finish, with close_notify, since only it can know that no write is
// under way.
func (s *session) abort() {
	s.cancel()
	if s.tlsConn.Load() == nil {
		s.closeOnce.Do(func() { s.conn.Close() })
		return
	}
	by := time.Now().Add(closeWait)
	if s.dc.closeBy.CompareAndSwap(0, by.UnixNano()) {
		s.conn.SetReadDeadline(time.Unix(1, 0)) // a read under way ends now
		s.conn.SetWriteDeadline(by)
	}
}

// closeConn closes the connection, from the session's goroutine. Over TLS it
// first sends close_notify (RFC 8446 §6.1, RFC 5246 §7.2.1), so that the
// client sees a clean end, waiting at most closeWait for a client that does
// not read; not after a write failed, when the client may hold part of a
// record.
func (s *session) closeConn() {
	s.closeOnce.Do(func() {
		tc := s.tlsConn.Load()
		if tc == nil || s.dc.failed.Load() {
			s.conn.Close()
			return
		}
		s.dc.closeBy.Store(time.Now().Add(closeWait).UnixNano())
		tc.Close()
	})
}

// closeWait bounds the wait to send close_notify when a session ends.
const closeWait = time.Second

// deadlineConn sets a fresh deadline before every read and write, so that the
// timeout measures inactivity, not session length.
// Before login, the deadline is also never later than notAfter, so that a
// client sending a byte now and then (slowloris) cannot hold a connection
// past the pre-login timeout.
type deadlineConn struct {
	net.Conn
	timeout  time.Duration
	notAfter time.Time // zero after login
	// closeBy, once set by abort or closeConn (Unix nanoseconds), is the
	// deadline of every write, and reads fail: the connection is closing.
	closeBy atomic.Int64
	// failed is set when a write failed: the client may have part of a
	// TLS record, and nothing more can be sent.
	failed atomic.Bool
	// interrupted, once set by interrupt, makes reads fail while writes
	// go on: the session has one last thing to say.
	interrupted atomic.Bool
}

// errInterrupted is the read error after interrupt.
var errInterrupted = errors.New("server: reading interrupted")

// interrupt makes the read under way, and every later one, fail with
// errInterrupted, from any goroutine.
func (c *deadlineConn) interrupt() {
	c.interrupted.Store(true)
	c.Conn.SetReadDeadline(time.Unix(1, 0))
}

// goodbye gives the last reply of a session whose deadline ran out, or
// that must end, a write deadline of its own, goodbyeWait from now.
func (c *deadlineConn) goodbye() {
	c.notAfter, c.timeout = time.Time{}, goodbyeWait
}

// goodbyeWait bounds the write of a session's last reply (goodbye).
const goodbyeWait = 5 * time.Second

func (c *deadlineConn) deadline() time.Time {
	if by := c.closeBy.Load(); by != 0 {
		return time.Unix(0, by)
	}
	d := time.Now().Add(c.timeout)
	if !c.notAfter.IsZero() && c.notAfter.Before(d) {
		return c.notAfter
	}
	return d
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(c.deadline())
	// Looked at after the deadline is set, so that the past deadline abort
	// sets is never overwritten unseen.
	if c.closeBy.Load() != 0 {
		return 0, net.ErrClosed
	}
	if c.interrupted.Load() {
		return 0, errInterrupted
	}
	n, err := c.Conn.Read(p)
	switch {
	case err == nil:
	case c.closeBy.Load() != 0:
		err = net.ErrClosed // ended by abort, not a timeout
	case c.interrupted.Load():
		err = errInterrupted
	}
	return n, err
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	written := 0
	err := c.renewing(func() (bool, bool, error) {
		n, err := c.Conn.Write(p[written:])
		written += n
		return n > 0, written < len(p), err
	})
	if err != nil {
		c.failed.Store(true)
	}
	return written, err
}

// renewing calls write with a fresh write deadline, and again with a fresh
// one each time it timed out after the client took some of what it sends
// (progress) and something is left (more): a message goes out in blocks of
// up to 1 MiB, and a slow client is not an idle one.
func (c *deadlineConn) renewing(write func() (progress, more bool, err error)) error {
	for {
		c.Conn.SetWriteDeadline(c.deadline())
		if by := c.closeBy.Load(); by != 0 {
			c.Conn.SetWriteDeadline(time.Unix(0, by)) // abort ran meanwhile
		}
		progress, more, err := write()
		var ne net.Error
		if !progress || !more || !errors.As(err, &ne) || !ne.Timeout() {
			return err
		}
	}
}

// setStream makes rw the connection that commands are read from and replies
// written to.
func (s *session) setStream(rw net.Conn) {
	// Commands are short (255 octets; SASL lines, read in pieces, more), and
	// every idle session holds this buffer: 1 KiB, not the default 4.
	s.r = pop3.NewReaderSize(rw, 1024)
	s.w = pop3.NewWriter(rw)
	s.stream = rw
}
