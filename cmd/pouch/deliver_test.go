package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/store/pg"
)

func init() {
	// The tests keep the details of failures out of the system log; those
	// that read them set their own deliverDetails (see deliverLog).
	deliverDetails = func(io.Writer) io.Writer { return io.Discard }
}

// deliverLog sends the details that pouch deliver logs to the returned
// buffer until the test ends.
func deliverLog(t *testing.T) *bytes.Buffer {
	var b bytes.Buffer
	prev := deliverDetails
	deliverDetails = func(io.Writer) io.Writer { return &b }
	t.Cleanup(func() { deliverDetails = prev })
	return &b
}

// deliverData makes a data directory with a users file: alice without quota,
// bob with a storage quota of 100 octets, carol with one message at most,
// and dan whose quota cannot be read.
func deliverData(t *testing.T) string {
	t.Helper()
	data := t.TempDir()
	users := "alice:{PLAIN}x::::::\nbob:{PLAIN}x::::::quota_storage=100\ncarol:{PLAIN}x::::::quota_messages=1\n" +
		"dan:{PLAIN}x::::::quota_storage=lots\n"
	if err := os.WriteFile(filepath.Join(data, "users"), []byte(users), 0o600); err != nil {
		t.Fatal(err)
	}
	return data
}

// deliveredTo returns the messages in user's new/.
func deliveredTo(t *testing.T, data, user string) []string {
	t.Helper()
	dir := filepath.Join(data, "mail", user, "new")
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

func TestDeliverCommand(t *testing.T) {
	data := deliverData(t)
	lf := "From: a@example.net\nSubject: lf\n\n8-bit \xe9\n.leading dot\n"
	if _, e, code := pouch(t, lf, "deliver", "--data", data, "-f", "a@example.net", "alice"); code != 0 {
		t.Fatalf("deliver: exit %d, %s", code, e)
	}
	want := "Return-Path: <a@example.net>\nDelivered-To: alice\n" + lf
	if got := deliveredTo(t, data, "alice"); len(got) != 1 || got[0] != want {
		t.Fatalf("stored %q, want %q", got, want)
	}
	// CRLF stays CRLF; user@domain names the user and is the Delivered-To;
	// without -f there is no Return-Path; flags may follow the user.
	crlf := "Subject: crlf\r\n\r\nbody\r\n"
	if _, e, code := pouch(t, crlf, "deliver", "ALICE@Example.org", "--data", data); code != 0 {
		t.Fatalf("deliver: exit %d, %s", code, e)
	}
	got := deliveredTo(t, data, "alice")
	if len(got) != 2 || (got[0] != "Delivered-To: ALICE@Example.org\r\n"+crlf && got[1] != "Delivered-To: ALICE@Example.org\r\n"+crlf) {
		t.Fatalf("stored %q", got)
	}
	// -f "" is the null sender.
	if _, e, code := pouch(t, "Subject: bounce\n\n", "deliver", "--data", data, "-f", "", "carol"); code != 0 {
		t.Fatalf("deliver: exit %d, %s", code, e)
	}
	if got := deliveredTo(t, data, "carol"); len(got) != 1 || !strings.HasPrefix(got[0], "Return-Path: <>\nDelivered-To: carol\n") {
		t.Fatalf("stored %q", got)
	}

	big := strings.Repeat("x", 200) + "\n"
	missing := filepath.Join(t.TempDir(), "nowhere")
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
		msg   string
	}{
		{"unknown user", "x\n", []string{"deliver", "--data", data, "nobody"}, 67, "no such user"},
		{"refused account", "x\n", []string{"deliver", "--data", data, "dan+tag"}, 75, "settings in the users file cannot be read"},
		{"over storage quota", big, []string{"deliver", "--data", data, "bob"}, 73, "the mailbox of bob is full (storage limit of 100)"},
		{"over quota, temporary", big, []string{"deliver", "--data", data, "--quota-temporary", "bob"}, 75, "the mailbox of bob is full"},
		{"over message quota", "x\n", []string{"deliver", "--data", data, "carol"}, 73, "limit of 1 messages"},
		{"default quota", big, []string{"deliver", "--data", data, "--quota-storage", "1K", "--quota-messages", "2", "alice"}, 73, "limit of 2 messages"},
		{"too big", big, []string{"deliver", "--data", data, "--max-message-size", "100", "alice"}, 73, "larger than the limit"},
		{"no users file", "x\n", []string{"deliver", "--data", missing, "alice"}, 75, "no users file"},
		{"no user given", "x\n", []string{"deliver", "--data", data}, 75, "exactly one user name"},
		{"two users", "x\n", []string{"deliver", "--data", data, "alice", "bob"}, 75, "exactly one user name"},
		{"bad flag", "x\n", []string{"deliver", "--data", data, "--frob", "alice"}, 75, "frob"},
		{"bad size", "x\n", []string{"deliver", "--data", data, "--max-message-size", "big", "alice"}, 75, "max-message-size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(deliveredTo(t, data, "alice")) + len(deliveredTo(t, data, "bob")) + len(deliveredTo(t, data, "dan"))
			_, e, code := pouch(t, tc.stdin, tc.args...)
			if code != tc.code || !strings.Contains(e, tc.msg) {
				t.Errorf("exit %d, %q; want exit %d with %q", code, e, tc.code, tc.msg)
			}
			if lines := strings.Count(strings.TrimSpace(e), "\n"); lines > 0 {
				t.Errorf("more than one line on stderr: %q", e)
			}
			if after := len(deliveredTo(t, data, "alice")) + len(deliveredTo(t, data, "bob")) + len(deliveredTo(t, data, "dan")); after != before {
				t.Errorf("a failed delivery stored something")
			}
		})
	}

	// A read error on standard input: temporary, nothing stored.
	var errb bytes.Buffer
	err := run([]string{"deliver", "--data", data, "alice"}, io.MultiReader(strings.NewReader("Subject: partial\n"), deliverStdinError{}), io.Discard, &errb)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 75 || !strings.Contains(ee.msg, "reading the message from standard input failed") {
		t.Fatalf("stdin failing: %v", err)
	}
	if n := len(deliveredTo(t, data, "alice")); n != 2 {
		t.Fatalf("alice has %d messages after a failed read, want 2", n)
	}
	if tmp, _ := os.ReadDir(filepath.Join(data, "mail", "alice", "tmp")); len(tmp) != 0 {
		t.Fatalf("tmp/ holds %d files after a failed read", len(tmp))
	}
}

