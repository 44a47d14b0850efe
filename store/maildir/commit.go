package maildir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/internal/owner"
)

// Removing messages: a QUIT's commit and a sweep's expiry, through the
// expunge journal (journal.go), and the replay of a journal that a crash
// left pending.

// find lists the message files of cur/ and new/ whose base name is base.
func (m *maildrop) find(base string) []entry {
	var out []entry
	for _, sub := range subdirs {
		path := filepath.Join(m.dir, sub)
		ents, err := readDir(path)
		if err != nil {
			continue
		}
		for _, d := range ents {
			if d.name[0] != '.' && baseName(d.name) == base && d.regular(path) {
				out = append(out, entry{base: base, sub: sub, name: d.name})
			}
		}
	}
	return out
}

// relocate finds e's file again by its base name, after another program
// renamed it (a flag changed, or it moved from new/ to cur/): when exactly
// one file has that base name. When several do, which one is e's is not
// known, and none is taken for it.
func (m *maildrop) relocate(e *entry) bool {
	found := m.find(e.base)
	if len(found) != 1 {
		return false
	}
	e.sub, e.name = found[0].sub, found[0].name
	return true
}

// relocateIno finds e's file again by its base name and inode number.
func (m *maildrop) relocateIno(e *entry, ino uint64) bool {
	for _, f := range m.find(e.base) {
		if n, err := inodeOf(m.dir, f.sub, f.name); err == nil && n == ino {
			e.sub, e.name = f.sub, f.name
			return true
		}
	}
	return false
}

// inodeOf returns the inode number of the Maildir dir's file sub/name.
func inodeOf(dir, sub, name string) (uint64, error) {
	ino, _, err := links(dir, sub, name)
	return ino, err
}

// links returns the inode number of the Maildir dir's file sub/name, and
// how many names the file has.
func links(dir, sub, name string) (ino, nlink uint64, err error) {
	var st syscall.Stat_t
	path := filepath.Join(dir, sub, name)
	if err := syscall.Lstat(path, &st); err != nil {
		return 0, 0, &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return 0, 0, &fs.PathError{Op: "lstat", Path: path, Err: errNotFile}
	}
	return st.Ino, uint64(st.Nlink), nil
}

// target is a file a commit removes: the entry of the snapshot, and what
// the journal says of it.
type target struct {
	doomed
	e *entry
}

// remove takes the messages at the given indexes out of the maildrop
// through the expunge journal: into the holding area, stamped with at, when
// keep is set, otherwise for good. Each message's file is the one the
// snapshot listed, found again by its base name if another program renamed
// it; one that is gone is not journaled. A file with other names of the
// same base name (hard links, left by a move made with link and unlink) is
// removed under all of them: it is one message.
func (m *maildrop) remove(indexes []int, keep bool, at time.Time) error {
	targets := make([]target, 0, len(indexes))
	for _, i := range indexes {
		e := &m.entries[i]
		ino, nlink, err := links(m.dir, e.sub, e.name)
		if gone(err) && m.relocate(e) {
			ino, nlink, err = links(m.dir, e.sub, e.name)
		}
		if gone(err) {
			continue // removed by another program meanwhile
		}
		if err != nil {
			return err
		}
		targets = append(targets, target{doomed{e.base, ino}, e})
		if nlink > 1 {
			for _, f := range m.find(e.base) {
				if n, err := inodeOf(m.dir, f.sub, f.name); err == nil && n == ino && (f.sub != e.sub || f.name != e.name) {
					targets = append(targets, target{doomed{e.base, ino}, &f})
				}
			}
		}
	}
	if len(targets) == 0 {
		return nil
	}
	if keep {
		if err := ensureHolding(m.dir); err != nil {
			return err
		}
	}
	j, err := openJournal(m.dir)
	if err != nil {
		return err
	}
	defer j.Close()
	for batch := 0; len(targets) > 0; batch++ {
		n := len(targets)
		lines := journalLines(keep, at, files(targets))
		if err := j.grow(int64(journalHeader + len(lines))); err != nil {
			if !noSpace(err) {
				return err
			}
			// A full disk: as much as the file holds, then the rest, in
			// as many batches as it takes. The first frees space (unless
			// the files go into the holding area), so the file may well
			// grow for the second.
			lines = journalLines(keep, at, nil)
			n = 0
			for ; n < len(targets); n++ {
				next := appendLine(lines, targets[n].doomed)
				if int64(journalHeader+len(next)) > j.size {
					break
				}
				lines = next
			}
			if n == 0 {
				return err
			}
			if m.store.log != nil {
				m.store.log.Warn("maildir: disk full; removing messages in batches", "user", m.user,
					"batch", n, "left", len(targets))
			}
		}
		if err := m.carryOut(j, targets[:n], lines, keep, at, batch == 0); err != nil {
			return err
		}
		targets = targets[n:]
		if len(targets) > 0 {
			crashpoint.Hit("maildir.commit.batch-done")
		}
	}
	j.shrink()
	return nil
}

