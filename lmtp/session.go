package lmtp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/crashpoint"
)

// Replies. Every refusal has its own fixed text; the text of an internal error
// never reaches the client (it is logged with the session id instead).
var (
	replyNoUser = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user here"}
	// RFC 3463 §3.4: X.3.0, a system problem. The users file cannot be
	// used: whether the recipient exists is not known, so it must not be
	// refused for good.
	replyUnconfirmed = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Cannot confirm the recipient now, try again later"}
	// The recipient's account is refused for its settings until they are
	// fixed: the mail waits for that rather than being bounced or
	// delivered under settings that were not meant.
	replyAccountRefused = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Cannot take mail for this recipient now, try again later"}
	replyDomain   = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 2}, Message: "Domain not served here"}
	replyTooBig   = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message too big for this system"}
	replyFull     = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "Mailbox full"}
	replyFullTemp = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Mailbox full, try again later"}
	replyBareLF   = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0},
		Message: "Message refused: bare LF line ending (lines must end with CRLF)"}
	replyLongLine = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 0}, Message: "Line too long"}
	replyTimeout  = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Timeout while reading the message"}
	replyAborted  = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Message transfer aborted"}
)

// errBareLF is the error of a message with an LF that does not follow a CR.
var errBareLF = errors.New("bare LF line ending")

// session is one LMTP connection's state, from LHLO on. go-smtp calls its
// methods from the connection's goroutine, except LMTPData for BDAT, which
// runs in a goroutine of its own and may outlive a Reset after a failed
// chunk: mu guards from and rcpts, which LMTPData copies when it starts.
type session struct {
	srv  *Server
	conn *conn
	id   string
	log  *slog.Logger

	size int64 // MAIL FROM's SIZE=, 0 if not given; for Rcpt only

	mu    sync.Mutex
	from  string
	rcpts []recipient
}

// recipient is an accepted RCPT: the address as given and the user it names.
type recipient struct{ addr, user string }

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	id := fmt.Sprintf("%s-%d", s.idPrefix, s.ids.Add(1))
	sess := &session{srv: s, id: id, log: s.log.With("session", id, "protocol", "lmtp")}
	sess.conn, _ = c.Conn().(*conn)
	sess.log.Debug("lmtp session", "remote", c.Conn().RemoteAddr().String(), "lhlo", c.Hostname())
	return sess, nil
}

func (s *session) Reset() {
	s.mu.Lock()
	s.from, s.size, s.rcpts = "", 0, nil
	s.mu.Unlock()
	if s.conn != nil {
		s.conn.inTx.Store(false)
	}
}

func (s *session) Logout() error { return nil }

// Mail starts a transaction; a SIZE= over the size limit is refused at once
// (RFC 1870 §6.1).
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.Reset()
	if opts != nil {
		if limit := s.srv.cfg.Agent.MaxMessageSize; limit > 0 && opts.Size > limit {
			s.log.Info("sender refused: message too big", "from", from, "size", opts.Size)
			return replyTooBig
		}
		s.size = opts.Size
	}
	s.mu.Lock()
	s.from = from
	s.mu.Unlock()
	if s.conn != nil {
		s.conn.inTx.Store(true) // the read timeout, not the idle one, until the transaction ends
	}
	return nil
}

