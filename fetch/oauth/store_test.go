package oauth

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/internal/oauthtest"
)

// signedIn is an account signed in with the test server.
func signedIn(t *testing.T, o oauthtest.Options) (*oauthtest.Server, Config, *Store) {
	t.Helper()
	srv := oauthtest.New(t, o)
	store := NewStore(t.TempDir(), nil)
	cfg := customConfig(srv, o.ClientSecret)
	if _, err := loginBrowser(t, cfg, store, newBrowser(), io.Discard); err != nil {
		t.Fatal(err)
	}
	return srv, cfg, store
}

// age rewrites the token file as if the token was obtained lifetime ago
// and expires in left.
func age(t *testing.T, store *Store, account string, lifetime, left time.Duration) *record {
	t.Helper()
	rec, err := store.load(account)
	if err != nil {
		t.Fatal(err)
	}
	rec.Expiry = time.Now().Add(left)
	rec.Obtained = rec.Expiry.Add(-lifetime)
	if err := store.save(rec); err != nil {
		t.Fatal(err)
	}
	st := store.account(account)
	st.mu.Lock()
	st.tok = nil // as in a process that starts now
	st.mu.Unlock()
	return rec
}

func TestRefreshBeforeExpiry(t *testing.T) {
	srv, cfg, store := signedIn(t, oauthtest.Options{})
	for _, tc := range []struct {
		lifetime, left time.Duration
		refresh        bool
	}{
		{time.Hour, 10 * time.Minute, false},
		{time.Hour, 4 * time.Minute, true},        // still valid, but inside RefreshBefore
		{time.Hour, -time.Minute, true},           // expired
		{4 * time.Minute, 3 * time.Minute, false}, // short-lived: half its lifetime is the margin
		{4 * time.Minute, time.Minute, true},
	} {
		old := age(t, store, "work", tc.lifetime, tc.left)
		before := srv.Count("refresh_token")
		// A new store: what another run would see.
		src, err := TokenSource(cfg, NewStore(filepath.Dir(store.dir), nil))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := src.Token()
		if err != nil {
			t.Fatal(err)
		}
		refreshed := srv.Count("refresh_token") - before
		if tc.refresh != (refreshed == 1) || refreshed > 1 {
			t.Fatalf("lifetime %v, %v left: %d refreshes", tc.lifetime, tc.left, refreshed)
		}
		now, err := store.load("work")
		if err != nil {
			t.Fatal(err)
		}
		if tc.refresh {
			if tok.AccessToken == old.AccessToken || now.AccessToken != tok.AccessToken {
				t.Fatal("the refreshed token was not handed out and stored")
			}
			// Rotation: the new refresh token is stored.
			if now.RefreshToken == old.RefreshToken || now.RefreshToken == "" {
				t.Fatal("the rotated refresh token was not stored")
			}
			if _, err := srv.Verify(tok.AccessToken); err != nil {
				t.Fatal(err)
			}
		} else if tok.AccessToken != old.AccessToken {
			t.Fatal("a fresh token was replaced")
		}
	}
	if v := srv.Violations(); len(v) > 0 {
		t.Fatal(v)
	}
}

// Parallel fetches of one account, in one process and in two, refresh
// once: with rotation, a second refresh with the same refresh token would
// be refused (and would revoke the grant).
func TestConcurrentSourcesRefreshOnce(t *testing.T) {
	srv, cfg, store := signedIn(t, oauthtest.Options{})
	age(t, store, "work", time.Hour, time.Minute)
	stores := []*Store{store, NewStore(filepath.Dir(store.dir), nil)} // two processes
	var wg sync.WaitGroup
	tokens := make(chan string, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src, err := TokenSource(cfg, stores[i%2])
			if err != nil {
				t.Error(err)
				return
			}
			tok, err := src.Token()
			if err != nil {
				t.Error(err)
				return
			}
			tokens <- tok.AccessToken
		}()
	}
	wg.Wait()
	close(tokens)
	seen := map[string]bool{}
	for tok := range tokens {
		seen[tok] = true
	}
	if n := srv.Count("refresh_token"); n != 1 || len(seen) != 1 {
		t.Fatalf("%d refreshes, %d different tokens", n, len(seen))
	}
	if v := srv.Violations(); len(v) > 0 {
		t.Fatal(v)
	}
}

