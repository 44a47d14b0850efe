package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// check-config listens on each TCP address and closes at once: an address
// that is not this machine's fails naming the key; one in use (by the
// running server, before a restart) is a note. The directory of an LMTP
// socket is looked at, and nothing is left listening.
func TestCheckConfigTriesTheListeners(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pouch.toml")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free := freeAddr(t)
	freeMetrics := freeAddr(t)
	write := func(lines ...string) {
		os.WriteFile(cfg, []byte("data = \""+dir+"\"\n"+strings.Join(lines, "\n")+"\n"), 0o600)
	}

	write(`pop3 = "`+busy.Addr().String()+`"`, `pop3s = "`+free+`"`, `metrics = "`+freeMetrics+`"`,
		`lmtp = "unix:`+filepath.Join(dir, "no-such-dir", "lmtp.sock")+`"`)
	_, e, code := pouch(t, "", "check-config", "--config", cfg)
	if code != 0 || !strings.Contains(e, "note: "+busy.Addr().String()+" is in use now; pouch serve cannot start on it while it is") ||
		!strings.Contains(e, "note: the directory "+filepath.Join(dir, "no-such-dir")+" of the LMTP socket does not exist") ||
		!strings.Contains(e, "configuration OK") {
		t.Fatalf("check-config with a port in use: exit %d\n%s", code, e)
	}
	// The addresses tried are free again.
	for _, a := range []string{free, freeMetrics} {
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("check-config left %s taken: %v", a, err)
		}
		l.Close()
	}
	if _, err := os.Stat(filepath.Join(dir, "no-such-dir")); err == nil {
		t.Error("check-config made the socket's directory")
	}

	// 192.0.2.1 (TEST-NET-1) is no address of this machine: binding it
	// fails at once, sending nothing.
	for _, key := range []string{"pop3", "pop3s", "lmtp", "metrics"} {
		values := map[string]string{"pop3": freeAddr(t), "pop3s": "", key: "192.0.2.1:1110"}
		var lines []string
		for k, v := range values {
			lines = append(lines, k+` = "`+v+`"`)
		}
		write(lines...)
		_, e, code := pouch(t, "", "check-config", "--config", cfg)
		want := cfg + `: key "` + key + `": 192.0.2.1 is not an address of this machine, so pouch serve cannot listen on 192.0.2.1:1110`
		if code != 1 || !strings.Contains(e, want) {
			t.Errorf("check-config with %s on 192.0.2.1: exit %d, want 1 and %q:\n%s", key, code, want, e)
		}
	}
}

// A port below 1024 that the user may not bind is a note: pouch serve may
// run as root or with CAP_NET_BIND_SERVICE.
func TestListenProblem(t *testing.T) {
	opErr := func(errno syscall.Errno) error {
		return &net.OpError{Op: "listen", Net: "tcp", Err: os.NewSyscallError("bind", errno)}
	}
	for _, tc := range []struct {
		addr          string
		err           error
		euid          int
		note, problem string
	}{
		{"127.0.0.1:110", opErr(syscall.EACCES), 1000, "may not listen on port 110, below 1024; pouch serve needs root or CAP_NET_BIND_SERVICE", ""},
		{"127.0.0.1:110", opErr(syscall.EACCES), 0, "", "cannot listen on 127.0.0.1:110: bind: permission denied"},
		{"127.0.0.1:1110", opErr(syscall.EACCES), 1000, "", "cannot listen on 127.0.0.1:1110: bind: permission denied"},
		{"127.0.0.1:1110", opErr(syscall.EADDRINUSE), 1000, "127.0.0.1:1110 is in use now", ""},
		{"192.0.2.1:995", opErr(syscall.EADDRNOTAVAIL), 0, "", "192.0.2.1 is not an address of this machine"},
	} {
		note, problem := listenProblem(tc.addr, tc.err, tc.euid)
		if !strings.Contains(note, tc.note) || (tc.note == "") != (note == "") ||
			!strings.Contains(problem, tc.problem) || (tc.problem == "") != (problem == "") {
			t.Errorf("listenProblem(%s, %v, uid %d) = %q, %q; want %q, %q", tc.addr, tc.err, tc.euid, note, problem, tc.note, tc.problem)
		}
	}
	// The real thing, where this user may not bind a low port.
	if os.Geteuid() != 0 {
		if l, err := net.Listen("tcp", "127.0.0.1:1"); err != nil {
			if note, _ := listenProblem("127.0.0.1:1", err, os.Geteuid()); note == "" {
				t.Errorf("binding port 1 as uid %d: %v is no note", os.Geteuid(), err)
			}
		} else {
			l.Close()
		}
	}
}

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// A data directory that cannot be looked at is said so with the reason,
// not called a file.
func TestCheckConfigDataUnreadable(t *testing.T) {
	dir := t.TempDir()
	loop := filepath.Join(dir, "loop")
	if err := os.Symlink(loop, loop); err != nil {
		t.Fatal(err)
	}
	_, e, code := pouch(t, "", "check-config", "--data", loop, "--pop3", freeAddr(t), "--pop3s", "")
	if code != 1 || !strings.Contains(e, "too many levels of symbolic links") || strings.Contains(e, "is not a directory") {
		t.Errorf("check-config with a symlink loop for --data: exit %d\n%s", code, e)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, e, code := pouch(t, "", "check-config", "--data", file, "--pop3", freeAddr(t), "--pop3s", ""); code != 1 || !strings.Contains(e, file+" is not a directory") {
		t.Errorf("check-config with a file for --data: exit %d\n%s", code, e)
	}
}
