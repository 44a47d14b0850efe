package server

import (
	"context"
	"errors"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/pop3"
)

var (
	// errLoginFailed is the reply to every failed login (RFC 3206 §5
	// [AUTH]).
	errLoginFailed = &pop3.Error{Code: pop3.CodeAuth, Text: "invalid user name or password"}
	// errAccountsDown is the reply to a failed login while the list of
	// users cannot be used (RFC 3206 §4 [SYS/TEMP]).
	errAccountsDown = &pop3.Error{Code: pop3.CodeSysTemp, Text: "cannot check credentials now; try again later"}
)

// throttle starts the guard's attempt (guard.Attempt) for user, with
// mechanism method, once a password, token or proof has arrived, just before
// it is checked: it refuses a source banned meanwhile (by this session's own
// failures, another session's, or pouch ban) and ends the session; it
// refuses a user name locked for this source as a failed login is answered,
// without checking anything; and otherwise it waits as long as the guard
// says, within the pre-login timeout. It returns nil when the attempt may
// go on, else the refusal to answer. The failure delay (AuthFailDelay)
// counts from the end of this wait, so the guard's delay adds to it.
func (s *session) throttle(user, method string) error {
	if !s.startCheck() {
		return errEnd // shed meanwhile
	}
	if g := s.srv.cfg.Guard; g != nil && s.ip.IsValid() {
		a, b, err := s.waitAttempt(g, user)
		if err != nil {
			return s.attemptRefused(user, method, b, err)
		}
		s.attempt = a
	}
	s.authStart = time.Now()
	return nil
}

// waitAttempt asks the guard for an attempt for user from this session's
// address, and waits the delay it sets, bounded by the pre-login deadline
// and ended by an abort. On error, b is the ban that refused it, if any.
func (s *session) waitAttempt(g *guard.Guard, user string) (a *guard.Attempt, b guard.Ban, err error) {
	ctx := s.ctx
	if !s.dc.notAfter.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, s.dc.notAfter)
		defer cancel()
	}
	a, d, b, err := g.Attempt(ctx, s.ip, user)
	if err != nil || d <= 0 {
		return a, b, err
	}
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
	return a, b, err
}

// attemptRefused answers an attempt the guard refused with err.
func (s *session) attemptRefused(user, method string, b guard.Ban, err error) error {
	switch {
	case errors.Is(err, guard.ErrLocked):
		// Answered as a failure is, after the same delay, so that a
		// client polling with the right password learns nothing; it is
		// no failed login (no fail2ban line, the user's own client must
		// not get her address banned), but a refusal, which the guard
		// counted toward the source's ban.
		s.authStart = time.Now()
		s.loginRefused(user, method, "user locked")
		aborted := s.failDelay()
		if b.Net.IsValid() {
			s.reportBan(b)
		}
		return endingIf(aborted || b.Net.IsValid(), errLoginFailed)
	case errors.Is(err, guard.ErrBanned):
		s.log.Info("attempt from a banned source", "ip", s.ip.String(), "net", b.Net.String())
		return ending(banReply(b))
	case s.ctx.Err() != nil:
		return errEnd // aborted (kick, shutdown): the connection is closing
	}
	// The pre-login timeout ran out while the source's other attempts held
	// every place.
	s.log.Info("autologout: pre-login timeout while other logins of this source were in progress", "ip", s.ip.String())
	s.dc.goodbye()
	return ending(errReply(pop3.CodeSysTemp, "too many logins from your address at once; try again later"))
}

// attemptDone ends the guard's attempt of a login whose credentials were
// not found wrong nor right (nothing was checked, the client left); once the
// attempt has ended it does nothing.
func (s *session) attemptDone() {
	s.attempt.Done()
	s.attempt = nil
}

// attemptSucceeded ends the guard's attempt of a login whose credentials
// were right: the user name is proven from this source.
func (s *session) attemptSucceeded() {
	s.attempt.Success()
	s.attempt = nil
}

// known reports whether the source has an account for user, usable or
// refused for its settings. The error, with false, says that the source
// could not tell: anything but auth.ErrNoSuchUser is no answer.
func (s *Server) known(user string) (bool, error) {
	_, err := s.cfg.Auth.Account(user)
	switch {
	case err == nil, errors.Is(err, auth.ErrInvalidAccount):
		return true, nil
	case errors.Is(err, auth.ErrNoSuchUser):
		return false, nil
	}
	return false, err
}

