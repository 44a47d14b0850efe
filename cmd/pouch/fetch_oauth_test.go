package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/oauthtest"
	"github.com/pouchmail/pouch/internal/popscript"
	"github.com/pouchmail/pouch/internal/testkit"
)

// useTestBrowser plays the user's browser for pouch fetch auth login: it
// follows the sign-in address to the test provider, which approves at once
// and sends it back to the loopback address.
func useTestBrowser(t *testing.T) {
	old := openBrowser
	var wg sync.WaitGroup
	openBrowser = func(u string) error {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 20 * time.Second}
			resp, err := c.Get(u)
			if err != nil {
				t.Errorf("browser: %v", err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}()
		return nil
	}
	t.Cleanup(func() { wg.Wait(); openBrowser = old })
}

// tokenChecker is a mail server's check of the test provider's tokens.
func tokenChecker(srv *oauthtest.Server, refused *sync.Map) func(user, token string) bool {
	return func(user, token string) bool {
		if _, ok := refused.Load(token); ok {
			return false
		}
		email, err := srv.Verify(token)
		return err == nil && email == user
	}
}

// ageToken makes the stored access token one that expires within a
// minute, as a run an hour later would find it.
func ageToken(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	rec["expiry"] = now.Add(time.Minute).Format(time.RFC3339Nano)
	rec["obtained"] = now.Add(-59 * time.Minute).Format(time.RFC3339Nano)
	data, _ = json.Marshal(rec)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return rec["access_token"].(string)
}

func accessToken(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		AccessToken string `json:"access_token"`
	}
	json.Unmarshal(data, &rec)
	return rec.AccessToken
}

// noSecrets fails the test if any secret the provider issued or was sent
// appears in what pouch fetch printed.
func noSecrets(t *testing.T, srv *oauthtest.Server, shown string, more ...string) {
	t.Helper()
	for _, s := range append(srv.Secrets(), more...) {
		if len(s) >= 6 && strings.Contains(shown, s) {
			t.Fatalf("secret %.12s… shown:\n%s", s, shown)
		}
	}
}