// Rcpt accepts a recipient that names an account (Agent.User), in a served
// domain. The one recipient without a domain that go-smtp passes on is
// Postmaster, which every server must take (RFC 5321 §4.1.1.3, §4.5.1): it
// names this host whatever the served domains, and is looked up as the user
// postmaster (at Agent.DefaultDomain first), refused 550 5.1.1 without one.
// The quota is checked after the data, when the message is stored; with
// Config.RcptCheckQuota, also here (as far as MAIL FROM's SIZE= tells).
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if _, domain, ok := auth.SplitAddress(to); ok {
		served, err := s.srv.serves(domain)
		if err != nil {
			return s.refusal(recipient{to, ""}, fmt.Errorf("%w: %w", ErrUnconfirmed, err), "recipient deferred")
		}
		if !served {
			s.log.Info("recipient refused: domain not served", "rcpt", to)
			return replyDomain
		}
	}
	agent := s.srv.cfg.Agent
	user, err := agent.User(to)
	if err != nil {
		return s.refusal(recipient{to, user}, err, "recipient refused")
	}
	if s.srv.cfg.RcptCheckQuota {
		if err := agent.Check(user, s.size); err != nil {
			return s.refusal(recipient{to, user}, err, "recipient refused")
		}
	}
	s.mu.Lock()
	s.rcpts = append(s.rcpts, recipient{to, user})
	s.mu.Unlock()
	return nil
}

// Data is go-smtp's SMTP path, which an LMTP server does not take; it
// delivers as LMTPData does and reports the first recipient's failure.
func (s *session) Data(r io.Reader) error {
	var first firstStatus
	if err := s.LMTPData(r, &first); err != nil {
		return err
	}
	return first.err
}

type firstStatus struct {
	err error
	set bool
}

func (f *firstStatus) SetStatus(_ string, err error) {
	if !f.set {
		f.err, f.set = err, true
	}
}

// LMTPData delivers the message to every accepted recipient and sets one
// status for each (RFC 2033 §4.2). A single recipient's message streams
// straight into the maildrop; for several, it is spooled once to an unlinked
// file and copied from there to each maildrop, because each copy gets its own
// Delivered-To line. The statuses are set only after the whole message has
// been read, so no reply precedes the end of the data.
func (s *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	s.srv.deliveries.Add(1)
	defer s.srv.deliveries.Done()
	s.mu.Lock()
	from, rcpts := s.from, s.rcpts
	s.mu.Unlock()
	if s.conn != nil {
		s.conn.startData()
		defer s.conn.endData()
	}
	start := time.Now()
	in := &crlfReader{r: r}
	if s.conn != nil {
		in.r = &messageReader{r: r, conn: s.conn}
	}
	results := make([]error, len(rcpts))
	var size int64
	switch {
	case len(rcpts) == 1:
		size, results[0] = s.deliver(from, rcpts[0], in, 0)
	case len(rcpts) > 1:
		f, n, err := s.spool(in)
		size = n
		if err != nil {
			for i := range results {
				results[i] = err
			}
			break
		}
		for i, rc := range rcpts {
			_, results[i] = s.deliver(from, rc, io.NewSectionReader(f, 0, n), n)
		}
		f.Close()
	}
	_, _ = io.Copy(io.Discard, r) // to the final dot, unless the input failed
	if s.conn != nil && errors.Is(in.err, smtp.ErrTooLongLine) {
		s.conn.lineTooLong.Store(true) // the replies below are the last ones
	}
	for i, rc := range rcpts {
		err := results[i]
		if err == nil {
			crashpoint.Hit("lmtp.delivered")
			s.log.Info("delivered", "rcpt", rc.addr, "user", rc.user, "size", size,
				"ms", time.Since(start).Milliseconds())
			status.SetStatus(rc.addr, &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0},
				Message: "Delivered (" + s.id + ")"})
			continue
		}
		status.SetStatus(rc.addr, s.refusal(rc, err, "delivery failed"))
	}
	return nil
}

func (s *session) deliver(from string, rc recipient, r io.Reader, size int64) (int64, error) {
	return s.srv.cfg.Agent.Deliver(s.srv.ctx, Delivery{
		User:      rc.user,
		Recipient: rc.addr,
		Sender:    from,
		LineEnd:   "\r\n",
		Size:      size,
	}, r)
}

