package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/units"
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

// connID returns a new connection id, in the form of the session ids.
func (s *Server) connID() string {
	return fmt.Sprintf("%s%06x", s.idPrefix, s.ids.Add(1))
}

// banReply is what a banned client is told: when its own failed logins
// banned it, until when; when an operator did, only that it is blocked.
func banReply(b guard.Ban) (pop3.Code, string) {
	if b.Automatic() {
		return pop3.CodeSysTemp, "too many failed logins from your address; try again after " + b.Until.UTC().Format(time.RFC3339)
	}
	return pop3.CodeSysPerm, "access from your address is blocked"
}

// admit decides at connect, before any byte of the protocol, whether a
// client may have a session. It returns "" or the reply that refuses it and
// the reason for the metrics. A refusal by a ban or by the access rules is
// logged with a connection id, once a minute per source at most, so that a
// client reconnecting without end cannot fill the disk. Called with s.mu
// held.
func (s *Server) admit(ip netip.Addr) (reply, reason string) {
	if g := s.cfg.Guard; g != nil && ip.IsValid() {
		if b, banned := g.Banned(ip); banned {
			if ok, unlogged := g.Notice(ip); ok {
				s.log.Info("connection refused: source banned", "session", s.connID(), "ip", ip.String(),
					"net", b.Net.String(), "until", b.Until, "unlogged", unlogged)
			}
			code, text := banReply(b)
			return "-ERR [" + string(code) + "] " + text, "banned"
		}
	}
	if r := s.cfg.Rules; r != nil && ip.IsValid() {
		if err := r.Check(ip); err != nil {
			if ok, unlogged := r.Notice(ip); ok {
				s.log.Info("connection refused by access rules", "session", s.connID(), "ip", ip.String(),
					"reason", err, "unlogged", unlogged)
			}
			return "-ERR [SYS/PERM] access denied", "denied"
		}
	}
	return s.admitLimits(ip)
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

// throttle starts an authentication attempt (guard.Attempt) once a
// password, token or proof has arrived, just before it is checked: it
// refuses a source banned meanwhile (by this session's own failures,
// another session's, or pouch ban) and ends the session, and otherwise
// waits as long as the guard says for this source's recent failures and
// attempts in progress, within the pre-login timeout. It reports whether
// the attempt may go on; when not, it has answered. The failure delay
// (AuthFailDelay) counts from the end of this wait, so the guard's delay
// adds to it.
func (s *session) throttle() bool {
	if !s.startCheck() {
		return false
	}
	if g := s.srv.cfg.Guard; g != nil && s.ip.IsValid() {
		ctx := s.ctx
		if !s.dc.notAfter.IsZero() {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, s.dc.notAfter)
			defer cancel()
		}
		a, d, b, err := g.Attempt(ctx, s.ip)
		if err == nil && d > 0 {
			s.w.Flush()
			t := time.NewTimer(d)
			select {
			case <-t.C:
				var banned bool
				if b, banned = g.Banned(s.ip); banned {
					err = guard.ErrBanned
				}
			case <-ctx.Done():
				t.Stop()
				err = ctx.Err()
			}
			if err != nil {
				a.Done() // no password was checked
			}
		}
		switch {
		case errors.Is(err, guard.ErrBanned):
			s.log.Info("attempt from a banned source", "ip", s.ip.String(), "net", b.Net.String())
			s.w.Err(banReply(b))
			s.state = stateDone
			return false
		case err != nil && s.ctx.Err() != nil:
			s.state = stateDone // aborted (kick, shutdown): nothing more is sent
			return false
		case err != nil:
			// The pre-login timeout ran out while the source's other
			// attempts held every place.
			s.log.Info("autologout: pre-login timeout while other logins of this source were in progress", "ip", s.ip.String())
			s.dc.notAfter, s.dc.timeout = time.Time{}, 5*time.Second // for the goodbye only
			s.w.Err(pop3.CodeSysTemp, "too many logins from your address at once; try again later")
			s.state = stateDone
			return false
		}
		s.attempt = a
	}
	s.authStart = time.Now()
	return true
}

// userSettings are a user's own settings, from the extra fields of the
// users file.
type userSettings struct {
	disabled   bool          // nologin
	loginDelay time.Duration // login_delay; -1: the server's
	maxAge     time.Duration // password_max_age; -1: the server's
	changed    time.Time     // password_changed; zero: unknown, never expires
}

