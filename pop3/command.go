package pop3

import (
	"fmt"
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
