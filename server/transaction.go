package server

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/pouchmail/pouch/pop3"
	"github.com/pouchmail/pouch/store"
)

// --- TRANSACTION state (RFC 1939 §5, §7) ---

// message parses a message-number argument and checks that the message
// exists and is not deleted.
func (s *session) message(arg string) (int, error) {
	n, ok := pop3.ParseNumber(arg)
	if !ok || n > len(s.msgs) {
		return 0, errReply("", "no such message")
	}
	if s.deleted[n-1] {
		return 0, errReply("", fmt.Sprintf("message %d already deleted", n))
	}
	return n - 1, nil
}

// messageArg is message for the one argument of cmd (RETR, DELE).
func (s *session) messageArg(cmd pop3.Command) (int, error) {
	if len(cmd.Args) != 1 {
		return 0, badCommand(cmd.Name + " takes a message number")
	}
	return s.message(cmd.Args[0])
}

func (s *session) stat() (count int, size int64) {
	for i, m := range s.msgs {
		if !s.deleted[i] {
			count++
			size += m.Size
		}
	}
	return count, size
}

// maildropReply is the +OK of a login and of RSET (RFC 1939 §4, §5): the
// n messages not deleted, of size octets.
func maildropReply(n int, size int64) string {
	return fmt.Sprintf("maildrop has %d messages (%d octets)", n, size)
}

func (s *session) cmdSTAT(pop3.Command) error {
	n, size := s.stat()
	s.w.OK(fmt.Sprintf("%d %d", n, size))
	return nil
}

func (s *session) cmdLIST(cmd pop3.Command) error {
	return s.listing(cmd, "LIST", func(i int) string { return strconv.FormatInt(s.msgs[i].Size, 10) })
}

func (s *session) cmdUIDL(cmd pop3.Command) error {
	return s.listing(cmd, "UIDL", func(i int) string { return s.msgs[i].UID })
}

// listing answers LIST and UIDL: one message, or all that are not deleted.
func (s *session) listing(cmd pop3.Command, name string, value func(int) string) error {
	switch len(cmd.Args) {
	case 1:
		i, err := s.message(cmd.Args[0])
		if err != nil {
			return err
		}
		s.w.OK(fmt.Sprintf("%d %s", i+1, value(i)))
	case 0:
		n, size := s.stat()
		if name == "LIST" {
			s.w.OK(fmt.Sprintf("%d messages (%d octets)", n, size))
		} else {
			s.w.OK("unique-id listing follows")
		}
		var b []byte
		for i := range s.msgs {
			if s.deleted[i] {
				continue
			}
			b = strconv.AppendInt(b[:0], int64(i+1), 10)
			b = append(b, ' ')
			b = append(b, value(i)...)
			s.w.Line(string(b))
		}
		s.w.Line(".")
	default:
		return badCommand(name + " takes at most one argument")
	}
	return nil
}

func (s *session) cmdRETR(cmd pop3.Command) error {
	i, err := s.messageArg(cmd)
	if err != nil {
		return err
	}
	if err := s.send(i, -1, fmt.Sprintf("%d octets", s.msgs[i].Size)); err != nil {
		return err
	}
	s.retrs++
	s.retrieved[i] |= retrievedWhole
	return nil
}

func (s *session) cmdTOP(cmd pop3.Command) error {
	if len(cmd.Args) != 2 {
		return badCommand("TOP takes a message number and a line count")
	}
	lines, err := strconv.ParseUint(cmd.Args[1], 10, 31)
	if err != nil {
		return errReply("", "invalid line count")
	}
	i, err := s.message(cmd.Args[0])
	if err != nil {
		return err
	}
	if err := s.send(i, int(lines), "top of message follows"); err != nil {
		return err
	}
	s.retrieved[i] |= retrievedTop
	return nil
}

