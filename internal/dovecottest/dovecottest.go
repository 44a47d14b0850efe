// Package dovecottest runs Dovecot's POP3 server from Debian's package
// (dovecot-pop3d) for tests, the way ../shared/tools/dovecot-peer.sh does:
// a private configuration in a directory of its own, on a free loopback
// port, as root with the mail processes as the user dovecot, with the
// mail_location and settings a test needs. Tests only.
package dovecottest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/testkit"
)

// Require skips the test (or fails it under POUCH_REQUIRE_INTEROP=1) when
// Dovecot, root or the user dovecot is missing.
func Require(t testing.TB) {
	t.Helper()
	why := ""
	if _, err := exec.LookPath("dovecot"); err != nil {
		why = "dovecot is not installed (Debian: dovecot-pop3d)"
	} else if os.Geteuid() != 0 {
		why = "Dovecot's mail processes need root to start"
	} else if _, err := user.Lookup("dovecot"); err != nil {
		why = "there is no user dovecot"
	}
	if why != "" {
		testkit.SkipOrFail(t, "%s", why)
	}
}

// Server is a Dovecot with one user, alice, whose password is Password.
type Server struct {
	t      testing.TB
	Dir    string // dovecot.conf, run/, mail/
	Addr   string // of the running server
	daemon *testkit.Daemon
}

// Password is alice's password.
const Password = "secret"

// New prepares a Dovecot in a fresh directory, with an empty Maildir for
// alice (Maildir); Start runs it. Everything is removed when the test ends.
func New(t testing.TB) *Server {
	t.Helper()
	Require(t)
	// Not t.TempDir(): Dovecot's mail processes, as the user dovecot,
	// must reach the mail through it.
	dir, err := os.MkdirTemp("", "pouch-dovecot-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	d := &Server{t: t, Dir: dir, daemon: &testkit.Daemon{Name: "dovecot", Log: filepath.Join(dir, "dovecot.log")}}
	t.Cleanup(func() {
		d.Stop()
		if t.Failed() {
			t.Logf("dovecot.log:\n%s", d.Log())
		}
		os.RemoveAll(dir)
	})
	os.WriteFile(filepath.Join(dir, "users"), []byte("alice:{PLAIN}"+Password+"\n"), 0o644)
	for _, sub := range []string{"new", "cur", "tmp"} {
		os.MkdirAll(filepath.Join(d.Maildir(), sub), 0o700)
	}
	return d
}

// Maildir is alice's Maildir, for mail_location "maildir:DIR/mail/%u".
func (d *Server) Maildir() string { return filepath.Join(d.Dir, "mail", "alice") }

// MaildirLocation is the mail_location of Maildir.
func (d *Server) MaildirLocation() string { return "maildir:" + d.Dir + "/mail/%u" }

// Start runs Dovecot with mail_location and the extra configuration lines,
// stopping it first if it runs; it returns when Dovecot listens.
func (d *Server) Start(location, extra string) {
	t := d.t
	t.Helper()
	d.Stop()
	port := testkit.FreePort(t)
	conf := fmt.Sprintf(`base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = %[2]s
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 0
passdb {
  driver = passwd-file
  args = scheme=PLAIN %[1]s/users
}
userdb {
  driver = static
  args = uid=dovecot gid=dovecot home=%[1]s/mail/%%u
}
service pop3-login {
  inet_listener pop3 {
    port = %[3]d
  }
}
service anvil {
  chroot =
}
service stats {
  chroot =
}
%[4]s
`, d.Dir, location, port, extra)
	confPath := filepath.Join(d.Dir, "dovecot.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"run", "state"} {
		os.MkdirAll(filepath.Join(d.Dir, sub), 0o755)
	}
	chownTree(t, filepath.Join(d.Dir, "mail"))
	// In the foreground (-F), Dovecot is this process's child and dies
	// with it, its other processes with it.
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	err := d.daemon.Start(exec.Command("dovecot", "-F", "-c", confPath), 10*time.Second, func() error {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("dovecot on %s: %v", addr, err)
	}
	d.Addr = addr
}

// Stop stops Dovecot, if it runs, and waits until it has exited.
func (d *Server) Stop() {
	d.daemon.Stop(syscall.SIGTERM, 10*time.Second)
	d.Addr = ""
}

// Log is Dovecot's log.
func (d *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "dovecot.log"))
	return string(b)
}

// chownTree gives dir and everything in it to the user dovecot.
func chownTree(t testing.TB, dir string) {
	u, err := user.Lookup("dovecot")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			os.Lchown(p, uid, gid)
		}
		return nil
	})
}
