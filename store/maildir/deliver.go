package maildir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/internal/owner"
	"github.com/pouchmail/pouch/store"
)

// Delivery is one message being delivered into a Maildir, the way the
// Maildir specification has it: written to a new file in tmp/, fsynced,
// renamed into new/. The name in new/ carries the message's sizes (",S="
// stored, ",W=" on the wire, as store.SizeCounter counts them), so that
// they are known without reading the file. Pouch's Store delivers this
// way, and so does pouch fetch into a user's Maildir.
//
// A message is durable once new/ is fsynced after its Commit (SyncNew): a
// caller that delivers many messages fsyncs new/ once for them all.
type Delivery struct {
	dir    string // the Maildir
	unique string
	tmp    string // the file's path in tmp/
	f      *os.File
	size   store.SizeCounter
	done   bool
}

// NewDelivery creates the message's file in the tmp/ of the Maildir dir
// (mode 0600, given to the Maildir's owner when the process runs as root),
// named by UniqueName(at) and then tmpSuffix: a program that marks its
// files there can recognise those a killed run of its own left.
func NewDelivery(dir string, at time.Time, tmpSuffix string) (*Delivery, error) {
	unique := UniqueName(at)
	tmp := filepath.Join(dir, "tmp", unique+tmpSuffix)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	owner.Adopt(tmp)
	return &Delivery{dir: dir, unique: unique, tmp: tmp, f: f}, nil
}

// Write appends p to the message, counting its sizes.
func (d *Delivery) Write(p []byte) (int, error) {
	n, err := d.f.Write(p)
	d.size.Write(p[:n])
	return n, err
}

// Commit fsyncs and closes the file, and renames it into new/ as
// UNIQUE,S=<stored>,W=<wire> followed by info (fields of the caller's own,
// such as ",PF=<digest>"), which it returns. It does not fsync new/
// (SyncNew does). A failed Commit removes the file.
func (d *Delivery) Commit(info string) (name string, err error) {
	if d.done {
		return "", errors.New("maildir: commit of a delivery already ended")
	}
	d.done = true
	err = d.f.Sync()
	if cerr := d.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		name = SizedName(d.unique, d.size.Raw(), d.size.Wire()) + info
		crashpoint.Hit("maildir.deliver.synced")
		err = os.Rename(d.tmp, filepath.Join(d.dir, "new", name))
	}
	if err != nil {
		os.Remove(d.tmp)
		return "", err
	}
	return name, nil
}

// Abort closes and removes the file of a delivery not committed; after
// Commit it does nothing. It suits a defer.
func (d *Delivery) Abort() {
	if d.done {
		return
	}
	d.done = true
	d.f.Close()
	os.Remove(d.tmp)
}

// SyncNew fsyncs the new/ of the Maildir dir, making the messages
// committed into it durable.
func SyncNew(dir string) error {
	return fsx.SyncDir(filepath.Join(dir, "new"))
}

// deliveries counts the names UniqueName gave in this process.
var deliveries atomic.Uint64

// UniqueName is the unique part of a new message file's name, as the
// Maildir specification builds it: the time in seconds, then
// M<microseconds>P<process>Q<counter> and the host name.
func UniqueName(at time.Time) string {
	return fmt.Sprintf("%d.M%06dP%dQ%d.%s", at.Unix(), at.Nanosecond()/1000, os.Getpid(),
		deliveries.Add(1), hostname())
}

// SizedName is a message file's base name: unique, and the message's
// stored and wire sizes in the ",S=" and ",W=" fields.
func SizedName(unique string, raw, wire int64) string {
	return fmt.Sprintf("%s,S=%d,W=%d", unique, raw, wire)
}

// hostname returns the host name for Maildir file names, with "/", ":"
// and "," encoded as the Maildir specification asks.
func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "localhost"
	}
	return strings.NewReplacer("/", `\057`, ":", `\072`, ",", `\054`).Replace(h)
}
