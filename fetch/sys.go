package fetch

import (
	"os"

	"golang.org/x/sys/unix"

	"github.com/pouchmail/pouch/internal/fsx"
)

// fsCalls are the file system calls whose failures a run must survive. The
// journal and the destinations take them from the run, which takes the
// real ones (osCalls) from Run, so that tests can fail them or watch their
// order without changing them for the whole process.
type fsCalls struct {
	write     func(f *os.File, b []byte) (int, error) // the journal's appends
	fdatasync func(f *os.File) error                  // the journal's commits
	fsync     func(f *os.File) error                  // an mbox after appends, and after one is cut back
	syncDir   func(dir string) error                  // the parents of the directories a run makes, a Maildir's new/ and cur/, an mbox's directory
	readNames func(dir string) ([]string, error)      // a Maildir's new/ and cur/, after a killed run
}

// osCalls are the real calls.
var osCalls = fsCalls{
	write:     (*os.File).Write,
	fdatasync: func(f *os.File) error { return unix.Fdatasync(int(f.Fd())) },
	fsync:     (*os.File).Sync,
	syncDir:   fsx.SyncDir,
	readNames: fsx.Names,
}
