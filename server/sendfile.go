package server

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"

	"github.com/pouchmail/pouch/internal/proxied"
	"github.com/pouchmail/pouch/pop3"
)

// fileSender returns a pop3.BlockSender that sends blocks of the file fd that
// need no change with sendfile(2), at their offsets from the start of the
// file (the body is read from its start), so that a message already in wire
// form goes from the page cache to the socket without being copied through
// the process (a block is still read once, to check that it needs no
// change). It returns nil when the session's stream is not plain TCP: over
// TLS every octet has to pass through the process to be encrypted.
//
// Maildir message files are never rewritten in place, so the octets sent
// are the ones checked; a file that shrank ends the connection.
func (s *session) fileSender(fd int) pop3.BlockSender {
	if s.tls != nil {
		return nil
	}
	tcp, count := plainTCP(s.stream)
	if tcp == nil {
		return nil
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		return nil
	}
	return func(off int64, n int) (bool, error) {
		left, sent := n, 0
		var serr error
		send := func(sock uintptr) bool {
			for left > 0 {
				m, err := syscall.Sendfile(int(sock), fd, &off, left)
				if m > 0 {
					left -= m
					sent += m
				}
				switch {
				case err == syscall.EAGAIN:
					return false // wait until the socket can take more
				case err == syscall.EINTR:
				case err != nil:
					serr = err
					return true
				case m == 0:
					serr = io.ErrUnexpectedEOF // the file shrank since it was read
					return true
				}
			}
			return true
		}
		// The session's inactivity timeout, renewed as for any write.
		err := s.dc.renewing(func() (bool, bool, error) {
			before := sent
			err := rc.Write(send)
			return sent > before, left > 0, err
		})
		count(int64(sent))
		sendfileOctets.Add(int64(sent))
		if err == nil {
			err = serr
		}
		if sent == 0 && (errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSYS)) {
			return false, nil // not a file sendfile can read: write the block
		}
		return err == nil, err
	}
}

// sendfileOctets counts the octets sent with sendfile(2), for tests.
var sendfileOctets atomic.Int64

// plainTCP returns the TCP connection under the wrappers of a session's
// stream, with a function that counts octets sent past the wrappers as the
// wrappers count writes, or nil if the stream is anything else.
func plainTCP(c net.Conn) (*net.TCPConn, func(int64)) {
	count := func(int64) {}
	for {
		switch v := c.(type) {
		case *deadlineConn:
			c = v.Conn
		case countingConn:
			count = func(n int64) { v.v.bytesOut.Add(n) }
			c = v.Conn
		case *proxied.Conn:
			c = v.NetConn() // only writes bypass it
		case *net.TCPConn:
			return v, count
		default:
			return nil, nil
		}
	}
}
