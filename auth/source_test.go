package auth

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// count returns how many lines of the log have level and contain msg.
func count(log *bytes.Buffer, level, msg string) int {
	n := 0
	for _, line := range strings.Split(log.String(), "\n") {
		if strings.Contains(line, "level="+level) && strings.Contains(line, msg) {
			n++
		}
	}
	return n
}

// testLogger logs, from one goroutine, into the returned buffer.
func testLogger() (*slog.Logger, *bytes.Buffer) {
	var b bytes.Buffer
	return slog.New(slog.NewTextHandler(&b, nil)), &b
}

// replace writes the users file anew through a temporary file renamed over
// it, as the administration functions and most editors do.
func replace(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

const (
	aliceLine = "alice:{PLAIN}alice-pw::::::quota_storage=1M\n"
	bobLine   = "bob:{PLAIN}bob-pw\n"
)

// Every way a users file that had users can become unusable keeps the users
// it had, cannot confirm any other name, is logged once as an ERROR and its
// end as an INFO, and ends when the file is good again.
func TestUsersFileFaultsKeepTheLastGoodList(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		reason  string
		breakIt func(t *testing.T, path string)
	}{
		{"removed", "is missing", func(t *testing.T, path string) { os.Remove(path) }},
		{"emptied", "is empty", func(t *testing.T, path string) { os.Truncate(path, 0) }},
		{"white space only", "is empty", func(t *testing.T, path string) { os.WriteFile(path, []byte("\n \n\t\n"), 0o600) }},
		{"garbled", "is damaged: 2 lines name no user (the first, line 1: no ':'", func(t *testing.T, path string) {
			os.WriteFile(path, []byte("\x00\x01\x02garbage\nnot a users file\n"), 0o600)
		}},
		{"a damaged line", "is damaged: line 2: auth: user name \"carol x\" contains white space", func(t *testing.T, path string) {
			// A new user on a good line is not taken either: the file is
			// used whole or not at all, like a configuration file.
			replace(t, path, "dave:{PLAIN}d\ncarol x:{PLAIN}c\n")
		}},
		{"truncated mid-line", "is damaged: line 2: no ':'", func(t *testing.T, path string) {
			os.WriteFile(path, []byte(aliceLine+"bo"), 0o600)
		}},
		{"a directory in its place", "cannot be read: is a directory", func(t *testing.T, path string) {
			os.Remove(path)
			os.Mkdir(path, 0o700)
		}},
		{"mode 000", "cannot be read: permission denied", func(t *testing.T, path string) {
			if os.Geteuid() == 0 {
				t.Skip("root reads a file of mode 000")
			}
			os.Chmod(path, 0)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "users")
			if err := os.WriteFile(path, []byte(aliceLine), 0o600); err != nil {
				t.Fatal(err)
			}
			log, logs := testLogger()
			u := OpenUsersWith(path, UsersOptions{Logger: log})
			if err := u.Fault(); err != nil {
				t.Fatal(err)
			}
			tc.breakIt(t, path)
			for range 3 { // every lookup sees the same fault, logged once
				var se *SourceError
				if err := u.Fault(); !errors.As(err, &se) || !strings.Contains(se.Reason, tc.reason) {
					t.Fatalf("Fault() = %v, want a reason with %q", err, tc.reason)
				}
				if known, err := u.Known("alice"); !known || err != nil {
					t.Errorf("Known(alice) = %v, %v; want true from the last good list", known, err)
				}
				if known, err := u.Known("bob"); known || !errors.As(err, &se) {
					t.Errorf("Known(bob) = %v, %v; want false with the fault: not confirmed, not unknown", known, err)
				}
				if a, err := u.Account("alice"); !u.Verify("alice", "alice-pw") || err != nil || a.Quota.Storage != Own(int64(1<<20)) {
					t.Error("alice's line is not in use while the file is bad")
				}
				if err := u.Reload(); !errors.As(err, &se) {
					t.Errorf("Reload() = %v, want the fault", err)
				}
			}
			if n := count(logs, "ERROR", "users file unusable"); n != 1 {
				t.Errorf("%d ERROR lines for one episode, want 1:\n%s", n, logs)
			}
			if strings.Contains(tc.name, "directory") {
				os.Remove(path)
			}
			os.Chmod(path, 0o600)
			replace(t, path, aliceLine+bobLine)
			if err := u.Fault(); err != nil {
				t.Fatalf("Fault() after repair = %v", err)
			}
			if known, err := u.Known("bob"); !known || err != nil {
				t.Errorf("Known(bob) after repair = %v, %v", known, err)
			}
			if known, err := u.Known("zed"); known || err != nil {
				t.Errorf("Known(zed) after repair = %v, %v; want false, nil", known, err)
			}
			if n := count(logs, "INFO", "users file usable again"); n != 1 {
				t.Errorf("%d INFO lines for the recovery, want 1:\n%s", n, logs)
			}
		})
	}
}

