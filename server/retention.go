package server

import (
	"fmt"
	"slices"
	"time"

	"github.com/pouchmail/pouch/store"
)

// Retention gives the server each user's retention policy, for the EXPIRE
// capability (RFC 2449 §6.7) and for what QUIT does with retrieved messages.
type Retention interface {
	// Policy is user's policy.
	Policy(user string) store.Policy
	// Floor is the policy announced before login: the shortest expiry any
	// user has, and whether users' policies differ.
	Floor() (p store.Policy, perUser bool)
}

const (
	retrievedTop   uint8 = 1 << iota // sent with TOP
	retrievedWhole                   // sent with RETR
)

// expireCapability is the EXPIRE capability (RFC 2449 §6.7): the minimum
// number of whole days a message stays on the server, "NEVER" when no
// policy removes messages, "0" when retrieved messages are deleted at QUIT.
// Before login it is the smallest value of any user, with "USER" when a
// better one follows after login.
func (s *session) expireCapability() string {
	r := s.srv.cfg.Retention
	switch {
	case r == nil:
		return capExpire.line("NEVER")
	case s.state != stateAuthorization:
		return capExpire.line(ExpireDays(r.Policy(s.mailbox)))
	}
	p, perUser := r.Floor()
	if perUser {
		return capExpire.line(ExpireDays(p), "USER")
	}
	return capExpire.line(ExpireDays(p))
}

// ExpireDays is the argument of the EXPIRE capability for p.
func ExpireDays(p store.Policy) string {
	switch {
	case p.DeleteRetrieved:
		return "0"
	case p.Expire <= 0:
		return "NEVER"
	}
	return fmt.Sprint(int64(p.Expire / (24 * time.Hour)))
}

// retain applies the user's retention policy as the session enters the
// UPDATE state: it records the first retrieval of the messages sent (for
// expiry counted from it) and, under "EXPIRE 0", adds every message sent
// with RETR to the deletions. It returns the deletions to commit.
func (s *session) retain(md store.Maildrop, del []int) []int {
	var sent []int
	for i, r := range s.retrieved {
		if r != 0 && !s.deleted[i] {
			sent = append(sent, i)
		}
	}
	if len(sent) == 0 {
		return del
	}
	if rec, ok := md.(store.RetrievalRecorder); ok {
		if err := rec.Retrieved(sent, time.Now()); err != nil {
			// Not fatal: without the record the message only stays longer.
			s.log.Warn("recording retrievals failed", "err", err, "user", s.mailbox)
		}
	}
	if r := s.srv.cfg.Retention; r != nil && r.Policy(s.mailbox).DeleteRetrieved {
		for _, i := range sent {
			if s.retrieved[i]&retrievedWhole != 0 {
				del = append(del, i)
			}
		}
		slices.Sort(del)
	}
	return del
}
