package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pouchmail/pouch/admin"
	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/internal/tlsutil"
	"github.com/pouchmail/pouch/retention"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/maildir"
)

// fakeServer answers on DATA/admin.sock like pouch serve.
type fakeServer struct {
	mu       sync.Mutex
	sessions []admin.Session
	kicked   []string
	reload   error
	stats    map[string]store.Stats
}

func (f *fakeServer) Who() []admin.Session {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sessions
}

func (f *fakeServer) Kick(target string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kicked = append(f.kicked, target)
	n := 0
	for _, s := range f.sessions {
		if s.ID == target || s.User == target {
			n++
		}
	}
	return n
}

func (f *fakeServer) Reload() error { return f.reload }

func (f *fakeServer) MailboxStats(_ context.Context, user string) (store.Stats, error) {
	st, ok := f.stats[user]
	if !ok {
		return st, errors.New(`there is no maildrop for "` + user + `"`)
	}
	return st, nil
}

func startFakeServer(t *testing.T, data string, h admin.Handler) {
	t.Helper()
	l, err := admin.Listen(filepath.Join(data, "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { admin.Serve(ctx, l, h, slog.New(slog.NewTextHandler(io.Discard, nil))); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestAdminCommands(t *testing.T) {
	data := t.TempDir()
	since := time.Date(2025, 6, 1, 9, 30, 0, 0, time.UTC)
	f := &fakeServer{
		sessions: []admin.Session{
			{ID: "ab12cd000001", Remote: "192.0.2.7:50000", Since: since, BytesIn: 0, BytesOut: 18, State: "authorization"},
			{ID: "ab12cd000002", User: "alice", Remote: "[2001:db8::1]:50001", TLS: true, Since: since.Add(time.Minute), BytesIn: 1234, BytesOut: 987654, State: "transaction"},
			{ID: "ab12cd000003", User: "alice", Remote: "127.0.0.1:50002", Since: since.Add(2 * time.Minute), State: "transaction"},
		},
		stats: map[string]store.Stats{"alice": {Messages: 2, Octets: 300, Oldest: since, Newest: since.Add(time.Hour), Retrieved: 1,
			Held: 1, HeldOctets: 50, OldestDeleted: since, Hold: store.Hold{Set: true, Since: since, Reason: "case 7"}}},
	}
	startFakeServer(t, data, f)

	out, e, code := pouch(t, "", "who", "--data", data)
	if code != 0 {
		t.Fatalf("who: %d %s", code, e)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "SESSION USER ADDRESS TLS SINCE BYTES-IN BYTES-OUT" {
		t.Fatalf("who:\n%s", out)
	}
	local := since.Add(time.Minute).Local().Format("2006-01-02 15:04:05")
	if got := strings.Join(strings.Fields(lines[2]), " "); got != "ab12cd000002 alice [2001:db8::1]:50001 yes "+local+" 1234 987654" {
		t.Errorf("who, second session: %q", got)
	}
	if f := strings.Fields(lines[1]); f[1] != "-" || f[3] != "no" {
		t.Errorf("who, a session before login: %q", lines[1])
	}
	// The columns line up.
	col := strings.Index(lines[0], "ADDRESS")
	for _, l := range lines[1:] {
		if l[col-1] != ' ' || l[col] == ' ' {
			t.Errorf("column ADDRESS not aligned:\n%s", out)
		}
	}

	out, _, code = pouch(t, "", "who", "--json", "--data", data)
	var sessions []admin.Session
	if code != 0 || json.Unmarshal([]byte(out), &sessions) != nil || len(sessions) != 3 || sessions[1].BytesOut != 987654 || !sessions[1].TLS {
		t.Fatalf("who --json: %d %s", code, out)
	}

	if out, e, code := pouch(t, "", "kick", "alice", "--data", data); code != 0 || out != "closed 2 sessions\n" {
		t.Errorf("kick alice: %d %q %s", code, out, e)
	}
	if out, _, code := pouch(t, "", "kick", "--data", data, "ab12cd000001"); code != 0 || out != "closed 1 session\n" {
		t.Errorf("kick by id: %d %q", code, out)
	}
	if _, e, code := pouch(t, "", "kick", "--data", data, "carol"); code != 1 || !strings.Contains(e, `kick: no open session is "carol" or belongs to a user "carol"`) || strings.Count(e, "\n") != 1 {
		t.Errorf("kick carol: %d %q", code, e)
	}
	if _, e, code := pouch(t, "", "kick", "--data", data); code != 2 || !strings.Contains(e, "kick takes one user name or session id") {
		t.Errorf("kick without a target: %d %q", code, e)
	}

	if out, e, code := pouch(t, "", "reload", "--data", data); code != 0 || out != "reloaded\n" {
		t.Errorf("reload: %d %q %s", code, out, e)
	}
	f.mu.Lock()
	f.reload = errors.New("kept the old users file (line 2 is damaged)")
	f.mu.Unlock()
	if _, e, code := pouch(t, "", "reload", "--data", data); code != 1 || e != "pouch: reload: kept the old users file (line 2 is damaged)\n" {
		t.Errorf("failed reload: %d %q", code, e)
	}

	out, e, code = pouch(t, "", "mailbox", "stats", "--data", data, "alice")
	if code != 0 {
		t.Fatalf("mailbox stats: %d %s", code, e)
	}
	for _, want := range []string{"messages         2 (300 octets)", "retrieved        1", "deletion window  1 (50 octets), deleted since ", "legal hold       yes, since ", ": case 7",
		"oldest           " + since.Local().Format("2006-01-02 15:04:05")} {
		if !strings.Contains(out, want) {
			t.Errorf("mailbox stats lacks %q:\n%s", want, out)
		}
	}
	out, _, code = pouch(t, "", "mailbox", "stats", "--json", "--data", data, "alice")
	var ws admin.Stats
	if code != 0 || json.Unmarshal([]byte(out), &ws) != nil || ws.Messages != 2 || ws.Hold.Reason != "case 7" || !ws.Oldest.Equal(since) {
		t.Errorf("mailbox stats --json: %d %s", code, out)
	}
	if _, e, code := pouch(t, "", "mailbox", "stats", "--data", data, "bob"); code != 1 || !strings.Contains(e, `mailbox stats: there is no maildrop for "bob"`) {
		t.Errorf("mailbox stats bob: %d %q", code, e)
	}
}

// Without a server, who, kick and reload say so in one sentence, and
// mailbox stats reads the Maildir itself.
func TestAdminCommandsWithoutServer(t *testing.T) {
	data := t.TempDir()
	sock := filepath.Join(data, "admin.sock")
	for _, cmd := range []string{"who", "kick", "reload"} {
		args := []string{cmd, "--data", data}
		if cmd == "kick" {
			args = append(args, "alice")
		}
		_, e, code := pouch(t, "", args...)
		want := "pouch: " + cmd + ": no server is running on " + data + " (cannot connect to " + sock + ")\n"
		if code != 1 || e != want {
			t.Errorf("%s without a server: exit %d, %q; want %q", cmd, code, e, want)
		}
	}
	// A custom socket is named as such.
	other := filepath.Join(t.TempDir(), "pouch.sock")
	if _, e, code := pouch(t, "", "who", "--admin-socket", other); code != 1 || !strings.Contains(e, "no server is running on "+other) {
		t.Errorf("who --admin-socket: %d %q", code, e)
	}
	// The configuration file of pouch serve tells where to look.
	cfg := filepath.Join(t.TempDir(), "pouch.toml")
	os.WriteFile(cfg, []byte("data = \""+data+"\"\nadmin-socket = \"off\"\n"), 0o600)
	if _, e, code := pouch(t, "", "who", "--config", cfg); code != 1 || !strings.Contains(e, "the admin socket is off") {
		t.Errorf("who with the socket off: %d %q", code, e)
	}

	mail := maildir.New(filepath.Join(data, "mail"))
	if err := mail.Create("alice"); err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"Subject: one\r\n\r\nfirst\r\n", "Subject: two\n\nsecond\n"} {
		if err := mail.Deliver(context.Background(), "alice", strings.NewReader(m)); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := store.Store(mail).(store.Retainer); !ok {
		t.Skip("the Maildir store does not describe maildrops")
	}
	want := int64(len("Subject: one\r\n\r\nfirst\r\n") + len("Subject: two\r\n\r\nsecond\r\n"))
	out, e, code := pouch(t, "", "mailbox", "stats", "--json", "--data", data, "alice")
	var ws admin.Stats
	if code != 0 || json.Unmarshal([]byte(out), &ws) != nil || ws.Messages != 2 || ws.Octets != want || ws.Hold.Set {
		t.Fatalf("mailbox stats without a server: %d %s %s (want 2 messages, %d octets)", code, out, e, want)
	}
	// The same, from the configuration file, with the socket off.
	if out, e, code := pouch(t, "", "mailbox", "stats", "--config", cfg, "alice"); code != 0 || !strings.Contains(out, "messages         2 (") {
		t.Errorf("mailbox stats --config: %d %s %s", code, out, e)
	}
	if _, e, code := pouch(t, "", "mailbox", "stats", "--data", data, "nobody"); code != 1 || !strings.Contains(e, `there is no maildrop for "nobody"`) {
		t.Errorf("mailbox stats of a user without mail: %d %q", code, e)
	}
	if _, e, code := pouch(t, "", "mailbox", "stats", "--data", data, "../etc"); code != 1 || !strings.Contains(e, `"../etc" cannot be a user name`) {
		t.Errorf("mailbox stats of a bad name: %d %q", code, e)
	}
}

func TestAdminCommandsUsage(t *testing.T) {
	for _, cmd := range []string{"who", "kick", "reload", "mailbox"} {
		out, _, code := pouch(t, "", "help", cmd)
		if code != 0 || !strings.Contains(out, "Usage: pouch "+cmd) || !strings.Contains(out, "Example") {
			t.Errorf("help %s: %d %q", cmd, code, out)
		}
	}
	if out, _, code := pouch(t, "", "mailbox", "stats", "--help"); !strings.Contains(out, "--data") || code != 0 {
		t.Errorf("mailbox stats --help: %d %q", code, out)
	}
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"who", "extra"}, `who takes no arguments, got "extra"`},
		{[]string{"reload", "now"}, `reload takes no arguments, got "now"`},
		{[]string{"mailbox"}, "mailbox: say stats"},
		{[]string{"mailbox", "frob"}, `mailbox: unknown action "frob"`},
		{[]string{"mailbox", "stats"}, "mailbox stats takes one user name"},
		{[]string{"who", "--frob"}, "frob"},
	} {
		if _, e, code := pouch(t, "", tc.args...); code != 2 || !strings.Contains(e, tc.msg) {
			t.Errorf("pouch %v: %d %q, want exit 2 with %q", tc.args, code, e, tc.msg)
		}
	}
	if out, _, _ := pouch(t, "", "help"); !strings.Contains(out, "pouch who") || !strings.Contains(out, "pouch mailbox stats") {
		t.Errorf("help lacks the operator commands:\n%s", out)
	}
}