// loginRefused logs and audits a login refused after the credentials were
// found good.
func (s *session) loginRefused(user, method, reason string) {
	s.srv.cfg.Metrics.LoginRefused(method, s.tls != nil)
	s.log.Info("login refused", "user", user, "method", method, "reason", reason)
	s.srv.audit("login_refused", "session", s.id, "user", user, "ip", s.ip.String(), "method", method, "reason", reason)
}

// failLogin records a failed authentication with mechanism method, waits
// the failure delay and returns the one reply for every kind of failure
// (RFC 3206 [AUTH]). reason, when not empty, says why credentials that
// matched were refused. The log line is a stable format that fail2ban
// matches:
//
//	msg="authentication failed" session=ID remote=ADDR:PORT ip=ADDR user=NAME method=METHOD [reason=REASON]
func (s *session) failLogin(user, method, reason string) error {
	reply := errLoginFailed
	if fault := s.srv.cfg.Auth.Fault(); fault != nil {
		// RFC 3206 §4 [SYS/TEMP]: the list of users cannot be used now, so
		// the failure may be the list's. Every failure gets this reply, so
		// that nothing tells a name missing from the list from a wrong
		// password; only a wrong password for a user the list still has is
		// a failed login, counted by the guard.
		reply = errAccountsDown
		if ok, _ := s.srv.known(user); !ok {
			return s.deferLogin(user, method, fault)
		}
	}
	s.srv.cfg.Metrics.Login(false, method, s.tls != nil)
	attrs := []any{"ip", s.ip.String(), "user", user, "method", method}
	if reason != "" {
		attrs = append(attrs, "reason", reason)
	}
	s.log.Info("authentication failed", attrs...)
	s.srv.audit("login_failed", append([]any{"session", s.id}, attrs...)...)
	return s.answerFailure(reply)
}

// deferLogin answers a login whose credentials could not be checked, since
// the accounts could not be looked up (err says why): RFC 3206 §4
// [SYS/TEMP], after the failure delay, as a failure is answered, but no
// failed login: the guard counts nothing, and no fail2ban line is logged.
func (s *session) deferLogin(user, method string, err error) error {
	s.log.Warn("login deferred: the accounts cannot be looked up", "ip", s.ip.String(), "user", user,
		"method", method, "err", err)
	s.attemptDone()
	return endingIf(s.failDelay(), errAccountsDown)
}

// answerFailure returns reply, the answer to a failed login or to a refusal
// for the account itself, as every failure is answered: counted by the
// guard, after the failure delay; a failure that banned the source ends the
// session.
func (s *session) answerFailure(reply error) error {
	banned := s.guardFailure()
	aborted := s.failDelay()
	return endingIf(banned || aborted, reply)
}

// guardFailure records a failure in the guard's attempt, which ends it,
// and reports whether it banned the source. Every failure follows a check
// that throttle began the attempt of, for the user name the client gave;
// without a guard there is none.
func (s *session) guardFailure() bool {
	b, ok := s.attempt.Failure()
	s.attempt = nil
	if ok {
		s.reportBan(b)
	}
	return ok
}

// reportBan logs, audits and counts a ban this session's login caused.
func (s *session) reportBan(b guard.Ban) {
	s.log.Warn("source banned", "net", b.Net.String(), "until", b.Until, "reason", b.Reason)
	s.srv.audit("ban", "net", b.Net.String(), "until", b.Until, "reason", b.Reason)
	s.srv.cfg.Metrics.Banned()
}

// failDelay waits until AuthFailDelay after the attempt began (after the
// guard's delay), whatever was checked meanwhile, or until the session is
// aborted (kick, shutdown); it reports whether it was.
func (s *session) failDelay() (aborted bool) {
	d := s.srv.cfg.AuthFailDelay - time.Since(s.authStart)
	if s.srv.cfg.AuthFailDelay <= 0 || d <= 0 {
		return false
	}
	s.w.Flush()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return false
	case <-s.ctx.Done():
		return true
	}
}
