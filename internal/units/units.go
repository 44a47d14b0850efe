// Package units reads and writes the sizes and durations of Pouch's
// settings: on the command line, in configuration files and in the users
// file alike, so that a value written one place is read the same way in all.
//
// A size is a whole number of octets, optionally followed by a unit: K, M, G
// or T, each 1024 times the one before (binary units, as Dovecot's quota
// settings and fetchmail read them), in either case, with or without a
// final B or iB, and with or without a space before it: 52428800, 500M,
// 500 MB, 2GiB and 1t are all sizes. There are no decimal units: a kilobyte
// of 1000 octets is written 1000.
//
// A duration is what Go's time.ParseDuration reads (90s, 15m, 36h, 1h30m),
// optionally preceded by a whole number of days: 30d, 1d12h. It is never
// negative.
package units

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// sizeUnits are the units of a size, upper-cased, by their power of 1024.
var sizeUnits = map[string]uint{
	"": 0, "B": 0,
	"K": 1, "KB": 1, "KIB": 1,
	"M": 2, "MB": 2, "MIB": 2,
	"G": 3, "GB": 3, "GIB": 3,
	"T": 4, "TB": 4, "TIB": 4,
}

// ParseSize reads a size in octets (see the package comment).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && t[i] >= '0' && t[i] <= '9' {
		i++
	}
	power, ok := sizeUnits[strings.ToUpper(strings.TrimSpace(t[i:]))]
	if i == 0 || !ok {
		return 0, fmt.Errorf("%q is not a size (say 52428800, 500M or 2G)", s)
	}
	n, err := strconv.ParseInt(t[:i], 10, 64)
	shift := 10 * power
	if err != nil || n > math.MaxInt64>>shift {
		return 0, &RangeError{fmt.Sprintf("%q is too large: at most %dT", s, math.MaxInt64>>40)}
	}
	return n << shift, nil
}

// FormatSize writes a size the way ParseSize reads it, in the largest unit
// that divides it.
func FormatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		shift  int
	}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// Day is the unit d of a duration.
const Day = 24 * time.Hour

// RangeError is the error for a size or duration written as one, but too
// large for Pouch to hold.
type RangeError struct{ msg string }

func (e *RangeError) Error() string { return e.msg }

// tooLong says that s is longer than any duration: time.Duration holds
// about 292 years.
func tooLong(s string) error {
	return &RangeError{fmt.Sprintf("%q is too long: at most %dd (about 292 years)", s, int64(math.MaxInt64/Day))}
}

// durationSyntax is what time.ParseDuration reads, whatever the value: a
// text of this form that it refuses is too long for a time.Duration.
var durationSyntax = regexp.MustCompile(`^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+$`)

// ParseDuration reads a duration (see the package comment).
func ParseDuration(s string) (time.Duration, error) {
	var days time.Duration
	rest := s
	if i := strings.IndexByte(s, 'd'); i > 0 && allDigits(s[:i]) {
		// No unit of time.ParseDuration has a d: this one is days.
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil || n > int64(math.MaxInt64/Day) {
			return 0, tooLong(s)
		}
		days, rest = time.Duration(n)*Day, s[i+1:]
		if rest == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(rest)
	switch {
	case err != nil && durationSyntax.MatchString(rest) && !strings.HasPrefix(rest, "-"):
		return 0, tooLong(s) // the only reason time.ParseDuration has left
	case err != nil && durationSyntax.MatchString(rest):
		return 0, fmt.Errorf("%q is negative: give a duration of 0 or more", s)
	case err != nil:
		return 0, fmt.Errorf("%q is not a duration (like 90s, 15m, 36h or 30d)", s)
	case d < 0:
		return 0, fmt.Errorf("%q is negative: give a duration of 0 or more", s)
	case d > math.MaxInt64-days:
		return 0, tooLong(s)
	}
	return days + d, nil
}

// FormatDuration writes a duration the way ParseDuration reads it: in days
// when it is a whole number of them, as time.Duration's String otherwise.
func FormatDuration(d time.Duration) string {
	if d > 0 && d%Day == 0 {
		return strconv.FormatInt(int64(d/Day), 10) + "d"
	}
	return d.String()
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
