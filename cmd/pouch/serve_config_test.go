package main

import (
	"bytes"
	"flag"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/retention"
)

// serveOutcome runs pouch serve in-process and returns its exit status and
// the sentence it printed. A serve that starts serving is a failure: every
// configuration given here is bad.
func serveOutcome(t *testing.T, args ...string) (code int, sentence string) {
	t.Helper()
	type result struct {
		code int
		e    string
	}
	done := make(chan result, 1)
	go func() {
		_, e, code := pouch(t, "", append([]string{"serve"}, args...)...)
		done <- result{code, e}
	}()
	select {
	case r := <-done:
		return r.code, lastLine(r.e)
	case <-time.After(time.Minute):
		t.Fatalf("pouch serve %q started serving", args)
		return 0, ""
	}
}

// lastLine returns the last line of a command's error output: the sentence
// it exits with (warnings and log lines come before it).
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// checkedSettings reads pouch serve's command line (and the file it names)
// and checks it, failing the test on any problem.
func checkedSettings(t *testing.T, args ...string) (*flag.FlagSet, *serveSettings) {
	t.Helper()
	fs, c := serveFlags(io.Discard)
	if _, err := loadServeConfig(fs, c, args); err != nil {
		t.Fatal(err)
	}
	s, err := c.validate(0)
	if err != nil {
		t.Fatal(err)
	}
	return fs, s
}

