package maildir

import (
	"io"
	"io/fs"
	"syscall"
)

// file is a message file read with plain system calls. Regular files cannot
// be polled, so os.Open's attempt to register them with the poller (epoll_ctl,
// and fcntl calls to set and reset O_NONBLOCK) is wasted work, and RETR opens
// one file per message.
// A symbolic link is not followed (the open fails): a message is a regular
// file of the Maildir.
type file struct {
	fd   int
	path string
}

func openFile(path string) (*file, error) {
	for {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: path, Err: err}
		}
		return &file{fd: fd, path: path}, nil
	}
}

func (f *file) Read(p []byte) (int, error) {
	if f.fd < 0 {
		return 0, fs.ErrClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := syscall.Read(f.fd, p)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, &fs.PathError{Op: "read", Path: f.path, Err: err}
		}
		if n == 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func (f *file) Close() error {
	if f.fd < 0 {
		return nil
	}
	err := syscall.Close(f.fd)
	f.fd = -1
	if err != nil {
		return &fs.PathError{Op: "close", Path: f.path, Err: err}
	}
	return nil
}

// Fd returns the file's descriptor, so that the server can send the message
// with sendfile(2). It stays owned by the file.
func (f *file) Fd() uintptr { return uintptr(f.fd) }
