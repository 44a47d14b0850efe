package pop3

import (
	"fmt"
	"io"
	"strings"
)

// maxArg is the longest argument allowed by RFC 1939 §3.
const maxArg = 40

var errKeyword = fmt.Errorf("%w: command keyword must be 3 or 4 letters or digits", ErrProtocol)

// Command is one client command line (RFC 1939 §3, RFC 2449 §3).
type Command struct {
	Name string   // upper-cased keyword, e.g. "RETR"
	Args []string // arguments split on runs of spaces, none empty
	Rest string   // everything after the keyword and one space, unsplit
}

// ParseCommand parses a command line without its terminator. It fails only
// for an empty line or a keyword that is not 3 or 4 ASCII letters or digits
// (RFC 6856 defines UTF8); keywords
// are case-insensitive (RFC 1939 §3). Argument lengths are checked by
// CheckArgs, since PASS and AUTH take Rest under other length rules.
func ParseCommand(line []byte) (Command, error) {
	s := string(line)
	name, rest, _ := strings.Cut(s, " ")
	if len(name) < 3 || len(name) > 4 {
		return Command{}, errKeyword
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; (c|0x20 < 'a' || c|0x20 > 'z') && (c < '0' || c > '9') {
			return Command{}, errKeyword
		}
	}
	return Command{
		Name: strings.ToUpper(name),
		Args: splitArgs(rest),
		Rest: rest,
	}, nil
}

// splitArgs splits s on runs of spaces, dropping empty strings; it returns
// nil if s has no argument.
func splitArgs(s string) []string {
	var args []string
	for s != "" {
		var arg string
		arg, s, _ = strings.Cut(s, " ")
		if arg != "" {
			args = append(args, arg)
		}
	}
	return args
}

// CheckArgs returns an error if an argument is longer than 40 octets
// (RFC 1939 §3).
func (c Command) CheckArgs() error {
	for _, a := range c.Args {
		if len(a) > maxArg {
			return fmt.Errorf("%w: argument longer than %d octets", ErrProtocol, maxArg)
		}
	}
	return nil
}

// CheckArgsName is CheckArgs for a command whose argument i is a user name
// (USER, APOP): that one may be up to maxName octets, so that every name a
// server has can log in (a server may accept more than the 40 octets of
// RFC 1939 §3; the 255-octet line of RFC 2449 §4 still bounds it), and
// every other argument 40.
func (c Command) CheckArgsName(i, maxName int) error {
	for j, a := range c.Args {
		limit := maxArg
		if j == i {
			limit = maxName
		}
		if len(a) > limit {
			return fmt.Errorf("%w: argument longer than %d octets", ErrProtocol, limit)
		}
	}
	return nil
}

// ReadCommandLine reads a command line as ReadLine does, of at most max
// octets, or of at most authMax octets if the line starts with "AUTH " in
// any case: RFC 5034 §4 lets AUTH's initial response make the line longer
// than the 255 octets of RFC 2449 §4. Only the first five octets are looked
// at before the limit is chosen, and it never waits for an octet past the
// end of the line.
func (r *Reader) ReadCommandLine(max, authMax int) ([]byte, error) {
	if authMax > max {
		auth, err := r.startsWithAUTH()
		if err != nil {
			return nil, err
		}
		if auth {
			max = authMax
		}
	}
	return r.ReadLine(max)
}

// startsWithAUTH reports whether the next line starts with "AUTH ", in any
// case. It reads another octet only while those buffered are the start of
// "AUTH " (so not a whole line). A read error is returned as ReadLine
// would return it, with the partial line consumed.
func (r *Reader) startsWithAUTH() (bool, error) {
	const prefix = "auth "
	for n := 1; n <= len(prefix); n++ {
		b, err := r.br.Peek(n)
		if err != nil {
			_, _ = r.br.Discard(r.br.Buffered())
			if err == io.EOF && n > 1 {
				err = io.ErrUnexpectedEOF
			}
			return false, err
		}
		c := b[n-1]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[n-1] {
			return false, nil
		}
	}
	return true, nil
}

// ParseNumber parses a message number (RFC 1939 §5): decimal digits only,
// no sign, from 1 to 2^31-1.
func ParseNumber(s string) (int, bool) {
	if s == "" {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
		if n > 1<<31-1 {
			return 0, false
		}
	}
	return n, n > 0
}