type deliverStdinError struct{}

func (deliverStdinError) Read([]byte) (int, error) { return 0, errors.New("pipe broken") }

// pouch deliver --config takes --data and the limits from pouch serve's TOML
// file; its own flags win.
func TestDeliverConfig(t *testing.T) {
	data := deliverData(t)
	cfg := filepath.Join(t.TempDir(), "pouch.toml")
	os.WriteFile(cfg, []byte("data = \""+data+"\"\nquota-messages = 1\nmax-message-size = \"1K\"\nlmtp = \"127.0.0.1:2424\"\n"), 0o600)
	if _, e, code := pouch(t, "one\n", "deliver", "--config", cfg, "alice"); code != 0 {
		t.Fatalf("first: exit %d %s", code, e)
	}
	if _, e, code := pouch(t, "two\n", "deliver", "--config", cfg, "alice"); code != 73 || !strings.Contains(e, "limit of 1 messages") {
		t.Fatalf("second: exit %d %s; want 73 for the quota from the file", code, e)
	}
	if _, e, code := pouch(t, "two\n", "deliver", "--config", cfg, "--quota-messages", "0", "alice"); code != 0 {
		t.Fatalf("with the quota lifted on the command line: exit %d %s", code, e)
	}
	if _, e, code := pouch(t, strings.Repeat("z", 2000), "deliver", "--config", cfg, "alice"); code != 73 {
		t.Fatalf("over the size limit from the file: exit %d %s", code, e)
	}
	os.WriteFile(cfg, []byte("colour = \"blue\"\n"), 0o600)
	logs := deliverLog(t)
	if _, e, code := pouch(t, "x\n", "deliver", "--config", cfg, "alice"); code != 75 || !strings.Contains(e, "configuration file") ||
		!strings.Contains(logs.String(), `unknown key \"colour\"`) {
		t.Fatalf("a bad config file: exit %d %s (logged %s); want 75", code, e, logs)
	}
}

