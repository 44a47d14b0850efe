package auth

import (
	"bufio"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
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

// EstimateBits estimates how many bits of guessing a password resists, in
// the manner of zxcvbn: the password is split, in the way that gives the
// fewest bits, into the pieces a guesser tries first, each worth a few bits
// however long it is: a common word (in either case, with leetspeak like
// p4ssw0rd, or reversed, and the separator after it in a passphrase),
// userInputs such as the user name and its parts, a straight run of
// neighbouring keys (qwerty, 1qaz), a sequence (abcd, 9876), a repeated
// part (abcabc), a year or a date. Every other character counts the bits
// of the smallest alphabet of the kinds of characters used (lower case,
// upper case, digits, ASCII symbols, others).
func EstimateBits(password string, userInputs ...string) float64 {
	bits, _ := estimate(password, userInputs)
	return bits
}

// maxEstimated is how many characters are analysed; the rest of a longer
// password adds nothing.
const maxEstimated = 128

// piece is one part of a password as the estimate splits it.
type piece struct {
	kind string // what it is, as CheckStrength names it
	bits float64
}

// estimate returns the bits of password and the recognised pieces it is
// made of, in order.
func estimate(password string, userInputs []string) (float64, []piece) {
	runes := []rune(password)
	if len(runes) == 0 {
		return 0, nil
	}
	if len(runes) > maxEstimated {
		runes = runes[:maxEstimated]
	}
	e := estimator{per: charBits(runes), inputs: inputParts(userInputs), memo: map[string]piece{}}
	return e.split(runes)
}

// charBits is the bits of one random character of the alphabet of the
// kinds of characters in runes.
func charBits(runes []rune) float64 {
	var lower, upper, digit, symbol, other bool
	for _, r := range runes {
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
	return math.Log2(float64(pool))
}

type estimator struct {
	per    float64          // bits of a random character
	inputs []string         // the user's words, lower case
	memo   map[string]piece // the repeated parts estimated so far
}

// match is a recognised piece covering runes [i, j).
type match struct {
	i, j int
	piece
}

// joinBits is what each piece after the first costs, for the guesser
// chooses what kind of piece comes next: random characters, a common word,
// the user's words, keys, a sequence, a repeat, a year or a date. Were it
// cheaper, random characters would too often look like many small pieces
// (a year, a doubled character, a three-digit sequence) worth less than
// the characters.
const joinBits = 3

// split finds the cheapest way to make runes of recognised pieces and
// random characters. Each recognised piece, and each run of random
// characters, after the first costs joinBits more: the guesser also tries
// the ways to put pieces together.
func (e *estimator) split(runes []rune) (float64, []piece) {
	n := len(runes)
	byEnd := make([][]match, n+1)
	for _, m := range e.matches(runes) {
		byEnd[m.j] = append(byEnd[m.j], m)
	}
	type step struct {
		bits   float64
		from   int
		m      *match // nil: a random character
		random bool   // the piece ending here is random characters
	}
	best := make([]step, n+1)
	for j := 1; j <= n; j++ {
		// One more random character.
		prev := best[j-1]
		b := prev.bits + e.per
		if j > 1 && !prev.random {
			b += joinBits
		}
		best[j] = step{bits: b, from: j - 1, random: true}
		for k := range byEnd[j] {
			m := &byEnd[j][k]
			b := best[m.i].bits + m.bits
			if m.i > 0 {
				b += joinBits
			}
			if b < best[j].bits {
				best[j] = step{bits: b, from: m.i, m: m}
			}
		}
	}
	var pieces []piece
	for j := n; j > 0; j = best[j].from {
		if m := best[j].m; m != nil {
			pieces = append(pieces, m.piece)
		}
	}
	slices.Reverse(pieces)
	return best[n].bits, pieces
}

// matches lists every recognised piece of runes.
func (e *estimator) matches(runes []rune) []match {
	lower := make([]rune, len(runes))
	for i, r := range runes {
		lower[i] = unicode.ToLower(r)
	}
	var out []match
	out = append(out, e.wordMatches(runes, lower)...)
	out = append(out, keyboardMatches(runes)...)
	out = append(out, sequenceMatches(runes)...)
	out = append(out, dateMatches(runes)...)
	out = append(out, e.repeatMatches(runes, lower)...)
	return out
}

// commonWords are the words that passwords are most often built from, most
// common first.
var commonWords = strings.Fields(`password welcome admin letmein iloveyou
	monkey dragon football master login secret love hello sunshine princess
	shadow qwerty baseball superman batman trustno starwars
	summer winter spring autumn michael jordan jennifer hunter soccer hockey
	charlie thomas robert daniel andrew jessica ashley michelle nicole
	matthew freedom whatever computer internet access flower lovely angel
	cookie cheese chocolate pepper ginger maggie killer mustang harley
	ferrari corvette yankees cowboys eagles lakers liverpool arsenal chelsea
	barcelona google apple samsung microsoft windows linux changeme default
	guest root test user demo temp pass passwd passport monday tuesday
	wednesday thursday friday saturday sunday january february march april
	june july august september october november december london paris
	berlin america canada germany france england spiderman ironman pokemon
	minecraft naruto matrix family forever friends happy lucky money power
	magic orange purple yellow silver golden diamond black white green
	basketball tigger buster ranger pouch mail email server`)

// separators are what passphrases join their words with; separatorBits is
// what one after a word costs.
const separators = " -_.,;:+/&*|~"

var separatorBits = math.Log2(float64(len(separators)))

// leet lists the letters that leetspeak writes with other characters.
var leet = map[rune]string{
	'4': "a", '@': "a", '8': "b", '(': "c", '{': "c", '3': "e", '6': "g",
	'9': "g", '1': "il", '!': "i", '|': "il", '0': "o", '$': "s", '5': "s",
	'7': "t", '+': "t", '2': "z", '%': "x",
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

// wordMatches finds the common words and the user's words, forwards or
// reversed, in any case and with leetspeak.
func (e *estimator) wordMatches(runes, lower []rune) []match {
	var out []match
	try := func(word string, base float64, kind string) {
		w := []rune(word)
		rev := slices.Clone(w)
		slices.Reverse(rev)
		type candidate struct {
			w        []rune
			reversed bool
		}
		cands := []candidate{{w, false}}
		if !slices.Equal(w, rev) {
			cands = append(cands, candidate{rev, true})
		}
		for i := 0; i+len(w) <= len(lower); i++ {
			for _, cand := range cands {
				subs, ok := leetMatch(lower[i:i+len(w)], cand.w)
				if !ok {
					continue
				}
				b := base + caseBits(runes[i:i+len(w)]) + float64(subs)
				if cand.reversed {
					b++
				}
				out = append(out, match{i, i + len(w), piece{kind, b}})
				if end := i + len(w); end < len(runes) && strings.ContainsRune(separators, runes[end]) {
					// Words of a passphrase and what joins them.
					out = append(out, match{i, end + 1, piece{kind, b + separatorBits}})
				}
			}
		}
	}
	for rank, w := range commonWords {
		try(w, math.Log2(float64(rank+2)), "a common word")
	}
	for _, w := range e.inputs {
		try(w, 2, "the user name")
	}
	return out
}

// leetMatch reports whether have spells want, and with how many leetspeak
// substitutions.
func leetMatch(have, want []rune) (subs int, ok bool) {
	for k, c := range have {
		if c == want[k] {
			continue
		}
		if !strings.ContainsRune(leet[c], want[k]) {
			return 0, false
		}
		subs++
	}
	return subs, true
}

// caseBits is what the capitals of a word add: one bit for the usual
// forms (Word, WORD, worD), else the number of ways to place them.
func caseBits(word []rune) float64 {
	upper, lower := 0, 0
	for _, r := range word {
		switch {
		case unicode.IsUpper(r):
			upper++
		case unicode.IsLower(r):
			lower++
		}
	}
	switch {
	case upper == 0:
		return 0
	case lower == 0, upper == 1 && (unicode.IsUpper(word[0]) || unicode.IsUpper(word[len(word)-1])):
		return 1
	}
	return placementBits(upper+lower, min(upper, lower))
}

// placementBits is the bits of the ways to place up to most marked
// characters (capitals, shifted keys) among n.
func placementBits(n, most int) float64 {
	ways := 0.0
	for k := 1; k <= most; k++ {
		ways += binomial(n, k)
	}
	return math.Log2(ways)
}

func binomial(n, k int) float64 {
	r := 1.0
	for i := 1; i <= k; i++ {
		r = r * float64(n-k+i) / float64(i)
	}
	return r
}

// key is where a character is on a US QWERTY keyboard: its row, the
// horizontal position of its key, and whether it is typed with shift.
type key struct {
	row     int
	x       float64
	shifted bool
}

// keyboard holds each character's key.
var keyboard = func() map[rune]key {
	rows := []struct {
		plain, shifted string
		x              float64 // where the row's first key begins
	}{
		{"`1234567890-=", "~!@#$%^&*()_+", 0},
		{"qwertyuiop[]\\", "QWERTYUIOP{}|", 1.5},
		{"asdfghjkl;'", "ASDFGHJKL:\"", 1.75},
		{"zxcvbnm,./", "ZXCVBNM<>?", 2.25},
	}
	k := make(map[rune]key)
	for y, row := range rows {
		for i, r := range row.plain {
			k[r] = key{y, row.x + float64(i), false}
		}
		for i, r := range row.shifted {
			k[r] = key{y, row.x + float64(i), true}
		}
	}
	return k
}()

// keyDirection returns the direction from key a to a neighbouring key b:
// left or right on a row, or to the row above or below (the key half a key
// to one side), or false when they are not neighbours.
func keyDirection(a, b rune) (dir [2]int, ok bool) {
	ka, okA := keyboard[a]
	kb, okB := keyboard[b]
	if !okA || !okB {
		return dir, false
	}
	dy, dx := kb.row-ka.row, kb.x-ka.x
	switch {
	case dy == 0 && math.Abs(dx) == 1:
	case (dy == 1 || dy == -1) && math.Abs(dx) < 1:
	default:
		return dir, false
	}
	sign := 0
	if dx > 0 {
		sign = 1
	} else if dx < 0 {
		sign = -1
	}
	return [2]int{dy, sign}, true
}

// Keyboard runs are priced as zxcvbn prices a run without turns: a start
// key among keyboardKeys, a direction among keyboardDegree and a length,
// (length-1)·keys·degree guesses.
const (
	keyboardKeys   = 47  // the keys, shift apart
	keyboardDegree = 4.6 // the average number of neighbours of a key
)

// keyboardMatches finds straight runs of four or more neighbouring keys: a
// row forwards or backwards (qwerty, asdf, 0987, !@#$) or a column going
// one way (1qaz, zaq1). A path that turns is not a run: random characters
// make such paths too often. Shift adds what placing the shifted keys among
// the others costs.
func keyboardMatches(runes []rune) []match {
	var out []match
	for i := 0; i+3 < len(runes); i++ {
		first, ok := keyDirection(runes[i], runes[i+1])
		if !ok {
			continue
		}
		j := i + 2
		for j < len(runes) {
			if d, ok := keyDirection(runes[j-1], runes[j]); !ok || d != first {
				break
			}
			j++
		}
		// runes[i:j] is one straight run; each of its parts of four keys
		// or more is one too.
		for end := i + 4; end <= j; end++ {
			n := end - i
			b := math.Log2(float64(n-1)*keyboardKeys*keyboardDegree) + shiftBits(runes[i:end])
			out = append(out, match{i, end, piece{"a run of neighbouring keys", b}})
		}
	}
	return out
}

// shiftBits is what shift adds to a keyboard run: a bit when every key or
// only the first is shifted, else the number of ways to place the shifted
// keys.
func shiftBits(run []rune) float64 {
	shifted := 0
	for _, r := range run {
		if keyboard[r].shifted {
			shifted++
		}
	}
	plain := len(run) - shifted
	switch {
	case shifted == 0:
		return 0
	case plain == 0, shifted == 1 && keyboard[run[0]].shifted:
		return 1
	}
	return placementBits(len(run), min(shifted, plain))
}

// sequenceMatches finds runs of three or more letters or digits in order,
// up or down (abc, 4321).
func sequenceMatches(runes []rune) []match {
	class := func(r rune) int {
		switch {
		case r >= 'a' && r <= 'z':
			return 1
		case r >= 'A' && r <= 'Z':
			return 2
		case r >= '0' && r <= '9':
			return 3
		}
		return 0
	}
	var out []match
	for i := 0; i+2 < len(runes); i++ {
		c := class(runes[i])
		d := runes[i+1] - runes[i]
		if c == 0 || d != 1 && d != -1 {
			continue
		}
		for j := i + 1; j < len(runes) && class(runes[j]) == c && runes[j]-runes[j-1] == d; j++ {
			if j+1-i < 3 {
				continue
			}
			base := 26.0
			if c == 3 {
				base = 10
			}
			if strings.ContainsRune("aA019zZ", runes[i]) {
				base = 4
			}
			b := math.Log2(base * float64(j+1-i))
			if d < 0 {
				b++
			}
			out = append(out, match{i, j + 1, piece{"a sequence", b}})
		}
	}
	return out
}

// dateMatches finds years (1900 to 2099) and dates of digits, with or
// without separators: 25.12.1990, 1990-12-25, 251290, 12/25/90.
func dateMatches(runes []rune) []match {
	var out []match
	for i := range runes {
		for j := i + 4; j <= min(len(runes), i+10); j++ {
			s := string(runes[i:j])
			if j-i == 4 {
				if y, err := strconv.Atoi(s); err == nil && s[0] != '+' && s[0] != '-' && y >= 1900 && y <= 2099 {
					b := 7.0
					if y >= 1950 && y < 2040 {
						b = 5
					}
					out = append(out, match{i, j, piece{"a year", b}})
				}
			}
			if isDate(s) {
				out = append(out, match{i, j, piece{"a date", 15}})
			}
		}
	}
	return out
}

// isDate reports whether s is a date: day, month and year in one of the
// usual orders, with one kind of separator or none.
func isDate(s string) bool {
	var parts []string
	if sep := strings.IndexAny(s, "-/._ "); sep >= 0 {
		parts = strings.Split(s, s[sep:sep+1])
		if len(parts) != 3 {
			return false
		}
		for _, p := range parts {
			if p == "" || len(p) > 4 || strings.Trim(p, "0123456789") != "" {
				return false
			}
		}
		return validDate(parts)
	}
	if strings.Trim(s, "0123456789") != "" || len(s) < 6 {
		return false
	}
	// Without separators: two-digit day and month, a two- or four-digit year.
	for _, cut := range [][2]int{{2, 4}, {4, 6}} {
		if cut[1] < len(s) && validDate([]string{s[:cut[0]], s[cut[0]:cut[1]], s[cut[1]:]}) {
			return true
		}
	}
	return false
}

func validDate(parts []string) bool {
	n := make([]int, 3)
	for i, p := range parts {
		n[i], _ = strconv.Atoi(p)
	}
	year := func(i int) bool {
		return len(parts[i]) == 2 || len(parts[i]) == 4 && n[i] >= 1900 && n[i] <= 2099
	}
	dm := func(d, m int) bool { return d >= 1 && d <= 31 && m >= 1 && m <= 12 }
	switch {
	case year(2) && len(parts[0]) <= 2 && len(parts[1]) <= 2 && (dm(n[0], n[1]) || dm(n[1], n[0])):
		return true // day month year, month day year
	case len(parts[0]) == 4 && year(0) && len(parts[1]) <= 2 && len(parts[2]) <= 2:
		return n[1] >= 1 && n[1] <= 12 && n[2] >= 1 && n[2] <= 31 // year month day
	}
	return false
}

// repeatMatches finds a part repeated at once (abcabc, aaaa,
// iloveyouiloveyou), in any case: the part's bits and a bit or two for the
// count.
func (e *estimator) repeatMatches(runes, lower []rune) []match {
	var out []match
	n := len(runes)
	for i := 0; i < n; i++ {
		for l := 1; i+2*l <= n; l++ {
			k := 1
			for i+(k+1)*l <= n && slices.Equal(lower[i:i+l], lower[i+k*l:i+(k+1)*l]) {
				k++
			}
			if k < 2 || periodic(lower[i:i+l]) {
				continue // a repeat of a shorter part covers it
			}
			base := e.part(runes[i : i+l])
			for m := 2; m <= k; m++ {
				out = append(out, match{i, i + m*l, piece{base.kind, base.bits + math.Log2(float64(m))}})
			}
		}
	}
	return out
}

// periodic reports whether s is a shorter part repeated.
func periodic(s []rune) bool {
	for l := 1; l <= len(s)/2; l++ {
		if len(s)%l != 0 {
			continue
		}
		k := l
		for k < len(s) && slices.Equal(s[:l], s[k:k+l]) {
			k += l
		}
		if k == len(s) {
			return true
		}
	}
	return false
}

// part estimates a part of a password that is repeated, once per part.
func (e *estimator) part(runes []rune) piece {
	key := string(runes)
	if p, ok := e.memo[key]; ok {
		return p
	}
	bits, pieces := e.split(runes)
	p := piece{"a repeated part", bits}
	switch {
	case len(runes) == 1:
		p.kind = "a repeated character"
	case len(pieces) == 1 && pieces[0].bits == bits:
		if k, ok := strings.CutPrefix(pieces[0].kind, "a "); ok {
			p.kind = "a repeated " + k // a repeated common word
		} else {
			p.kind = pieces[0].kind + " repeated" // the user name repeated
		}
	}
	e.memo[key] = p
	return p
}

// CheckStrength refuses a weak new password with the reason: too short, too
// predictable (EstimateBits, with userInputs such as the user name; the
// reason names the pieces found), a common password, or (when breachedFile
// is set) listed in a file of breached passwords. That file has one entry
// per line: a password, or its SHA-1 in hex (as the "Have I Been Pwned"
// lists, where ":COUNT" may follow); it is read as a stream, so it may be
// large.
func CheckStrength(password, breachedFile string, userInputs ...string) error {
	if n := utf8.RuneCountInString(password); n < MinPasswordLength {
		return fmt.Errorf("the password is too short: %d characters, at least %d needed", n, MinPasswordLength)
	}
	if common[strings.ToLower(password)] {
		return fmt.Errorf("the password is one of the most common passwords")
	}
	allSpace := true
	for _, r := range password {
		allSpace = allSpace && unicode.IsSpace(r)
	}
	if allSpace {
		return fmt.Errorf("the password is only white space")
	}
	if bits, pieces := estimate(password, userInputs); bits < MinPasswordBits {
		built := ""
		if len(pieces) > 0 {
			built = " it is built from " + describePieces(pieces) + ";"
		}
		// Rounded down: "about 50 bits; 50 needed" would not say why.
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

// describePieces names the kinds of pieces, each once: "a common word and
// a year", "common words".
func describePieces(pieces []piece) string {
	var kinds []string
	count := map[string]int{}
	for _, p := range pieces {
		if count[p.kind]++; count[p.kind] == 1 {
			kinds = append(kinds, p.kind)
		}
	}
	for i, k := range kinds {
		if count[k] > 1 {
			kinds[i] = plural(k)
		}
	}
	if len(kinds) == 1 {
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
