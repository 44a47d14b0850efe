package auth

import (
	"bufio"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Password policy for new passwords (pouch user add and passwd).
const (
	// MinPasswordLength is the least number of characters.
	MinPasswordLength = 12
	// MinPasswordBits is the least estimated entropy, in bits.
	MinPasswordBits = 50
)

// common are passwords that guessing lists try first; they are refused
// whatever their length.
var common = map[string]bool{}

func init() {
	for _, p := range strings.Fields(`123456789012 1234567890123 password1234 passwordpassword qwertyuiopas
		qwertyuiop123 iloveyou1234 administrator letmein12345 welcome12345 changeme1234 trustno1trustno1
		aaaaaaaaaaaa 111111111111 000000000000 abcdefghijkl abc123abc123 football1234 baseball1234
		superman1234 princess1234 sunshine1234 monkey123456 dragon123456 password123! p@ssw0rd1234
		Password1234 Password123! Passw0rd1234 Qwerty123456 Welcome12345! correcthorsebatterystaple`) {
		common[strings.ToLower(p)] = true
	}
}

// EstimateBits estimates a password's entropy: each character counts the
// bits of the smallest alphabet of the kinds of characters used (lower case,
// upper case, digits, ASCII symbols, others), except that a character equal
// or next to the one before it (aaaa, abcd, 4321) counts one bit.
func EstimateBits(password string) float64 {
	var lower, upper, digit, symbol, other bool
	for _, r := range password {
		switch {
		case r >= 'a' && r <= 'z':
			lower = true
		case r >= 'A' && r <= 'Z':
			upper = true
		case r >= '0' && r <= '9':
			digit = true
		case r < utf8.RuneSelf:
			symbol = true
		default:
			other = true
		}
	}
	pool := 0
	for _, c := range []struct {
		used bool
		size int
	}{{lower, 26}, {upper, 26}, {digit, 10}, {symbol, 33}, {other, 100}} {
		if c.used {
			pool += c.size
		}
	}
	if pool == 0 {
		return 0
	}
	per := math.Log2(float64(pool))
	bits := 0.0
	prev := rune(-10)
	for _, r := range password {
		d := r - prev
		if d >= -1 && d <= 1 {
			bits++
		} else {
			bits += per
		}
		prev = r
	}
	return bits
}

// CheckStrength refuses a weak new password with the reason: too short, too
// predictable, a common password, or (when breachedFile is set) listed in a
// file of breached passwords. That file has one entry per line: a password,
// or its SHA-1 in hex (as the "Have I Been Pwned" lists, where ":COUNT" may
// follow); it is read as a stream, so it may be large.
func CheckStrength(password, breachedFile string) error {
	if n := utf8.RuneCountInString(password); n < MinPasswordLength {
		return fmt.Errorf("the password is too short: %d characters, at least %d needed", n, MinPasswordLength)
	}
	if common[strings.ToLower(password)] {
		return fmt.Errorf("the password is one of the most common passwords")
	}
	if bits := EstimateBits(password); bits < MinPasswordBits {
		return fmt.Errorf("the password is too predictable (about %.0f bits; %d needed): use more words or more kinds of characters", bits, MinPasswordBits)
	}
	allSpace := true
	for _, r := range password {
		allSpace = allSpace && unicode.IsSpace(r)
	}
	if allSpace {
		return fmt.Errorf("the password is only white space")
	}
	if breachedFile == "" {
		return nil
	}
	found, err := breached(breachedFile, password)
	if err != nil {
		return err
	}
	if found {
		return fmt.Errorf("the password appears in the list of breached passwords %s", breachedFile)
	}
	return nil
}

func breached(path, password string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("breached passwords list: %w", err)
	}
	defer f.Close()
	sum := sha1.Sum([]byte(password))
	hexSum := hex.EncodeToString(sum[:])
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if line == password {
			return true, nil
		}
		entry, _, _ := strings.Cut(line, ":")
		if len(entry) == 40 && strings.EqualFold(entry, hexSum) {
			return true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("breached passwords list: %w", err)
	}
	return false, nil
}