func TestServeLMTPSettings(t *testing.T) {
	data := t.TempDir()
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"serve", "--data", data, "--pop3", "", "--pop3s", "", "--lmtp", ""}, 2, "nothing to serve"},
		{[]string{"serve", "--data", data, "--pop3", "", "--pop3s", "", "--lmtp", "127.0.0.1:notaport"}, 1, "listen lmtp on 127.0.0.1:notaport"},
		{[]string{"serve", "--data", data, "--pop3", "", "--pop3s", "", "--lmtp", "unix:"}, 1, "listen lmtp"},
		{[]string{"serve", "--data", data, "--quota-storage", "5X"}, 2, "quota-storage"},
		{[]string{"serve", "--data", data, "--pop3", "", "--pop3s", "", "--lmtp", "127.0.0.1:0", "--quota-messages", "-1"}, 2, "quota-messages"},
	} {
		_, e, code := pouch(t, "", tc.args...)
		if code != tc.code || !strings.Contains(e, tc.msg) {
			t.Errorf("pouch %v: exit %d, %q; want exit %d with %q", tc.args, code, e, tc.code, tc.msg)
		}
	}
	_, c := serveFlags(io.Discard)
	cfg := filepath.Join(t.TempDir(), "pouch.toml")
	if c.Delimiter != "+" || c.RcptCheckQuota {
		t.Errorf("defaults: recipient delimiter %q, RCPT quota check %v; want \"+\", off", c.Delimiter, c.RcptCheckQuota)
	}
	os.WriteFile(cfg, []byte("lmtp = \"unix:/run/pouch/lmtp\"\nlmtp-domains = [\"a.org\", \"b.org\"]\nquota-storage = \"2G\"\nquota-temporary = true\nmax-message-size = 1048576\n"+
		"lmtp-recipient-delimiter = \"+-\"\nlmtp-rcpt-check-quota = true\n"), 0o600)
	c, err := readServeConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := c.lmtpConfig
	if l.LMTP != "unix:/run/pouch/lmtp" || l.LMTPDomains != "a.org,b.org" || l.QuotaStorage != 2<<30 || !l.QuotaTemporary || l.MaxMessageSize != 1<<20 ||
		l.Delimiter != "+-" || !l.RcptCheckQuota {
		t.Errorf("config file not applied: %+v", l)
	}
}

// As Dovecot's LDA: a leading mbox From line is dropped, and the Return-Path
// and Delivered-To that an MTA wrote at the top (Postfix's local(8) for a
// mailbox_command) are not doubled.
func TestDeliverFromLocal(t *testing.T) {
	data := deliverData(t)
	in := "From sender@sender.test  Thu Nov 26 01:42:30 2026\nReturn-Path: <sender@sender.test>\n" +
		"X-Original-To: alice@vm.test\nDelivered-To: alice@vm.test\nReceived: by vm.test\nSubject: local\n\nbody\n"
	if _, e, code := pouch(t, in, "deliver", "--data", data, "-f", "sender@sender.test", "alice"); code != 0 {
		t.Fatalf("deliver: exit %d, %s", code, e)
	}
	want := strings.SplitN(in, "\n", 2)[1]
	if got := deliveredTo(t, data, "alice"); len(got) != 1 || got[0] != want {
		t.Fatalf("stored %q, want %q", got, want)
	}
	// A From line alone: the lines of pouch deliver, and the size limit
	// counts the message without the From line.
	msg := "Subject: x\n\n" + strings.Repeat("y", 85) + "\n" // 98 octets
	if _, e, code := pouch(t, "From s@x.test Thu Nov 26 01:42:30 2026\n"+msg, "deliver", "--data", data,
		"--max-message-size", "98", "-f", "", "carol"); code != 0 {
		t.Fatalf("deliver: exit %d, %s", code, e)
	}
	if got := deliveredTo(t, data, "carol"); len(got) != 1 || got[0] != "Return-Path: <>\nDelivered-To: carol\n"+msg {
		t.Fatalf("stored %q", got)
	}
}