// pouch serve refuses a data directory where another server answers on the
// admin socket, and replaces a stale socket.
func TestServeAdminSocket(t *testing.T) {
	data := t.TempDir()
	startFakeServer(t, data, &fakeServer{})
	_, e, code := pouch(t, "", "serve", "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "")
	if code != 1 || !strings.Contains(e, "another pouch serve is running with this data directory") {
		t.Fatalf("a second server: %d %q", code, e)
	}
	// With the socket off, nothing is checked or made.
	out, _, code := pouch(t, "", "check-config", "--data", data, "--admin-socket", "off")
	if code != 0 || !strings.Contains(out, `admin-socket = "off"`) {
		t.Errorf("check-config: %d %s", code, out)
	}
}

// reload is one path for SIGHUP and pouch reload: it reads everything it
// can and names, in one sentence, what it kept.
func TestReloadReportsWhatFailed(t *testing.T) {
	data := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	usersPath := filepath.Join(data, "users")
	if err := auth.AddUser(usersPath, "alice", "Reload-test-9-kestrel"); err != nil {
		t.Fatal(err)
	}
	users, err := auth.OpenUsers(usersPath)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := tlsutil.NewManager(nil, nil, filepath.Join(data, "tls"), "localhost", log)
	if err != nil {
		t.Fatal(err)
	}
	bansPath := filepath.Join(data, "bans.json")
	bans, err := guard.New(guard.Config{StatePath: bansPath})
	if err != nil {
		t.Fatal(err)
	}
	if err := reload(log, &configReloader{}, certs, &accounts{users: users}, nil, bans); err != nil {
		t.Fatalf("reload of good files: %v", err)
	}
	// A ban written by pouch ban add is in force at once after the reload.
	other, _ := guard.New(guard.Config{StatePath: bansPath})
	nets, _ := guard.ParseNets("203.0.113.9")
	if err := other.Ban(nets[0], time.Hour, "by hand"); err != nil {
		t.Fatal(err)
	}
	if err := reload(log, &configReloader{}, certs, &accounts{users: users}, nil, bans); err != nil {
		t.Fatal(err)
	}
	if _, banned := bans.Banned(nets[0].Addr()); !banned {
		t.Error("the new ban is not in force after reload")
	}

	os.WriteFile(bansPath, []byte("{damaged"), 0o600)
	os.WriteFile(filepath.Join(data, "tls", "cert.pem"), []byte("not a certificate"), 0o600)
	err = reload(log, &configReloader{}, certs, &accounts{users: users}, nil, bans)
	if err == nil || !strings.Contains(err.Error(), "kept the old TLS certificates") || !strings.Contains(err.Error(), "kept the old ban list") ||
		strings.Contains(err.Error(), "users file") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("reload with a damaged ban list and certificate: %v", err)
	}
	if !users.Verify("alice", "Reload-test-9-kestrel") {
		t.Error("the users file was not read")
	}
}

