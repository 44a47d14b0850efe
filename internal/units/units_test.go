package units

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "100": 100, "1024": 1024, "52428800": 50 << 20, " 7 ": 7, "25B": 25,
		"10K": 10 << 10, "10kb": 10 << 10, "500kb": 500 << 10, "10KiB": 10 << 10,
		"2M": 2 << 20, "500M": 500 << 20, "25MB": 25 << 20, "3 MiB": 3 << 20,
		"1g": 1 << 30, "2G": 2 << 30, "2GiB": 2 << 30, "3 GB": 3 << 30,
		"1t": 1 << 40, "4TiB": 4 << 40, "8388607T": 8388607 << 40,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "B", "-1", "+5", "1.5G", "5X", "lots", "1BB", "1MBB", "10IB", "1KIBB", "1 K B",
		"9999999999T", "9223372036854775807K", "99999999999G", "8388608T", "9223372036854775808"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		} else if !strings.Contains(err.Error(), in) {
			t.Errorf("ParseSize(%q): error %q does not quote the value", in, err)
		}
	}
	var re *RangeError
	if _, err := ParseSize("8388608T"); !errors.As(err, &re) || !strings.Contains(err.Error(), "is too large: at most 8388607T") {
		t.Errorf("ParseSize(8388608T): %v; want a RangeError saying the most", err)
	}
	if _, err := ParseDuration("99999999h"); !errors.As(err, &re) {
		t.Errorf("ParseDuration(99999999h): %v; want a RangeError", err)
	}
	if _, err := ParseDuration("soon"); errors.As(err, &re) {
		t.Errorf("ParseDuration(soon): %v is a RangeError", err)
	}
	for _, n := range []int64{0, 1, 1023, 1024, 50 << 20, 3 << 30, 1<<40 + 1, 5 << 40, math.MaxInt64} {
		if got, err := ParseSize(FormatSize(n)); err != nil || got != n {
			t.Errorf("ParseSize(FormatSize(%d) = %q) = %d, %v", n, FormatSize(n), got, err)
		}
	}
	if got := FormatSize(50 << 20); got != "50M" {
		t.Errorf("FormatSize(50 MiB) = %q", got)
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"0": 0, "0s": 0, "0d": 0, "10s": 10 * time.Second, "90m": 90 * time.Minute, "36h": 36 * time.Hour,
		"1h30m": 90 * time.Minute, "1.5h": 90 * time.Minute, "250ms": 250 * time.Millisecond,
		"1d": Day, "30d": 30 * Day, "1d12h": 36 * time.Hour, "2d30m": 2*Day + 30*time.Minute, "106751d": 106751 * Day,
	} {
		if got, err := ParseDuration(in); err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, want := range map[string]string{
		"": "is not a duration", "soon": "is not a duration", "900": "is not a duration", "d": "is not a duration",
		"1.5d": "is not a duration", "12h1d": "is not a duration", "1d 12h": "is not a duration", "-1d": "is not a duration",
		"1w": "is not a duration", "-1s": "is negative", "1d-1h": "is negative", "106752d": "is too long",
		"99999999999999999999d": "is too long", "106751d24h": "is too long",
		"99999999h": "is too long: at most 106751d", "2562048h": "is too long", "1d2562047h": "is too long",
		"-99999999h": "is negative", "99999999999999999999ns": "is too long", "1e9h": "is not a duration",
	} {
		if got, err := ParseDuration(in); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), `"`+in+`"`) {
			t.Errorf("ParseDuration(%q) = %v, %v; want an error quoting it, %q", in, got, err, want)
		}
	}
	for _, d := range []time.Duration{0, time.Nanosecond, 90 * time.Second, 36 * time.Hour, Day, 90 * Day, Day + 1} {
		if got, err := ParseDuration(FormatDuration(d)); err != nil || got != d {
			t.Errorf("ParseDuration(FormatDuration(%v) = %q) = %v, %v", d, FormatDuration(d), got, err)
		}
	}
	if got := FormatDuration(30 * Day); got != "30d" {
		t.Errorf("FormatDuration(30 days) = %q", got)
	}
	if got := FormatDuration(15 * time.Minute); got != "15m0s" {
		t.Errorf("FormatDuration(15 minutes) = %q", got)
	}
}

// Whatever is read is written back to the same value, and nothing read is
// negative.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "500M", "2GiB", "3 GB", "1t", "9999999999T", "-1", "1.5G"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("ParseSize(%q) = %d", s, n)
		}
		if back, err := ParseSize(FormatSize(n)); err != nil || back != n {
			t.Fatalf("ParseSize(FormatSize(%d)) = %d, %v", n, back, err)
		}
	})
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"0", "30d", "1d12h", "90m", "1.5h", "-1s", "106752d", "1d-1h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			return
		}
		if d < 0 {
			t.Fatalf("ParseDuration(%q) = %v", s, d)
		}
		if back, err := ParseDuration(FormatDuration(d)); err != nil || back != d {
			t.Fatalf("ParseDuration(FormatDuration(%v)) = %v, %v", d, back, err)
		}
	})
}
