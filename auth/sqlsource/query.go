package sqlsource

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// A placeholder of an operator's query: what it stands for.
type param byte

const (
	paramUser   param = 'u' // the full name, user@domain
	paramLocal  param = 'n' // the local part (the whole name when bare)
	paramDomain param = 'd' // the domain ("" when bare)
)

// query is an operator's query with its placeholders made bound
// parameters: text holds the driver's parameter markers ($1 or ?) where
// the placeholders were, and params says what each marker is bound to.
type query struct {
	source string // as the operator wrote it
	text   string
	params []param
}

// placeholders are the forms a placeholder may take: Pouch's %u, %n and
// %d, and Dovecot's long forms.
var placeholders = []struct {
	form string
	p    param
}{
	{"%{user}", paramUser},
	{"%{username}", paramLocal},
	{"%{domain}", paramDomain},
	{"%u", paramUser},
	{"%n", paramLocal},
	{"%d", paramDomain},
}

// parseQuery turns the placeholders of q into bound parameters, in the
// marker style of the driver (dollar: $1, $2, ... as PostgreSQL's; else
// ?). Placeholders are read outside string literals, quoted identifiers
// and comments, where "%%" stands for "%"; a string literal that is
// nothing but a placeholder ('%u', as Dovecot's queries write it) is that
// parameter too. A placeholder inside a longer literal, such as
// '%n@example.org', is refused, since a bound value cannot be part of a
// literal: write CONCAT(%n, '@example.org') or compare %d instead. The
// value is never spliced into the text.
func parseQuery(q string, dollar bool) (query, error) {
	out := query{source: q}
	var b strings.Builder
	marker := func(p param) {
		out.params = append(out.params, p)
		if dollar {
			b.WriteString("$" + strconv.Itoa(len(out.params)))
		} else {
			b.WriteByte('?')
		}
	}
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == '\'':
			end, err := literalEnd(q, i, !dollar)
			if err != nil {
				return query{}, err
			}
			lit := q[i+1 : end-1]
			if p, ok := wholePlaceholder(lit); ok {
				marker(p)
			} else {
				text, err := literal(lit)
				if err != nil {
					return query{}, err
				}
				b.WriteString("'" + text + "'")
			}
			i = end
		case c == '"' || c == '`':
			end := strings.IndexByte(q[i+1:], c)
			if end < 0 {
				return query{}, fmt.Errorf("unterminated quoted name starting at %q", excerpt(q[i:]))
			}
			b.WriteString(q[i : i+end+2])
			i += end + 2
		case strings.HasPrefix(q[i:], "--") || c == '#' && !dollar:
			end := strings.IndexByte(q[i:], '\n')
			if end < 0 {
				end = len(q) - i
			}
			b.WriteString(q[i : i+end])
			i += end
		case strings.HasPrefix(q[i:], "/*"):
			end := strings.Index(q[i+2:], "*/")
			if end < 0 {
				return query{}, errors.New("unterminated /* comment")
			}
			b.WriteString(q[i : i+end+4])
			i += end + 4
		case c == '%':
			if strings.HasPrefix(q[i:], "%%") {
				b.WriteByte('%')
				i += 2
				continue
			}
			p, n, ok := placeholderAt(q[i:])
			if !ok {
				return query{}, fmt.Errorf("unknown placeholder at %q (use %%u for user@domain, %%n for the user, %%d for the domain, %%%% for %%)", excerpt(q[i:]))
			}
			marker(p)
			i += n
		case c == '?' && !dollar || c == '$' && dollar && i+1 < len(q) && q[i+1] >= '0' && q[i+1] <= '9':
			return query{}, fmt.Errorf("the query has a parameter marker of its own at %q: use %%u, %%n and %%d", excerpt(q[i:]))
		default:
			b.WriteByte(c)
			i++
		}
	}
	out.text = b.String()
	return out, nil
}

// literalEnd returns the index just past the string literal that starts at
// q[start], where two quotes in a row are a quote inside it, and, with
// backslash (MySQL), so is a backslash and a quote.
func literalEnd(q string, start int, backslash bool) (int, error) {
	for i := start + 1; i < len(q); i++ {
		switch {
		case backslash && q[i] == '\\':
			i++
		case q[i] == '\'' && i+1 < len(q) && q[i+1] == '\'':
			i++
		case q[i] == '\'':
			return i + 1, nil
		}
	}
	return 0, fmt.Errorf("unterminated string literal starting at %q", excerpt(q[start:]))
}

// placeholderAt reads the placeholder at the start of s.
func placeholderAt(s string) (param, int, bool) {
	for _, f := range placeholders {
		if strings.HasPrefix(s, f.form) {
			return f.p, len(f.form), true
		}
	}
	return 0, 0, false
}

func wholePlaceholder(lit string) (param, bool) {
	for _, f := range placeholders {
		if lit == f.form {
			return f.p, true
		}
	}
	return 0, false
}

// literal returns the text of a string literal (between its quotes) with
// "%%" made "%"; a placeholder in it is an error.
func literal(lit string) (string, error) {
	if !strings.Contains(lit, "%") {
		return lit, nil
	}
	var b strings.Builder
	for i := 0; i < len(lit); i++ {
		if lit[i] != '%' {
			b.WriteByte(lit[i])
			continue
		}
		if strings.HasPrefix(lit[i:], "%%") {
			b.WriteByte('%')
			i++
			continue
		}
		if _, n, ok := placeholderAt(lit[i:]); ok {
			return "", fmt.Errorf("%s inside the string literal '%s': a parameter cannot be part of a literal; "+
				"write it outside quotes (as in CONCAT(%%n, '@example.org')), and %%%% for a %% of the literal", lit[i:i+n], lit)
		}
		b.WriteByte('%')
	}
	return b.String(), nil
}

func excerpt(s string) string {
	if len(s) > 20 {
		return s[:20] + "..."
	}
	return s
}

// args returns the values to bind for name.
func (q query) args(name string) []any {
	local, domain := name, ""
	if i := strings.LastIndexByte(name, '@'); i >= 0 {
		local, domain = name[:i], name[i+1:]
	}
	args := make([]any, len(q.params))
	for i, p := range q.params {
		switch p {
		case paramUser:
			args[i] = name
		case paramLocal:
			args[i] = local
		case paramDomain:
			args[i] = domain
		}
	}
	return args
}
