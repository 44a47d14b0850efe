package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/popscript"
	"github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/server/servertest"
	"github.com/pouchmail/pouch/store/maildir"
)

// fetchServer runs an in-process Pouch server with alice and bob.
func fetchServer(t *testing.T) (string, *maildir.Store) {
	t.Helper()
	st := maildir.New(t.TempDir())
	srv := server.New(server.Config{
		Store: st, Auth: servertest.Users{"alice": "secret", "bob": "hunter2"},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Hostname: "localhost", AuthFailDelay: -1,
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return l.Addr().String(), st
}

func countFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	for _, sub := range []string{"new", "cur"} {
		e, _ := os.ReadDir(filepath.Join(dir, sub))
		n += len(e)
	}
	return n
}

func TestFetchCommand(t *testing.T) {
	addr, st := fetchServer(t)
	for _, m := range []string{"Subject: 1\n\none\n", "Subject: 2\n\ntwo\n"} {
		st.Deliver(context.Background(), "alice", strings.NewReader(m))
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	mail := filepath.Join(dir, "Mail")
	args := []string{"fetch", "--server", addr, "--tls", "none", "--user", "alice", "--password-file", pw,
		"--to", "maildir:" + mail, "--state-dir", filepath.Join(dir, "state"), "--keep", "14d"}
	_, stderr, code := pouch(t, "", args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "2 fetched") || !strings.Contains(stderr, "0 deleted, 2 kept on server") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("summary: %q", stderr)
	}
	if n := countFiles(t, mail); n != 2 {
		t.Fatalf("%d files", n)
	}
	// Again, quietly: nothing new, no output.
	_, stderr, code = pouch(t, "", append(args, "-q")...)
	if code != 0 || stderr != "" {
		t.Fatalf("quiet run: %d %q", code, stderr)
	}
	// Dry run.
	_, stderr, code = pouch(t, "", append(args, "--dry-run", "--keep", "0")...)
	if code != 0 || !strings.Contains(stderr, "dry run: would fetch 0") || !strings.Contains(stderr, "delete 2") {
		t.Fatalf("dry run: %d %q", code, stderr)
	}
	// A wrong password fails with status 3: only the user can fix it.
	os.WriteFile(pw, []byte("wrong\n"), 0o600)
	_, stderr, code = pouch(t, "", args...)
	if code != 3 || !strings.Contains(stderr, "FAILED") || !strings.Contains(stderr, "the server refused the password or token") {
		t.Fatalf("wrong password: %d %q", code, stderr)
	}
	// A dry run that cannot log in says so, not "would fetch 0".
	_, stderr, code = pouch(t, "", append(args, "--dry-run")...)
	if code != 3 || !strings.Contains(stderr, "dry run FAILED") || strings.Contains(stderr, "would fetch") {
		t.Fatalf("failed dry run: %d %q", code, stderr)
	}
}

// In the default mode, the polls after one that fetched and deleted
// everything are quiet: an empty maildrop is what pouch fetch left.
func TestFetchEmptiedMailboxQuiet(t *testing.T) {
	addr, st := fetchServer(t)
	for _, m := range []string{"Subject: 1\n\none\n", "Subject: 2\n\ntwo\n"} {
		st.Deliver(context.Background(), "alice", strings.NewReader(m))
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	args := []string{"fetch", "--server", addr, "--tls", "none", "--user", "alice", "--password-file", pw,
		"--to", "maildir:" + filepath.Join(dir, "Mail"), "--state-dir", filepath.Join(dir, "state"), "--quiet-empty"}
	_, stderr, code := pouch(t, "", args...)
	if code != 0 || !strings.Contains(stderr, "2 fetched") || !strings.Contains(stderr, "2 deleted") || strings.Contains(stderr, "warning") {
		t.Fatalf("exit %d: %q", code, stderr)
	}
	for range 2 {
		if _, stderr, code = pouch(t, "", args...); code != 0 || stderr != "" {
			t.Fatalf("empty poll: exit %d: %q", code, stderr)
		}
	}
}

func TestFetchCommandUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"fetch"}, "--server is required"},
		{[]string{"fetch", "--server", "h:1", "--user", "u"}, "exactly one of"},
		{[]string{"fetch", "--server", "h:1", "--user", "u", "--password-file", "f", "--to", "x", "--keep", "3y"}, "unknown unit"},
		{[]string{"fetch", "--server", "h:1", "--user", "u", "--password-file", "f", "--to", "x", "--tls", "maybe"}, "TLS mode"},
		{[]string{"fetch", "--server", "h:1", "--user", "u", "--password-file", "f", "--to", "x", "--delete-oversized"}, "needs --max-size"},
		{[]string{"fetch", "acct"}, "need --config"},
	} {
		_, stderr, code := pouch(t, "", tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.msg) {
			t.Errorf("%v: %d %q", tc.args, code, stderr)
		}
	}
}

