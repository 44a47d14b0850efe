package migrate

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/pouchmail/pouch/store/maildir"
)

// BenchmarkImport imports a Maildir of 10,000 messages of 4 KiB that
// Dovecot has listed (dovecot-uidlist, default UIDLs), at the defaults:
// copying, and with --move. Run it with -benchtime=3x: each run makes a new
// source, outside the timer.
func BenchmarkImport(b *testing.B) {
	const n = 10000
	body := "From: a@example.org\nTo: b@example.org\nSubject: benchmark\n\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n", 63)
	for _, move := range []bool{false, true} {
		name := "copy"
		if move {
			name = "move"
		}
		b.Run(name, func(b *testing.B) {
			var octets int64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				base := b.TempDir()
				src := filepath.Join(base, "old")
				for _, sub := range []string{"new", "cur", "tmp"} {
					os.MkdirAll(filepath.Join(src, sub), 0o700)
				}
				var list strings.Builder
				fmt.Fprintf(&list, "3 V1751000000 N%d\n", n+1)
				for k := 0; k < n; k++ {
					file := fmt.Sprintf("%d.M%dP1.old,S=%d", 1751000000+k, k, len(body))
					if err := os.WriteFile(filepath.Join(src, "cur", file+":2,S"), []byte(body), 0o600); err != nil {
						b.Fatal(err)
					}
					fmt.Fprintf(&list, "%d :%s\n", k+1, file)
				}
				os.WriteFile(filepath.Join(src, "dovecot-uidlist"), []byte(list.String()), 0o600)
				st := maildir.New(filepath.Join(base, "mail"))
				syscall.Sync() // the old server's mail is on disk, not in dirty pages
				b.StartTimer()
				rep := ImportMaildir(context.Background(), st, "u", src, ImportOptions{Move: move})
				if rep.Err != nil || rep.Imported != n {
					b.Fatalf("%+v", rep)
				}
				octets += rep.Octets
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "msgs/s")
			b.ReportMetric(float64(octets)/b.Elapsed().Seconds()/(1<<20), "MiB/s")
		})
	}
}
