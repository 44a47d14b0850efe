package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/pouchmail/pouch/internal/netlist"
	"github.com/pouchmail/pouch/internal/units"
)

// A setting is one value of a command's configuration: a flag and, under the
// same name, a key of the TOML file given with --config. Each kind reads the
// same text from both, so a value means the same wherever it is written; a
// TOML integer, boolean or list is read as the flag would read it written out
// (a list as its items joined with commas).
type setting interface {
	flag.Getter
	// typeName names the kind of value in --help when the usage has no
	// `name` of its own, as the flag package names its own kinds.
	typeName() string
	// tomlValue writes the value as a TOML value.
	tomlValue() string
}

// textSetting is a setting written as text: an address, a path, a word, or
// a list of items separated by commas.
type textSetting string

func (v *textSetting) Set(s string) error { *v = textSetting(s); return nil }
func (v *textSetting) String() string     { return string(*v) }
func (v *textSetting) Get() any           { return string(*v) }
func (v *textSetting) typeName() string   { return "string" }
func (v *textSetting) tomlValue() string  { return strconv.Quote(string(*v)) }

// list returns the items of a comma-separated list, without blanks.
func (v textSetting) list() []string { return netlist.Split(string(v)) }

// intSetting is a whole number.
type intSetting int

func (v *intSetting) Set(s string) error {
	n, err := strconv.ParseInt(s, 0, strconv.IntSize)
	if err != nil {
		return fmt.Errorf("%q is not a whole number", s)
	}
	*v = intSetting(n)
	return nil
}
func (v *intSetting) String() string    { return strconv.Itoa(int(*v)) }
func (v *intSetting) Get() any          { return int(*v) }
func (v *intSetting) typeName() string  { return "int" }
func (v *intSetting) tomlValue() string { return v.String() }

// boolSetting is true or false; the flag alone means true.
type boolSetting bool

func (v *boolSetting) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("%q is not true or false", s)
	}
	*v = boolSetting(b)
	return nil
}
func (v *boolSetting) String() string    { return strconv.FormatBool(bool(*v)) }
func (v *boolSetting) Get() any          { return bool(*v) }
func (v *boolSetting) IsBoolFlag() bool  { return true }
func (v *boolSetting) typeName() string  { return "" }
func (v *boolSetting) tomlValue() string { return v.String() }

// durationSetting is a duration as units.ParseDuration reads it (90s, 15m,
// 30d).
type durationSetting time.Duration

func (v *durationSetting) Set(s string) error {
	d, err := units.ParseDuration(s)
	if err != nil {
		return err
	}
	*v = durationSetting(d)
	return nil
}
func (v *durationSetting) String() string    { return units.FormatDuration(time.Duration(*v)) }
func (v *durationSetting) Get() any          { return time.Duration(*v) }
func (v *durationSetting) typeName() string  { return "duration" }
func (v *durationSetting) tomlValue() string { return strconv.Quote(v.String()) }

// sizeSetting is a size in octets as units.ParseSize reads it (500M, 2G).
type sizeSetting int64

func (v *sizeSetting) Set(s string) error {
	n, err := units.ParseSize(s)
	if err != nil {
		return err
	}
	*v = sizeSetting(n)
	return nil
}
func (v *sizeSetting) String() string    { return units.FormatSize(int64(*v)) }
func (v *sizeSetting) Get() any          { return int64(*v) }
func (v *sizeSetting) typeName() string  { return "value" }
func (v *sizeSetting) tomlValue() string { return strconv.Quote(v.String()) }

// The functions below define a setting as a flag, as flag.StringVar and
// its kind do: p gets the default value, then whatever is given.

func textVar(fs *flag.FlagSet, p *textSetting, name, value, usage string) {
	*p = textSetting(value)
	fs.Var(p, name, usage)
}

func intVar(fs *flag.FlagSet, p *intSetting, name string, value int, usage string) {
	*p = intSetting(value)
	fs.Var(p, name, usage)
}

func boolVar(fs *flag.FlagSet, p *boolSetting, name string, value bool, usage string) {
	*p = boolSetting(value)
	fs.Var(p, name, usage)
}

func durationVar(fs *flag.FlagSet, p *durationSetting, name string, value time.Duration, usage string) {
	*p = durationSetting(value)
	fs.Var(p, name, usage)
}

func sizeVar(fs *flag.FlagSet, p *sizeSetting, name string, value int64, usage string) {
	*p = sizeSetting(value)
	fs.Var(p, name, usage)
}

// settingFields returns the settings of the configuration struct that cfg
// points to, by their TOML key (the `toml` tag of each field, in embedded
// structs too).
func settingFields(cfg any) map[string]setting {
	out := make(map[string]setting)
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Anonymous && f.Type.Kind() == reflect.Struct {
				walk(v.Field(i))
				continue
			}
			key, ok := f.Tag.Lookup("toml")
			if !ok || key == "-" {
				continue
			}
			out[key] = v.Field(i).Addr().Interface().(setting)
		}
	}
	walk(reflect.ValueOf(cfg).Elem())
	return out
}