func files(targets []target) []doomed {
	out := make([]doomed, len(targets))
	for i, t := range targets {
		out[i] = t.doomed
	}
	return out
}

// carryOut journals a batch of targets (lines), removes their files and
// marks the journal done. first says whether it is the commit's first
// batch.
func (m *maildrop) carryOut(j *journalFile, batch []target, lines []byte, keep bool, at time.Time, first bool) error {
	crashpoint.Hit("maildir.commit.before-journal")
	if err := j.write(statePending, lines); err != nil {
		// Nothing was removed; a journal that reached the disk all the
		// same must not be replayed.
		_ = j.pwrite(make([]byte, journalHeader), 0)
		return err
	}
	crashpoint.Hit("maildir.commit.journaled")
	for n, t := range batch {
		e := t.e
		err := m.dispose(e.sub, e.name, keep, at)
		if errors.Is(err, fs.ErrNotExist) && m.relocateIno(e, t.ino) {
			err = m.dispose(e.sub, e.name, keep, at)
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			if keep && noSpace(err) {
				// The holding area needs a directory block that a full
				// disk does not have (ext4, XFS): the commit is undone.
				jr := &journal{pending: true, keep: true, at: at, files: files(batch)}
				if uerr := m.undoHold(j, jr); uerr != nil {
					return uerr
				}
				return fmt.Errorf("maildir: no space to move deleted messages into %s: %w", holdingDir, err)
			}
			return err // the journal stays; the next Open finishes the job
		}
		if n == 0 && first {
			crashpoint.Hit("maildir.commit.first-unlinked")
		}
	}
	if err := m.syncAfterRemoval(keep); err != nil {
		return err
	}
	crashpoint.Hit("maildir.commit.disposed")
	// The removal is complete and durable: a journal left pending by a
	// failure to mark it is replayed, which removes nothing more.
	_ = j.done(lines)
	return nil
}

// dispose unlinks sub/name, or moves it into the holding area.
func (m *maildrop) dispose(sub, name string, keep bool, at time.Time) error {
	from := filepath.Join(m.dir, sub, name)
	if !keep {
		return os.Remove(from)
	}
	return os.Rename(from, filepath.Join(m.dir, holdingDir, holdingName(at, sub, name)))
}

// syncAfterRemoval syncs the directories after the unlinks or moves.
func (m *maildrop) syncAfterRemoval(kept bool) error {
	dirs := []string{"cur", "new"}
	if kept {
		dirs = append(dirs, holdingDir)
	}
	for _, sub := range dirs {
		if err := fsx.SyncDir(filepath.Join(m.dir, sub)); err != nil {
			return err
		}
	}
	return nil
}

// undoHold moves back the files of the journal jr that went into the
// holding area at jr.at, syncs the directories, and clears the journal:
// the commit is as if it never began.
func (m *maildrop) undoHold(j *journalFile, jr *journal) error {
	held, listErr := fsx.Names(filepath.Join(m.dir, holdingDir))
	if listErr != nil && !errors.Is(listErr, fs.ErrNotExist) {
		return listErr
	}
	for _, file := range held {
		at, sub, name, ok := parseHolding(file)
		if !ok || at.Unix() != jr.at.Unix() {
			continue
		}
		ino, err := inodeOf(m.dir, holdingDir, file)
		if err != nil || !jr.has(baseName(name), ino) {
			continue
		}
		if _, err := os.Lstat(filepath.Join(m.dir, sub, name)); err == nil {
			continue // its name is taken again: it stays restorable
		}
		if err := os.Rename(filepath.Join(m.dir, holdingDir, file), filepath.Join(m.dir, sub, name)); err != nil {
			return err
		}
	}
	// The holding area is missing when the commit could not make it.
	if err := m.syncAfterRemoval(listErr == nil); err != nil {
		return err
	}
	return j.clear()
}

