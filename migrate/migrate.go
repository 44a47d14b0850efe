// Package migrate brings another POP3 server's maildrops into Pouch's:
// Dovecot's and Courier's Maildirs, with, for every message, the UIDL, the
// place in the list and the size that the old server's clients saw, so
// that no client that keeps mail on the server downloads any of it again.
//
// It reads what those servers keep beside the messages (dovecot-uidlist,
// courierpop3dsizelist), works out the UIDLs as Dovecot's
// pop3_uidl_format does, finds every user's Maildir from a Dovecot
// mail_location, and hands the messages to store/maildir's Import, which
// places them crash-safely and imports nothing twice.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"syscall"

	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/maildir"
)

// ImportOptions say how to import a Maildir.
type ImportOptions struct {
	Options
	// Move renames the messages into the maildrop instead of copying
	// them: the source and the maildrop must be on one file system.
	Move bool
	// Prune removes from the maildrop what an earlier run copied from
	// this Maildir and the Maildir no longer has, or has with
	// Options.DeletedFlag: mail that clients deleted on the old server
	// since (see maildir.Import.Prune).
	Prune bool
	// Batch is how many messages are placed with one sync of the
	// directories and the journal; 0 for 256.
	Batch int
	// Progress, if set, is told after each batch how many messages of
	// the source it settled (imported or not) and how many octets it
	// imported.
	Progress func(messages int, octets int64)
}

// Report says what an import of one Maildir did.
type Report struct {
	User string
	Dir  string
	// From is where the UIDLs came from: FromDovecot, FromCourier,
	// FromNames.
	From string
	// Messages is the number of messages in the source.
	Messages int
	// Imported messages and their octets (wire size), in this run.
	Imported int
	Octets   int64
	// Kept counts the imported messages listed under the old server's
	// UIDL; New those that the old server had not listed yet (new to
	// every client).
	Kept, New int
	// Changed lists messages imported under another UIDL than the old
	// server's, which is not a valid POP3 UIDL: clients download them
	// again.
	Changed []Skip
	// Already counts the messages an earlier run imported.
	Already int
	// Pruned counts the messages removed by Prune.
	Pruned int
	// Hidden counts the messages left behind as deleted by POP3 clients
	// (Options.DeletedFlag).
	Hidden int
	// Skipped lists the messages not imported, and why.
	Skipped []Skip
	// SizeDiffers counts messages whose LIST size differs from the one
	// the old server recorded. Pouch lists the octets RETR sends; Dovecot
	// lists 2 fewer for a message whose last line has no line end, as it
	// does not count the CRLF it adds.
	SizeDiffers int
	// Err is why the Maildir could not be imported at all, or why the
	// import stopped.
	Err error
}

// Complete reports whether every message of the source is in the maildrop
// under the UIDL its clients know.
func (r *Report) Complete() bool { return r.Err == nil && len(r.Skipped) == 0 && len(r.Changed) == 0 }

// ImportMaildir imports the Maildir dir into user's maildrop of st. It
// never fails as a whole: the Report says what it did and why not more.
func ImportMaildir(ctx context.Context, st *maildir.Store, user, dir string, opt ImportOptions) *Report {
	rep := &Report{User: user, Dir: dir}
	rep.Err = importMaildir(ctx, st, user, dir, opt, rep)
	return rep
}

func importMaildir(ctx context.Context, st *maildir.Store, user, dir string, opt ImportOptions, rep *Report) error {
	src, err := Scan(dir, opt.Options)
	if err != nil {
		return err
	}
	rep.From = src.From
	rep.Messages = len(src.Messages) + len(src.Skipped) + src.Hidden
	rep.Hidden = src.Hidden
	rep.Skipped = append(rep.Skipped, src.Skipped...)
	im, err := st.BeginImport(ctx, user)
	switch {
	case errors.Is(err, store.ErrLocked):
		return fmt.Errorf("%s has a POP3 session open (or a retention sweep is running); run the import again when it has ended", user)
	case errors.Is(err, store.ErrBadUser):
		return fmt.Errorf("%q cannot be a user name", user)
	case err != nil:
		return err
	}
	defer func() {
		if cerr := im.Close(); cerr != nil && rep.Err == nil {
			rep.Err = cerr
		}
	}()
	if opt.Move && len(src.Messages) > 0 {
		var a, b syscall.Stat_t
		if err := syscall.Stat(dir, &a); err != nil {
			return err
		}
		if err := syscall.Stat(im.Dir(), &b); err != nil {
			return err
		}
		if a.Dev != b.Dev {
			return fmt.Errorf("--move renames the messages, so %s and %s must be on one file system; import without --move to copy them", dir, im.Dir())
		}
	}
	batch := opt.Batch
	if batch <= 0 {
		batch = 256
	}
	for start := 0; start < len(src.Messages); start += batch {
		msgs := src.Messages[start:min(start+batch, len(src.Messages))]
		in := make([]maildir.ImportMessage, len(msgs))
		for i, m := range msgs {
			in[i] = m.ImportMessage
		}
		res, err := im.Add(ctx, in, opt.Move)
		var octets int64
		for i, r := range res {
			m := &msgs[i]
			switch r.Status {
			case maildir.Imported, maildir.ImportedNewUID:
				rep.Imported++
				rep.Octets += r.Size
				octets += r.Size
				switch {
				case !m.Listed:
					rep.New++ // no client knows its UIDL, whichever it is
				case r.Status == maildir.ImportedNewUID:
					rep.Changed = append(rep.Changed, Skip{m.Path, fmt.Sprintf(
						"its UIDL %q is not a valid POP3 UIDL (1 to 70 printable octets), so it is listed as %s", clip(m.UID), r.UID)})
				default:
					rep.Kept++
				}
				if m.OldSize >= 0 && m.OldSize != r.Size {
					rep.SizeDiffers++
				}
			case maildir.AlreadyImported:
				rep.Already++
			case maildir.Refused:
				rep.Skipped = append(rep.Skipped, Skip{m.Path, reason(r.Err)})
			}
		}
		if opt.Progress != nil {
			opt.Progress(len(msgs), octets)
		}
		if err != nil {
			return err
		}
	}
	if opt.Prune {
		rep.Pruned, err = im.Prune(dir, func(base string) bool { return src.bases[base] })
		return err
	}
	return nil
}

// reason says in words why Add refused a message.
func reason(err error) string {
	switch {
	case errors.Is(err, maildir.ErrUIDInUse):
		return err.Error()
	case errors.Is(err, fs.ErrNotExist):
		return "it disappeared while the import ran"
	case errors.Is(err, maildir.ErrCrossDevice):
		return "it is on another file system than the maildrop (--move)"
	}
	return strings.TrimPrefix(err.Error(), "maildir: ")
}

// clip shortens a long UIDL for a message.
func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