// A Microsoft 365 account, end to end against a server that behaves like
// Microsoft's (-ERR Protocol error for a token on the AUTH line): one
// sign-in, then fetches with the two-step XOAUTH2 exchange at once,
// tokens refreshed before they expire, and, once the user revoked the
// access, the sentence that says to log in again and exit status 3.
func TestFetchMicrosoftAccount(t *testing.T) {
	useTestBrowser(t)
	srv := oauthtest.New(t, oauthtest.Options{})
	var refused sync.Map
	b := (&popscript.Box{Messages: []popscript.Message{{UID: "m1", Body: "Subject: 1\n\none\n"}},
		OAuth: &popscript.OAuth{Mechanisms: []string{"XOAUTH2"}, TwoStepOnly: true, Check: tokenChecker(srv, &refused),
			Refusal: "Authentication failure: unknown user name or bad password."}}).Start(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fetch.toml")
	os.WriteFile(cfg, []byte(`
state-dir = "`+dir+`/state"
tls = "none"

[account.work]
server = "`+b.Addr+`"
user = "alice@example.org"
to = "maildir:`+dir+`/work"
provider = "microsoft"
client-id = "`+srv.ClientID()+`"
tenant = "organizations"
auth-url = "`+srv.AuthURL()+`"
token-url = "`+srv.TokenURL()+`"
device-url = "`+srv.DeviceURL()+`"
scopes = ["pop", "offline_access"]
`), 0o600)
	var shown strings.Builder
	fetch := func(args ...string) (string, int) {
		_, stderr, code := pouch(t, "", append([]string{"fetch", "--config", cfg}, args...)...)
		shown.WriteString(stderr)
		return stderr, code
	}
	// Before the sign-in: the command to run, and status 3.
	out, code := fetch()
	if code != 3 || !strings.Contains(out, "work: it has not signed in to its provider yet; log in with: pouch fetch auth login work") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	out, code = fetch("auth", "status")
	if code != 3 || !strings.Contains(out, "work: microsoft, not signed in; run: pouch fetch auth login work") {
		t.Fatalf("status: exit %d:\n%s", code, out)
	}
	out, code = fetch("auth", "login", "work", "--browser")
	if code != 0 || !strings.Contains(out, "Account work is signed in") {
		t.Fatalf("login: exit %d:\n%s", code, out)
	}
	tokenFile := filepath.Join(dir, "state", "oauth", "work.json")
	if fi, err := os.Stat(tokenFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	out, code = fetch("auth", "status", "work")
	if code != 0 || !strings.Contains(out, "work: microsoft, signed in") || !strings.Contains(out, "refreshed by itself") {
		t.Fatalf("status: exit %d:\n%s", code, out)
	}
	out, code = fetch()
	if code != 0 || !strings.Contains(out, "work: 1 fetched") {
		t.Fatalf("fetch: exit %d:\n%s", code, out)
	}
	for _, s := range b.Sessions() {
		for _, l := range s {
			if strings.HasPrefix(l, "AUTH XOAUTH2 ") {
				t.Fatalf("a token on the AUTH line: %q", s)
			}
		}
	}

	// An hour later: the token is refreshed before it is used.
	old := ageToken(t, tokenFile)
	b.Append(popscript.Message{UID: "m2", Body: "Subject: 2\n\ntwo\n"})
	out, code = fetch()
	if code != 0 || !strings.Contains(out, "work: 1 fetched") || srv.Count("refresh_token") != 1 || accessToken(t, tokenFile) == old {
		t.Fatalf("refresh: exit %d, %d refreshes:\n%s", code, srv.Count("refresh_token"), out)
	}

	// The user revokes Pouch's access at the provider.
	srv.RevokeAll()
	ageToken(t, tokenFile)
	out, code = fetch()
	if code != 3 || !strings.Contains(out, "pouch fetch: work: the provider no longer accepts its sign-in (the refresh token was revoked or has expired); log in again with: pouch fetch auth login work") {
		t.Fatalf("revoked: exit %d:\n%s", code, out)
	}
	out, code = fetch("auth", "logout", "work")
	if code != 0 || !strings.Contains(out, "work: signed out") {
		t.Fatalf("logout: exit %d:\n%s", code, out)
	}
	if _, err := os.Stat(tokenFile); !os.IsNotExist(err) {
		t.Fatal("the token file is still there")
	}
	if len(srv.Violations()) != 0 || len(b.Problems()) != 0 {
		t.Fatalf("violations %q, problems %q", srv.Violations(), b.Problems())
	}
	noSecrets(t, srv, shown.String())
}

// A Gmail account against a server that behaves like Gmail's: the token
// on the AUTH line, and for a token it no longer takes, its JSON error
// challenge, answered with an empty line; Pouch then refreshes the token
// once and fetches. The client secret comes from a file and is never shown.
func TestFetchGmailAccount(t *testing.T) {
	useTestBrowser(t)
	const secret = "GOCSPX-test-client-secret"
	srv := oauthtest.New(t, oauthtest.Options{ClientSecret: secret, User: "alice@gmail.com"})
	var refused sync.Map
	b := (&popscript.Box{Messages: []popscript.Message{{UID: "g1", Body: "Subject: 1\n\none\n"}},
		OAuth: &popscript.OAuth{Mechanisms: []string{"XOAUTH2"}, Check: tokenChecker(srv, &refused),
			Challenge: `{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`,
			Refusal:   "[AUTH] Invalid credentials."}}).Start(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "secret"), []byte(secret+"\n"), 0o600)
	cfg := filepath.Join(dir, "fetch.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
state-dir = "%[1]s/state"
tls = "none"

[account.gmail]
server = "%[2]s"
user = "alice@gmail.com"
to = "maildir:%[1]s/gmail"
keep = "forever"
provider = "gmail"
client-id = "%[3]s"
client-secret-file = "%[1]s/secret"
auth-url = "%[4]s"
token-url = "%[5]s"
`, dir, b.Addr, srv.ClientID(), srv.AuthURL(), srv.TokenURL())), 0o600)
	var shown strings.Builder
	fetch := func(args ...string) (string, int) {
		_, stderr, code := pouch(t, "", append([]string{"fetch", "--config", cfg}, args...)...)
		shown.WriteString(stderr)
		return stderr, code
	}
	if out, code := fetch("auth", "login", "gmail"); code != 0 {
		t.Fatalf("login: exit %d:\n%s", code, out)
	}
	tokenFile := filepath.Join(dir, "state", "oauth", "gmail.json")
	if out, code := fetch(); code != 0 || !strings.Contains(out, "gmail: 1 fetched") {
		t.Fatalf("fetch: exit %d:\n%s", code, out)
	}
	// The server stops taking the token before it expires (Google
	// revoked it for a password change, say): its challenge, one refresh,
	// and the mail comes.
	refused.Store(accessToken(t, tokenFile), true)
	b.Append(popscript.Message{UID: "g2", Body: "Subject: 2\n\ntwo\n"})
	out, code := fetch()
	if code != 0 || !strings.Contains(out, "gmail: 1 fetched") || srv.Count("refresh_token") != 1 {
		t.Fatalf("after the challenge: exit %d, %d refreshes:\n%s", code, srv.Count("refresh_token"), out)
	}
	// The user revokes the access: the challenge, a refresh the provider
	// refuses, the sentence, status 3.
	refused.Store(accessToken(t, tokenFile), true)
	srv.RevokeAll()
	out, code = fetch()
	if code != 3 || !strings.Contains(out, "log in again with: pouch fetch auth login gmail") {
		t.Fatalf("refused: exit %d:\n%s", code, out)
	}
	if p := b.Problems(); len(p) != 0 {
		t.Fatalf("%q", p) // every challenge answered with an empty line
	}
	noSecrets(t, srv, shown.String(), secret)
}

// The device flow for a headless machine: the code is printed, the user
// enters it elsewhere, and the account is signed in.
func TestFetchAuthLoginDevice(t *testing.T) {
	srv := oauthtest.New(t, oauthtest.Options{DeviceInterval: 1})
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fetch.toml")
	os.WriteFile(cfg, []byte(`
state-dir = "`+dir+`/state"
[account.isp]
server = "pop.example.org:995"
user = "alice@example.org"
provider = "custom"
issuer = "`+srv.URL+`"
client-id = "`+srv.ClientID()+`"
scopes = "pop offline_access"
`), 0o600)
	out := &testkit.SyncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run([]string{"fetch", "--config", cfg, "auth", "login", "--device", "isp"}, strings.NewReader(""), io.Discard, out)
	}()
	re := regexp.MustCompile(`enter the code\s+(\S+)`)
	deadline := time.Now().Add(20 * time.Second)
	var code string
	for code == "" {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			code = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no code:\n%s", out.String())
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := srv.Approve(code, false); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%v\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the device sign-in did not end")
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "oauth", "isp.json")); err != nil {
		t.Fatal(err)
	}
	if v := srv.Violations(); len(v) != 0 {
		t.Fatalf("%q", v)
	}
	noSecrets(t, srv, out.String())
}

// Bad OAuth settings are configuration errors (status 2) naming the key.
func TestFetchOAuthConfigErrors(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fetch.toml")
	for _, tc := range []struct{ body, msg string }{
		{`provider = "gmail"`, `provider "gmail" needs client-id and client-secret`},
		{`provider = "yahoo"`, `unknown provider "yahoo"`},
		{"provider = \"microsoft\"\nclient-id = \"x\"\npassword-command = \"echo x\"", "exactly one of"},
		{"client-id = \"x\"\npassword-command = \"echo x\"", "--client-id needs --provider"},
		{"provider = \"custom\"\nclient-id = \"x\"\ntoken-url = \"http://auth.example.org/token\"\nauth-url = \"https://auth.example.org/a\"", "token-url: http://auth.example.org/token must use https"},
		{"provider = \"gmail\"\nclient-id = \"x\"\nclient-secret-file = \"" + dir + "/missing\"", "client-secret-file:"},
	} {
		os.WriteFile(cfg, []byte("[account.a]\nserver = \"h:995\"\nuser = \"u\"\nto = \"maildir:"+dir+"/m\"\n"+tc.body+"\n"), 0o600)
		_, stderr, code := pouch(t, "", "fetch", "--config", cfg)
		if code != 2 || !strings.Contains(stderr, tc.msg) {
			t.Errorf("%s: exit %d %q", tc.body, code, stderr)
		}
	}
	_, stderr, code := pouch(t, "", "fetch", "--config", cfg, "auth", "fly")
	if code != 2 || !strings.Contains(stderr, `unknown command "fly"`) {
		t.Errorf("exit %d %q", code, stderr)
	}
	os.WriteFile(cfg, []byte("[account.a]\nserver = \"h:995\"\nuser = \"u\"\npassword-command = \"echo x\"\n"), 0o600)
	_, stderr, code = pouch(t, "", "fetch", "--config", cfg, "auth", "login", "a")
	if code != 2 || !strings.Contains(stderr, "account a has no provider") {
		t.Errorf("exit %d %q", code, stderr)
	}
	_, stderr, code = pouch(t, "", "fetch", "--config", cfg, "auth", "status")
	if code != 0 || stderr != "a: no provider; it logs in with a password or a token command\n" {
		t.Errorf("exit %d %q", code, stderr)
	}
	// --mark-existing is done once, from the command line only.
	os.WriteFile(cfg, []byte("[account.a]\nserver = \"h:995\"\nuser = \"u\"\npassword-command = \"echo x\"\nmark-existing = true\n"), 0o600)
	_, stderr, code = pouch(t, "", "fetch", "--config", cfg)
	if code != 2 || !strings.Contains(stderr, `unknown key "mark-existing"`) {
		t.Errorf("exit %d %q", code, stderr)
	}
}

// --mark-existing from the command line, then only new mail; --quiet-empty
// prints nothing when nothing happened; a run put off for LOGIN-DELAY is no
// failure.
func TestFetchMarkExistingQuietAndLoginDelay(t *testing.T) {
	b := (&popscript.Box{Messages: []popscript.Message{{UID: "1", Body: "Subject: 1\n\none\n"}, {UID: "2", Body: "Subject: 2\n\ntwo\n"}}}).Start(t)
	dir := t.TempDir()
	args := []string{"fetch", "--server", b.Addr, "--tls", "none", "--user", "u", "--password-command", "echo x",
		"--to", "maildir:" + dir + "/Mail", "--state-dir", dir + "/state"}
	_, stderr, code := pouch(t, "", append(args, "--mark-existing", "--every", "1m")...) // once, --every or not
	if code != 0 || !strings.Contains(stderr, "recorded 2 messages on the server as fetched, downloading and deleting nothing") {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	_, stderr, code = pouch(t, "", append(args, "--quiet-empty")...)
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d: %q", code, stderr)
	}
	b.Append(popscript.Message{UID: "3", Body: "Subject: 3\n\nthree\n"})
	_, stderr, code = pouch(t, "", append(args, "--quiet-empty")...)
	if code != 0 || !strings.Contains(stderr, "1 fetched") || countFiles(t, dir+"/Mail") != 1 {
		t.Fatalf("exit %d: %q", code, stderr)
	}
	if d := b.Deleted(); len(d) != 1 || d[0] != "3" {
		t.Fatalf("deleted %v", d)
	}

	ld := (&popscript.Box{LoginDelay: time.Hour}).Start(t)
	args = []string{"fetch", "--server", ld.Addr, "--tls", "none", "--user", "u", "--password-command", "echo x",
		"--to", "maildir:" + dir + "/Mail2", "--state-dir", dir + "/state"}
	if _, stderr, code = pouch(t, "", args...); code != 0 {
		t.Fatalf("exit %d: %q", code, stderr)
	}
	_, stderr, code = pouch(t, "", args...)
	if code != 0 || !strings.Contains(stderr, "skipped: the server allows one login every 1h (LOGIN-DELAY): not logging in before") {
		t.Fatalf("exit %d: %q", code, stderr)
	}
	if n := len(ld.Connects()); n != 1 {
		t.Fatalf("%d connections", n)
	}
	_, stderr, code = pouch(t, "", append(args, "--quiet-empty")...)
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d: %q", code, stderr)
	}
}