// replayJournal reads the expunge journal, completes a commit that a crash
// interrupted the way it was decided, and makes the journal's reserve if
// it is missing. It returns the journal read (nil for none): the base names
// of the last commit. replayed says whether it removed anything.
func (m *maildrop) replayJournal() (jr *journal, replayed bool, err error) {
	j, err := openJournal(m.dir)
	if err != nil {
		if _, serr := os.Lstat(filepath.Join(m.dir, expungeFile)); errors.Is(serr, fs.ErrNotExist) {
			// Not there, and it cannot be made (a full disk, a Maildir
			// that is not ours to write): there is nothing to replay.
			m.store.noReserve(m.user, err)
			return nil, false, nil
		}
		return nil, false, err
	}
	defer j.Close()
	data, err := j.read()
	if err != nil {
		return nil, false, err
	}
	jr, err = parseJournal(data, j.path)
	if err != nil {
		return nil, false, err
	}
	if jr != nil && jr.pending {
		if jr, err = m.replay(j, jr); err != nil {
			return nil, true, err
		}
		replayed = true
	}
	if j.size < journalSize {
		// Made now, or cut short: the reserve, and the purge lock that a
		// commit takes, so that neither needs space when the disk is full.
		err := j.reserve()
		if err == nil {
			var f *os.File
			if f, err = owner.OpenFile(filepath.Join(m.dir, purgeLockFile), os.O_RDWR, 0o600); err == nil {
				f.Close()
			}
		}
		if err != nil {
			m.store.noReserve(m.user, err)
		}
	}
	return jr, replayed, nil
}

// noReserve reports a journal reserve that could not be made.
func (s *Store) noReserve(user string, err error) {
	if s.log != nil {
		s.log.Warn("maildir: cannot reserve space for the expunge journal; deleting mail will need free space",
			"user", user, "err", err)
	}
}

// replay carries out the pending journal jr of the file j: each file of cur/ and new/ that it names (by base name and inode)
// is removed or moved into the holding area. It returns the journal as it
// is now: nil after a replay that could not move files into the holding area
// for want of space, which undoes the commit instead.
func (m *maildrop) replay(j *journalFile, jr *journal) (*journal, error) {
	if jr.keep {
		if err := ensureHolding(m.dir); err != nil {
			if noSpace(err) {
				return nil, m.undoHold(j, jr)
			}
			return jr, err
		}
	}
	names := jr.bases()
	for _, sub := range subdirs {
		path := filepath.Join(m.dir, sub)
		ents, err := readDir(path)
		if err != nil {
			return jr, err
		}
		for _, d := range ents {
			base := baseName(d.name)
			if d.name[0] == '.' || !names[base] || !d.regular(path) {
				continue
			}
			ino, err := inodeOf(m.dir, sub, d.name)
			if err != nil || !jr.has(base, ino) {
				continue // gone meanwhile, or another file of that name
			}
			err = m.dispose(sub, d.name, jr.keep, jr.at)
			if jr.keep && noSpace(err) {
				return nil, m.undoHold(j, jr)
			}
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return jr, err
			}
			crashpoint.Hit("maildir.replay.disposed")
		}
	}
	if err := m.syncAfterRemoval(jr.keep); err != nil {
		return jr, err
	}
	jr.pending = false
	if jr.legacy {
		// A text journal of an earlier version: replaced by a reserve.
		if err := syscall.Ftruncate(j.fd, 0); err != nil {
			return jr, j.err("truncate", err)
		}
		j.size = 0
		return jr, nil
	}
	return jr, j.done(jr.lines)
}

// clearJournal makes the journal of the Maildir dir read as none, synced,
// so that the base names of the last commit are no longer taken for
// another file's (Restore brings them back).
func clearJournal(dir string) error {
	j, err := openJournal(dir)
	if err != nil {
		return err
	}
	defer j.Close()
	if j.size == 0 {
		return nil
	}
	return j.clear()
}
