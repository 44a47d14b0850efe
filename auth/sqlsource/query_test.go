package sqlsource

import (
	"slices"
	"strings"
	"testing"
)

func TestParseQuery(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in     string
		dollar bool
		text   string
		params string
	}{
		{"SELECT password FROM users WHERE email = %u", true, "SELECT password FROM users WHERE email = $1", "u"},
		{"SELECT password FROM users WHERE email = %u", false, "SELECT password FROM users WHERE email = ?", "u"},
		// Dovecot's quoted placeholders are parameters too.
		{"SELECT password FROM users WHERE userid = '%n' AND domain = '%d'", true,
			"SELECT password FROM users WHERE userid = $1 AND domain = $2", "nd"},
		{"SELECT password FROM users WHERE userid = '%{username}' AND domain = %{domain}", false,
			"SELECT password FROM users WHERE userid = ? AND domain = ?", "nd"},
		// %% is a %, in and out of literals; quoted names and comments are
		// left alone.
		{`SELECT "pass%u" AS password FROM t WHERE a LIKE '%%x%%' AND b = 5 %% 2 -- %u here
 AND c = %u /* %n */`, true, `SELECT "pass%u" AS password FROM t WHERE a LIKE '%x%' AND b = 5 % 2 -- %u here
 AND c = $1 /* %n */`, "u"},
		{"SELECT `pass%u` FROM t WHERE a = 'it''s' AND b = 'x\\'y' AND u = %u # %n", false,
			"SELECT `pass%u` FROM t WHERE a = 'it''s' AND b = 'x\\'y' AND u = ? # %n", "u"},
		{"SELECT email FROM users", true, "SELECT email FROM users", ""},
	} {
		q, err := parseQuery(tc.in, tc.dollar)
		if err != nil {
			t.Errorf("parseQuery(%q): %v", tc.in, err)
			continue
		}
		var params []byte
		for _, p := range q.params {
			params = append(params, byte(p))
		}
		if q.text != tc.text || string(params) != tc.params {
			t.Errorf("parseQuery(%q) = %q %q, want %q %q", tc.in, q.text, params, tc.text, tc.params)
		}
	}
}

func TestParseQueryRefuses(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"SELECT password FROM users WHERE email = '%n@%d'": "inside the string literal",
		"SELECT password FROM users WHERE email = %x":      "unknown placeholder",
		"SELECT password FROM users WHERE email = 'abc":    "unterminated string literal",
		"SELECT password FROM users WHERE email = $1":      "parameter marker of its own",
		"SELECT password FROM users /* x":                  "unterminated /* comment",
	} {
		if _, err := parseQuery(in, true); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseQuery(%q) = %v, want an error with %q", in, err, want)
		}
	}
}

func TestQueryArgs(t *testing.T) {
	t.Parallel()
	q, err := parseQuery("SELECT 1 WHERE a = %u AND b = %n AND c = %d", true)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string][]any{
		"alice@example.org":  {"alice@example.org", "alice", "example.org"},
		"alice":              {"alice", "alice", ""},
		"' OR '1'='1":        {"' OR '1'='1", "' OR '1'='1", ""},
		"a@b@example.org":    {"a@b@example.org", "a@b", "example.org"},
		"*)(uid=*@x.example": {"*)(uid=*@x.example", "*)(uid=*", "x.example"},
	} {
		if got := q.args(name); !slices.Equal(got, want) {
			t.Errorf("args(%q) = %q, want %q", name, got, want)
		}
	}
}

func FuzzParseQuery(f *testing.F) {
	f.Add("SELECT password FROM users WHERE email = %u AND x = '%%' -- %n", true)
	f.Add("SELECT `a` FROM t WHERE b = '%d' # c", false)
	f.Fuzz(func(t *testing.T, in string, dollar bool) {
		q, err := parseQuery(in, dollar)
		if err != nil {
			return
		}
		// Every parameter has its marker, and no placeholder is left
		// where it would be read.
		if dollar && len(q.params) > 0 && !strings.Contains(q.text, "$1") {
			t.Fatalf("%q: %d parameters but no $1 in %q", in, len(q.params), q.text)
		}
	})
}