// The size limit is exact: a message of --max-message-size octets is
// delivered, one octet more is refused (as over LMTP).
func TestDeliverSizeBoundary(t *testing.T) {
	data := deliverData(t)
	msg := func(n int) string {
		return "Subject: s\r\n\r\n" + strings.Repeat("z", n-len("Subject: s\r\n\r\n")-2) + "\r\n"
	}
	if _, e, code := pouch(t, msg(102400), "deliver", "--data", data, "--max-message-size", "100K", "alice"); code != 0 {
		t.Fatalf("102400 octets with a limit of 100K: exit %d, %s", code, e)
	}
	if _, e, code := pouch(t, msg(102401), "deliver", "--data", data, "--max-message-size", "100K", "alice"); code != 73 ||
		!strings.Contains(e, "larger than the limit") {
		t.Fatalf("102401 octets with a limit of 100K: exit %d, %s", code, e)
	}
	if n := len(deliveredTo(t, data, "alice")); n != 1 {
		t.Fatalf("alice has %d messages, want 1", n)
	}
}

// Plus addressing: alice+news is alice unless a user of that name exists,
// with the argument as given in Delivered-To; an empty
// --lmtp-recipient-delimiter turns it off, and --config sets it too.
func TestDeliverRecipientDelimiter(t *testing.T) {
	data := deliverData(t)
	users := filepath.Join(data, "users")
	b, _ := os.ReadFile(users)
	os.WriteFile(users, append(b, "list+owner:{PLAIN}x::::::\n"...), 0o600)
	for _, tc := range []struct {
		rcpt  string
		args  []string
		code  int
		store string
	}{
		{"alice+news@example.org", nil, 0, "alice"},
		{"alice+news", nil, 0, "alice"},
		{"list+owner@example.org", nil, 0, "list+owner"},
		{"alice-news", []string{"--lmtp-recipient-delimiter", "-+"}, 0, "alice"},
		{"alice+news", []string{"--lmtp-recipient-delimiter", ""}, 67, ""},
		{"list+other", nil, 67, ""},
	} {
		before := len(deliveredTo(t, data, tc.store))
		args := append([]string{"deliver", "--data", data}, tc.args...)
		_, e, code := pouch(t, "Subject: plus\n\nx\n", append(args, tc.rcpt)...)
		if code != tc.code {
			t.Errorf("%s %v: exit %d, %s; want %d", tc.rcpt, tc.args, code, e, tc.code)
			continue
		}
		if tc.store == "" {
			continue
		}
		got := deliveredTo(t, data, tc.store)
		if len(got) != before+1 || !slices.ContainsFunc(got, func(m string) bool { return strings.HasPrefix(m, "Delivered-To: "+tc.rcpt+"\n") }) {
			t.Errorf("%s: %s has %q", tc.rcpt, tc.store, got)
		}
	}
	cfg := filepath.Join(t.TempDir(), "pouch.toml")
	os.WriteFile(cfg, []byte("data = \""+data+"\"\nlmtp-recipient-delimiter = \"\"\n"), 0o600)
	if _, e, code := pouch(t, "x\n", "deliver", "--config", cfg, "alice+news"); code != 67 {
		t.Errorf("with the delimiter turned off in the config file: exit %d, %s; want 67", code, e)
	}
}

