// Package pop3 is the POP3 wire codec shared by the server and the client:
// bounded line reading, replies, response codes, and streaming dot-stuffing
// in both directions (RFC 1939 §3, RFC 2449).
package pop3

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrLineTooLong is returned for a line longer than the caller's limit;
	// the whole line has been consumed.
	ErrLineTooLong = errors.New("pop3: line too long")

	// ErrBadLine is returned for a line containing a NUL or a CR that is not
	// immediately before the final LF; the whole line has been consumed. The
	// Writer returns it, writing nothing, for text that would break a line.
	ErrBadLine = errors.New("pop3: bad line")

	// ErrProtocol is returned for a reply that is neither +OK, -ERR nor a "+ "
	// continuation, for a malformed command, and for bad multi-line data.
	ErrProtocol = errors.New("pop3: protocol error")

	errClosed = errors.New("pop3: write to closed DotWriter")
)

// Code is an extended response code (RFC 2449 §8): the bracketed text at the
// start of a reply's text. Codes are hierarchical, with "/" separating levels
// of detail, and case-insensitive; ReadReply returns them upper-cased.
type Code string

// Response codes registered for POP3.
const (
	CodeInUse      Code = "IN-USE"      // RFC 2449 §8.1.2: the maildrop is locked
	CodeLoginDelay Code = "LOGIN-DELAY" // RFC 2449 §8.1.1: logged in too recently
	CodeSysTemp    Code = "SYS/TEMP"    // RFC 3206 §4: temporary system problem
	CodeSysPerm    Code = "SYS/PERM"    // RFC 3206 §4: permanent system problem
	CodeAuth       Code = "AUTH"        // RFC 3206 §5: credentials are wrong
	CodeUTF8       Code = "UTF8"        // RFC 6856 §5: the message needs UTF-8 mode
)

// Reply is one status line of a POP3 server (RFC 1939 §3, RFC 2449 §3) or a
// SASL continuation (RFC 5034 §4).
type Reply struct {
	OK           bool   // +OK
	Continuation bool   // "+ " continuation (then OK is false)
	Code         Code   // "" if none
	Text         string // text after the code, leading space removed
}

// Err returns nil for +OK and for a continuation, and an *Error for -ERR.
func (r Reply) Err() error {
	if r.OK || r.Continuation {
		return nil
	}
	return &Error{Code: r.Code, Text: r.Text}
}

// Error is a -ERR reply as a Go error.
type Error struct {
	Code Code
	Text string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("pop3: -ERR")
	if e.Code != "" {
		b.WriteString(" [")
		b.WriteString(string(e.Code))
		b.WriteString("]")
	}
	if e.Text != "" {
		b.WriteString(" ")
		b.WriteString(e.Text)
	}
	return b.String()
}

// parseReply parses a status line without its terminator.
func parseReply(line []byte) (Reply, error) {
	var r Reply
	var rest []byte
	switch {
	case hasStatus(line, "+OK"):
		r.OK = true
		rest = line[3:]
	case hasStatus(line, "-ERR"):
		rest = line[4:]
	case hasStatus(line, "+"):
		// RFC 5034 §4: "+" SP base64; a bare "+" is accepted as an empty
		// challenge. A continuation carries no response code.
		r.Continuation = true
		if len(line) > 1 {
			r.Text = string(line[2:])
		}
		return r, nil
	default:
		return Reply{}, fmt.Errorf("%w: unexpected reply %q", ErrProtocol, truncate(line, 64))
	}
	if len(rest) > 0 {
		rest = rest[1:] // the SP after the status
	}
	r.Code, rest = parseCode(rest)
	r.Text = string(rest)
	return r, nil
}

// hasStatus reports whether line is status alone or status followed by SP.
func hasStatus(line []byte, status string) bool {
	return len(line) >= len(status) && string(line[:len(status)]) == status &&
		(len(line) == len(status) || line[len(status)] == ' ')
}

// parseCode splits a leading response code (RFC 2449 §3 resp-code) off text
// and drops one SP after it. Text that does not start with a well-formed
// code is returned unchanged with an empty Code.
func parseCode(text []byte) (Code, []byte) {
	if len(text) == 0 || text[0] != '[' {
		return "", text
	}
	end := -1
	for i := 1; i < len(text); i++ {
		c := text[i]
		if c == ']' {
			end = i
			break
		}
		// rchar = %x21-2E / %x30-5C / %x5E-7F; levels are 1*rchar joined by "/".
		if c == '/' {
			if text[i-1] == '[' || text[i-1] == '/' {
				return "", text
			}
		} else if c < 0x21 || c > 0x7f {
			return "", text
		}
	}
	if end < 2 || text[end-1] == '/' {
		return "", text
	}
	code := Code(strings.ToUpper(string(text[1:end])))
	rest := text[end+1:]
	if len(rest) > 0 && rest[0] == ' ' {
		rest = rest[1:]
	}
	return code, rest
}

// truncate shortens b for an error message.
func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
