package auth

import (
	"bufio"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/trustelem/zxcvbn"
	"github.com/trustelem/zxcvbn/frequency"
	"github.com/trustelem/zxcvbn/match"
)

// Password policy for new passwords (pouch user add and passwd).
const (
	// MinPasswordLength is the least number of characters.
	MinPasswordLength = 12
	// MinPasswordBits is the least strength, in bits: the base-2 logarithm
	// of the guesses zxcvbn estimates a guesser needs (EstimateBits). 30
	// bits, a billion guesses (between zxcvbn's scores 3 and 4), refuses
	// what guessers try first (Summer2024!! is 28), and lets through random
	// passwords of 12 letters and digits (39.9 bits) but for about 6 in a
	// million, which spell a common name or word (DAvIDywrZDXw, 28.2): see
	// bench/strength.
	MinPasswordBits = 30
)

// maxEstimated is how many characters are analysed; the rest of a longer
// password adds nothing. zxcvbn's matching grows with the square of the
// length, and its authors advise this limit.
const maxEstimated = 100

// EstimateBits estimates how many bits of guessing a password resists, with
// zxcvbn (github.com/trustelem/zxcvbn, a port of Dropbox's): the password is
// split, in the way that needs the fewest guesses, into the pieces a
// guesser tries first, from its dictionaries of common passwords, words and
// names (tens of thousands each, in either case, with leetspeak or
// reversed), userInputs such as the user name and its parts, runs of
// neighbouring keys, sequences, repeated parts, years and dates; every
// other character counts as one of ten.
func EstimateBits(password string, userInputs ...string) float64 {
	bits, _ := estimate(password, userInputs)
	return bits
}

// estimate returns the bits of password and the pieces it is made of, in
// order.
func estimate(password string, userInputs []string) (float64, []*match.Match) {
	if !utf8.ValidString(password) {
		password = strings.ToValidUTF8(password, "\uFFFD")
	}
	if runes := []rune(password); len(runes) > maxEstimated {
		password = string(runes[:maxEstimated])
	}
	r := zxcvbn.PasswordStrength(password, inputParts(userInputs))
	if r.Guesses < 1 {
		return 0, r.Sequence
	}
	return math.Log2(r.Guesses), r.Sequence
}

// inputParts returns the user's words and their parts (alice.smith@example:
// also alice, smith and example), lower case, of three letters or more.
func inputParts(inputs []string) []string {
	var out []string
	add := func(s string) {
		if utf8.RuneCountInString(s) >= 3 && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, in := range inputs {
		in = strings.ToLower(in)
		add(in)
		for _, p := range strings.FieldsFunc(in, func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) }) {
			add(p)
		}
	}
	return out
}

// CheckStrength refuses a weak new password with the reason: too short, too
// predictable (EstimateBits, with userInputs such as the user name; the
// reason names the pieces found), one of the most common passwords (zxcvbn's
// list of them, in any case), or (when breachedFile is set) listed in a
// file of breached passwords. That file has one entry per line: a password,
// or its SHA-1 in hex (as the "Have I Been Pwned" lists, where ":COUNT" may
// follow); it is read as a stream, so it may be large.
func CheckStrength(password, breachedFile string, userInputs ...string) error {
	if n := utf8.RuneCountInString(password); n < MinPasswordLength {
		return fmt.Errorf("the password is too short: %d characters, at least %d needed", n, MinPasswordLength)
	}
	if slices.Contains(frequency.FrequencyLists["passwords"], strings.ToLower(password)) {
		return fmt.Errorf("the password is one of the most common passwords")
	}
	if strings.TrimFunc(password, unicode.IsSpace) == "" {
		return fmt.Errorf("the password is only white space")
	}
	if bits, pieces := estimate(password, userInputs); bits < MinPasswordBits {
		built := ""
		if d := describePieces(pieces, inputParts(userInputs)); d != "" {
			built = " it is built from " + d + ";"
		}
		// Rounded down: "about 30 bits; 30 needed" would not say why.
		return fmt.Errorf("the password is too predictable (about %.0f bits; %d needed):%s use more words or more kinds of characters", math.Floor(bits), MinPasswordBits, built)
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

// pieceKind names what a piece of a password is, as CheckStrength says it,
// or "" for random characters; inputs are the user's words (inputParts).
func pieceKind(m *match.Match, inputs []string) string {
	switch m.Pattern {
	case "dictionary":
		switch m.DictionaryName {
		case "user_inputs":
			return "the user name"
		case "passwords":
			return "a common password"
		case "male_names", "female_names", "surnames":
			return "a common name"
		}
		return "a common word"
	case "spatial":
		return "a run of neighbouring keys"
	case "sequence":
		return "a sequence"
	case "regex":
		return "a year" // zxcvbn's one pattern: recent_year
	case "date":
		return "a date"
	case "repeat":
		switch {
		case utf8.RuneCountInString(m.BaseToken) == 1:
			return "a repeated character"
		case slices.Contains(inputs, strings.ToLower(m.BaseToken)):
			// zxcvbn analyses the part repeated without the user's words.
			return "the user name repeated"
		}
		if len(m.BaseMatches) == 1 {
			switch k := pieceKind(m.BaseMatches[0], inputs); {
			case strings.HasPrefix(k, "a "):
				return "a repeated " + k[2:] // a repeated common word
			case k != "":
				return k + " repeated" // the user name repeated
			}
		}
		return "a repeated part"
	}
	return ""
}

// describePieces names the kinds of pieces, each once: "a common word and
// a year", "common words"; "" when all are random characters.
func describePieces(pieces []*match.Match, inputs []string) string {
	var kinds []string
	count := map[string]int{}
	for _, p := range pieces {
		k := pieceKind(p, inputs)
		if k == "" {
			continue
		}
		if count[k]++; count[k] == 1 {
			kinds = append(kinds, k)
		}
	}
	for i, k := range kinds {
		if count[k] > 1 {
			kinds[i] = plural(k)
		}
	}
	switch len(kinds) {
	case 0:
		return ""
	case 1:
		return kinds[0]
	}
	return strings.Join(kinds[:len(kinds)-1], ", ") + " and " + kinds[len(kinds)-1]
}

// plural turns "a common word" into "common words", "a run of neighbouring
// keys" into "runs of neighbouring keys".
func plural(kind string) string {
	k, ok := strings.CutPrefix(kind, "a ")
	if !ok {
		return kind // the user name
	}
	first, rest, _ := strings.Cut(k, " of ")
	if rest != "" {
		return first + "s of " + rest
	}
	return k + "s"
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