// parseUserSettings reads a user's settings; each field that cannot be read
// is an error naming it.
func parseUserSettings(f map[string]string) (userSettings, []error) {
	u := userSettings{loginDelay: -1, maxAge: -1}
	var errs []error
	_, u.disabled = f["nologin"]
	if v, ok := f["login_delay"]; ok {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			u.loginDelay = time.Duration(n) * time.Second
		} else {
			errs = append(errs, fmt.Errorf("login_delay: %q is not a number of seconds", v))
		}
	}
	if v, ok := f["password_max_age"]; ok {
		if d, err := units.ParseDuration(v); err == nil {
			u.maxAge = d
		} else {
			errs = append(errs, fmt.Errorf("password_max_age: %q is not an age (like 90d)", v))
		}
	}
	if v, ok := f["password_changed"]; ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			u.changed = time.Unix(n, 0)
		} else {
			errs = append(errs, fmt.Errorf("password_changed: %q is not a Unix time", v))
		}
	}
	return u, append(errs, guard.CheckUserRules(f)...)
}

// CheckUserFields reports each of a user's own settings (the users file's
// extra fields login_delay, password_max_age, password_changed, allow_nets,
// deny_nets, allow_countries, deny_countries) that cannot be read. Such a
// user cannot log in until the field is fixed: the server answers
// -ERR [SYS/PERM] and logs the problem.
func CheckUserFields(fields map[string]string) []error {
	_, errs := parseUserSettings(fields)
	return errs
}

// loginDelay is the LOGIN-DELAY (RFC 2449 §6.5) of a user with settings u:
// the login_delay field in seconds, or the server's.
func (s *session) loginDelay(u userSettings) time.Duration {
	if u.loginDelay >= 0 {
		return u.loginDelay
	}
	return s.srv.cfg.LoginDelay
}

// admitUser applies the per-user settings after the credentials were found
// good, which ends the guard's attempt. It answers the client and returns
// false when the user may not log in now; method is the mechanism used.
//
// Only a client that gave the right password learns why it is refused
// (like Dovecot's nologin): an account disabled or with an expired password,
// LOGIN-DELAY (RFC 2449 §8.1.1), too many sessions. A refusal by the user's
// network or country rules is answered like a wrong password instead. The
// refusals for the account itself (disabled, password expired) take the
// failure delay and count for the guard as failures, as a wrong password
// would; the others are answered at once.
func (s *session) admitUser(user, mech string) bool {
	f := s.fields(user)
	u, errs := parseUserSettings(f)
	if len(errs) > 0 {
		// The operator's mistake, not the client's: no failure is counted.
		s.log.Error("login refused: the user's settings in the users file cannot be read", "user", user, "err", errors.Join(errs...))
		s.loginRefused(user, mech, "invalid settings")
		s.attemptDone()
		s.w.Err(pop3.CodeSysPerm, "this account's settings are invalid; ask the administrator")
		return false
	}
	if r := s.srv.cfg.Rules; r != nil && s.ip.IsValid() {
		if err := r.CheckUser(s.ip, f); err != nil {
			// Answered like bad credentials, after the same delay, so that
			// nothing tells that the password was right.
			s.log.Info("login refused by the user's access rules", "user", user, "reason", err)
			s.failLogin(user, mech, "access rules")
			return false
		}
	}
	if u.disabled {
		s.loginRefused(user, mech, "disabled")
		s.answerFailure(user, pop3.CodeSysPerm, "POP3 access is disabled for this account")
		return false
	}
	maxAge := s.srv.cfg.PasswordMaxAge
	if u.maxAge >= 0 {
		maxAge = u.maxAge
	}
	if maxAge > 0 && !u.changed.IsZero() && time.Since(u.changed) > maxAge {
		s.loginRefused(user, mech, "password expired")
		s.answerFailure(user, pop3.CodeAuth, "password expired")
		return false
	}
	s.attemptDone()
	if d := s.loginDelay(u); d > 0 {
		s.srv.mu.Lock()
		last, ok := s.srv.lastLogin[user]
		s.srv.mu.Unlock()
		if ok && time.Since(last) < d {
			s.loginRefused(user, mech, "login delay")
			s.w.Err(pop3.CodeLoginDelay, "minimum time between logins not reached")
			return false
		}
	}
	if max := s.srv.cfg.MaxSessionsPerUser; max > 0 {
		s.srv.mu.Lock()
		n := s.srv.userSessions[user]
		s.srv.mu.Unlock()
		if n >= max {
			s.loginRefused(user, mech, "too many sessions")
			s.w.Err(pop3.CodeInUse, "too many sessions for this user")
			return false
		}
	}
	return true
}

