package main

import (
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// systemdListeners returns the sockets passed by systemd socket activation
// (sd_listen_fds(3): LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES; descriptors
// from 3 on), by their FileDescriptorName. The variables are cleared so that
// child processes do not take the sockets too.
func systemdListeners() map[string]net.Listener {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return nil
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		return nil
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(v)
	}
	out := make(map[string]net.Listener)
	for i := 0; i < n; i++ {
		fd := 3 + i
		syscall.CloseOnExec(fd)
		name := "pop3"
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		f := os.NewFile(uintptr(fd), name)
		l, err := net.FileListener(f)
		f.Close() // FileListener duplicated it
		if err == nil {
			out[name] = l
		}
	}
	return out
}
