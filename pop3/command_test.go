package pop3_test

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/pouchmail/pouch/pop3"
)

func TestParseCommand(t *testing.T) {
	tests := []struct {
		line string
		want pop3.Command
	}{
		{"STAT", pop3.Command{Name: "STAT"}},
		{"utf8", pop3.Command{Name: "UTF8"}},
		{"stat", pop3.Command{Name: "STAT"}},
		{"Top 1 10", pop3.Command{Name: "TOP", Args: []string{"1", "10"}, Rest: "1 10"}},
		{"USER mrose", pop3.Command{Name: "USER", Args: []string{"mrose"}, Rest: "mrose"}},
		{"PASS my  secret ", pop3.Command{Name: "PASS", Args: []string{"my", "secret"}, Rest: "my  secret "}},
		{"LIST ", pop3.Command{Name: "LIST", Rest: ""}},
		{"RETR  1", pop3.Command{Name: "RETR", Args: []string{"1"}, Rest: " 1"}},
		{"AUTH PLAIN AGZvbwBiYXI=", pop3.Command{Name: "AUTH", Args: []string{"PLAIN", "AGZvbwBiYXI="}, Rest: "PLAIN AGZvbwBiYXI="}},
		{"APOP mrose c4c9334bac560ecc979e58001b3e22fb", pop3.Command{Name: "APOP", Args: []string{"mrose", "c4c9334bac560ecc979e58001b3e22fb"}, Rest: "mrose c4c9334bac560ecc979e58001b3e22fb"}},
		{"USER a\tb", pop3.Command{Name: "USER", Args: []string{"a\tb"}, Rest: "a\tb"}},
	}
	for _, tt := range tests {
		got, err := pop3.ParseCommand([]byte(tt.line))
		if err != nil || got.Name != tt.want.Name || got.Rest != tt.want.Rest ||
			strings.Join(got.Args, "|") != strings.Join(tt.want.Args, "|") || len(got.Args) != len(tt.want.Args) {
			t.Errorf("ParseCommand(%q) = %#v, %v; want %#v", tt.line, got, err, tt.want)
		}
	}
	for _, line := range []string{"", " ", " STAT", "ST", "STATS", "ST-T", "STA\x00", "ÄÖÜ", "\tSTAT", "NO-P", "STAT\t1"} {
		if got, err := pop3.ParseCommand([]byte(line)); !errors.Is(err, pop3.ErrProtocol) {
			t.Errorf("ParseCommand(%q) = %#v, %v; want ErrProtocol", line, got, err)
		}
	}
}

func TestCheckArgs(t *testing.T) {
	for line, ok := range map[string]bool{
		"USER " + strings.Repeat("u", 40):             true,
		"USER " + strings.Repeat("u", 41):             false,
		"TOP 1 " + strings.Repeat("9", 41):            false,
		"PASS " + strings.Repeat("p ", 30):            true,
		"STAT":                                        true,
		"APOP mrose c4c9334bac560ecc979e58001b3e22fb": true,
	} {
		c, err := pop3.ParseCommand([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.CheckArgs(); (err == nil) != ok {
			t.Errorf("CheckArgs(%q) = %v, want ok %v", line, err, ok)
		}
	}
}

func TestParseNumber(t *testing.T) {
	max := strconv.Itoa(math.MaxInt32)
	tests := []struct {
		s    string
		n    int
		want bool
	}{
		{"1", 1, true},
		{"42", 42, true},
		{"007", 7, true},
		{max, math.MaxInt32, true},
		{"0", 0, false},
		{"00", 0, false},
		{"", 0, false},
		{"+1", 0, false},
		{"-1", 0, false},
		{" 1", 0, false},
		{"1 ", 0, false},
		{"1a", 0, false},
		{"0x10", 0, false},
		{"2147483648", 0, false},
		{"99999999999999999999999999", 0, false},
		{"١", 0, false},
	}
	for _, tt := range tests {
		if n, ok := pop3.ParseNumber(tt.s); n != tt.n && tt.want || ok != tt.want {
			t.Errorf("ParseNumber(%q) = %d, %v; want %d, %v", tt.s, n, ok, tt.n, tt.want)
		}
	}
}

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{
		"USER mrose", "PASS secret word", "APOP mrose c4c9334bac560ecc979e58001b3e22fb",
		"STAT", "LIST 1", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 10", "UIDL", "QUIT",
		"CAPA", "STLS", "AUTH PLAIN AGZvbwBiYXI=", "UTF8", "", "  ",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		c, err := pop3.ParseCommand(line)
		if err != nil {
			return
		}
		if len(c.Name) < 3 || len(c.Name) > 4 || strings.ToUpper(c.Name) != c.Name {
			t.Fatalf("bad name %q", c.Name)
		}
		if !strings.EqualFold(string(line), c.Name) && !strings.EqualFold(string(line), c.Name+" "+c.Rest) {
			t.Fatalf("%q is not name %q and rest %q", line, c.Name, c.Rest)
		}
		want := strings.FieldsFunc(c.Rest, func(r rune) bool { return r == ' ' })
		if strings.Join(c.Args, " ") != strings.Join(want, " ") || len(c.Args) != len(want) {
			t.Fatalf("args %q from rest %q, want %q", c.Args, c.Rest, want)
		}
		if n, ok := pop3.ParseNumber(c.Rest); ok && (n < 1 || strconv.Itoa(n) != strings.TrimLeft(c.Rest, "0")) {
			t.Fatalf("ParseNumber(%q) = %d", c.Rest, n)
		}
	})
}
