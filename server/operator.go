package server

import (
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// SessionInfo describes an open session for an operator (pouch who).
type SessionInfo struct {
	ID       string
	User     string // "" before login
	Remote   string // the client's address and port
	TLS      bool   // implicit TLS, or after STLS
	Since    time.Time
	BytesIn  int64 // octets received on the connection, TLS records included
	BytesOut int64 // octets sent on the connection, TLS records included
	State    string
}

// Session states as SessionInfo names them.
const (
	StateAuthorization = "authorization" // RFC 1939 §4: not logged in yet
	StateTransaction   = "transaction"   // RFC 1939 §5: logged in
)

// operatorView is what Who and Kick read of a session from other goroutines.
type operatorView struct {
	remote   string    // set before the session starts, then read-only
	since    time.Time // likewise
	user     string    // the logged-in user; guarded by Server.mu
	tls      atomic.Bool
	bytesIn  atomic.Int64 // every octet read from the client connection
	bytesOut atomic.Int64 // every octet written to it
	// kicked is set by Kick: the session runs no further command, not even
	// one already buffered, so that a kicked session commits nothing.
	kicked atomic.Bool
}

// countingConn counts the octets read and written through a connection.
type countingConn struct {
	net.Conn
	v *operatorView
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.v.bytesIn.Add(int64(n))
	return n, err
}

func (c countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.v.bytesOut.Add(int64(n))
	return n, err
}

// info describes the session. Called with s.srv.mu held.
func (s *session) info() SessionInfo {
	state := StateAuthorization
	if s.op.user != "" {
		state = StateTransaction
	}
	return SessionInfo{
		ID:       s.id,
		User:     s.op.user,
		Remote:   s.op.remote,
		TLS:      s.op.tls.Load(),
		Since:    s.op.since,
		BytesIn:  s.op.bytesIn.Load(),
		BytesOut: s.op.bytesOut.Load(),
		State:    state,
	}
}

// Who describes the open sessions, the oldest first.
func (s *Server) Who() []SessionInfo {
	s.mu.Lock()
	out := make([]SessionInfo, 0, len(s.sessions))
	for sess := range s.sessions {
		out = append(out, sess.info())
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b SessionInfo) int {
		if c := a.Since.Compare(b.Since); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// Kick closes every session whose id is target or whose logged-in user is
// target, and returns how many. A kicked session ends like a dropped
// connection: its deletions are not committed. A QUIT whose commit has
// already begun completes.
func (s *Server) Kick(target string) int {
	if target == "" {
		return 0
	}
	type hit struct {
		sess *session
		user string
	}
	var hits []hit
	s.mu.Lock()
	for sess := range s.sessions {
		if sess.id == target || sess.op.user == target {
			sess.op.kicked.Store(true)
			hits = append(hits, hit{sess, sess.op.user})
		}
	}
	s.mu.Unlock()
	for _, h := range hits {
		h.sess.log.Info("kicked", "user", h.user)
		s.audit("kick", "session", h.sess.id, "user", h.user, "ip", h.sess.ip.String())
		h.sess.abort()
	}
	return len(hits)
}