func TestRevokedRefreshTokenNeedsLogin(t *testing.T) {
	srv, cfg, store := signedIn(t, oauthtest.Options{})
	logger, logs := logCapture()
	store.log = logger
	srv.RevokeAll() // the user removed Pouch's access at the provider
	age(t, store, "work", time.Hour, -time.Minute)
	src, _ := TokenSource(cfg, store)
	_, err := src.Token()
	var lr *LoginRequiredError
	if !errors.As(err, &lr) || lr.Account != "work" || lr.First {
		t.Fatalf("got %T %v", err, err)
	}
	want := "account work: the provider no longer accepts its sign-in (the refresh token was revoked or has expired); log in again with: pouch fetch auth login work"
	if err.Error() != want {
		t.Fatalf("got  %q\nwant %q", err, want)
	}
	if !contains(logs.String(), "oauth refresh token refused") {
		t.Fatalf("no log line: %s", logs)
	}
	// The file stays: logging in again replaces it.
	if _, err := os.Stat(store.Path("work")); err != nil {
		t.Fatal(err)
	}
}

// A server that refuses a token that has not expired yet (the grant was
// revoked): after Invalidate the next Token refreshes, and says to log in
// again when the refresh is refused too.
func TestInvalidate(t *testing.T) {
	srv, cfg, store := signedIn(t, oauthtest.Options{})
	src, _ := TokenSource(cfg, store)
	tok, err := src.Token()
	if err != nil {
		t.Fatal(err)
	}
	src.Invalidate(tok)
	tok2, err := src.Token()
	if err != nil || tok2.AccessToken == tok.AccessToken || srv.Count("refresh_token") != 1 {
		t.Fatalf("after Invalidate: %v, %d refreshes", err, srv.Count("refresh_token"))
	}
	// Another source of the account shares the new token.
	other, _ := TokenSource(cfg, store)
	if tok3, err := other.Token(); err != nil || tok3.AccessToken != tok2.AccessToken {
		t.Fatalf("another source: %v", err)
	}
	srv.RevokeAll()
	src.Invalidate(tok2)
	if _, err := src.Token(); !isLoginRequired(err) {
		t.Fatalf("revoked: %v", err)
	}
}

func TestConfigChangeNeedsLogin(t *testing.T) {
	_, cfg, store := signedIn(t, oauthtest.Options{})
	for _, change := range []func(*Config){
		func(c *Config) { c.ClientID = "another" },
		func(c *Config) { c.Scopes = []string{"pop"} },
		func(c *Config) { c.Provider = Microsoft },
	} {
		c := cfg
		change(&c)
		src, err := TokenSource(c, NewStore(filepath.Dir(store.dir), nil))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := src.Token(); !isLoginRequired(err) || !contains(err.Error(), "log in again with: pouch fetch auth login work") {
			t.Fatalf("got %v", err)
		}
	}
	// Scopes in another order are the same scopes.
	c := cfg
	c.Scopes = []string{"offline_access", "pop"}
	src, _ := TokenSource(c, NewStore(filepath.Dir(store.dir), nil))
	if _, err := src.Token(); err != nil {
		t.Fatal(err)
	}
}

func TestNeverSignedIn(t *testing.T) {
	cfg := Config{Account: "my mail", Provider: Custom, ClientID: "x", TokenURL: "https://x/t", AuthURL: "https://x/a"}
	src, err := TokenSource(cfg, NewStore(t.TempDir(), nil))
	if err != nil {
		t.Fatal(err)
	}
	_, err = src.Token()
	if !isLoginRequired(err) || err.Error() != "account my mail: it has not signed in to its provider yet; log in with: pouch fetch auth login 'my mail'" {
		t.Fatalf("got %v", err)
	}
}