// pouch check-config, pouch serve and a reload refuse the same
// configurations with the same sentence: they take one validation.
func TestCheckConfigServeAndReloadRefuseAlike(t *testing.T) {
	data := t.TempDir()
	file := filepath.Join(t.TempDir(), "pouch.toml")
	os.WriteFile(filepath.Join(data, "bans.json"), []byte("{damaged"), 0o600)
	// Every file holds these keys unless it sets them: it listens only on
	// a free loopback port, and reads the damaged ban list only when it
	// bans.
	base := map[string]string{"data": strconv.Quote(data), "pop3": `"127.0.0.1:0"`, "pop3s": `""`, "ban-after": "0"}
	keyRE := regexp.MustCompile(`(?m)^([a-z0-9-]+) =`)
	for _, tc := range []struct {
		name     string
		toml     string
		args     []string
		want     string // in the sentence
		opened   bool   // found when the start opens it: a reload does not
		anywhere bool   // the sentence names no one setting
		before   string // what went wrong before, where check-config said OK
	}{
		{name: "unknown key", toml: "colour = \"blue\"\n", want: `unknown key "colour"`},
		{name: "bad number", toml: "max-bad-commands = \"many\"\n", want: `key "max-bad-commands": "many" is not a whole number`},
		{name: "bad duration", toml: "login-delay = \"soon\"\n", want: `key "login-delay": "soon" is not a duration`},
		{name: "negative duration", toml: "idle-timeout = \"-5m\"\n", want: `key "idle-timeout": "-5m" is negative`},
		{name: "bad size", toml: "quota-storage = \"5X\"\n", want: `key "quota-storage": "5X" is not a size`},
		{name: "log level", toml: "log-level = \"loud\"\n", want: `key "log-level": unknown log level "loud"`},
		{name: "log format", toml: "log-format = \"xml\"\n", want: `key "log-format": unknown log format "xml"`},
		{name: "short lines", toml: "max-line-length = 254\n", want: `key "max-line-length": 254 is too short`},
		{name: "address", toml: "pop3s = \"nonsense:port:x\"\n", want: `key "pop3s": address nonsense:port:x: too many colons`},
		{name: "metrics address", toml: "metrics = \"nonsense\"\n", want: `key "metrics": address nonsense: missing port`},
		{name: "insecure networks", toml: "insecure-auth-networks = \"10.0.0.0/33\"\n",
			want: `key "insecure-auth-networks": "10.0.0.0/33" is not a network`, before: "check-config never read it"},
		{name: "insecure networks flag", args: []string{"--insecure-auth-networks", "127.0.0.1/8,x"},
			want: `--insecure-auth-networks: "x" is not a network`, before: "check-config never read it"},
		{name: "proxy networks", toml: "proxy-networks = [\"10.0.0.0/8\", \"bogus\"]\n", want: `key "proxy-networks": "bogus" is not a network`},
		{name: "trusted networks", toml: "trusted-networks = \"x\"\n", want: `key "trusted-networks": "x" is not a network`},
		{name: "deny ip", toml: "deny-ip = \"10.0.0.0/8,y\"\n", want: `key "deny-ip": "y" is not a network`},
		{name: "countries", toml: "deny-country = \"RU\"\n", want: `key "deny-country": country rules need --geoip-db`},
		{name: "password age", toml: "password-max-age = \"ninety\"\n", want: `key "password-max-age": "ninety" is not a duration`},
		{name: "expire", toml: "expire = \"soon\"\n", want: `key "expire": "soon" is not "never"`},
		{name: "expire from", toml: "expire-from = \"birth\"\n", want: `key "expire-from": "birth" is not "delivery"`},
		{name: "deletion window", toml: "deletion-window = \"long\"\n", want: `key "deletion-window": "long" is not a duration`},
		{name: "store", toml: "store = \"mysql://pouch@db/pouch\"\n", want: `key "store": give a postgres:// URL`},
		{name: "store URL", toml: "store = \"postgres://pouch@db:port/pouch\"\n", want: `key "store": not a usable PostgreSQL URL`},
		{name: "lock TTL", toml: "lock-ttl = \"1s\"\n", want: `key "lock-ttl": 1s is too short`},
		{name: "database", toml: "store = \"postgres://pouch:hunter2@127.0.0.1:1/pouch?connect_timeout=5\"\n", want: `the database at postgres://pouch:xxxxx@127.0.0.1:1/pouch`,
			opened: true, anywhere: true},
		{name: "sweeps", toml: "sweep-interval = \"10ms\"\n", want: `key "sweep-interval": 10ms is shorter than a second`},
		{name: "LMTP quota", toml: "lmtp = \"127.0.0.1:0\"\nquota-messages = -1\n", want: `key "quota-messages": -1 is negative`,
			before: "check-config never read the LMTP settings"},
		{name: "quota without LMTP", toml: "quota-messages = -1\n", want: `key "quota-messages": -1 is negative`,
			before: "serve took it, and pouch deliver --config then refused every message"},
		{name: "LMTP connections", toml: "lmtp = \"127.0.0.1:0\"\nlmtp-max-connections = -1\n", want: `key "lmtp-max-connections": -1 is negative`,
			before: "check-config never read the LMTP settings"},
		{name: "LMTP idle", toml: "lmtp = \"127.0.0.1:0\"\nlmtp-idle-timeout = \"0s\"\n", want: `key "lmtp-idle-timeout": it must be more than 0`,
			before: "check-config never read the LMTP settings"},
		{name: "nothing to serve", toml: "pop3 = \"\"\n", want: "--pop3, --pop3s and --lmtp are all empty: nothing to serve",
			anywhere: true, before: "check-config said OK"},
		{name: "certificate", toml: "tls-cert = \"/nonexistent.pem\"\ntls-key = \"/nonexistent.key\"\n", want: `key "tls-cert": `, opened: true},
		{name: "client CA", toml: "tls-client-ca = \"/nonexistent-ca.pem\"\n", want: `key "tls-client-ca": client CA`, opened: true,
			before: "check-config never read it"},
		{name: "OAuth", toml: "oauth-issuer = \"https://id.example\"\n", want: `key "oauth-issuer": OAuth needs an issuer, an audience and a key set`, opened: true},
		{name: "country database", toml: "geoip-db = \"/nonexistent.mmdb\"\ndeny-country = \"RU\"\n", want: `key "geoip-db": GeoIP database`, opened: true},
		{name: "run as", toml: "run-as = \"no-such-user-here\"\n", want: "--run-as: user: unknown user no-such-user-here", opened: true, anywhere: true,
			before: "check-config never looked the user up"},
		{name: "ban list", toml: "ban-after = 3\n", want: "bans.json is damaged", opened: true, anywhere: true,
			before: "check-config read bans.json in the temporary directory instead"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			content := tc.toml
			set := map[string]bool{}
			for _, m := range keyRE.FindAllStringSubmatch(tc.toml, -1) {
				set[m[1]] = true
			}
			for key, v := range base {
				if !set[key] {
					content += key + " = " + v + "\n"
				}
			}
			if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"--config", file}, tc.args...)
			_, e, ccCode := pouch(t, "", append([]string{"check-config"}, args...)...)
			checked, ok := strings.CutPrefix(lastLine(e), "pouch: ")
			checked = strings.TrimPrefix(checked, "check-config: ")
			if ccCode == 0 || !ok || strings.Contains(e, "configuration OK") {
				t.Fatalf("check-config: exit %d, %q; want a refusal (before: %s)", ccCode, e, tc.before)
			}
			code, served := serveOutcome(t, args...)
			served, ok = strings.CutPrefix(served, "pouch: ")
			if code == 0 || !ok {
				t.Fatalf("serve: exit %d, %q; want a refusal", code, served)
			}
			if checked != served {
				t.Fatalf("check-config and serve disagree:\n check-config: %s\n serve:        %s", checked, served)
			}
			if !strings.Contains(checked, tc.want) {
				t.Errorf("sentence %q lacks %q", checked, tc.want)
			}
			if tc.args == nil && !tc.anywhere && !strings.Contains(checked, file) {
				t.Errorf("sentence %q does not name the file", checked)
			}
			// A reload of a running server refuses the same file with the
			// same sentence (the command line stays as it was at start).
			if tc.args == nil && !tc.opened {
				r := runningReloader(t, args, base)
				if err := r.reload(); err == nil || err.Error() != "kept the old configuration ("+checked+")" {
					t.Errorf("reload: %v; want the same sentence", err)
				}
			}
		})
	}
}