func TestFetchConfigTwoAccounts(t *testing.T) {
	addr, st := fetchServer(t)
	st.Deliver(context.Background(), "alice", strings.NewReader("Subject: a\n\na\n"))
	st.Deliver(context.Background(), "bob", strings.NewReader("Subject: b\n\nb\n"))
	st.Deliver(context.Background(), "bob", strings.NewReader("Subject: b2\n\nb2\n"))
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fetch.toml")
	os.WriteFile(cfg, []byte(`
server = "`+addr+`"
tls = "none"
state-dir = "`+dir+`/state"

[account.alice]
user = "alice"
password-command = "echo secret"
to = "maildir:`+dir+`/alice"
keep = "forever"

[account.bob]
user = "bob"
password-command = "printf 'hunter2\\n'"
to = "mbox:`+dir+`/bob.mbox"
`), 0o600)
	_, stderr, code := pouch(t, "", "fetch", "--config", cfg)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "alice: 1 fetched") || !strings.Contains(stderr, "bob: 2 fetched") || !strings.Contains(stderr, "bob: 2 fetched (") {
		t.Fatalf("%q", stderr)
	}
	if countFiles(t, dir+"/alice") != 1 {
		t.Fatal("alice's maildir")
	}
	mbox, _ := os.ReadFile(dir + "/bob.mbox")
	if strings.Count(string(mbox), "\nFrom MAILER-DAEMON ") != 1 || !strings.HasPrefix(string(mbox), "From MAILER-DAEMON ") {
		t.Fatalf("mbox %q", mbox)
	}
	// Select one account; an unknown key is an error naming it.
	_, stderr, code = pouch(t, "", "fetch", "--config", cfg, "bob")
	if code != 0 || strings.Contains(stderr, "alice") {
		t.Fatalf("select: %d %q", code, stderr)
	}
	os.WriteFile(cfg, []byte("[account.x]\nserver = \"h:1\"\ncolour = \"red\"\n"), 0o600)
	_, stderr, code = pouch(t, "", "fetch", "--config", cfg)
	if code != 2 || !strings.Contains(stderr, `unknown key "colour"`) {
		t.Fatalf("bad key: %d %q", code, stderr)
	}
}

func TestProgressBar(t *testing.T) {
	var b strings.Builder
	r := &reporter{w: &b, name: "acct", bar: true}
	r.Plan(4, 4000)
	for range 4 {
		r.Fetched(1000)
	}
	r.clear()
	out := b.String()
	if !strings.Contains(out, "acct [########################] 4/4 3.9 KiB") || !strings.HasSuffix(out, "\r\x1b[K") {
		t.Fatalf("%q", out)
	}
	b.Reset()
	r = &reporter{w: &b, name: "acct", quiet: true}
	r.Warn("x")
	if b.Len() != 0 {
		t.Fatal("-q printed a warning")
	}
}