func TestTokenFileModeAndReplacement(t *testing.T) {
	_, cfg, store := signedIn(t, oauthtest.Options{})
	path := store.Path("work")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %o", fi.Mode().Perm())
	}
	if di, _ := os.Stat(store.dir); di.Mode().Perm() != 0o700 {
		t.Fatalf("token directory mode %o", di.Mode().Perm())
	}
	age(t, store, "work", time.Hour, -time.Minute)
	fi, _ = os.Stat(path)
	ino := fi.Sys().(*syscall.Stat_t).Ino
	// Temporary files a killed process left, as this version and earlier
	// ones name them, go with the next save.
	for _, left := range []string{fsx.TempPrefix(path) + "123", ".work.json.456.tmp"} {
		os.WriteFile(filepath.Join(store.dir, left), []byte("{}"), 0o600)
	}
	src, _ := TokenSource(cfg, store)
	if _, err := src.Token(); err != nil {
		t.Fatal(err)
	}
	fi, _ = os.Stat(path)
	if fi.Sys().(*syscall.Stat_t).Ino == ino {
		t.Fatal("the token file was written in place, not replaced")
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("refreshed token file mode %o", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(store.dir)
	for _, e := range entries {
		if e.Name() != "work.json" && e.Name() != "work.lock" {
			t.Errorf("left in the token directory: %s", e.Name())
		}
	}
	// A token file others can read is refused, saying how to fix it.
	os.Chmod(path, 0o644)
	age2 := NewStore(filepath.Dir(store.dir), nil)
	src2, _ := TokenSource(cfg, age2)
	if _, err := src2.Token(); err == nil || !contains(err.Error(), "can be read by other users (mode 0644): run chmod 600") {
		t.Fatalf("mode 0644: %v", err)
	}
	// A damaged file says so without quoting it.
	os.Chmod(path, 0o600)
	os.WriteFile(path, []byte(`{"access_token": "abc`), 0o600)
	if _, err := src2.Token(); err == nil || !contains(err.Error(), "is damaged (cut short); log in again") {
		t.Fatalf("damaged: %v", err)
	}
}

func TestFileNames(t *testing.T) {
	for in, want := range map[string]string{
		"work":              "work",
		"alice@example.org": "alice@example.org",
		".hidden":           "%2Ehidden",
		"a.b":               "a.b",
		"my mail/x":         "my%20mail%2Fx",
		"ü":                 "%C3%BC",
	} {
		if got := fileName(in); got != want {
			t.Errorf("fileName(%q) = %q, want %q", in, got, want)
		}
	}
}

const crashChildEnv = "POUCH_OAUTH_CRASH_CHILD"

// TestMain lets a test run this binary as a process that refreshes a token
// and is killed at a crash point.
func TestMain(m *testing.M) {
	if spec := os.Getenv(crashChildEnv); spec != "" {
		var c struct {
			Dir string
			Cfg Config
		}
		if err := json.Unmarshal([]byte(spec), &c); err != nil {
			os.Exit(3)
		}
		src, err := TokenSource(c.Cfg, NewStore(c.Dir, nil))
		if err != nil {
			os.Exit(4)
		}
		if _, err := src.Token(); err != nil {
			os.Stderr.WriteString(err.Error())
			os.Exit(5)
		}
		os.Exit(0) // the crash point was not reached
	}
	os.Exit(m.Run())
}

// A process killed while it replaces the token file leaves the old file or
// the new one, whole and mode 0600; the next run then works, or says to
// log in again (the old refresh token was already rotated away), never
// that the file is damaged.
func TestCrashDuringTokenWrite(t *testing.T) {
	for _, point := range []string{"oauth.token.written", "oauth.token.renamed"} {
		t.Run(point, func(t *testing.T) {
			srv, cfg, store := signedIn(t, oauthtest.Options{})
			old := age(t, store, "work", time.Hour, -time.Minute)
			spec, _ := json.Marshal(struct {
				Dir string
				Cfg Config
			}{filepath.Dir(store.dir), cfg})
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashChildEnv+"="+string(spec), crashpoint.Env+"="+point)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the child was not killed: %v %s", err, out)
			}
			if srv.Count("refresh_token") != 1 {
				t.Fatalf("%d refreshes", srv.Count("refresh_token"))
			}
			rec, err := store.load("work")
			if err != nil {
				t.Fatalf("after the crash: %v", err)
			}
			fi, _ := os.Stat(store.Path("work"))
			if fi.Mode().Perm() != 0o600 {
				t.Fatalf("mode %o", fi.Mode().Perm())
			}
			src, _ := TokenSource(cfg, NewStore(filepath.Dir(store.dir), nil))
			tok, err := src.Token()
			switch point {
			case "oauth.token.written":
				if rec.AccessToken != old.AccessToken {
					t.Fatal("the new token is in the file before the rename")
				}
				if !isLoginRequired(err) {
					t.Fatalf("next run: %v", err)
				}
				// The temporary file goes with the next save.
				if tmp, _ := filepath.Glob(filepath.Join(store.dir, fsx.TempPrefix("work.json")+"*")); len(tmp) != 1 {
					t.Fatalf("temporary files: %v", tmp)
				}
				if _, err := loginBrowser(t, cfg, store, newBrowser(), io.Discard); err != nil {
					t.Fatal(err)
				}
				if tmp, _ := filepath.Glob(filepath.Join(store.dir, fsx.TempPrefix("work.json")+"*")); len(tmp) != 0 {
					t.Fatalf("temporary files after a new sign-in: %v", tmp)
				}
			case "oauth.token.renamed":
				if rec.AccessToken == old.AccessToken || err != nil || tok.AccessToken != rec.AccessToken {
					t.Fatalf("the renamed token is not the one used: %v", err)
				}
				if srv.Count("refresh_token") != 1 {
					t.Fatal("the stored token was refreshed again")
				}
			}
			if strings.Contains(string(out), old.RefreshToken) {
				t.Fatal("the child printed the refresh token")
			}
		})
	}
}
