package fetch

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/pouchmail/pouch/internal/popscript"
)

// benchUID is message i's UIDL in BenchmarkHugeListing: 24 octets, about
// what Dovecot and Gmail send.
func benchUID(i int) string { return fmt.Sprintf("%016x%08x", uint64(i)*2654435761, i) }

// BenchmarkHugeListing measures the peak resident memory of a run against a
// server listing n messages, in a child process (the number a user sees):
// a dry run with an empty journal ("new": every message would be
// downloaded), and a run whose journal already holds every UIDL ("known":
// --keep forever, nothing to download). Run it with -benchtime=1x.
func BenchmarkHugeListing(b *testing.B) {
	for _, n := range []int{1_000_000, 5_000_000} {
		for _, known := range []bool{false, true} {
			name := map[bool]string{false: "new", true: "known"}[known]
			b.Run(fmt.Sprintf("%dk/%s", n/1000, name), func(b *testing.B) {
				box := (&popscript.Box{Count: n, Pipelining: true, Gen: func(i int) popscript.Message {
					return popscript.Message{UID: benchUID(i), Body: "x"}
				}}).Start(b)
				a := testAccount(b, box.Addr)
				a.Timeout = 0
				if known {
					a.KeepForever = true
					os.MkdirAll(a.StateDir, 0o700)
					f, err := os.Create(filepath.Join(a.StateDir, a.StateName()+".journal"))
					if err != nil {
						b.Fatal(err)
					}
					w := bufio.NewWriter(f)
					w.WriteString(journalHeader)
					for i := range n {
						fmt.Fprintf(w, "1700000000 %s\n", benchUID(i))
					}
					if err := w.Flush(); err != nil {
						b.Fatal(err)
					}
					f.Close()
				} else {
					a.DryRun = true
				}
				var peak int64
				for b.Loop() {
					cmd := child(b, a, "")
					if err := cmd.Wait(); err != nil {
						b.Fatalf("fetch: %v", err)
					}
					peak = max(peak, cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss)
				}
				b.ReportMetric(float64(peak)/1024, "peak-MiB")
			})
		}
	}
}