// runningReloader returns the reloader of a server started with args and a
// good configuration file, which the test then replaces by a bad one.
func runningReloader(t *testing.T, args []string, good map[string]string) *configReloader {
	t.Helper()
	file := args[1]
	bad, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var content string
	for key, v := range good {
		content += key + " = " + v + "\n"
	}
	os.WriteFile(file, []byte(content), 0o600)
	defer os.WriteFile(file, bad, 0o600)
	fs, s := checkedSettings(t, args...)
	log, level := newLogger(io.Discard, s.logLevel, s.logFormat)
	return &configReloader{args: args, running: fs, file: file, level: level,
		policies: retention.NewPolicies(s.retention.policy, nil), log: log}
}

// A whole-file reload that finds a bad value applies nothing of it, not
// even its good live settings.
func TestReloadOfABadFileChangesNothing(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pouch.toml")
	os.WriteFile(file, []byte("expire = \"30d\"\nlog-level = \"info\"\n"), 0o600)
	r := runningReloader(t, []string{"--config", file}, map[string]string{"expire": `"30d"`, "log-level": `"info"`, "data": strconv.Quote(t.TempDir())})
	os.WriteFile(file, []byte("expire = \"2d\"\nlog-level = \"debug\"\nproxy-networks = \"10.0.0.0/33\"\n"), 0o600)
	if err := r.reload(); err == nil || !strings.Contains(err.Error(), file+`: key "proxy-networks"`) {
		t.Fatalf("reload: %v", err)
	}
	if r.policies.Default().Expire != 30*24*time.Hour || r.level.Level() != slog.LevelInfo {
		t.Fatalf("a refused file changed the policy (%+v) or the level (%v)", r.policies.Default(), r.level.Level())
	}
}

