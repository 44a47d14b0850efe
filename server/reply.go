package server

import (
	"errors"
	"io"
	"net"

	"github.com/pouchmail/pouch/pop3"
)

// The session's error convention (docs/ARCHITECTURE.md, "The session's
// code"): a command's handler writes its +OK and multi-line responses
// itself, but never -ERR, and never ends the session. It returns an error,
// and reply, the one place that does both, turns it into the client's
// reply and the session's state; each kind of error below says what it
// means, and any other error is a server error, logged and answered with
// a fixed text.

// errReply is the -ERR reply with code ("" for none) and text.
func errReply(code pop3.Code, text string) error {
	return &pop3.Error{Code: code, Text: text}
}

// badCommandError is a command that cannot be run (unknown, in the wrong
// state, with bad arguments).
type badCommandError struct{ text string }

func (e *badCommandError) Error() string { return "bad command: " + e.text }

// badCommand is the reply to a command that cannot be run, which counts
// toward MaxBadCommands.
func badCommand(text string) error { return &badCommandError{text} }

// endingError is a reply after which the session ends.
type endingError struct{ err error }

func (e *endingError) Error() string { return e.err.Error() + " (session ends)" }
func (e *endingError) Unwrap() error { return e.err }

// ending makes err a reply after which the session ends.
func ending(err error) error { return &endingError{err} }

// endingIf is ending(err) when end is true, else err.
func endingIf(end bool, err error) error {
	if end {
		return ending(err)
	}
	return err
}

var (
	// errEnd ends the session once what was written goes out: QUIT's
	// goodbye, or nothing when the connection is closing (aborted, shed,
	// a failed write).
	errEnd = errors.New("session ends")
	// errAborted ends a session kicked or shut down before its next
	// command with nothing more sent, not even replies to earlier
	// pipelined commands.
	errAborted = errors.New("session aborted")
)

// readError is a read of the client's next line (a command, or an answer
// in a SASL exchange) that failed.
type readError struct{ err error }

func (e *readError) Error() string { return "reading from the client: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// sysError is a failure on the server's side. The client is told code
// (RFC 3206 §4: SYS/TEMP or SYS/PERM) and text, a fixed reply; the log
// gets msg, err (when not nil) and attrs. An empty text means that nothing
// can be said any more (the +OK of a message is out): the connection is
// dropped instead.
type sysError struct {
	code  pop3.Code
	text  string
	warn  bool // logged as a warning, not an error
	msg   string
	err   error
	attrs []any
}

func (e *sysError) Error() string {
	if e.err == nil {
		return e.msg
	}
	return e.msg + ": " + e.err.Error()
}

func (e *sysError) Unwrap() error { return e.err }

// internalReply is the reply to an error no handler described.
var internalReply = &pop3.Error{Code: pop3.CodeSysTemp, Text: "internal server error; try again later"}

// reply answers err, what a command (or the read of one) ended with, and
// sets the session's state accordingly; nil is no error. It reports false
// when the session ends at once, with nothing more to send.
func (s *session) reply(err error) bool {
	if err == nil {
		return true
	}
	var end *endingError
	if errors.As(err, &end) {
		s.state = stateDone
	}
	var rerr *readError
	switch {
	case errors.Is(err, errAborted):
		s.state = stateDone
		return false
	case errors.As(err, &rerr):
		s.state = stateDone
		if out := s.readFailed(rerr.err); out != nil {
			s.w.Err(out.Code, out.Text)
			s.w.Flush()
		}
		return false
	case errors.Is(err, errEnd):
		s.state = stateDone
		return true
	}
	if out := s.errorReply(err); out != nil {
		s.w.Err(out.Code, out.Text)
	}
	return true
}

// errorReply returns the -ERR reply to err, or nil when there can be none.
func (s *session) errorReply(err error) *pop3.Error {
	var (
		bad *badCommandError
		sys *sysError
		out *pop3.Error
	)
	switch {
	case errors.As(err, &bad):
		return s.badCommand(bad.text)
	case errors.As(err, &sys):
		return s.sysFailed(sys)
	case errors.As(err, &out):
		return out
	}
	s.log.Error("command failed", "err", err, "user", s.mailbox)
	return internalReply
}

// badCommand counts a bad command and returns its reply: text, or a
// goodbye once there were too many of them.
func (s *session) badCommand(text string) *pop3.Error {
	s.bad++
	if s.bad >= s.srv.cfg.MaxBadCommands {
		s.log.Info("too many bad commands; disconnecting", "user", s.mailbox)
		s.state = stateDone
		return &pop3.Error{Text: "too many bad commands; bye"}
	}
	return &pop3.Error{Text: text}
}

// sysFailed logs a failure on the server's side and returns its reply, or
// drops the connection when nothing can be said.
func (s *session) sysFailed(e *sysError) *pop3.Error {
	attrs := e.attrs
	if e.err != nil {
		attrs = append([]any{"err", e.err}, attrs...)
	}
	if e.warn {
		s.log.Warn(e.msg, attrs...)
	} else {
		s.log.Error(e.msg, attrs...)
	}
	if e.text == "" {
		// Part of a response may be out: ending it would pass it as whole.
		s.state = stateDone
		s.abort()
		return nil
	}
	return &pop3.Error{Code: e.code, Text: e.text}
}

// readFailed logs why reading stopped and returns the goodbye due, if any:
// for an idle timeout, or when the session was closed to make room. No
// path from here enters UPDATE.
func (s *session) readFailed(err error) *pop3.Error {
	var ne net.Error
	switch {
	case s.shed.Load():
		s.log.Debug("closed to make room: the oldest connection not logged in")
		return &pop3.Error{Code: pop3.CodeSysTemp, Text: shedReply}
	case s.lockLost():
		return s.lostReply()
	case s.untrustedHeader(err):
	case errors.As(err, &ne) && ne.Timeout():
		s.log.Info("autologout: idle timeout", "user", s.mailbox)
		s.dc.goodbye()
		return &pop3.Error{Text: "autologout: idle for too long"}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		s.log.Debug("connection closed by peer", "user", s.mailbox)
	default:
		s.log.Info("read failed", "err", err, "user", s.mailbox)
	}
	return nil
}
