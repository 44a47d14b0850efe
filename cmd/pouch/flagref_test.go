package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

//go:generate go test -run ^TestFlagReference$ . -args -write-flag-reference

var writeFlagReference = flag.Bool("write-flag-reference", false, "write docs/flags.md from the flag sets")

// flagReferencePath is the generated reference, from this directory.
var flagReferencePath = filepath.Join("..", "..", "docs", "flags.md")

// environmentDefaults are the defaults that depend on who runs pouch, as
// the reference states them, by command and flag.
var environmentDefaults = map[string]string{
	"serve --pop3":  "`127.0.0.1:1110`; `:110` as root",
	"serve --pop3s": "`127.0.0.1:1995`; `:995` as root",
}

// docs/flags.md is what the flag sets say: a flag added, removed or
// reworded without running go generate fails here.
func TestFlagReference(t *testing.T) {
	got := flagReference(t)
	if *writeFlagReference {
		if err := os.WriteFile(flagReferencePath, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(flagReferencePath)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != got {
		t.Fatalf("docs/flags.md is stale: run go generate ./cmd/pouch to write it anew from the flag sets")
	}
}

// helpCapture takes what a command's --help writes: the text, and the flag
// sets themselves (flagCollector).
type helpCapture struct {
	text strings.Builder
	sets []*flag.FlagSet
}

func (h *helpCapture) Write(p []byte) (int, error)   { return h.text.Write(p) }
func (h *helpCapture) collectFlags(fs *flag.FlagSet) { h.sets = append(h.sets, fs) }

// referenceCommands are the commands that the top-level usage lists, each
// once, but version and help, which take no flags. pouch mailbox stats has
// flags of its own beside the other mailbox actions'.
func referenceCommands(t *testing.T) []string {
	var cmds []string
	seen := map[string]bool{}
	re := regexp.MustCompile(`(?m)^  pouch ([a-z-]+)`)
	for _, m := range re.FindAllStringSubmatch(usage, -1) {
		if m[1] == "version" || m[1] == "help" || seen[m[1]] {
			continue
		}
		seen[m[1]] = true
		cmds = append(cmds, m[1])
		if m[1] == "mailbox" {
			cmds = append(cmds, "mailbox stats")
		}
	}
	if len(cmds) < 10 {
		t.Fatalf("commands found in the usage: %q", cmds)
	}
	return cmds
}

// flagReference writes the reference of every command's flags in Markdown.
func flagReference(t *testing.T) string {
	// Defaults taken from the environment are written as their source.
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "~")
	t.Setenv("USER", "$USER")
	var b strings.Builder
	b.WriteString(`# Flag reference

<!-- Written by "go generate ./cmd/pouch" from the flag sets; do not edit. -->

Every command's flags, as ` + "`pouch help COMMAND`" + ` prints them. Flags may come
before, between or after the arguments; ` + "`--flag value`" + `, ` + "`--flag=value`" + ` and
` + "`-flag value`" + ` are the same.

**Configuration file.** Every flag of ` + "`pouch serve`" + ` (but ` + "`--config`" + `) is also a
key of the TOML file given with ` + "`--config`" + `, under the same name. A key takes a
TOML string written as the flag's value would be, or where the flag takes a
number, a boolean or a list, a TOML integer, boolean or list (a list's items
are joined with commas). Flags given on the command line win over the file.
` + "`pouch check-config`" + `, ` + "`pouch serve`" + ` and a reload (SIGHUP, ` + "`pouch reload`" + `)
check the file the same way, and refuse a bad value naming the file and key.

**Sizes** are whole numbers of octets, optionally followed by ` + "`K`, `M`, `G` or `T`" + `,
each 1024 times the one before, in either case, with or without a final ` + "`B`" + ` or
` + "`iB`" + `: ` + "`52428800`, `500M`, `2GiB` and `1t`" + ` are sizes. There are no decimal units.

**Durations** are Go's (` + "`90s`, `15m`, `36h`, `1h30m`, `250ms`" + `), optionally preceded by
a whole number of days: ` + "`30d`, `1d12h`" + `. A duration is never negative.
`)
	for _, name := range referenceCommands(t) {
		h := &helpCapture{}
		args := append(strings.Fields(name), "--help")
		if err := run(args, strings.NewReader(""), h, h); err != nil && !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("pouch %s --help: %v", name, err)
		}
		text := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(h.text.String()), "Flags:"))
		fmt.Fprintf(&b, "\n## pouch %s\n\n```text\n%s\n```\n", name, text)
		for _, fs := range h.sets {
			b.WriteString("\n| Flag | Default | Meaning |\n| --- | --- | --- |\n")
			fs.VisitAll(func(f *flag.Flag) {
				value, meaning, def := describeFlag(f)
				flagText := "--" + f.Name
				if value != "" {
					flagText += " " + value
				}
				if d, ok := environmentDefaults[name+" --"+f.Name]; ok {
					def = d
				} else if d, err := strconv.Unquote(def); err == nil {
					def = "`" + d + "`"
				} else if def != "" {
					def = "`" + def + "`"
				}
				meaning = strings.ReplaceAll(meaning, "|", `\|`)
				fmt.Fprintf(&b, "| `%s` | %s | %s |\n", flagText, def, meaning)
			})
		}
	}
	return b.String()
}