// Return-Path keeps the quotes of a quoted local part, as Postfix passes the
// sender without them.
func TestDeliverQuotedSender(t *testing.T) {
	data := deliverData(t)
	if _, e, code := pouch(t, "Subject: q\n\nx\n", "deliver", "--data", data, "-f", "john doe@x.test", "alice"); code != 0 {
		t.Fatalf("deliver: exit %d, %s", code, e)
	}
	if got := deliveredTo(t, data, "alice"); len(got) != 1 || !strings.HasPrefix(got[0], "Return-Path: <\"john doe\"@x.test>\nDelivered-To: alice\n") {
		t.Fatalf("stored %q", got)
	}
}

// What pouch deliver prints on a failure reaches the sender: Postfix's local
// and pipe delivery put the command's output into the bounce. It names no
// path and no system error; those are logged for the operator, with an id
// that the output gives too. The exit statuses stay those of sysexits.h.
func TestDeliverFailureTexts(t *testing.T) {
	data := deliverData(t)
	if _, e, code := pouch(t, "x\n", "deliver", "--data", data, "carol"); code != 0 {
		t.Fatalf("deliver: exit %d, %s", code, e)
	}
	// dave, without quota, has a maildrop that cannot be written: its tmp/ is
	// a file.
	users := filepath.Join(data, "users")
	b, _ := os.ReadFile(users)
	os.WriteFile(users, append(b, "dave:{PLAIN}x::::::\n"...), 0o600)
	if err := os.MkdirAll(filepath.Join(data, "mail", "dave"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "mail", "dave", "tmp"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "pouch.toml")
	os.WriteFile(cfg, []byte("colour = \"blue\"\n"), 0o600)
	missing := filepath.Join(t.TempDir(), "nowhere")
	idRE := regexp.MustCompile(`\(details logged, id (d[0-9a-f]{8})\)$`)
	for _, tc := range []struct {
		name   string
		stdin  io.Reader
		args   []string
		code   int
		text   string
		detail string // in the log, not in the output
	}{
		{"unknown user", strings.NewReader("x\n"), []string{"nobody"}, 67, "pouch: deliver: no such user", filepath.Join(data, "users")},
		{"storage failure", strings.NewReader("x\n"), []string{"dave"}, 75, "pouch: deliver: temporary failure, try again later",
			filepath.Join(data, "mail", "dave", "tmp")},
		{"input failure", io.MultiReader(strings.NewReader("Subject: partial\n"), deliverStdinError{}), []string{"alice"}, 75,
			"pouch: deliver: reading the message from standard input failed, try again later", "pipe broken"},
		{"no users file", strings.NewReader("x\n"), []string{"--data", missing, "alice"}, 75,
			"pouch: deliver: there is no users file in the data directory; check --data", missing},
		{"bad configuration", strings.NewReader("x\n"), []string{"--config", cfg, "alice"}, 75,
			"pouch: deliver: the configuration file is not usable", cfg},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := deliverLog(t)
			var out, errb bytes.Buffer
			err := run(append([]string{"deliver", "--data", data, "-f", "s@example.net"}, tc.args...), tc.stdin, &out, &errb)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != tc.code {
				t.Fatalf("exit: %v, want status %d", err, tc.code)
			}
			e := "pouch: " + err.Error()
			if !strings.HasPrefix(e, tc.text+" (") {
				t.Errorf("output %q, want %q", e, tc.text)
			}
			if strings.Contains(e, "/") || strings.Contains(e, data) || strings.Contains(e, tc.detail) {
				t.Errorf("output %q names a path or an internal error", e)
			}
			if errb.Len() != 0 {
				t.Errorf("more on stderr: %q", errb.String())
			}
			m := idRE.FindStringSubmatch(e)
			if m == nil {
				t.Fatalf("output %q has no id", e)
			}
			l := logs.String()
			if !strings.Contains(l, "id="+m[1]) || !strings.Contains(l, tc.detail) || strings.Count(l, "\n") != 1 {
				t.Errorf("logged %q; want one line with id=%s and %q", l, m[1], tc.detail)
			}
		})
	}
	if n := len(deliveredTo(t, data, "alice")) + len(deliveredTo(t, data, "dave")); n != 0 {
		t.Errorf("%d messages stored by failed deliveries", n)
	}
}