// Every duration setting takes days, as --password-max-age and the
// retention ages always did: --login-delay 1d failed before.
func TestDurationsTakeDays(t *testing.T) {
	data := t.TempDir()
	out, e, code := pouch(t, "", "check-config", "--data", data, "--login-delay", "1d", "--ban-time", "2d12h", "--idle-timeout", "1d")
	if code != 0 || !strings.Contains(out, `login-delay = "1d"`) || !strings.Contains(out, `ban-time = "60h0m0s"`) ||
		!strings.Contains(out, `idle-timeout = "1d"`) {
		t.Fatalf("check-config with days: exit %d\n%s\n%s", code, out, e)
	}
	file := filepath.Join(t.TempDir(), "pouch.toml")
	os.WriteFile(file, []byte("data = \""+data+"\"\nlogin-delay = \"1d\"\npassword-max-age = \"90d\"\nlmtp = \"127.0.0.1:0\"\nlmtp-idle-timeout = \"1d\"\n"), 0o600)
	_, s := checkedSettings(t, "--config", file)
	if s.server.LoginDelay != 24*time.Hour || s.server.PasswordMaxAge != 90*24*time.Hour || s.lmtp.idleTimeout != 24*time.Hour {
		t.Errorf("login delay %v, password age %v, LMTP idle %v", s.server.LoginDelay, s.server.PasswordMaxAge, s.lmtp.idleTimeout)
	}
	if _, e, code := pouch(t, "", "serve", "--data", data, "--login-delay", "1x"); code != 2 ||
		!strings.Contains(e, `serve: --login-delay: "1x" is not a duration (like 90s, 15m, 36h or 30d)`) {
		t.Errorf("serve --login-delay 1x: exit %d, %q", code, e)
	}
}

// pouch fetch's --max-size takes the units of the other sizes: T and KiB
// were refused before.
func TestFetchSizesTakeEveryUnit(t *testing.T) {
	for in, want := range map[string]int64{"1T": 1 << 40, "10KiB": 10 << 10, "3 GB": 3 << 30, "500k": 500 << 10} {
		fs, c := fetchFlags(io.Discard)
		if err := fs.Parse([]string{"--server", "127.0.0.1:1", "--user", "u", "--password-command", "echo p", "--to", "maildir:/m", "--max-size", in}); err != nil {
			t.Fatal(err)
		}
		if a, _, err := c.account("", false); err != nil || a.MaxSize != want {
			t.Errorf("--max-size %s: %v; want %d", in, err, want)
		}
	}
}

// The keys keep taking the TOML values they took when every value went
// through its flag: strings, integers, booleans and lists.
func TestConfigFileValueForms(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pouch.toml")
	os.WriteFile(file, []byte(`
max-bad-commands = "3"
max-line-length = 300
idle-timeout = 0
pre-login-timeout = "90s"
quota-storage = 1048576
max-message-size = "2M"
quota-temporary = "true"
lmtp-rcpt-check-quota = true
proxy-networks = ["10.0.0.0/8", "192.0.2.1"]
tls-cert = ["a.pem", "b.pem"]
lmtp-max-connections = "0x10"
`), 0o600)
	c, err := readServeConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxBadCommands != 3 || c.MaxLine != 300 || c.IdleTimeout != 0 || time.Duration(c.PreLoginTimeout) != 90*time.Second ||
		c.QuotaStorage != 1<<20 || c.MaxMessageSize != 2<<20 || !c.QuotaTemporary || !c.RcptCheckQuota ||
		c.ProxyNets != "10.0.0.0/8,192.0.2.1" || c.TLSCert != "a.pem,b.pem" || c.MaxConnections != 16 {
		t.Errorf("values not taken: %+v", c)
	}
	for content, want := range map[string]string{
		"idle-timeout = 900\n":             `key "idle-timeout": "900" is not a duration`,
		"quota-temporary = 2\n":            `key "quota-temporary": "2" is not true or false`,
		"max-line-length = [255, 300]\n":   `key "max-line-length": "255,300" is not a whole number`,
		"Data = \"/srv\"\n":                `unknown key "Data"`,
		"[data]\nx = 1\n":                  `key "data"`,
		"max-line-length = 300\nzzz = 1\n": `unknown key "zzz"`,
	} {
		os.WriteFile(file, []byte(content), 0o600)
		if _, err := readServeConfig(file); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), file) {
			t.Errorf("%q: %v; want an error naming the file and %q", content, err, want)
		}
	}
}

