package interop_test

import (
	"bufio"
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
	cmd := exec.Command(pouchBin, "serve", "--data", data, "--pop3", "127.0.0.1:0", "--pop3s", "",
		"--run-as", "nobody", "--auth-fail-delay", "0")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
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
	c.login("bob", "bobs password")
	c.cmd("STAT", "+OK 1 ")
	c.cmd("QUIT", "+OK")
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
	for d := filepath.Dir(data); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o711)
	}
	return data, uid, gid
}