// decodeConfigFile reads the TOML file at path into the configuration struct
// that cfg points to, each key into the field tagged with it, in key order,
// leaving out the keys in skip (given on the command line, which wins). It
// returns the keys it set. An unknown key or a bad value is an error naming
// the file and the key.
func decodeConfigFile(path string, cfg any, skip map[string]bool) (map[string]bool, error) {
	var values map[string]any
	if _, err := toml.DecodeFile(path, &values); err != nil {
		return nil, fmt.Errorf("config %s: %v", path, err)
	}
	fields := settingFields(cfg)
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	set := make(map[string]bool, len(keys))
	for _, key := range keys {
		if table, ok := values[key].(map[string]any); ok {
			if td, ok := cfg.(tableDecoder); ok {
				if handled, err := td.decodeTable(key, table); handled {
					if err != nil {
						return nil, fmt.Errorf("config %s: [%s]: %v", path, key, err)
					}
					set[key] = true
					continue
				}
			}
		}
		f, ok := fields[key]
		if !ok {
			return nil, fmt.Errorf("config %s: unknown key %q", path, key)
		}
		if skip[key] {
			continue
		}
		switch values[key].(type) {
		case map[string]any, []map[string]any:
			return nil, fmt.Errorf("config %s: key %q: a table cannot be its value", path, key)
		}
		if err := f.Set(tomlText(values[key])); err != nil {
			return nil, fmt.Errorf("config %s: key %q: %v", path, key, err)
		}
		set[key] = true
	}
	return set, nil
}

// tableDecoder is a configuration that takes TOML tables besides its
// settings, such as pouch serve's [accounts].
type tableDecoder interface {
	// decodeTable reads the table named key, whose keys and values are
	// given, and reports whether it takes a table of that name.
	decodeTable(key string, values map[string]any) (bool, error)
}

// tomlText writes a TOML value as a flag's text: a list as its items joined
// with commas, anything else as fmt prints it.
func tomlText(v any) string {
	list, ok := v.([]any)
	if !ok {
		return fmt.Sprint(v)
	}
	parts := make([]string, len(list))
	for i, x := range list {
		parts[i] = fmt.Sprint(x)
	}
	return strings.Join(parts, ",")
}

// printSettings writes every setting of fs but --config as a TOML line, in
// name order: the effective configuration, which a --config file can hold.
func printSettings(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		if s, ok := f.Value.(setting); ok && f.Name != "config" {
			fmt.Fprintf(w, "%s = %s\n", f.Name, s.tomlValue())
		}
	})
}

// flagCollector is a writer of --help that takes the flag sets themselves,
// not their text: printFlags gives them to it (the flag reference in the
// docs is made so).
type flagCollector interface {
	io.Writer
	collectFlags(fs *flag.FlagSet)
}

// printFlags writes the flags of fs as flag.PrintDefaults does, naming the
// settings' kinds as it names its own.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	if c, ok := w.(flagCollector); ok {
		c.collectFlags(fs)
		return
	}
	fs.VisitAll(func(f *flag.Flag) {
		name, usage, def := describeFlag(f)
		line := "  -" + f.Name
		if name != "" {
			line += " " + name
		}
		if len(line) <= 4 { // a one-letter boolean: usage on the same line
			line += "\t"
		} else {
			line += "\n    \t"
		}
		line += strings.ReplaceAll(usage, "\n", "\n    \t")
		if def != "" {
			line += " (default " + def + ")"
		}
		fmt.Fprintln(w, line)
	})
}

// describeFlag returns the name of a flag's value, its usage without back
// quotes, and its default as --help shows it: "" when it is the zero value
// of its kind, quoted when it is text.
func describeFlag(f *flag.Flag) (name, usage, def string) {
	name, usage = flag.UnquoteUsage(f)
	s, isSetting := f.Value.(setting)
	if isSetting && !strings.Contains(f.Usage, "`") {
		name = s.typeName()
	}
	zero := reflect.New(reflect.TypeOf(f.Value).Elem()).Interface().(flag.Value)
	if f.DefValue == zero.String() {
		return name, usage, ""
	}
	if g, ok := f.Value.(flag.Getter); ok {
		if _, text := g.Get().(string); text {
			return name, usage, strconv.Quote(f.DefValue)
		}
	}
	return name, usage, f.DefValue
}

// configSource tells where each setting of a configuration came from, so
// that a problem names it where the operator wrote it.
type configSource struct {
	file          string          // the --config file, or ""
	inFile        map[string]bool // the keys that the file set
	onCommandLine map[string]bool // the flags given
}

// where names a setting: the file and key when the file set it, else the
// flag.
func (s configSource) where(key string) string {
	if s.inFile[key] {
		return fmt.Sprintf("%s: key %q", s.file, key)
	}
	return "--" + key
}

// problem is a bad setting, in one sentence naming it (a usage error: exit
// status 2).
func (s configSource) problem(key string, format string, args ...any) error {
	return usageError("%s: %s", s.where(key), fmt.Sprintf(format, args...))
}

// problems are every bad setting that a validation found, in the order of
// the checks; the first one is the error.
type problems []error

func (p problems) Error() string   { return p[0].Error() }
func (p problems) Unwrap() []error { return p }

// add records err unless it is nil.
func (p *problems) add(err error) {
	if err != nil {
		*p = append(*p, err)
	}
}

// err returns the problems as an error, or nil when there are none.
func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return p
}

// allProblems returns every problem held by err, one by one.
func allProblems(err error) []error {
	var p problems
	if errors.As(err, &p) {
		return p
	}
	return []error{err}
}
