package migrate

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Dovecot's %-variables (lib/var-expand.c of Dovecot 2.3), as
// pop3_uidl_format and mail_location use them:
//
//	%[-][0][WIDTH][.[0][-]WIDTH][MODIFIERS](KEY|{LONG_KEY})
//
// With a ".", the number before it is an offset (negative: from the end)
// and the one after it the width. A width without "0" cuts the value to
// that many octets (a negative one drops that many from its end); with
// "0" it pads with zeros on the left and cuts nothing. Modifiers apply in
// order before the offset and width: L lower case, U upper case, X the
// decimal number in lower-case hex (0 if not a number), R reversed, M the
// MD5 in hex, T trailing white space removed. "%%" is "%". Dovecot's
// other modifiers (E, H, N, D) and its %{...} functions are refused.

// varFormat is a parsed string with %-variables.
type varFormat []varPart

// varPart is a literal (key 0) or one variable.
type varPart struct {
	lit    string
	key    byte // the short key of the variable
	zero   bool
	width  int
	offset int
	mods   string
}

// plain reports whether the variable is its value as it is.
func (p varPart) plain() bool { return p.width == 0 && p.offset == 0 && p.mods == "" }

// parseVars parses s with the variables of keys (short key → long name).
func parseVars(s string, keys map[byte]string) (varFormat, error) {
	var f varFormat
	var lit strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			lit.WriteByte(s[i])
			continue
		}
		i++
		p := varPart{}
		sign := 1
		if i < len(s) && s[i] == '-' {
			sign = -1
			i++
		}
		if i < len(s) && s[i] == '0' {
			p.zero = true
			i++
		}
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			p.width = p.width*10 + int(s[i]-'0')
			i++
		}
		if i < len(s) && s[i] == '.' {
			p.offset = sign * p.width
			sign, p.width, p.zero = 1, 0, false
			i++
			if i < len(s) && s[i] == '0' {
				p.zero = true
				i++
			}
			if i < len(s) && s[i] == '-' {
				sign = -1
				i++
			}
			for i < len(s) && s[i] >= '0' && s[i] <= '9' {
				p.width = p.width*10 + int(s[i]-'0')
				i++
			}
			p.width *= sign
		}
		for i < len(s) && strings.IndexByte("LUEXRHNMDT", s[i]) >= 0 && len(p.mods) < 10 {
			if strings.IndexByte("EHND", s[i]) >= 0 {
				return nil, fmt.Errorf("the modifier %%%c is not supported", s[i])
			}
			p.mods += string(s[i])
			i++
		}
		if i >= len(s) {
			break // Dovecot drops a "%" at the end
		}
		switch c := s[i]; {
		case c == '%' && p.plain() && !p.zero:
			lit.WriteByte('%')
			continue
		case c == '{':
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return nil, fmt.Errorf("%q has a %%{ without }", s)
			}
			name := s[i+1 : i+end]
			i += end
			found := false
			for k, long := range keys {
				if long == name {
					p.key, found = k, true
				}
			}
			if !found {
				return nil, fmt.Errorf("unknown variable %%{%s}", name)
			}
		default:
			if _, ok := keys[c]; !ok {
				return nil, fmt.Errorf("unknown variable %%%c", c)
			}
			p.key = c
		}
		if lit.Len() > 0 {
			f = append(f, varPart{lit: lit.String()})
			lit.Reset()
		}
		f = append(f, p)
	}
	if lit.Len() > 0 {
		f = append(f, varPart{lit: lit.String()})
	}
	return f, nil
}

// uses reports whether f has the variable key.
func (f varFormat) uses(key byte) bool {
	for _, p := range f {
		if p.key == key {
			return true
		}
	}
	return false
}

// expand returns f with the values of the variables.
func (f varFormat) expand(vals map[byte]string) string {
	var b strings.Builder
	for _, p := range f {
		if p.key == 0 {
			b.WriteString(p.lit)
			continue
		}
		b.WriteString(p.value(vals[p.key]))
	}
	return b.String()
}

// value applies the part's modifiers, offset and width to v.
func (p varPart) value(v string) string {
	for i := 0; i < len(p.mods); i++ {
		switch p.mods[i] {
		case 'L':
			v = asciiCase(v, 'A', 'Z', 'a'-'A')
		case 'U':
			v = asciiCase(v, 'a', 'z', 'A'-'a')
		case 'X':
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil || v == "" || v[0] == '+' {
				n = 0
			}
			v = strconv.FormatUint(n, 16)
		case 'R':
			r := []byte(v)
			for a, z := 0, len(r)-1; a < z; a, z = a+1, z-1 {
				r[a], r[z] = r[z], r[a]
			}
			v = string(r)
		case 'M':
			sum := md5.Sum([]byte(v))
			v = hex.EncodeToString(sum[:])
		case 'T':
			v = strings.TrimRight(v, " \t\n\v\f\r")
		}
	}
	if p.offset < 0 {
		if from := -p.offset; len(v) > from {
			v = v[len(v)-from:]
		}
	} else if p.offset > 0 {
		v = v[min(p.offset, len(v)):]
	}
	switch w := p.width; {
	case w == 0:
	case !p.zero:
		if w < 0 {
			w = len(v) + w // Dovecot keeps it all when that is negative too
		}
		if w >= 0 && w < len(v) {
			v = v[:w]
		}
	case len(v) < w:
		v = strings.Repeat("0", w-len(v)) + v
	}
	return v
}

// asciiCase adds shift to the octets of s from lo to hi: the ASCII case
// change of Dovecot's t_str_lcase and t_str_ucase, which leave other
// octets alone.
func asciiCase(s string, lo, hi byte, shift int) string {
	b := []byte(s)
	for i, c := range b {
		if c >= lo && c <= hi {
			b[i] = byte(int(c) + shift)
		}
	}
	return string(b)
}