// A reload applies the retention policy and log level of a changed
// configuration file, names the keys that need a restart, and keeps
// everything when the file is broken.
func TestConfigReload(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pouch.toml")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("expire = \"30d\"\nlog-level = \"info\"\nidle-timeout = \"10m\"\n")
	args := []string{"--config", file, "--deletion-window", "7d"}
	fs, s := checkedSettings(t, args...)
	var logs bytes.Buffer
	log, level := newLogger(&logs, s.logLevel, s.logFormat)
	r := &configReloader{args: args, running: fs, file: file, level: level,
		policies: retention.NewPolicies(s.retention.policy, nil), log: log}

	write("expire = \"2d\"\nlog-level = \"debug\"\nidle-timeout = \"20m\"\ndeletion-window = \"1d\"\n")
	if err := r.reload(); err != nil {
		t.Fatal(err)
	}
	p := r.policies.Default()
	if p.Expire != 48*time.Hour || p.Window != 7*24*time.Hour {
		t.Fatalf("policy after reload: %+v (the command line's window must win)", p)
	}
	if level.Level() != slog.LevelDebug {
		t.Fatalf("level after reload: %v", level.Level())
	}
	if !strings.Contains(logs.String(), "keys=idle-timeout") {
		t.Fatalf("no restart warning for idle-timeout:\n%s", logs.String())
	}
	write("expire = \"soon\"\n")
	if err := r.reload(); err == nil || !strings.Contains(err.Error(), "kept the old configuration") || !strings.Contains(err.Error(), file+`: key "expire"`) {
		t.Fatalf("bad file: %v", err)
	}
	if r.policies.Default().Expire != 48*time.Hour {
		t.Fatal("a bad file changed the policy")
	}
	write("expire = [\n")
	if err := r.reload(); err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("broken file: %v", err)
	}
}