// send streams message i as a multi-line response: whole (lines < 0) or its
// header and first lines of body (TOP). It returns an error unless the
// whole response went out.
func (s *session) send(i, lines int, text string) error {
	r, err := s.md.Open(i)
	if errors.Is(err, store.ErrNotFound) {
		return &sysError{code: pop3.CodeSysPerm, text: fmt.Sprintf("message %d is no longer available", i+1), warn: true,
			msg: "message vanished from storage", attrs: []any{"user", s.mailbox, "msg", i + 1, "uid", s.msgs[i].UID}}
	}
	if err != nil {
		return &sysError{code: pop3.CodeSysTemp, text: "cannot read message now, try again later",
			msg: "opening message", err: err, attrs: []any{"user", s.mailbox, "msg", i + 1}}
	}
	defer r.Close()
	var src io.Reader = r
	if sr, ok := r.(store.StoredReader); ok {
		// WriteBody makes the wire form while it dot-stuffs: one pass, not two.
		src = sr.Stored()
	}
	if lines >= 0 {
		src = newTopReader(src, lines)
	}
	s.w.OK(text)
	var send pop3.BlockSender
	if f, ok := src.(interface{ Fd() uintptr }); ok && lines < 0 && s.msgs[i].Size > pop3.BufferSize {
		// Blocks bigger than the Writer's buffer go straight to the
		// connection: with sendfile when they need no change.
		send = s.fileSender(int(f.Fd()))
	}
	pool := &copyBufs
	if lines < 0 && s.msgs[i].Size >= bigMessage && s.tls == nil {
		pool = &bigCopyBufs
	}
	bufp := pool.Get().(*[]byte)
	n, err := s.w.WriteBodyFunc(src, *bufp, send)
	pool.Put(bufp)
	s.sent += n
	s.srv.cfg.Metrics.Sent(n)
	if err != nil {
		// The +OK is out and part of the message may be too: there is no way
		// to say -ERR now, and ending the response would pass a truncated
		// message as whole. The connection is dropped; nothing is deleted.
		return &sysError{msg: "sending message failed; closing connection", err: err, attrs: []any{"user", s.mailbox, "msg", i + 1}}
	}
	return nil
}

// copyBufs are WriteBody's work buffers: 128 KiB file reads, converted in
// place into writes of up to 256 KiB. Messages of bigMessage octets or more
// sent on plain TCP get 1 MiB buffers from bigCopyBufs: half as many system
// calls again, for less server CPU per octet. Over TLS they do not: TLS
// cuts every write into records of 16 KiB, each written on its own, so a
// bigger buffer saves only file reads, while a session whose client stops
// reading holds its buffer as long as it waits.
var (
	copyBufs    = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}
	bigCopyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}
)

const bigMessage = 1 << 20

func (s *session) cmdDELE(cmd pop3.Command) error {
	i, err := s.messageArg(cmd)
	if err != nil {
		return err
	}
	// Only a mark: the message is removed at QUIT (RFC 1939 §5, §6).
	s.deleted[i] = true
	s.w.OK(fmt.Sprintf("message %d deleted", i+1))
	return nil
}

func (s *session) cmdNOOP(pop3.Command) error {
	s.w.OK("")
	return nil
}

func (s *session) cmdRSET(pop3.Command) error {
	clear(s.deleted)
	s.w.OK(maildropReply(s.stat()))
	return nil
}

// cmdQUIT ends the session (RFC 1939 §4); after login, it first enters the
// UPDATE state (RFC 1939 §6), the only path that removes mail.
func (s *session) cmdQUIT() error {
	if s.md == nil {
		s.srv.uncount(s)
		s.w.OK("Pouch signing off")
		return errEnd
	}
	var del []int
	for i, d := range s.deleted {
		if d {
			del = append(del, i)
		}
	}
	md := s.md
	s.md = nil
	del = s.retain(md, del)
	err := md.Commit(del)
	if cerr := md.Close(); cerr != nil {
		s.log.Error("closing maildrop", "err", cerr, "user", s.mailbox)
	}
	if err != nil {
		s.logout(0, false)
		return ending(&sysError{code: pop3.CodeSysTemp, text: "some deleted messages not removed",
			msg: "commit failed", err: err, attrs: []any{"user", s.mailbox, "deleted", len(del)}})
	}
	left := len(s.msgs) - len(del)
	s.logout(len(del), true)
	s.srv.uncount(s) // the maildrop is free: so is this session's place
	if left == 0 {
		s.w.OK("Pouch signing off (maildrop empty)")
	} else {
		s.w.OK(fmt.Sprintf("Pouch signing off (%d messages left)", left))
	}
	return errEnd
}
