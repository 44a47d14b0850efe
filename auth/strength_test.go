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
// length and kinds of characters, with what they are built from.
func TestPredictablePasswords(t *testing.T) {
	for _, tc := range []struct{ user, password, reason string }{
		{"bob", "Summer2024!!", "a common word, a year and a repeated character"},
		{"bob", "qwertyuiop12", "a run of neighbouring keys"},
		{"bob", "asdfghjkl123", "a run of neighbouring keys and a sequence"},
		{"bob", "1qaz2wsx3edc4rfv", "runs of neighbouring keys"},
		{"bob", "iloveyouiloveyou", "a repeated common word"},
		{"bob", "passwordpassword1", "a repeated common word"},
		{"bob", "Password2024!", "a common word and a year"},
		{"bob", "Welcome2024!", "a common word and a year"},
		{"bob", "p4$$w0rd-2019!", "a common word and a year"},
		{"bob", "drowssap12345", "a common word and a sequence"},
		{"bob", "abcabcabcabc", "a repeated sequence"},
		{"bob", "Dragon Monkey Summer Football", "common words"},
		{"bob", "Autumn25.12.1990", "a common word and a date"},
		{"alice", "alicealice2024", "the user name repeated and a year"},
		{"alice.smith", "Alice.Smith1987", "the user name and a year"},
		{"carol", "c4r0l-1990-c4r0l", "the user name and a year"},
	} {
		err := CheckStrength(tc.password, "", tc.user)
		if err == nil || !strings.Contains(err.Error(), "too predictable") || !strings.Contains(err.Error(), "built from "+tc.reason+";") {
			t.Errorf("CheckStrength(%q) for %s = %v, want it built from %s", tc.password, tc.user, err, tc.reason)
		}
	}
}

// Random characters and random words pass, and so do the passwords of the
// tests and the README.
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

// Random passwords pass however their characters happen to fall: twelve
// letters and digits (71 bits) and twenty digits (66 bits) are refused only
// when they are made of what guessers try first, which random characters
// practically never are.
func TestRandomPasswordsPass(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		alphabet string
		length   int
	}{
		{"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 12},
		{"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 16},
		{"0123456789", 20},
		{"0123456789", 24},
		{"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", 12},
	} {
		refused := 0
		for range 2000 {
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
			t.Errorf("%d of 2000 random passwords of %d characters from %d refused", refused, tc.length, len(tc.alphabet))
		}
	}
	for _, pw := range []string{"j5RfGzRmbgFg", "bgFgxm7Qt2Lw", "3234xsws9Kp2"} {
		if err := CheckStrength(pw, "", "alice"); err != nil {
			t.Errorf("CheckStrength(%q): %v", pw, err)
		}
	}
}

// Only straight runs of keys are runs: along a row either way, or down or
// up a column; a path that turns is random characters.
func TestKeyboardRuns(t *testing.T) {
	for s, want := range map[string]bool{
		"qwer": true, "rewq": true, "asdfgh": true, "7890": true, "!@#$": true,
		"1qaz": true, "zaq1": true, "QWERTY": true,
		"bgFg": false, "3234": false, "xsws": false, "qwsa": false, "1q2w": false,
	} {
		got := false
		for _, m := range keyboardMatches([]rune(s)) {
			got = got || m.i == 0 && m.j == len(s)
		}
		if got != want {
			t.Errorf("%q a run of keys: %v, want %v", s, got, want)
		}
	}
	// Shift among the keys costs what placing it does.
	plain, _ := estimate("qwertyuiop", nil)
	first, _ := estimate("Qwertyuiop", nil)
	mixed, _ := estimate("qWeRtYuIoP", nil)
	if !(plain < first && first+5 < mixed) {
		t.Errorf("qwertyuiop %.1f bits, Qwertyuiop %.1f, qWeRtYuIoP %.1f", plain, first, mixed)
	}
}

// The refusal never says a password has as many bits as needed: the
// estimate is rounded down.
func TestStrengthBitsRoundedDown(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 100_000 {
		b := make([]byte, 16)
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
