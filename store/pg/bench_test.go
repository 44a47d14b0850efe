package pg

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
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
