// Package days parses and prints the durations of Pouch's settings, which
// may be given in whole days ("30d") as well as in Go's units ("36h", "10s").
package days

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

const day = 24 * time.Hour

// Parse parses a non-negative duration: "30d", or anything
// time.ParseDuration reads ("36h", "90m", "10s").
func Parse(v string) (time.Duration, bool) {
	if n, ok := strings.CutSuffix(v, "d"); ok {
		d, err := strconv.Atoi(n)
		return time.Duration(d) * day, err == nil && d >= 0 && d <= 100_000
	}
	d, err := time.ParseDuration(v)
	return d, err == nil && d >= 0
}

// Format prints d the way Parse reads it, in days when it is a whole number
// of them.
func Format(d time.Duration) string {
	if d > 0 && d%day == 0 {
		return fmt.Sprintf("%dd", d/day)
	}
	return d.String()
}
