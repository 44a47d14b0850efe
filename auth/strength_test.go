package auth

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckStrength(t *testing.T) {
	list := filepath.Join(t.TempDir(), "breached.txt")
	// A plaintext entry and a SHA-1 entry (of "Summer2024Summer!") in HIBP form.
	os.WriteFile(list, []byte("Quartz-Mango-Lantern-41\nA2B3F8F2D4F8B84D2E9C3A1F1C0E8E5B7E6D6C5A:12\n"+
		"2E1B6F3C3EB7E9ED8C1C1A8F0D5C0E2F3F4A9B8C\n"), 0o600)
	for pw, want := range map[string]string{
		"short":                             "too short",
		"aaaaaaaaaaaaaaaa":                  "too predictable",
		"abcdefghijklmnop":                  "too predictable",
		"1234567890123456":                  "too predictable",
		"Password1234":                      "most common",
		"Quartz-Mango-Lantern-41":           "breached",
		"correct horse battery staple":      "",
		"Tr0ub4dor&3xyz":                    "",
		"gr\u00fcne S\u00e4ulen tr\u00e4gt": "",
	} {
		err := CheckStrength(pw, list)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("CheckStrength(%q) = %v, want %q", pw, err, want)
		}
	}
	if err := CheckStrength("correct horse battery staple", filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing breached list is ignored")
	}
}

// Passwords built from what guessers try first are refused, whatever their
// length and kinds of characters, with what they are built from; those on
// zxcvbn's list of common passwords (reason "") as such.
func TestPredictablePasswords(t *testing.T) {
	for _, tc := range []struct{ user, password, reason string }{
		{"bob", "Summer2024!!", "a common password"},
		{"bob", "qwertyuiop12", ""},
		{"bob", "asdfghjkl123", ""},
		{"bob", "1qaz2wsx3edc4rfv", ""},
		{"bob", "iloveyouiloveyou", "a repeated common password"},
		{"bob", "passwordpassword1", "a repeated common password"},
		{"bob", "Password2024!", "a common password"},
		{"bob", "Welcome2024!", "a common password"},
		{"bob", "p4$$w0rd-2019!", "a common password"},
		{"bob", "drowssap12345", "common passwords"},
		{"bob", "abcabcabcabc", "a repeated sequence"},
		{"bob", "Autumn25.12.1990", "a common name and a date"},
		{"alice", "alicealice2024", "the user name repeated and a run of neighbouring keys"},
		{"alice.smith", "Alice.Smith1987", "the user name and a year"},
	} {
		err := CheckStrength(tc.password, "", tc.user)
		want := "too predictable"
		if tc.reason == "" {
			want = "one of the most common passwords"
		}
		if err == nil || !strings.Contains(err.Error(), want) || (tc.reason != "" && !strings.Contains(err.Error(), "built from "+tc.reason+";")) {
			t.Errorf("CheckStrength(%q) for %s = %v, want it %s, built from %q", tc.password, tc.user, err, want, tc.reason)
		}
	}
}

// Random characters and random words pass, and so do the passwords of the
// tests and the docs.
func TestStrongPasswords(t *testing.T) {
	for _, tc := range []struct{ user, password string }{
		{"alice", "Kq7-vTz2-mW9p"},
		{"alice", "x7kq2mz9p4wd"},
		{"alice", "q9T#mV2!zL8@wR4$kP6^"},
		{"alice", "river candle orbit lemon"},
		{"alice", "Saturn-Pencil-Drum-Tiger"},
		{"alice", "sofa tango ember quilt"},
		{"bob", "tidy-Walrus-87-kettle"},
		{"alice", "first Passw0rd-long"},
		{"alice", "second Passw0rd-long"},
		{"bob", "bobs Passw0rd-long"},
		{"carol", "carols Passw0rd-long"},
		{"alice", "Lmtp-test-secret-9"},
		{"alice", "a long enough secret"},
	} {
		if err := CheckStrength(tc.password, "", tc.user); err != nil {
			t.Errorf("CheckStrength(%q) for %s: %v", tc.password, tc.user, err)
		}
	}
	// Only so much of a very long password is analysed, quickly.
	if b := EstimateBits(strings.Repeat("a", 10_000)); b > 20 {
		t.Errorf("a very long repetition is worth %.0f bits", b)
	}
}