// spool copies the message into an unlinked temporary file.
func (s *session) spool(in *crlfReader) (*os.File, int64, error) {
	f, err := os.CreateTemp(s.srv.cfg.SpoolDir, "pouch-lmtp-*")
	if err != nil {
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	os.Remove(f.Name()) // nothing to clean up later, whatever happens
	n, err := io.Copy(f, in)
	if err != nil {
		f.Close()
		if in.err != nil {
			return nil, n, &InputError{in.err}
		}
		return nil, n, fmt.Errorf("spool: %w", err)
	}
	return f, n, nil
}

// refusal turns a failed check or delivery into its reply, and logs it: a
// refusal the sender caused quietly, an internal error with its details.
func (s *session) refusal(rc recipient, err error, what string) *smtp.SMTPError {
	var (
		qe    *QuotaError
		in    *InputError
		se    *smtp.SMTPError
		ne    net.Error
		reply *smtp.SMTPError
	)
	switch {
	case errors.Is(err, ErrUnknownUser):
		reply = replyNoUser
	case errors.Is(err, ErrUnconfirmed):
		// The users file's fault is logged once, where it is found; each
		// recipient it holds up is only noted.
		reply = replyUnconfirmed
	case errors.Is(err, auth.ErrInvalidAccount):
		// Logged at each load of the users file; here only noted.
		reply = replyAccountRefused
	case errors.Is(err, ErrTooBig):
		reply = replyTooBig
	case errors.As(err, &qe):
		reply = replyFull
		if qe.Temporary {
			reply = replyFullTemp
		}
	case errors.As(err, &in):
		switch {
		case errors.Is(err, errBareLF):
			reply = replyBareLF
		case errors.Is(err, smtp.ErrTooLongLine):
			reply = replyLongLine
		case errors.As(err, &se): // go-smtp's own: the message is too large
			reply = se
		case errors.As(err, &ne) && ne.Timeout():
			reply = replyTimeout
		default:
			reply = replyAborted
		}
	}
	if reply != nil {
		s.log.Info(what, "rcpt", rc.addr, "user", rc.user, "reason", err.Error(), "reply", reply.Code)
		return reply
	}
	if errors.Is(err, context.Canceled) && s.srv.isClosing() {
		s.log.Warn(what+": server shutting down", "rcpt", rc.addr, "user", rc.user)
	} else {
		s.log.Error(what, "rcpt", rc.addr, "user", rc.user, "err", err)
	}
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "Temporary local failure, try again later (" + s.id + ")"}
}

// messageReader reports the end of a message's data as io.ErrUnexpectedEOF
// when the client's input had ended before it. go-smtp copies a BDAT chunk
// with io.Copy from an io.LimitReader, which takes the end of the input for
// the end of the chunk: a last chunk cut short (fewer octets than its BDAT
// command gave, RFC 3030 §2) would end the message as if it were whole. The
// end of a whole chunk, like DATA's final dot, is reached without reading past
// it, so when the end of the input has been read by then, octets are missing.
type messageReader struct {
	r    io.Reader
	conn *conn
}

func (m *messageReader) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if err == io.EOF && m.conn.peerEOF.Load() {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// crlfReader passes a message through and fails with errBareLF at the first
// LF that does not follow a CR. LMTP allows no other line ending (RFC 5321
// §2.3.8), and a bare LF is what SMTP smuggling relies on: go-smtp ends DATA
// only at CRLF.CRLF, but an MTA that reads LF.LF as the end would see a
// different message. Refusing it keeps every reading the same.
type crlfReader struct {
	r      io.Reader
	prevCR bool
	err    error // the first error: errBareLF or the underlying reader's
}

func (c *crlfReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.r.Read(p)
	b := p[:n]
	for off := 0; ; {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			break
		}
		j := off + i
		cr := c.prevCR
		if j > 0 {
			cr = b[j-1] == '\r'
		}
		if !cr {
			c.err = errBareLF
			return 0, c.err
		}
		off = j + 1
	}
	if n > 0 {
		c.prevCR = b[n-1] == '\r'
	}
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}
