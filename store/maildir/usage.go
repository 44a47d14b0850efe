package maildir

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// Usage reports what user's Maildir holds: the number of messages in new/ and
// cur/ and their stored size in octets, for quotas. It reads only file names —
// the ",S=" field that Pouch and Dovecot write — then pouch-index for names
// without it, and stat(2) as a last resort: it never opens a message, and it
// does not take the maildrop lock, so delivery can check a quota while a POP3
// session is open. A Maildir that does not exist yet is empty.
//
// The answer is a snapshot: a message delivered or deleted meanwhile may or
// may not be counted.
func (s *Store) Usage(user string) (messages int, bytes int64, err error) {
	dir, err := s.dir(user)
	if err != nil {
		return 0, 0, err
	}
	found, err := scan(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(dir); errors.Is(serr, fs.ErrNotExist) {
			return 0, 0, nil
		}
	}
	if err != nil {
		return 0, 0, err
	}
	var indexed map[string]int64 // raw sizes from pouch-index, read when first needed
	for _, e := range found {
		if n, ok := field(e.base, "S"); ok {
			messages++
			bytes += n
			continue
		}
		if indexed == nil {
			idx, err := readIndex(filepath.Join(dir, indexFile))
			if err != nil {
				return 0, 0, err
			}
			indexed = make(map[string]int64, len(idx))
			for _, ie := range idx {
				indexed[ie.base] = ie.raw
			}
		}
		if n, ok := indexed[e.base]; ok {
			messages++
			bytes += n
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, e.sub, e.name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted or renamed meanwhile; not counted
		}
		if err != nil {
			return 0, 0, err
		}
		messages++
		bytes += fi.Size()
	}
	return messages, bytes, nil
}