func TestBreachedSHA1(t *testing.T) {
	list := filepath.Join(t.TempDir(), "hibp.txt")
	// SHA-1("correct horse battery staple"), upper case, with a count.
	os.WriteFile(list, []byte("ABF7AAD6438836DBE526AA231ABDE2D0EEF74D42:3\n"), 0o600)
	if err := CheckStrength("correct horse battery staple", list); err == nil || !strings.Contains(err.Error(), "breached") {
		t.Fatalf("a password listed by its SHA-1 passed: %v", err)
	}
}

// Random passwords pass however their characters happen to fall: zxcvbn
// counts twelve letters and digits as 40 bits and twenty digits as 66, less
// only for the parts that happen to be what guessers try first, which
// takes about 6 in a million of the twelve under the bar (bench/strength
// measures it over a million).
func TestRandomPasswordsPass(t *testing.T) {
	const alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	for i, tc := range []struct {
		alphabet        string
		length, samples int
	}{
		// The policy's edge: the fewest bits of random passwords that
		// pass. The others stay far above the bar and are sampled less,
		// since zxcvbn takes milliseconds a password under the race
		// detector.
		{alnum, 12, 2000},
		{alnum, 16, 500},
		{"0123456789", 20, 500},
		{"0123456789", 24, 500},
		{alnum + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", 12, 500},
	} {
		t.Run(fmt.Sprintf("%d of %d", tc.length, len(tc.alphabet)), func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(1, uint64(2+i)))
			refused := 0
			for range tc.samples {
				b := make([]byte, tc.length)
				for i := range b {
					b[i] = tc.alphabet[rng.IntN(len(tc.alphabet))]
				}
				if err := CheckStrength(string(b), "", "alice"); err != nil {
					if refused++; refused <= 3 {
						t.Errorf("random %q refused: %v", b, err)
					}
				}
			}
			if refused > 0 {
				t.Errorf("%d of %d random passwords of %d characters from %d refused", refused, tc.samples, tc.length, len(tc.alphabet))
			}
		})
	}
	for _, pw := range []string{"j5RfGzRmbgFg", "bgFgxm7Qt2Lw", "3234xsws9Kp2", "hT73XJune8ug"} {
		if err := CheckStrength(pw, "", "alice"); err != nil {
			t.Errorf("CheckStrength(%q): %v", pw, err)
		}
	}
}

// The refusal names what zxcvbn found the password to be made of.
func TestPiecesNamed(t *testing.T) {
	for _, tc := range []struct{ user, password, reason string }{
		{"bob", "zxcvbnm,./;lkjhg", "a run of neighbouring keys"},
		{"bob", "zyxwvutsrqponmlk", "a sequence"},
		{"bob", "!!!!!!!!!!!!!!!!", "a repeated character"},
		{"bob", "iloveyouiloveyou", "a repeated common password"},
		{"bob", "Jennifer1.1.1990", "a common name and a date"},
		{"bob", "HistoryHistoryHistory", "a repeated common word"},
		{"robert", "robertrobert1987", "the user name repeated and a year"},
	} {
		err := CheckStrength(tc.password, "", tc.user)
		if err == nil || !strings.Contains(err.Error(), "built from "+tc.reason+";") {
			t.Errorf("CheckStrength(%q) for %s = %v, want it built from %s", tc.password, tc.user, err, tc.reason)
		}
	}
}

// The refusal never says a password has as many bits as needed: the
// estimate is rounded down.
func TestStrengthBitsRoundedDown(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 100_000 {
		b := make([]byte, 12)
		for i := range b {
			b[i] = byte('0' + rng.IntN(10))
		}
		if bits := EstimateBits(string(b)); bits >= MinPasswordBits-0.5 && bits < MinPasswordBits {
			err := CheckStrength(string(b), "")
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("about %d bits; %d needed", MinPasswordBits-1, MinPasswordBits)) {
				t.Fatalf("%q of %.2f bits: %v", b, bits, err)
			}
			return
		}
	}
	t.Fatal("no password found just under the limit")
}

// BenchmarkCheckStrength is the cost of checking one new password of 12
// random letters and digits (the breached list aside).
func BenchmarkCheckStrength(b *testing.B) {
	for b.Loop() {
		if err := CheckStrength("hT73XJune8ug", "", "alice"); err != nil {
			b.Fatal(err)
		}
	}
}