// A server started with no users file, or an empty one, serves no users
// without a fault (the zero-config first start); the file that appears
// later is used, and its removal once it had users is a fault. A file whose
// users were all deleted is a list of no users again.
func TestFirstStartIsNoFault(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "users")
	log, logs := testLogger()
	u := OpenUsersWith(path, UsersOptions{Logger: log})
	if known, err := u.Known("alice"); known || err != nil || u.Fault() != nil {
		t.Fatalf("missing at first start: Known = %v, %v; fault %v", known, err, u.Fault())
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if known, err := u.Known("alice"); known || err != nil || u.Fault() != nil {
		t.Fatalf("empty at first start: Known = %v, %v; fault %v", known, err, u.Fault())
	}
	if err := AddUser(path, "alice", "first-pw"); err != nil {
		t.Fatal(err)
	}
	if known, err := u.Known("alice"); !known || err != nil {
		t.Fatalf("after user add: Known = %v, %v", known, err)
	}
	os.Remove(path)
	if known, err := u.Known("bob"); known || err == nil {
		t.Fatalf("removed after it had users: Known(bob) = %v, %v; want the fault", known, err)
	}
	if err := AddUser(path, "bob", "second-pw"); err != nil {
		t.Fatal(err)
	}
	if known, err := u.Known("alice"); known || err != nil {
		t.Fatalf("a new file without alice: Known(alice) = %v, %v; want false, nil", known, err)
	}
	if err := DeleteUser(path, "bob"); err != nil {
		t.Fatal(err)
	}
	if known, err := u.Known("bob"); known || err != nil || u.Fault() != nil {
		t.Fatalf("every user deleted: Known(bob) = %v, %v; fault %v", known, err, u.Fault())
	}
	// Nobody was expected any more: the file's removal is no fault now.
	os.Remove(path)
	if err := u.Fault(); err != nil {
		t.Fatalf("removed after it had no users: %v", err)
	}
	if count(logs, "ERROR", "") != 1 || count(logs, "INFO", "usable again") != 1 {
		t.Errorf("want one ERROR and one INFO:\n%s", logs)
	}
}

// With Expected (a data directory that holds Maildirs, or pouch deliver), a
// missing or empty file is a fault from the start, with no user to keep;
// a damaged one is used for the users on its good lines until a better one
// comes, even a damaged one.
func TestExpectedFromTheStart(t *testing.T) {
	t.Parallel()
	for _, content := range []string{"", "\n"} {
		path := filepath.Join(t.TempDir(), "users")
		if content != "" {
			os.WriteFile(path, []byte(content), 0o600)
		}
		u := OpenUsersWith(path, UsersOptions{Expected: true})
		if known, err := u.Known("alice"); known || err == nil {
			t.Errorf("%q: Known(alice) = %v, %v; want the fault", content, known, err)
		}
		replace(t, path, "# nobody yet\n")
		if known, err := u.Known("alice"); known || err != nil {
			t.Errorf("%q then a comment: Known(alice) = %v, %v; want false, nil", content, known, err)
		}
	}
	path := writeFile(t, "alice:{PLAIN}a", "junk")
	u := OpenUsersWith(path, UsersOptions{Expected: true})
	if known, err := u.Known("alice"); !known || err != nil {
		t.Errorf("damaged at start: Known(alice) = %v, %v", known, err)
	}
	if known, err := u.Known("bob"); known || err == nil {
		t.Errorf("damaged at start: Known(bob) = %v, %v; want the fault", known, err)
	}
	replace(t, path, "bob:{PLAIN}b\njunk again\n")
	if known, err := u.Known("bob"); !known || err != nil {
		t.Errorf("damaged again: Known(bob) = %v, %v; want the newer good lines", known, err)
	}
	if u.Fault() == nil {
		t.Error("no fault for a damaged file")
	}
}

// A new version renamed over the file is never seen missing or empty, so a
// user in both versions is always known and an unknown name always unknown
// (never unconfirmed) while it is replaced again and again.
func TestAtomicReplaceIsNeverAFault(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "alice:{PLAIN}a", "bob:{PLAIN}b")
	u := OpenUsersWith(path, UsersOptions{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 300 {
			replace(t, path, fmt.Sprintf("alice:{PLAIN}a%d\nbob:{PLAIN}b\n", i))
		}
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		if known, err := u.Known("alice"); !known || err != nil {
			t.Fatalf("Known(alice) = %v, %v during a replacement", known, err)
		}
		if known, err := u.Known("zed"); known || err != nil {
			t.Fatalf("Known(zed) = %v, %v during a replacement", known, err)
		}
	}
}

// The reason changing during an episode is a WARN, not another ERROR.
func TestFaultReasonChangeIsOneEpisode(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "alice:{PLAIN}a")
	log, logs := testLogger()
	u := OpenUsersWith(path, UsersOptions{Logger: log})
	os.Remove(path)
	u.Fault()
	os.WriteFile(path, []byte("junk\n"), 0o600)
	err := u.Fault()
	if err == nil || !strings.Contains(err.Error(), "is damaged") {
		t.Fatalf("Fault() = %v", err)
	}
	if count(logs, "ERROR", "") != 1 || count(logs, "WARN", "still unusable") != 1 {
		t.Errorf("want one ERROR and one WARN:\n%s", logs)
	}
}
