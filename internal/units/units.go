// Package units parses and prints the sizes of Pouch's settings: octets
// written as a whole number with an optional binary unit ("500M", "2GiB").
package units

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize reads a size in octets: a whole number, optionally followed by K,
// M, G or T (powers of 1024, any case, with or without a final B or iB), such
// as 52428800, 500M, 2G or 10KiB.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	u := strings.ToUpper(t)
	u = strings.TrimSuffix(u, "IB")
	u = strings.TrimSuffix(u, "B")
	shift := 0
	if u != "" {
		if i := strings.IndexByte("KMGT", u[len(u)-1]); i >= 0 {
			shift = 10 * (i + 1)
			u = u[:len(u)-1]
		}
	}
	n, err := strconv.ParseInt(u, 10, 64)
	if err != nil || n < 0 || u == "" || u[0] == '+' || u[0] == '-' {
		return 0, fmt.Errorf("%q is not a size (say 52428800, 500M or 2G)", s)
	}
	if n > (1<<63-1)>>shift {
		return 0, fmt.Errorf("%q is too large", s)
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
