// Package random makes the random strings Pouch hands out or logs: the
// prefixes of session ids, APOP timestamps (RFC 1939 §7), stand-in secrets.
package random

import (
	"crypto/rand"
	"encoding/hex"
)

// Hex returns n random octets from crypto/rand in hexadecimal (2n digits).
func Hex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails: crypto/rand crashes the program instead
	return hex.EncodeToString(b)
}
