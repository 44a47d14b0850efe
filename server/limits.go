package server

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/proxied"
	"github.com/pouchmail/pouch/pop3"
)

// admitLimits applies the connection limits at connect: the per-address
// limit refuses; the limit on connections not logged in, and the total,
// make room by shedding the oldest connection not logged in (shedOldest),
// and refuse only when there is none to shed. It returns nil or the reply
// that refuses the connection, and the reason for the metrics. Called with
// s.mu held.
func (s *Server) admitLimits(ip netip.Addr) (refusal *pop3.Error, reason string) {
	full := func(text string) (*pop3.Error, string) {
		return &pop3.Error{Code: pop3.CodeSysTemp, Text: text}, "limit"
	}
	if max := s.cfg.MaxConnectionsPerIP; max > 0 && ip.IsValid() && s.perIP[guard.Source(ip)] >= max {
		return full("too many connections from your address")
	}
	if max := s.cfg.MaxPreLogin; max > 0 && s.preLogin.Len() >= max && !s.shedOldest() {
		return full("too many connections waiting to log in; try again later")
	}
	if max := s.cfg.MaxConnections; max > 0 && s.preLogin.Len()+s.loggedIn >= max && !s.shedOldest() {
		return full("too many connections; try again later")
	}
	return nil, ""
}

// shedOldest closes a session that has not logged in and is not having
// credentials checked, to make room for a new connection, and reports
// whether there was one: the oldest of those from the source (address, or
// IPv6 /64) that holds the most of them. Oldest, as Dovecot's login
// processes do when their connection queue is full: a client that has not
// logged in after the longest time is the least likely to be about to. From
// the busiest source, because a flood that reconnects as fast as it is
// closed would otherwise shed a user's connection in the round trip between
// the greeting and PASS; this way a flood from fewer sources than the
// cap on connections not logged in can never shed a source's only
// connection. Sessions with credentials under check are passed over, so
// that no login in progress is cut off; logged-in sessions are never shed.
// Called with s.mu held.
func (s *Server) shedOldest() bool {
	most := 0
	for e := s.preLogin.Front(); e != nil; e = e.Next() {
		if sess := e.Value.(*session); !sess.checking {
			most = max(most, s.preIP[sess.src])
		}
	}
	for e := s.preLogin.Front(); e != nil; e = e.Next() {
		sess := e.Value.(*session)
		if sess.checking || s.preIP[sess.src] < most {
			continue
		}
		s.notPreLogin(sess)
		sess.shedNow()
		s.cfg.Metrics.Refused("shed")
		if ok, unlogged := s.sheds.ok(time.Now()); ok {
			s.log.Warn("closing the oldest connections that have not logged in, to make room for new ones",
				"session", sess.id, "ip", sess.ip.String(), "since", sess.op.since, "shed_unlogged", unlogged)
		}
		return true
	}
	return false
}

// notPreLogin takes sess out of the sessions not logged in. Called with
// s.mu held.
func (s *Server) notPreLogin(sess *session) {
	if sess.pre == nil {
		return
	}
	s.preLogin.Remove(sess.pre)
	sess.pre = nil
	if s.preIP[sess.src] <= 1 {
		delete(s.preIP, sess.src)
	} else {
		s.preIP[sess.src]--
	}
}

// addPreLogin counts a new session among those not logged in. Called with
// s.mu held.
func (s *Server) addPreLogin(sess *session) {
	sess.pre = s.preLogin.PushBack(sess)
	s.preIP[sess.src]++
}

// shedReply is what a shed session is told, where it can be told anything
// (RFC 2449 §8.1.2: a temporary condition; the client may retry).
const shedReply = "too many connections waiting to log in; try again"

// shedNow ends a session that has not logged in, from the accept loop,
// without waiting: its read under way fails at once, and the session's own
// goroutine says why (shedReply) if it is at a command, with writes bounded
// by closeWait, and closes. A TLS handshake under way is cut off silently.
// Called with s.srv.mu held.
func (s *session) shedNow() {
	s.shed.Store(true)
	s.cancel() // a TLS handshake, a SASL exchange or a guard wait ends
	by := time.Now().Add(closeWait)
	if s.dc.closeBy.CompareAndSwap(0, by.UnixNano()) {
		s.conn.SetReadDeadline(time.Unix(1, 0)) // a read under way ends now
		s.conn.SetWriteDeadline(by)
	}
}

// startCheck marks the session as having its credentials checked, which
// shedding passes over, until the command ends or a SASL exchange waits for
// the client again (endCheck). It reports false when the session was shed
// meanwhile; it then ends.
func (s *session) startCheck() bool {
	s.srv.mu.Lock()
	defer s.srv.mu.Unlock()
	if s.shed.Load() {
		return false
	}
	s.checking = true
	return true
}

// endCheck ends what startCheck began.
func (s *session) endCheck() {
	if s.checking {
		s.srv.mu.Lock()
		s.checking = false
		s.srv.mu.Unlock()
	}
}

// loggedInLocked moves a session that logged in out of the ones not logged
// in. Called with s.srv.mu held.
func (s *session) loggedInLocked() {
	s.srv.notPreLogin(s)
	if !s.counted {
		s.counted = true
		s.srv.loggedIn++
	}
}

// proxyRefused logs a connection from a load balancer's network closed for
// its PROXY header (missing, malformed, or another protocol than TCP). A
// balancer's health check that connects and closes without a byte is
// logged at debug level only.
func (s *Server) proxyRefused(from net.Addr, err error) {
	if errors.Is(err, proxied.ErrHungUp) {
		s.log.Debug("connection from a load balancer closed before its PROXY header", "session", s.connID(), "proxy", from.String())
		return
	}
	s.cfg.Metrics.Refused("proxy")
	s.log.Info("connection refused: bad PROXY protocol header", "session", s.connID(), "proxy", from.String(), "err", err)
}

// untrustedHeader reports whether err is a read that found a PROXY header
// where none may be, and logs it.
func (s *session) untrustedHeader(err error) bool {
	if !errors.Is(err, proxied.ErrUntrusted) {
		return false
	}
	s.log.Info("connection refused: PROXY protocol header from an address not in the proxy networks", "ip", s.ip.String())
	s.srv.cfg.Metrics.Refused("proxy")
	return true
}

// notice rate-limits a log line: the first, then at most one a minute,
// each with the number not logged since.
type notice struct {
	last     time.Time
	unlogged int
}

func (n *notice) ok(now time.Time) (log bool, unlogged int) {
	if !n.last.IsZero() && now.Sub(n.last) < time.Minute {
		n.unlogged++
		return false, 0
	}
	n.last, unlogged, n.unlogged = now, n.unlogged, 0
	return true, unlogged
}
