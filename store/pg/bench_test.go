package pg

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/pouchmail/pouch/store/maildir"
)

// The benchmarks run against the test binary's private cluster at
// PostgreSQL's default settings (fsync and synchronous_commit on).

func benchMessage(size int) []byte {
	line := []byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n")
	return append(bytes.Repeat(line, size/len(line)+1)[:size-2], '\r', '\n')
}

var benchSizes = []struct {
	name string
	size int
}{{"10KB", 10 << 10}, {"10MB", 10 << 20}}

func BenchmarkDeliver(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			s := newStore(b)
			msg := benchMessage(sz.size)
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if err := s.Deliver(context.Background(), fmt.Sprintf("u%d", i%100), bytes.NewReader(msg)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDeliverParallel delivers 10 KB messages from 8 senders at once
// per CPU, as LMTP clients do: their commits share the WAL's flushes.
func BenchmarkDeliverParallel(b *testing.B) {
	s := newStore(b)
	msg := benchMessage(10 << 10)
	var users atomic.Int64
	b.SetBytes(int64(len(msg)))
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		user := fmt.Sprintf("u%d", users.Add(1))
		for pb.Next() {
			if err := s.Deliver(context.Background(), user, bytes.NewReader(msg)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRetr reads a message the way the POP3 server does: Read into
// its pooled buffer (1 MiB for large messages, 256 KiB otherwise).
func BenchmarkRetr(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			s := newStore(b)
			msg := benchMessage(sz.size)
			if err := s.Deliver(context.Background(), "u", bytes.NewReader(msg)); err != nil {
				b.Fatal(err)
			}
			m, err := s.Open(context.Background(), "u")
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			buf := make([]byte, 256<<10)
			if sz.size >= 1<<20 {
				buf = make([]byte, 1<<20)
			}
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			for b.Loop() {
				r, err := m.Open(0)
				if err != nil {
					b.Fatal(err)
				}
				var n int64
				for {
					k, err := r.Read(buf)
					n += int64(k)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				r.Close()
				if n != int64(len(msg)) {
					b.Fatalf("read %d octets, want %d", n, len(msg))
				}
			}
		})
	}
}

// BenchmarkOpen10000 opens a maildrop of 10,000 messages: the lease and
// the snapshot, then the release.
func BenchmarkOpen10000(b *testing.B) {
	const n = 10000
	url := newSchema(b)
	s := connect(b, url, Options{})
	if err := s.Create("u"); err != nil {
		b.Fatal(err)
	}
	// Filled in bulk, as 10,000 deliveries of a 2 KB message leave it.
	sql(b, url, `INSERT INTO messages (maildrop, id, uid, body, size, chunks, delivered)
		SELECT d.id, i, 'P' || i || '.' || md5(i::text), i, 2048, 1, now() FROM maildrops d, generate_series(1, $1) i`, n)
	sql(b, url, `INSERT INTO chunks (maildrop, body, n, data)
		SELECT d.id, i, 0, convert_to(repeat('x', 2046) || E'\r\n', 'UTF8') FROM maildrops d, generate_series(1, $1) i`, n)
	sql(b, url, `UPDATE maildrops SET messages = $1::bigint, octets = $1::bigint * 2048`, n)
	b.ResetTimer()
	for b.Loop() {
		m, err := s.Open(context.Background(), "u")
		if err != nil {
			b.Fatal(err)
		}
		if len(m.Messages()) != n {
			b.Fatalf("%d messages", len(m.Messages()))
		}
		m.Close()
	}
}

// BenchmarkDiskUse delivers 1,000 messages of each size into 10 maildrops
// and reports the disk that the tables take, with their TOAST and indexes,
// per octet of mail (pg-disk/octet), beside what the same messages take as
// files of a Maildir in the test's temporary directory (maildir-disk/octet,
// st_blocks): the figures behind the storage advice of
// docs/deployment-postgres.md. One iteration is enough (-benchtime=1x).
func BenchmarkDiskUse(b *testing.B) {
	const n = 1000
	for _, size := range []int{2 << 10, 10 << 10, 100 << 10} {
		b.Run(fmt.Sprintf("%dKB", size>>10), func(b *testing.B) {
			for b.Loop() {
				url := newSchema(b)
				s := connect(b, url, Options{})
				md := maildir.New(b.TempDir())
				msg := benchMessage(size)
				for i := 0; i < n; i++ {
					user := fmt.Sprintf("u%d", i%10)
					if err := s.Deliver(context.Background(), user, bytes.NewReader(msg)); err != nil {
						b.Fatal(err)
					}
					if err := md.Deliver(context.Background(), user, bytes.NewReader(msg)); err != nil {
						b.Fatal(err)
					}
				}
				var pgDisk int64
				err := s.pool.QueryRow(context.Background(), `SELECT sum(pg_total_relation_size(c.oid))::bigint
					FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
					WHERE ns.nspname = current_schema() AND c.relkind = 'r'`).Scan(&pgDisk)
				if err != nil {
					b.Fatal(err)
				}
				var mdDisk int64
				for i := 0; i < 10; i++ {
					dir, _ := md.Dir(fmt.Sprintf("u%d", i))
					ents, err := os.ReadDir(filepath.Join(dir, "new"))
					if err != nil {
						b.Fatal(err)
					}
					for _, e := range ents {
						var st syscall.Stat_t
						if err := syscall.Stat(filepath.Join(dir, "new", e.Name()), &st); err != nil {
							b.Fatal(err)
						}
						mdDisk += st.Blocks * 512
					}
				}
				octets := float64(n * len(msg))
				b.ReportMetric(float64(pgDisk)/octets, "pg-disk/octet")
				b.ReportMetric(float64(mdDisk)/octets, "maildir-disk/octet")
			}
		})
	}
}
