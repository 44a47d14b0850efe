package server

import (
	"context"
	"crypto/md5"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/random"
	"github.com/pouchmail/pouch/pop3"
	"github.com/pouchmail/pouch/store"
)

// --- AUTHORIZATION state (RFC 1939 §4, §7) ---

// errCleartext is the reply to a password sent where it may not be
// (RFC 8314 §3; the same whatever the credentials).
var errCleartext = &pop3.Error{Code: pop3.CodeAuth, Text: "cleartext authentication is not allowed without TLS; use STLS or port 995"}

// maxNameOctets is the longest user name that can exist (auth.ValidName).
const maxNameOctets = 255

// greeting is the first reply (RFC 1939 §4), with an APOP timestamp
// (RFC 1939 §7) only when some user can use APOP on this connection.
func (s *session) greeting() string {
	greeting := "Pouch ready."
	if s.srv.apop != nil && s.srv.cfg.Auth.Summary().APOP && s.cleartextAllowed() {
		s.timestamp = fmt.Sprintf("<%d.%s@%s>", os.Getpid(), random.Hex(8), s.srv.cfg.Hostname)
		greeting += " " + s.timestamp
	}
	return greeting
}

func (s *session) cmdUSER(cmd pop3.Command) error {
	s.user = ""
	if !s.cleartextAllowed() {
		return errCleartext
	}
	if len(cmd.Args) != 1 || cmd.CheckArgsName(0, maxNameOctets) != nil {
		return badCommand("USER takes one user name")
	}
	// The same answer for every name: nothing tells whether the user exists.
	s.user = s.accountName(cmd.Args[0])
	s.w.OK("send PASS")
	return nil
}

func (s *session) cmdPASS(cmd pop3.Command) error {
	user := s.user
	s.user = ""
	if user == "" {
		return badCommand("send USER first")
	}
	// RFC 1939 §7: the password is the rest of the line and may hold spaces.
	if err := s.throttle(user, "PASS"); err != nil {
		return err
	}
	return s.login(user, "PASS", s.verify(user, cmd.Rest))
}

func (s *session) cmdAPOP(cmd pop3.Command) error {
	s.user = ""
	switch {
	case s.timestamp == "" && !s.cleartextAllowed():
		return errCleartext
	case s.timestamp == "":
		return badCommand("APOP is not available")
	case len(cmd.Args) != 2:
		return badCommand("APOP takes a user name and a digest")
	case cmd.CheckArgsName(0, maxNameOctets) != nil:
		return badCommand("argument too long")
	}
	user, digest := s.accountName(cmd.Args[0]), strings.ToLower(cmd.Args[1])
	if err := s.throttle(user, "APOP"); err != nil {
		return err
	}
	secret, ok := "", false
	if s.srv.apop != nil {
		secret, ok = s.srv.apop.APOPSecret(user)
	}
	if !ok {
		secret = random.Hex(16) // compare anyway, so that timing tells nothing
	}
	sum := md5.Sum([]byte(s.timestamp + secret))
	want := hex.EncodeToString(sum[:])
	match := subtle.ConstantTimeCompare([]byte(want), []byte(digest)) == 1
	return s.login(user, "APOP", ok && match)
}

// login finishes an authentication attempt, whatever the mechanism: on
// success it opens the maildrop and enters TRANSACTION; on failure it waits
// the configured delay and answers with the same reply whatever the reason
// (RFC 3206 [AUTH]).
func (s *session) login(user, method string, ok bool) error {
	if len(user) > maxNameOctets {
		// No user has such a name; keep logs, audit and the guard small.
		user, ok = user[:maxNameOctets], false
	}
	if !ok {
		if err := s.unchecked; err != nil {
			s.unchecked = nil
			return s.deferLogin(user, method, err)
		}
		return s.failLogin(user, method, "")
	}
	account, err := s.admitUser(user, method)
	if err != nil {
		return err
	}
	md, err := s.openMaildrop(user, method)
	if err != nil {
		return err
	}
	s.enterTransaction(user, method, account, md)
	return nil
}

// openMaildrop takes user's maildrop lock and snapshot (RFC 1939 §4).
func (s *session) openMaildrop(user, method string) (store.Maildrop, error) {
	md, err := s.srv.cfg.Store.Open(context.Background(), user)
	switch {
	case err == nil:
		return md, nil
	case errors.Is(err, store.ErrLocked):
		// RFC 2449 §8.1.2.
		s.loginRefused(user, method, "maildrop in use")
		return nil, errReply(pop3.CodeInUse, "maildrop already locked by another session")
	case errors.Is(err, store.ErrBadUser):
		return nil, &sysError{code: pop3.CodeSysPerm, text: "maildrop unavailable",
			msg: "user name cannot name a maildrop", attrs: []any{"user", user}}
	default:
		return nil, &sysError{code: pop3.CodeSysTemp, text: "maildrop unavailable, try again later",
			msg: "opening maildrop", err: err, attrs: []any{"user", user}}
	}
}

