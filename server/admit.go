package server

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/pop3"
)

// addrOf returns the IP address of a connection's remote end, or the zero
// Addr for other kinds of connections.
func addrOf(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(t.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// connID returns a new connection id: a session's, or one for the log line
// of a connection refused before it has a session.
func (s *Server) connID() string {
	return fmt.Sprintf("%s%06x", s.idPrefix, s.ids.Add(1))
}

// banReply is what a banned client is told: when its own failed logins
// banned it, until when; when an operator did, only that it is blocked.
func banReply(b guard.Ban) *pop3.Error {
	if b.Automatic() {
		return &pop3.Error{Code: pop3.CodeSysTemp, Text: "too many failed logins from your address; try again after " + b.Until.UTC().Format(time.RFC3339)}
	}
	return &pop3.Error{Code: pop3.CodeSysPerm, Text: "access from your address is blocked"}
}

// admit decides at connect, before any byte of the protocol, whether a
// client may have a session. It returns nil or the reply that refuses it,
// and the reason for the metrics. A refusal by a ban or by the access rules is
// logged with a connection id, once a minute per source at most, so that a
// client reconnecting without end cannot fill the disk. Called with s.mu
// held.
func (s *Server) admit(ip netip.Addr) (refusal *pop3.Error, reason string) {
	if g := s.cfg.Guard; g != nil && ip.IsValid() {
		if b, banned := g.Banned(ip); banned {
			if ok, unlogged := g.Notice(ip); ok {
				s.log.Info("connection refused: source banned", "session", s.connID(), "ip", ip.String(),
					"net", b.Net.String(), "until", b.Until, "unlogged", unlogged)
			}
			return banReply(b), "banned"
		}
	}
	if r := s.cfg.Rules; r != nil && ip.IsValid() {
		if err := r.Check(ip); err != nil {
			if ok, unlogged := r.Notice(ip); ok {
				s.log.Info("connection refused by access rules", "session", s.connID(), "ip", ip.String(),
					"reason", err, "unlogged", unlogged)
			}
			return &pop3.Error{Code: pop3.CodeSysPerm, Text: "access denied"}, "denied"
		}
	}
	return s.admitLimits(ip)
}

// refuse answers a refused connection and closes it, without holding up the
// accept loop.
func (s *Server) refuse(c net.Conn, refusal *pop3.Error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		c.SetWriteDeadline(time.Now().Add(time.Second))
		w := pop3.NewWriter(c)
		w.Err(refusal.Code, refusal.Text)
		w.Flush()
		c.Close()
	}()
}
