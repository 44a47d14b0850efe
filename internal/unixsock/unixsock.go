// Package unixsock opens the Unix-domain sockets that a server listens on
// (the LMTP socket, the admin socket): a socket left by a crashed server is
// replaced, but a live one, or a file that is not a socket, is left alone.
package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"
	"time"
)

var (
	// ErrNotSocket means the path names a file that is not a socket.
	ErrNotSocket = errors.New("the file exists and is not a socket")
	// ErrInUse means another server answers on the socket.
	ErrInUse = errors.New("another server is listening on it")
)

// Listen listens on the socket at path and gives it mode. A socket on which
// nothing answers (connection refused) is removed first.
func Listen(path string, mode fs.FileMode) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, ErrNotSocket
		}
		c, err := net.DialTimeout("unix", path, 2*time.Second)
		if err == nil {
			c.Close()
			return nil, ErrInUse
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("cannot tell whether another server uses it: %v", err)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("removing the stale socket: %v", err)
		}
	}
	l, err := net.Listen("unix", path)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, ErrInUse
	}
	if err != nil {
		return nil, err
	}
	// Until this chmod the socket has the umask's mode; servers check their
	// peers besides.
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