// enterTransaction starts the TRANSACTION state (RFC 1939 §5) with md, the
// maildrop of user, who logged in with method, and answers the login.
func (s *session) enterTransaction(user, method string, account auth.Account, md store.Maildrop) {
	s.md = md
	if l, ok := md.(store.Leased); ok {
		s.lost = l.Lost()
		go s.watchLease(s.lost)
	}
	s.mailbox, s.account = user, account
	s.msgs = md.Messages()
	s.deleted = make([]bool, len(s.msgs))
	s.retrieved = make([]uint8, len(s.msgs))
	s.state = stateTransaction
	s.dc.timeout, s.dc.notAfter = s.srv.cfg.IdleTimeout, time.Time{}
	s.srv.mu.Lock()
	s.srv.userSessions[user]++
	s.srv.lastLogin[user] = time.Now()
	s.loggedInLocked()
	s.op.user = user
	s.srv.mu.Unlock()
	n, size := s.stat()
	s.srv.cfg.Metrics.Login(true, method, s.tls != nil)
	s.log.Info("login", "user", user, "method", method, "tls", s.tls != nil, "messages", n, "octets", size)
	s.srv.audit("login", "session", s.id, "user", user, "ip", s.ip.String(), "method", method, "tls", s.tls != nil, "messages", n)
	s.w.OK(maildropReply(n, size))
}

// admitUser applies the user's account after the credentials were found
// good, which ends the guard's attempt as a success. It returns the reply
// that refuses the login when the user may not log in now; method is the
// mechanism used.
//
// Only a client that gave the right password learns why it is refused
// (like Dovecot's nologin): an account disabled or with an expired password,
// LOGIN-DELAY (RFC 2449 §8.1.1), too many sessions. A refusal by the user's
// network or country rules is answered like a wrong password instead. The
// refusals for the account itself (disabled, password expired) take the
// failure delay and count for the guard as failures, as a wrong password
// would; the others are answered at once.
func (s *session) admitUser(user, method string) (auth.Account, error) {
	u, err := s.srv.cfg.Auth.Account(user)
	switch {
	case errors.Is(err, auth.ErrInvalidAccount):
		// The operator's mistake, not the client's: no failure is counted.
		s.loginRefused(user, method, "invalid settings")
		s.attemptSucceeded()
		return u, &sysError{code: pop3.CodeSysPerm, text: "this account's settings are invalid; ask the administrator",
			msg: "login refused: the account's settings cannot be read", err: err, attrs: []any{"user", user}}
	case err != nil:
		// The account went away, or the accounts cannot be looked up,
		// since the credentials were checked: no failure either.
		s.loginRefused(user, method, "account unavailable")
		s.attemptDone()
		return u, &sysError{code: errAccountsDown.Code, text: errAccountsDown.Text, warn: true,
			msg: "login deferred: the account cannot be looked up", err: err, attrs: []any{"user", user}}
	}
	if r := s.srv.cfg.Rules; r != nil && s.ip.IsValid() {
		if err := r.CheckUser(s.ip, u.Access); err != nil {
			// Answered like bad credentials, after the same delay, so that
			// nothing tells that the password was right.
			s.log.Info("login refused by the user's access rules", "user", user, "reason", err)
			return u, s.failLogin(user, method, "access rules")
		}
	}
	if err := s.accountRefusal(user, method, u); err != nil {
		return u, err
	}
	s.attemptSucceeded()
	return u, s.sessionRefusal(user, method, u)
}

// accountRefusal refuses a login for the account itself: disabled, or its
// password expired. The refusal is answered as a failure is.
func (s *session) accountRefusal(user, method string, u auth.Account) error {
	if u.Disabled {
		s.loginRefused(user, method, "disabled")
		return s.answerFailure(errReply(pop3.CodeSysPerm, "POP3 access is disabled for this account"))
	}
	maxAge := u.PasswordMaxAge.Or(s.srv.cfg.PasswordMaxAge)
	if maxAge > 0 && !u.PasswordChanged.IsZero() && time.Since(u.PasswordChanged) > maxAge {
		s.loginRefused(user, method, "password expired")
		return s.answerFailure(errReply(pop3.CodeAuth, "password expired"))
	}
	return nil
}

// sessionRefusal refuses a login for the user's other sessions: the last
// one too recent (LOGIN-DELAY, RFC 2449 §8.1.1), or too many open.
func (s *session) sessionRefusal(user, method string, u auth.Account) error {
	if d := s.loginDelay(u); d > 0 {
		s.srv.mu.Lock()
		last, ok := s.srv.lastLogin[user]
		s.srv.mu.Unlock()
		if ok && time.Since(last) < d {
			s.loginRefused(user, method, "login delay")
			return errReply(pop3.CodeLoginDelay, "minimum time between logins not reached")
		}
	}
	if max := s.srv.cfg.MaxSessionsPerUser; max > 0 {
		s.srv.mu.Lock()
		n := s.srv.userSessions[user]
		s.srv.mu.Unlock()
		if n >= max {
			s.loginRefused(user, method, "too many sessions")
			return errReply(pop3.CodeInUse, "too many sessions for this user")
		}
	}
	return nil
}

// loginDelay is the LOGIN-DELAY (RFC 2449 §6.5) of a user with account a:
// the account's own, or the server's.
func (s *session) loginDelay(a auth.Account) time.Duration {
	return a.LoginDelay.Or(s.srv.cfg.LoginDelay)
}

// accountName is the account a name given by the client stands for: the
// name normalized with the PRECIS UsernameCasePreserved profile (RFC 8265
// §3.4, as RFC 6856 §4 asks; a name the profile refuses is used as given,
// and then matches no user), its domain in lower case, and completed with
// the default domain when it has none (auth.AccountName).
func (s *session) accountName(name string) string {
	return auth.AccountName(name, s.srv.cfg.DefaultDomain)
}
