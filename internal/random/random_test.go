package random

import (
	"regexp"
	"testing"
)

func TestHex(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		h := Hex(8)
		if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(h) || seen[h] {
			t.Fatalf("%q (seen before: %v)", h, seen[h])
		}
		seen[h] = true
	}
	if Hex(0) != "" {
		t.Fatal("Hex(0) is not empty")
	}
}