// pouch deliver killed at the worst moments of a delivery never exits 0,
// so the MTA keeps the message queued: killed before the message is in
// the maildrop (the rename into new/, the COMMIT in the database), the
// maildrop holds nothing of it; killed after storing it, the message is
// there whole. The MTA's retry then delivers it (a second time in the
// latter case: at least once, never lost).
func TestDeliverCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := lmtpTestBinary(t)
	msg := "Subject: crash\n\n" + strings.Repeat("line of the message\n", 5000)
	// stored lists the sizes of alice's messages: in new/, or in the
	// database at url.
	stored := func(t *testing.T, data, url string) []int64 {
		t.Helper()
		var sizes []int64
		if url == "" {
			for _, m := range deliveredTo(t, data, "alice") {
				sizes = append(sizes, int64(len(m)))
			}
			return sizes
		}
		s, err := pg.Connect(context.Background(), url, pg.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		live, _, err := s.Listing(context.Background(), "alice")
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		for _, m := range live {
			sizes = append(sizes, m.Size)
		}
		return sizes
	}
	for _, tc := range []struct {
		store, point string
		stored       bool
	}{
		{"maildir", "maildir.deliver.synced", false},
		{"maildir", "deliver.stored", true},
		{"pg", "pg.deliver.before-commit", false},
		{"pg", "deliver.stored", true},
	} {
		t.Run(tc.store+"/"+tc.point, func(t *testing.T) {
			data, url := deliverData(t), ""
			args := []string{"deliver", "--data", data, "alice"}
			if tc.store == "pg" {
				url = newDatabase(t)
				if _, e, code := pouch(t, "", "store", "init", "--store", url); code != 0 {
					t.Fatal(e)
				}
				if _, e, code := pouch(t, "correct horse battery staple\n", "user", "add", "--data", data, "--store", url, "alice"); code != 0 {
					t.Fatal(e)
				}
				args = append(args, "--store", url)
			}
			deliver := func(env ...string) error {
				cmd := exec.Command(bin, args...)
				cmd.Env = append(os.Environ(), env...)
				cmd.Stdin = strings.NewReader(msg)
				return cmd.Run()
			}
			err := deliver(crashpoint.Env + "=" + tc.point)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() {
				t.Fatalf("pouch deliver was not killed at %s: %v", tc.point, err)
			}
			crashed := stored(t, data, url)
			if tc.stored != (len(crashed) == 1) || len(crashed) > 1 {
				t.Fatalf("after a kill at %s the maildrop holds %d messages", tc.point, len(crashed))
			}
			if err := deliver(); err != nil {
				t.Fatalf("the retry: %v", err)
			}
			after := stored(t, data, url)
			if len(after) != len(crashed)+1 {
				t.Fatalf("after the retry the maildrop holds %d messages, %d before", len(after), len(crashed))
			}
			for _, size := range after {
				if size != after[len(after)-1] {
					t.Fatalf("the messages differ in size (%v): one is not whole", after)
				}
			}
			if url == "" {
				for _, m := range deliveredTo(t, data, "alice") {
					if m != "Delivered-To: alice\n"+msg {
						t.Fatalf("a message is not whole: %d octets of %d", len(m), len("Delivered-To: alice\n"+msg))
					}
				}
			}
		})
	}
}
