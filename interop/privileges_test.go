package interop_test

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Started as root with --run-as, the server binds its ports and then runs as
// that user: the process's real and effective uid are the user's.
func TestRunAsDropsRoot(t *testing.T) {
	data, uid, gid := nobodysData(t)
	cmd, addr := serveAsNobody(t, data)
	status, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	want := regexp.MustCompile(`(?m)^Uid:\s+` + strconv.Itoa(uid) + `\s+` + strconv.Itoa(uid) + `\s+` + strconv.Itoa(uid))
	if !want.Match(status) {
		t.Fatalf("server still runs as another user:\n%s", status)
	}
	// And it works as that user: logins read the users file, mail is served.
	drop(t, data, "bob", "1700000001.M1P1.mx", "Subject: hi\n\nhello\n")
	os.Lchown(filepath.Join(data, "mail", "bob", "new", "1700000001.M1P1.mx"), uid, gid)
	c := dialPOP3(t, addr)
	c.login("bob", "hQ4v-Lw9xTz2pB")
	c.cmd("STAT", "+OK 1 ")
	c.cmd("QUIT", "+OK")
}

// An operator sets up a service as root: pouch user add and pouch ban add,
// run as root in a data directory that belongs to the service user, leave
// files that user owns, so that pouch serve --run-as starts, lets the user
// log in and applies the ban.
func TestRootCommandsForServiceUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	data := t.TempDir()
	os.Chown(data, uid, gid)
	reachable(data)
	pouch(t, "Kq7-vTz2-mW9p-hx\n", "user", "add", "--data", data, "carol")
	pouch(t, "", "ban", "add", "--data", data, "127.0.0.5", "--reason", "scanner")
	filepath.Walk(data, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Sys().(*syscall.Stat_t).Uid != uint32(uid) {
			t.Errorf("%s belongs to uid %d, not to nobody", p, fi.Sys().(*syscall.Stat_t).Uid)
		}
		return nil
	})
	_, addr := serveAsNobody(t, data)
	c := dialPOP3(t, addr)
	c.login("carol", "Kq7-vTz2-mW9p-hx")
	c.cmd("QUIT", "+OK")
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}}
	banned, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer banned.Close()
	banned.SetDeadline(time.Now().Add(10 * time.Second))
	if l, err := bufio.NewReader(banned).ReadString('\n'); !strings.HasPrefix(l, "-ERR [SYS/PERM] access from your address is blocked") {
		t.Fatalf("a banned address got %q (%v)", l, err)
	}
}

// serveAsNobody starts pouch serve as root with --run-as nobody on a POP3
// port of its own, and returns it and the port's address; the server stops
// at the end of the test.
func serveAsNobody(t *testing.T, data string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(pouchBin, "serve", "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "",
		"--run-as", "nobody", "--auth-fail-delay", "0")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	addr := ""
	sc := bufio.NewScanner(stderr)
	var log strings.Builder
	deadline := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
	defer deadline.Stop()
	for sc.Scan() {
		log.WriteString(sc.Text() + "\n")
		if m := regexp.MustCompile(`msg=listening protocol=pop3 addr=(\S+)`).FindStringSubmatch(sc.Text()); m != nil {
			addr = m[1]
			break
		}
	}
	if addr == "" {
		t.Fatalf("server did not start:\n%s", log.String())
	}
	go func() {
		for sc.Scan() {
		}
	}()
	return cmd, addr
}

// A data directory that others can write is refused, with the fix named.
func TestUnsafeDataDirRefused(t *testing.T) {
	data := newData(t)
	os.Chmod(data, 0o777)
	out, err := exec.Command(pouchBin, "serve", "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "writable by group or others") || !strings.Contains(string(out), "chmod go-w") {
		t.Fatalf("serve with a world-writable data directory: %v\n%s", err, out)
	}
}

// nobodysData makes a data directory (newData) that belongs to the user
// nobody, as an operator sets one up for a service user, and that nobody can
// reach through the temporary directories. It skips the test unless it runs
// as root on a system with that user.
func nobodysData(t *testing.T) (data string, uid, gid int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ = strconv.Atoi(nobody.Uid)
	gid, _ = strconv.Atoi(nobody.Gid)
	data = newData(t)
	filepath.Walk(data, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, uid, gid) })
	reachable(data)
	return data, uid, gid
}

// reachable lets every user through the directories above data, up to the
// temporary directory.
func reachable(data string) {
	for d := filepath.Dir(data); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o711)
	}
}