// TestFetchEvery polls twice in daemon mode and stops on SIGINT.
func TestFetchEvery(t *testing.T) {
	addr, st := fetchServer(t)
	st.Deliver(context.Background(), "alice", strings.NewReader("Subject: 1\n\none\n"))
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	mail := filepath.Join(dir, "Mail")
	var errb strings.Builder
	done := make(chan error, 1)
	go func() {
		done <- run([]string{"fetch", "--server", addr, "--tls", "none", "--user", "alice", "--password-file", pw,
			"--to", "maildir:" + mail, "--state-dir", filepath.Join(dir, "state"), "--every", "1s", "-q"}, nil, io.Discard, &lockedWriter{w: &errb})
	}()
	waitFor := func(n int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for countFiles(t, mail) < n {
			if time.Now().After(deadline) {
				t.Fatalf("never got %d messages", n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(1)
	st.Deliver(context.Background(), "alice", strings.NewReader("Subject: 2\n\ntwo\n"))
	waitFor(2)
	syscall.Kill(os.Getpid(), syscall.SIGINT)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("--every did not stop on SIGINT")
	}
}

// TestFetchAccountsInParallel: a server trickling one octet at a time holds
// up neither the other accounts (fetched meanwhile) nor the command (cut
// off at the account's deadline); the output keeps the accounts' order.
func TestFetchAccountsInParallel(t *testing.T) {
	addr, st := fetchServer(t)
	st.Deliver(context.Background(), "alice", strings.NewReader("Subject: a\n\na\n"))
	st.Deliver(context.Background(), "bob", strings.NewReader("Subject: b\n\nb\n"))
	slow := (&popscript.Box{Trickle: time.Millisecond, Messages: []popscript.Message{
		{UID: "s1", Body: "Subject: slow\n\n" + strings.Repeat("slow line\n", 20000)},
	}}).Start(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fetch.toml")
	os.WriteFile(cfg, []byte(`
tls = "none"
state-dir = "`+dir+`/state"
timeout = "1s"

[account.a-slow]
server = "`+slow.Addr+`"
user = "carol"
password-command = "echo x"
to = "maildir:`+dir+`/carol"
deadline = "2s"

[account.b-alice]
server = "`+addr+`"
user = "alice"
password-command = "echo secret"
to = "maildir:`+dir+`/alice"

[account.c-bob]
server = "`+addr+`"
user = "bob"
password-command = "echo hunter2"
to = "maildir:`+dir+`/bob"
`), 0o600)
	type result struct {
		stderr string
		code   int
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		_, stderr, code := pouch(t, "", "fetch", "--config", cfg)
		done <- result{stderr, code}
	}()
	var res result
	early := false
	for res.stderr == "" {
		select {
		case res = <-done:
		case <-time.After(10 * time.Millisecond):
			early = early || countFiles(t, dir+"/alice") == 1 && countFiles(t, dir+"/bob") == 1
		}
	}
	if !early {
		t.Fatal("the other accounts were not fetched while the slow one ran")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("took %v with a deadline of 2s", took)
	}
	if res.code != 1 || !strings.Contains(res.stderr, "fetch failed for 1 of 3 accounts") {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	s := res.stderr
	i, j, k := strings.Index(s, "a-slow: the account's deadline passed: the run was cut off after 2s"), strings.Index(s, "b-alice: 1 fetched"), strings.Index(s, "c-bob: 1 fetched")
	if i < 0 || j < i || k < j {
		t.Fatalf("output out of order:\n%s", s)
	}
	// parallel belongs to the whole command.
	os.WriteFile(cfg, []byte("[account.x]\nserver = \"h:1\"\nparallel = 2\n"), 0o600)
	if _, stderr, code := pouch(t, "", "fetch", "--config", cfg); code != 2 || !strings.Contains(stderr, `key "parallel" belongs at the top`) {
		t.Fatalf("parallel in an account: %d %q", code, stderr)
	}
}

// Accounts held back by the order are printed whole once it is their turn.
func TestOrderedOutput(t *testing.T) {
	var b strings.Builder
	o := newOrderedOutput(&b, 3)
	fmt.Fprint(o.writer(2), "c1\n")
	fmt.Fprint(o.writer(0), "a1\n")
	fmt.Fprint(o.writer(1), "b1\n")
	o.finish(1)
	fmt.Fprint(o.writer(0), "a2\n")
	o.finish(0)
	fmt.Fprint(o.writer(2), "c2\n")
	o.finish(2)
	if b.String() != "a1\na2\nb1\nc1\nc2\n" {
		t.Fatalf("%q", b.String())
	}
}

// A server that does not dot-stuff: exit status 1 and one sentence naming
// its fault; the next run leaves the message alone, --retry-quarantined
// fetches it once the server is fixed.
func TestFetchBrokenServer(t *testing.T) {
	b := (&popscript.Box{Messages: []popscript.Message{
		{UID: "u1", Body: "Subject: 1\n\none\n"},
		{UID: "u2", Size: 40, Wire: "Subject: 2\r\n\r\nhalf\r\n.\r\nrest\r\n.\r\n"},
	}}).Start(t)
	dir := t.TempDir()
	args := []string{"fetch", "--server", b.Addr, "--tls", "none", "--user", "u", "--password-command", "echo x",
		"--to", "maildir:" + dir + "/Mail", "--state-dir", dir + "/state"}
	_, stderr, code := pouch(t, "", args...)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if code != 1 || len(lines) != 3 || !strings.HasPrefix(lines[0], "pouch fetch: u@"+b.Addr+": the server broke the POP3 protocol at message 2 (UIDL u2): it arrived as 20 octets where LIST announced 40") {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	_, stderr, code = pouch(t, "", args...)
	if code != 0 || !strings.Contains(stderr, `warning: message 2: UIDL "u2" arrived damaged in an earlier run`) || !strings.Contains(stderr, "0 fetched") {
		t.Fatalf("second run: exit %d:\n%s", code, stderr)
	}
	b.Messages[1] = popscript.Message{UID: "u2", Body: "Subject: 2\n\nwhole\n"}
	_, stderr, code = pouch(t, "", append(args, "--retry-quarantined")...)
	if code != 0 || !strings.Contains(stderr, "1 fetched") || countFiles(t, dir+"/Mail") != 2 {
		t.Fatalf("retry: exit %d:\n%s", code, stderr)
	}
}

// A mistake in the configuration exits 2 in one sentence before anything is
// tried (not 1, the status of a failure that may pass), on the command line
// and in the --config file alike.
func TestFetchConfigurationErrors(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("no certificate here\n"), 0o600)
	base := []string{"fetch", "--server", "127.0.0.1:1", "--tls", "none", "--user", "u", "--password-file", pw,
		"--to", "maildir:" + dir + "/Mail", "--state-dir", dir + "/state"}
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--to", "bogus:/x"}, `fetch: --to "bogus:/x": "bogus" is no kind of destination; give maildir:DIR, mbox:FILE, mda:CMD, lmtp:HOST:PORT or smtp:HOST:PORT`},
		{[]string{"--to", "lmtp:nohost"}, `fetch: --to "lmtp:nohost": give lmtp:HOST:PORT`},
		{[]string{"--to", "smtp:127.0.0.1:25", "--rcpt", ""}, "fetch: --to smtp:127.0.0.1:25 needs a recipient (--rcpt)"},
		{[]string{"--tls-fingerprint", "AA:BB"}, `fetch: --tls-fingerprint "AA:BB": give the 64 hex digits of the certificate's SHA-256 fingerprint`},
		{[]string{"--tls-fingerprint", strings.Repeat("zz", 32)}, `fetch: --tls-fingerprint "` + strings.Repeat("zz", 32) + `": give the 64 hex digits`},
		{[]string{"--password-file", dir + "/nonexistent"}, "fetch: --password-file " + dir + "/nonexistent cannot be read: no such file or directory"},
		{[]string{"--ca-file", dir + "/nonexistent"}, "fetch: --ca-file " + dir + "/nonexistent cannot be read: no such file or directory"},
		{[]string{"--ca-file", notPEM}, "fetch: --ca-file " + notPEM + " holds no PEM certificate"},
		{[]string{"--server", "[::1"}, `fetch: --server "[::1": give HOST:PORT`},
		{[]string{"--server", ":995"}, `fetch: --server ":995": give HOST:PORT`},
		{[]string{"--keep", "99999999h"}, `fetch: keep "99999999h" is too long: at most 106751d, or forever`},
		{[]string{"--max-size", "9999999999T"}, `fetch: --max-size: "9999999999T" is too large: at most 8388607T`},
		{[]string{"--window", "-5"}, "fetch: --window -5: give at least 1"},
		{[]string{"--window", "0"}, "fetch: --window 0: give at least 1"},
		{[]string{"--parallel", "0"}, "fetch: --parallel 0: give at least 1"},
		{[]string{"--parallel", "-3"}, "fetch: --parallel -3: give at least 1"},
	} {
		_, stderr, code := pouch(t, "", append(append([]string{}, base...), tc.args...)...)
		if code != 2 || !strings.HasPrefix(stderr, "pouch: "+tc.msg) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("fetch %s: exit %d, %q; want exit 2 and %q", strings.Join(tc.args, " "), code, stderr, tc.msg)
		}
	}
	// The keys of the file go through the same checks.
	cfg := filepath.Join(dir, "fetch.toml")
	for body, msg := range map[string]string{
		"parallel = 0\n[account.a]\nserver = \"127.0.0.1:1\"\n":                `config ` + cfg + `: key "parallel": 0: give at least 1`,
		"[account.a]\nserver = \"127.0.0.1:1\"\nwindow = -5\n":                 "account a: --window -5: give at least 1",
		"[account.a]\nserver = \"127.0.0.1:1\"\ntls-fingerprint = \"AA:BB\"\n": `account a: --tls-fingerprint "AA:BB"`,
	} {
		os.WriteFile(cfg, []byte("user = \"u\"\npassword-file = \""+pw+"\"\nto = \"maildir:"+dir+"/Mail\"\n"+body), 0o600)
		_, stderr, code := pouch(t, "", "fetch", "--config", cfg)
		if code != 2 || !strings.Contains(stderr, msg) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("config %q: exit %d, %q; want exit 2 and %q", body, code, stderr, msg)
		}
	}
}

// A server given without a port gets POP3's: 995 for implicit TLS, 110 for
// STLS and cleartext, as mpop does.
func TestFetchServerDefaultPort(t *testing.T) {
	for _, tc := range []struct {
		server, tls, want string
	}{
		{"pop.example.com", "implicit", "pop.example.com:995"},
		{"pop.example.com", "starttls", "pop.example.com:110"},
		{"localhost", "none", "localhost:110"},
		{"[2001:db8::1]", "implicit", "[2001:db8::1]:995"},
		{"2001:db8::1", "starttls", "[2001:db8::1]:110"},
		{"pop.example.com:1995", "implicit", "pop.example.com:1995"},
	} {
		fs, c := fetchFlags(io.Discard)
		if err := fs.Parse([]string{"--server", tc.server, "--tls", tc.tls, "--user", "u", "--password-command", "echo p", "--to", "maildir:/m"}); err != nil {
			t.Fatal(err)
		}
		if a, _, err := c.account("", false); err != nil || a.Server != tc.want {
			t.Errorf("--server %s --tls %s: %v, %v; want %s", tc.server, tc.tls, a, err, tc.want)
		}
	}
}

// An account whose settings are wrong is left out with one line, and the
// others are fetched; the exit status is the worst: 2 (the configuration)
// over 3 (an account needs its user) over 1.
func TestFetchConfigErrorLetsOtherAccountsRun(t *testing.T) {
	addr, st := fetchServer(t)
	st.Deliver(context.Background(), "alice", strings.NewReader("Subject: a\n\na\n"))
	st.Deliver(context.Background(), "bob", strings.NewReader("Subject: b\n\nb\n"))
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fetch.toml")
	accounts := `
server = "` + addr + `"
tls = "none"
state-dir = "` + dir + `/state"

[account.alice]
user = "alice"
password-command = "echo secret"
to = "maildir:` + dir + `/alice"

[account.broken]
user = "carol"
password-file = "` + dir + `/no-such-file"
to = "maildir:` + dir + `/carol"

[account.bob]
user = "bob"
password-command = "echo hunter2"
to = "maildir:` + dir + `/bob"
`
	os.WriteFile(cfg, []byte(accounts), 0o600)
	_, stderr, code := pouch(t, "", "fetch", "--config", cfg)
	if code != 2 || !strings.Contains(stderr, "pouch fetch: account broken: --password-file "+dir+"/no-such-file cannot be read: no such file or directory\n") ||
		!strings.Contains(stderr, "alice: 1 fetched") || !strings.Contains(stderr, "bob: 1 fetched") ||
		!strings.Contains(stderr, "pouch: fetch failed for 1 of 3 accounts (for 1 their configuration is wrong, see above)") {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	if countFiles(t, dir+"/alice") != 1 || countFiles(t, dir+"/bob") != 1 {
		t.Fatal("the good accounts were not fetched")
	}
	// With an account whose password the server refuses (3), still 2.
	os.WriteFile(cfg, []byte(strings.Replace(accounts, `"echo hunter2"`, `"echo wrong"`, 1)), 0o600)
	_, stderr, code = pouch(t, "", "fetch", "--config", cfg)
	if code != 2 || !strings.Contains(stderr, "fetch failed for 2 of 3 accounts") {
		t.Fatalf("with a refused password too: exit %d:\n%s", code, stderr)
	}
	// Without the broken account, 3.
	if _, stderr, code = pouch(t, "", "fetch", "--config", cfg, "alice", "bob"); code != 3 {
		t.Fatalf("without the broken account: exit %d:\n%s", code, stderr)
	}
}
