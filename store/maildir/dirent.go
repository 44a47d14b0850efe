package maildir

import (
	"encoding/binary"
	"io/fs"
	"syscall"
)

// dirent is a directory entry as getdents(2) gives it: the name, and the
// type (syscall.DT_REG, DT_DIR, ..., or DT_UNKNOWN where the filesystem
// does not say).
type dirent struct {
	name string
	typ  uint8
}

// readDir lists the directory path with its entries' types, which most
// filesystems give with the names: no stat(2) per entry, and no more
// allocation than a listing of names alone.
func readDir(path string) ([]dirent, error) {
	var fd int
	var err error
	for {
		fd, err = syscall.Open(path, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	var out []dirent
	buf := make([]byte, 64<<10)
	for {
		n, err := syscall.ReadDirent(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "readdirent", Path: path, Err: err}
		}
		if n <= 0 {
			return out, nil
		}
		out = parseDirents(out, buf[:n])
	}
}

// parseDirents appends the entries of a buffer of struct linux_dirent64 to
// out: inode (8 octets), offset (8), record length (2), type (1), then the
// name, NUL-terminated, padded to the record length.
func parseDirents(out []dirent, b []byte) []dirent {
	const nameOff = 19
	for len(b) >= nameOff {
		reclen := int(binary.NativeEndian.Uint16(b[16:18]))
		if reclen < nameOff || reclen > len(b) {
			break
		}
		ino := binary.NativeEndian.Uint64(b[0:8])
		typ := b[18]
		name := b[nameOff:reclen]
		for i, c := range name {
			if c == 0 {
				name = name[:i]
				break
			}
		}
		b = b[reclen:]
		if ino == 0 || len(name) == 0 || name[0] == '.' && (len(name) == 1 || len(name) == 2 && name[1] == '.') {
			continue
		}
		out = append(out, dirent{name: string(name), typ: typ})
	}
	return out
}

// regular reports whether the entry name of the directory path is a
// regular file: a symbolic link is not (it is not followed), nor is a
// directory, a pipe or a device.
func (d dirent) regular(dir string) bool {
	switch d.typ {
	case syscall.DT_REG:
		return true
	case syscall.DT_UNKNOWN:
		var st syscall.Stat_t
		if err := syscall.Lstat(dir+"/"+d.name, &st); err != nil {
			// Gone meanwhile, or not readable: as a message it would
			// fail as a file does.
			return true
		}
		return st.Mode&syscall.S_IFMT == syscall.S_IFREG
	}
	return false
}
