package server

import (
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/days"
	"github.com/pouchmail/pouch/pop3"
)

// FieldsProvider is implemented by an Authenticator that keeps per-user
// settings (the extra fields of auth.Users): allow_nets, deny_nets,
// allow_countries, deny_countries, nologin, login_delay, password_max_age,
// password_changed.
type FieldsProvider interface {
	Fields(user string) map[string]string
}

// addrOf returns the IP address of a connection's remote end, or the zero
// Addr for other kinds of connections.
func addrOf(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(t.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// admit decides at connect, before any byte of the protocol, whether a
// client may have a session. It returns "" or the reply that refuses it and
// the reason for the metrics. Called with s.mu held.
func (s *Server) admit(ip netip.Addr) (reply, reason string) {
	if g := s.cfg.Guard; g != nil && ip.IsValid() {
		if until, banned := g.Banned(ip); banned {
			return "-ERR [SYS/TEMP] too many failed logins from your address; try again after " +
				until.UTC().Format(time.RFC3339), "banned"
		}
	}
	if r := s.cfg.Rules; r != nil && ip.IsValid() {
		if err := r.Check(ip); err != nil {
			s.log.Info("connection refused by access rules", "ip", ip.String(), "reason", err)
			return "-ERR [SYS/PERM] access denied", "denied"
		}
	}
	if max := s.cfg.MaxConnections; max > 0 && len(s.sessions) >= max {
		return "-ERR [SYS/TEMP] too many connections; try again later", "limit"
	}
	if max := s.cfg.MaxConnectionsPerIP; max > 0 && ip.IsValid() && s.perIP[guard.Source(ip)] >= max {
		return "-ERR [SYS/TEMP] too many connections from your address", "limit"
	}
	return "", ""
}

// refuse answers a refused connection and closes it, without holding up the
// accept loop.
func (s *Server) refuse(c net.Conn, reply string) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write([]byte(reply + "\r\n"))
		c.Close()
	}()
}

// fields returns user's per-user settings, or nil.
func (s *session) fields(user string) map[string]string {
	if f, ok := s.srv.cfg.Auth.(FieldsProvider); ok {
		return f.Fields(user)
	}
	return nil
}

// throttle starts an authentication attempt: it refuses a source banned
// meanwhile (by this session's own failures, another session's, or pouch ban)
// and ends the session, and otherwise waits, before a password or token is
// checked, as long as the guard says for this source's recent failures. It
// reports whether the attempt may go on.
func (s *session) throttle() bool {
	s.authStart = time.Now()
	g := s.srv.cfg.Guard
	if g == nil || !s.ip.IsValid() {
		return true
	}
	if until, banned := g.Banned(s.ip); banned {
		s.log.Info("attempt from a banned source", "ip", s.ip.String())
		s.w.Err(pop3.CodeSysTemp, "too many failed logins from your address; try again after "+until.UTC().Format(time.RFC3339))
		s.state = stateDone
		return false
	}
	if d := g.Delay(s.ip); d > 0 {
		s.w.Flush()
		time.Sleep(d)
	}
	return true
}

// loginDelay is user's LOGIN-DELAY (RFC 2449 §6.5): the login_delay field in
// seconds, or the server's.
func (s *session) loginDelay(fields map[string]string) time.Duration {
	if v, ok := fields["login_delay"]; ok {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			return time.Duration(n) * time.Second
		}
	}
	return s.srv.cfg.LoginDelay
}

// admitUser applies the per-user rules after the credentials were found
// good. It answers the client and returns false when the user may not log
// in now.
func (s *session) admitUser(user string) bool {
	f := s.fields(user)
	if _, off := f["nologin"]; off {
		s.log.Info("login refused: POP3 access disabled for the user", "user", user)
		s.w.Err(pop3.CodeSysPerm, "POP3 access is disabled for this account")
		return false
	}
	if r := s.srv.cfg.Rules; r != nil && s.ip.IsValid() {
		if err := r.CheckUser(s.ip, f); err != nil {
			// Answered like bad credentials, after the same delay, so that
			// nothing tells that the password was right.
			s.log.Info("login refused by the user's access rules", "user", user, "reason", err)
			s.loginFailed(user, "access rules")
			return false
		}
	}
	maxAge := s.srv.cfg.PasswordMaxAge
	if v, ok := f["password_max_age"]; ok {
		if d, ok := days.Parse(v); ok {
			maxAge = d
		}
	}
	if changed, err := strconv.ParseInt(f["password_changed"], 10, 64); maxAge > 0 && err == nil {
		if time.Since(time.Unix(changed, 0)) > maxAge {
			s.log.Info("login refused: password expired", "user", user)
			s.w.Err(pop3.CodeAuth, "password expired")
			return false
		}
	}
	if d := s.loginDelay(f); d > 0 {
		s.srv.mu.Lock()
		last, ok := s.srv.lastLogin[user]
		s.srv.mu.Unlock()
		if ok && time.Since(last) < d {
			s.log.Info("login refused: LOGIN-DELAY", "user", user, "delay", d)
			s.w.Err(pop3.CodeLoginDelay, "minimum time between logins not reached")
			return false
		}
	}
	if max := s.srv.cfg.MaxSessionsPerUser; max > 0 {
		s.srv.mu.Lock()
		n := s.srv.userSessions[user]
		s.srv.mu.Unlock()
		if n >= max {
			s.w.Err(pop3.CodeInUse, "too many sessions for this user")
			return false
		}
	}
	return true
}