// What check-config prints is a configuration file that reads back to the
// same settings.
func TestEffectiveConfigReadsBack(t *testing.T) {
	data := t.TempDir()
	out, e, code := pouch(t, "", "check-config", "--data", data, "--login-delay", "36h", "--quota-storage", "2G",
		"--proxy-networks", "10.0.0.0/8,192.0.2.0/24", "--lmtp-rcpt-check-quota", "--expire", "30d", "--hostname", `a "quoted" name`)
	if code != 0 {
		t.Fatalf("check-config: exit %d, %s", code, e)
	}
	file := filepath.Join(t.TempDir(), "pouch.toml")
	os.WriteFile(file, []byte(out), 0o600)
	again, _, code := pouch(t, "", "check-config", "--config", file)
	if code != 0 || again != out {
		t.Fatalf("read back: exit %d\n%s\nwant\n%s", code, again, out)
	}
}

// Every flag of pouch serve is a key of its file, and every key a flag:
// a setting added to one but not the other fails here.
func TestServeFlagsAreFileKeys(t *testing.T) {
	fs, c := serveFlags(io.Discard)
	fields := settingFields(c)
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" {
			return
		}
		field, ok := fields[f.Name]
		if !ok {
			t.Errorf("--%s has no TOML key", f.Name)
			return
		}
		if reflect.ValueOf(field).Pointer() != reflect.ValueOf(f.Value).Pointer() {
			t.Errorf("--%s and the key %q are not the same setting", f.Name, f.Name)
		}
	})
	for key := range fields {
		if fs.Lookup(key) == nil {
			t.Errorf("key %q has no flag", key)
		}
	}
}

// --help shows the settings as the flag package shows its own kinds.
func TestPrintFlagsAsFlagPackage(t *testing.T) {
	var want, got bytes.Buffer
	std := flag.NewFlagSet("x", flag.ContinueOnError)
	std.SetOutput(&want)
	std.String("text", "a b", "some `words`")
	std.String("empty", "", "no default")
	std.Int("n", 5, "a number")
	std.Int("zero", 0, "a zero")
	std.Bool("b", false, "a one-letter boolean")
	std.Bool("on", true, "a boolean, true")
	std.Duration("d", 90*time.Second, "a duration")
	std.PrintDefaults()
	ours := flag.NewFlagSet("x", flag.ContinueOnError)
	var c struct {
		text, empty textSetting
		n, zero     intSetting
		b, on       boolSetting
		d           durationSetting
	}
	textVar(ours, &c.text, "text", "a b", "some `words`")
	textVar(ours, &c.empty, "empty", "", "no default")
	intVar(ours, &c.n, "n", 5, "a number")
	intVar(ours, &c.zero, "zero", 0, "a zero")
	boolVar(ours, &c.b, "b", false, "a one-letter boolean")
	boolVar(ours, &c.on, "on", true, "a boolean, true")
	durationVar(ours, &c.d, "d", 90*time.Second, "a duration")
	printFlags(&got, ours)
	if got.String() != want.String() {
		t.Fatalf("printFlags:\n%s\nflag.PrintDefaults:\n%s", got.String(), want.String())
	}
}

// --insecure-auth-networks reads as every other list of networks: a bare
// address is that address alone, and an IPv4-mapped network matches the
// IPv4 clients it names (client addresses are compared unmapped). Empty
// is no network, not the default.
func TestInsecureNetworksReadAsOtherLists(t *testing.T) {
	data := t.TempDir()
	_, s := checkedSettings(t, "--data", data, "--insecure-auth-networks", "192.0.2.7, ::ffff:10.1.2.3/104")
	want := []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("10.0.0.0/8")}
	if got := s.server.InsecureAuthNetworks; !slices.Equal(got, want) {
		t.Errorf("insecure networks %v, want %v", got, want)
	}
	_, s = checkedSettings(t, "--data", data, "--insecure-auth-networks", "")
	if got := s.server.InsecureAuthNetworks; got == nil || len(got) != 0 {
		t.Errorf("insecure networks %#v, want none", got)
	}
}
