package maildir

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/pouchmail/pouch/store"
)

// Exported describes a message as Export hands it to another store: what
// that store must keep for clients to see it as they saw it here.
type Exported struct {
	UID       string    // its UIDL (RFC 1939 §7)
	Size      int64     // its size in wire form
	Delivered time.Time // from its name, else its file's modification time
	Retrieved time.Time // its first retrieval; zero: never, or not known
	Deleted   time.Time // when it entered the holding area; zero: it did not
}

// Export takes user's maildrop lock (ErrLocked while a session has it) and
// calls fn for each message: first those of the maildrop, in the order a
// session numbers them, then those of the holding area, the oldest
// deletion first. open opens the message's file as stored (not in wire
// form). Export stops at fn's first error and returns it. The maildrop is
// not changed, beyond what any Open does (a commit cut short is finished,
// and the index brought up to date).
func (s *Store) Export(ctx context.Context, user string, fn func(m Exported, open func() (io.ReadCloser, error)) error) error {
	md, err := s.Open(ctx, user)
	if err != nil {
		return err
	}
	m := md.(*maildrop)
	defer m.Close()
	for i, e := range m.entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		x := Exported{UID: m.messages[i].UID, Size: e.wire, Delivered: deliveredAt(m.dir, &m.entries[i])}
		if e.seen != 0 {
			x.Retrieved = time.Unix(e.seen, 0)
		}
		err := fn(x, func() (io.ReadCloser, error) {
			r, err := m.Open(i)
			if err != nil {
				return nil, err
			}
			return storedCloser{r.(readCloser)}, nil
		})
		if err != nil {
			return err
		}
	}
	held, err := listHolding(m.dir)
	if err != nil {
		return err
	}
	for _, h := range held {
		if err := ctx.Err(); err != nil {
			return err
		}
		r := h.removed()
		path := filepath.Join(m.dir, holdingDir, h.file)
		if r.Delivered.IsZero() {
			if fi, err := os.Stat(path); err == nil {
				r.Delivered = fi.ModTime()
			}
		}
		x := Exported{UID: r.UID, Size: r.Size, Delivered: r.Delivered, Deleted: r.Deleted}
		err := fn(x, func() (io.ReadCloser, error) {
			f, err := openFile(path)
			if errors.Is(err, fs.ErrNotExist) {
				return nil, store.ErrNotFound
			}
			if err != nil {
				return nil, err
			}
			return f, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// storedCloser reads a message file as stored.
type storedCloser struct{ r readCloser }

func (s storedCloser) Read(p []byte) (int, error) { return s.r.f.Read(p) }
func (s storedCloser) Close() error               { return s.r.Close() }
