package maildir

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/internal/fsx"
)

// Twins: files that share a base name. Maildir names a message by its base
// name, unique for the life of the message, and Pouch makes it the UIDL;
// but other programs can leave two files with one base name (new/X and
// cur/X:2,S after a copy instead of a move, or a restore from a backup),
// and a file can take the base name of a message that a commit just
// removed. Each is another message to a POP3 client, so, as Dovecot does
// ("Fixed a duplicate", src/lib-storage/index/maildir/maildir-sync.c),
// Open keeps the base name for one file and renames each other one aside
// to a new unique name, with a warning: it is then a new message with its
// own UIDL, stable from then on. The one that keeps the name is the one the
// index knew by it, or else the one in cur/, or in one directory the one
// whose name sorts first. The rename keeps the file's directory and flags;
// the directory is synced before the snapshot is used, so that the new
// UIDLs a client sees do not change after a crash. A file that cannot be
// renamed is left out of the snapshot until it can be.
//
// Two names of one file (hard links, which a move made with link(2) and
// unlink(2) leaves when it is interrupted) are one message: listed once,
// and removed under every name by a commit (commit.go). Dovecot unlinks
// the extra name once it has not changed for 30 seconds; Pouch removes
// nothing that a client did not delete.

// renameTwins renames the files of twins aside and returns them as fresh
// entries of the snapshot, with their sizes. keepers has, by base name,
// the file that keeps the name (none for a name that the last commit
// removed): a twin that is another name of that very file (a hard link) is
// the same message, and is neither renamed nor listed (a commit removes
// it with its other names).
func (m *maildrop) renameTwins(twins []entry, keepers map[string]entry) []entry {
	var out []entry
	synced := map[string]bool{}
	for _, tw := range twins {
		if k := keepers[tw.base]; k.base != "" {
			a, errA := inodeOf(m.dir, k.sub, k.name)
			b, errB := inodeOf(m.dir, tw.sub, tw.name)
			if errA == nil && errB == nil && a == b {
				continue
			}
		}
		e := tw
		err := sizeOf(m.dir, &e)
		if err == nil {
			e.base = SizedName(UniqueName(m.store.now()), e.raw, e.wire)
			e.name = e.base + tw.name[len(tw.base):]
			err = os.Rename(filepath.Join(m.dir, tw.sub, tw.name), filepath.Join(m.dir, e.sub, e.name))
		}
		if gone(err) {
			continue // not a twin any more
		}
		if err != nil {
			if m.store.log != nil {
				m.store.log.Warn("maildir: leaving out a file that has another message's base name, until it can be renamed",
					"user", m.user, "file", tw.sub+"/"+tw.name, "err", err)
			}
			continue
		}
		crashpoint.Hit("maildir.open.twin-renamed")
		if m.store.log != nil {
			m.store.log.Warn("maildir: renamed a file that has another message's base name; it is a new message",
				"user", m.user, "from", tw.sub+"/"+tw.name, "to", e.sub+"/"+e.name)
		}
		e.seen, e.extra = 0, ""
		out = append(out, e)
		synced[e.sub] = false
	}
	for sub := range synced {
		if err := fsx.SyncDir(filepath.Join(m.dir, sub)); err != nil && !errors.Is(err, fs.ErrNotExist) && m.store.log != nil {
			m.store.log.Warn("maildir: syncing after renaming files aside", "user", m.user, "dir", sub, "err", err)
		}
	}
	return out
}
