package main

import (
	"strings"
	"testing"
)

// Help asked for, as pouch help COMMAND or COMMAND --help, goes to stdout
// with exit status 0, for every command.
func TestHelpGoesToStdout(t *testing.T) {
	cmds := append(referenceCommands(t), "version", "help")
	for _, name := range cmds {
		for _, args := range [][]string{
			append([]string{"help"}, strings.Fields(name)...),
			append(strings.Fields(name), "--help"),
			append(strings.Fields(name), "-h"),
		} {
			out, e, code := pouch(t, "", args...)
			if code != 0 || e != "" || !strings.HasPrefix(out, "Usage") && !strings.HasPrefix(out, "Pouch is") {
				t.Errorf("pouch %s: exit %d, stderr %q, stdout %.60q; want the usage on stdout and exit 0", strings.Join(args, " "), code, e, out)
			}
		}
	}
	// The usage of a command lists its flags.
	if out, _, _ := pouch(t, "", "help", "serve"); !strings.Contains(out, "-idle-timeout") {
		t.Errorf("pouch help serve lists no flags:\n%s", out)
	}
}

// A flag the command does not have is one line naming the command, and one
// pointing at its help; not the whole usage. The exit status is 2 (75 and
// the sentence alone for pouch deliver, which an MTA runs and retries, and
// whose output goes into the notice to the sender).
func TestUnknownFlagIsOneLine(t *testing.T) {
	for _, name := range referenceCommands(t) {
		args := append(strings.Fields(name), "--bogus")
		out, e, code := pouch(t, "", args...)
		want := "pouch: " + name + ": flag provided but not defined: -bogus\nRun \"pouch help " + name + "\" for the flags.\n"
		wantCode := 2
		if name == "deliver" {
			wantCode = exTempFail
			want, _, _ = strings.Cut(want, "Run")
		}
		if code != wantCode || e != want || out != "" {
			t.Errorf("pouch %s: exit %d, stderr %q, stdout %q; want exit %d and %q", strings.Join(args, " "), code, e, out, wantCode, want)
		}
	}
}

// A bad value of a flag says what is wrong in a sentence, whatever the
// kind of flag.
func TestBadFlagValueSentences(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ban", "add", "--for", "99999999h", "192.0.2.1"}, `pouch: ban: --for: "99999999h" is too long: at most 106751d (about 292 years)`},
		{[]string{"ban", "add", "--for", "soon", "192.0.2.1"}, `pouch: ban: --for: "soon" is not a duration (like 90s, 15m, 36h or 30d)`},
		{[]string{"fetch", "--timeout", "99999999h"}, `pouch: fetch: --timeout: "99999999h" is too long`},
		{[]string{"fetch", "--deadline", "-1s"}, `pouch: fetch: --deadline: "-1s" is negative`},
		{[]string{"fetch", "--window", "many"}, `pouch: fetch: --window: "many" is not a whole number`},
		{[]string{"fetch", "--parallel", "99999999999999999999"}, `pouch: fetch: --parallel: "99999999999999999999" is too large`},
		{[]string{"fetch", "--dry-run=maybe"}, `pouch: fetch: --dry-run: "maybe" is not true or false`},
		{[]string{"bench", "--duration", "99999999h", "127.0.0.1:1"}, `pouch: bench: --duration: "99999999h" is too long`},
		{[]string{"bench", "--wrong-password-rate", "x", "127.0.0.1:1"}, `pouch: bench: --wrong-password-rate: "x" is not a number`},
		{[]string{"serve", "--idle-timeout", "99999999h"}, `pouch: serve: --idle-timeout: "99999999h" is too long`},
		{[]string{"serve", "--max-message-size", "9999999T"}, `pouch: serve: --max-message-size: "9999999T" is too large: at most 8388607T`},
		{[]string{"check-config", "--quota-storage", "lots"}, `pouch: check-config: --quota-storage: "lots" is not a size`},
		{[]string{"ban", "add", "--for"}, "pouch: ban: flag needs an argument: -for"},
	} {
		_, e, code := pouch(t, "", tc.args...)
		if code != 2 || !strings.HasPrefix(e, tc.want) || strings.Count(e, "\n") != 2 || strings.Contains(e, "parse error") {
			t.Errorf("pouch %s: exit %d, %q; want exit 2 and %q", strings.Join(tc.args, " "), code, e, tc.want)
		}
	}
}

// The sentence a command prints names the command, not the packages the
// error went through.
func TestMessagesWithoutPackagePrefixes(t *testing.T) {
	for in, want := range map[string]string{
		"user add: auth: empty user name": "user add: empty user name",
		"reload: kept the users loaded before (auth: users file u is damaged: line 3: auth: empty user name)": "reload: kept the users loaded before (users file u is damaged: line 3: empty user name)",
		"user add: making the Maildir m: store: invalid user name":                                            "user add: making the Maildir m: invalid user name",
		"store: unknown action \"x\"": "store: unknown action \"x\"",
		"ban: guard: auth: x":         "ban: x",
		"guard: bans.json is damaged": "bans.json is damaged",
	} {
		if got := plainMessage(in); got != want {
			t.Errorf("plainMessage(%q) = %q, want %q", in, got, want)
		}
	}
	data := t.TempDir()
	if _, e, code := pouch(t, "", "import", "maildir", "--data", data, "", t.TempDir()); code != 2 || e != "pouch: import maildir: empty user name\n" {
		t.Errorf("import maildir with an empty name: exit %d, %q", code, e)
	}
}