// attemptDone ends the guard's attempt of a login that did not fail; once
// the attempt has ended it does nothing.
func (s *session) attemptDone() {
	s.attempt.Done()
	s.attempt = nil
}

// loginRefused logs and audits a login refused after the credentials were
// found good.
func (s *session) loginRefused(user, method, reason string) {
	s.srv.cfg.Metrics.LoginRefused(method, s.tls != nil)
	s.log.Info("login refused", "user", user, "method", method, "reason", reason)
	s.srv.audit("login_refused", "session", s.id, "user", user, "ip", s.ip.String(), "method", method, "reason", reason)
}

// answerFailure answers a failed login, or a refusal for the account itself,
// as every failure is answered: counted by the guard, after the failure
// delay; a failure that banned the source ends the session.
func (s *session) answerFailure(user string, code pop3.Code, text string) {
	banned := s.guardFailure(user)
	s.failDelay()
	s.w.Err(code, text)
	if banned {
		s.state = stateDone
	}
}

// errBadLogin is the reply to every failed login (RFC 3206 [AUTH]).
const errBadLogin = "invalid user name or password"

// failLogin records a failed authentication with mechanism method, waits
// the failure delay and answers with the one reply for every kind of failure
// (RFC 3206 [AUTH]). reason, when not empty, says why credentials that
// matched were refused. The log line is a stable format that fail2ban
// matches:
//
//	msg="authentication failed" session=ID remote=ADDR:PORT ip=ADDR user=NAME method=METHOD [reason=REASON]
func (s *session) failLogin(user, method, reason string) {
	code, text := pop3.CodeAuth, errBadLogin
	if src, ok := s.srv.cfg.Auth.(AccountSource); ok && src.Fault() != nil {
		// RFC 3206 §4 [SYS/TEMP]: the list of users cannot be used now, so
		// the failure may be the list's. Every failure gets this reply, so
		// that nothing tells a name missing from the list from a wrong
		// password; only a wrong password for a user the list still has is
		// a failed login, counted by the guard.
		code, text = pop3.CodeSysTemp, errAccountsDown
		if !src.Exists(user) {
			s.log.Warn("login deferred: the users file cannot be used", "ip", s.ip.String(), "user", user, "method", method)
			s.attemptDone()
			s.failDelay()
			s.w.Err(code, text)
			return
		}
	}
	s.srv.cfg.Metrics.Login(false, method, s.tls != nil)
	attrs := []any{"ip", s.ip.String(), "user", user, "method", method}
	if reason != "" {
		attrs = append(attrs, "reason", reason)
	}
	s.log.Info("authentication failed", attrs...)
	s.srv.audit("login_failed", append([]any{"session", s.id}, attrs...)...)
	s.answerFailure(user, code, text)
}

// AccountSource is implemented by an Authenticator whose list of users can
// be unusable for a while (auth.Users, when its users file is missing or
// damaged): Fault is then not nil, and Exists tells the users it still has.
type AccountSource interface {
	Fault() error
	Exists(user string) bool
}

// errAccountsDown is the reply to a failed login while the list of users
// cannot be used.
const errAccountsDown = "cannot check credentials now; try again later"

// guardFailure records a failure in the guard's attempt, which ends it,
// and reports whether it banned the source. Every failure follows a check
// that throttle began the attempt of; without a guard there is none.
func (s *session) guardFailure(user string) bool {
	b, ok := s.attempt.Failure(user)
	s.attempt = nil
	if ok {
		s.log.Warn("source banned", "net", b.Net.String(), "until", b.Until, "reason", b.Reason)
		s.srv.audit("ban", "net", b.Net.String(), "until", b.Until, "reason", b.Reason)
		s.srv.cfg.Metrics.Banned()
	}
	return ok
}

// failDelay waits until AuthFailDelay after the attempt began (after the
// guard's delay), whatever was checked meanwhile.
func (s *session) failDelay() {
	if d := s.srv.cfg.AuthFailDelay - time.Since(s.authStart); s.srv.cfg.AuthFailDelay > 0 && d > 0 {
		s.w.Flush()
		time.Sleep(d)
	}
}
