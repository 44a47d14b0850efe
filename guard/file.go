package guard

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/pouchmail/pouch/internal/filelock"
	"github.com/pouchmail/pouch/internal/fsx"
)

// FileBans keeps the bans in a JSON file (DATA/bans.json), replaced
// atomically at each change under the lock of its ".lock" companion, so
// that a running server and pouch ban can both change it. Changed compares
// the file with the version last read or written.
type FileBans struct {
	Path string
	// Now is the clock that tells which bans ended long ago (time.Now).
	Now func() time.Time

	mu    sync.Mutex
	stamp stamp // of Path at the last Load or Update
}

var _ BanStore = (*FileBans)(nil)

// Load reads the file; a missing one holds no bans.
func (f *FileBans) Load() (map[netip.Prefix]Ban, error) {
	bans, st, err := readBans(f.Path)
	if err != nil {
		return nil, err
	}
	f.setStamp(st)
	return bans, nil
}

// Update changes the file under its lock, starting from what it holds.
func (f *FileBans) Update(change func(map[netip.Prefix]Ban)) (map[netip.Prefix]Ban, error) {
	unlock, err := lock(f.Path)
	if err != nil {
		return nil, err
	}
	defer unlock()
	bans, _, err := readBans(f.Path)
	if err != nil {
		return nil, err
	}
	change(bans)
	now := time.Now
	if f.Now != nil {
		now = f.Now
	}
	st, err := writeBans(f.Path, bans, now())
	if err != nil {
		return nil, fmt.Errorf("guard: writing %s: %w", f.Path, err)
	}
	f.setStamp(st)
	return bans, nil
}

// Changed reports whether the file was replaced since it was last read
// or written.
func (f *FileBans) Changed() bool {
	fi, err := os.Stat(f.Path)
	if err != nil {
		return false // gone or unreadable now: the bans in force stay
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return stampOf(fi) != f.stamp
}

func (f *FileBans) setStamp(st stamp) {
	f.mu.Lock()
	f.stamp = st
	f.mu.Unlock()
}

type stateFile struct {
	Bans []Ban `json:"bans"`
}

// stamp identifies a version of the state file; it is replaced by rename,
// so a new version has a new inode.
type stamp struct {
	ino   uint64
	mtime time.Time
	size  int64
}

func stampOf(fi fs.FileInfo) stamp {
	s := stamp{mtime: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = st.Ino
	}
	return s
}

func readBans(path string) (map[netip.Prefix]Ban, stamp, error) {
	bans := make(map[netip.Prefix]Ban)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return bans, stamp{}, nil
	}
	if err != nil {
		return nil, stamp{}, fmt.Errorf("guard: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, stamp{}, fmt.Errorf("guard: %w", err)
	}
	var st stateFile
	if err := json.NewDecoder(f).Decode(&st); err != nil {
		return nil, stamp{}, fmt.Errorf("guard: %s is damaged: %w", path, err)
	}
	for _, b := range st.Bans {
		bans[b.Net.Masked()] = b
	}
	return bans, stampOf(fi), nil
}

// writeBans replaces the state file atomically, dropping bans that ended
// longer ago than they are remembered.
func writeBans(path string, bans map[netip.Prefix]Ban, now time.Time) (stamp, error) {
	var st stateFile
	for _, b := range bans {
		if now.Sub(b.Until) < 7*24*time.Hour {
			st.Bans = append(st.Bans, b)
		}
	}
	sort.Slice(st.Bans, func(i, j int) bool { return st.Bans[i].Net.String() < st.Bans[j].Net.String() })
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return stamp{}, err
	}
	if err := fsx.WriteFile(path, append(data, '\n'), fsx.Options{Perm: 0o600, Owner: fsx.OwnDir}); err != nil {
		return stamp{}, fmt.Errorf("guard: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}, err
	}
	return stampOf(fi), nil
}

// lock takes the lock of the state file's ".lock" companion.
func lock(path string) (func(), error) {
	unlock, err := filelock.Lock(path + ".lock")
	if err != nil {
		return nil, fmt.Errorf("guard: %w", err)
	}
	return unlock, nil
}
