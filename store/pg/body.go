package pg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pouchmail/pouch/store"
)

// Bodies are stored in wire form (store.NewCanonicalReader), so that RETR
// sends the chunks as they are and a message's size is the sum of its
// chunks' lengths.

// chunkBufs are the buffers of one chunk that writers and readers use.
var chunkBufs = sync.Pool{New: func() any { b := make([]byte, ChunkSize); return &b }}

// writeBody stores r as the chunks of body in maildrop md: one chunk per
// transaction, so that no transaction stays open while the sender is slow
// and no more than one chunk is in memory. Those transactions commit
// without waiting for the disk (synchronous_commit off): the delivery's
// final transaction waits, and a commit is durable only with all that the
// database logged before it, the chunks included. put checks they are all
// there, since a database that crashed meanwhile may have lost them.
func (s *Store) writeBody(ctx context.Context, md, body int64, r io.Reader) (size int64, chunks int, err error) {
	bufp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bufp)
	buf := *bufp
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if err := s.insertChunk(ctx, md, body, chunks, buf[:n]); err != nil {
				return 0, 0, err
			}
			size += int64(n)
			chunks++
		}
		switch {
		case rerr == io.EOF || rerr == io.ErrUnexpectedEOF:
			return size, chunks, nil
		case rerr != nil:
			return 0, 0, rerr
		}
	}
}

func (s *Store) insertChunk(ctx context.Context, md, body int64, n int, data []byte) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	b := &pgx.Batch{}
	b.Queue("SET LOCAL synchronous_commit = off")
	b.Queue("INSERT INTO chunks (maildrop, body, n, data) VALUES ($1, $2, $3, $4)", md, body, n, data)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// bodyReader streams a message's chunks, one query each, so that a slow
// client holds neither a connection nor a snapshot between reads.
type bodyReader struct {
	m      *maildrop
	r      row
	size   int64   // wire size, as the snapshot says
	read   int64   // octets handed out
	next   int     // the next chunk to fetch
	bufp   *[]byte // the current chunk ...
	buf    []byte  // ... and what is left of it
	closed bool
}

// errDamaged says that a message's chunks do not add up to its size.
var errDamaged = errors.New("pg: the message's stored body does not match its size")

// openBody opens the message of r, fetching its first chunk at once, so
// that a message that is gone is ErrNotFound before anything is sent.
func openBody(m *maildrop, r row, size int64) (*bodyReader, error) {
	b := &bodyReader{m: m, r: r, size: size, bufp: chunkBufs.Get().(*[]byte)}
	if r.chunks == 0 {
		return b, nil
	}
	found, err := b.fetch()
	if err == nil && !found {
		err = store.ErrNotFound
	}
	if err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// fetch reads the next chunk into the buffer; found is false when it is
// not in the database.
func (b *bodyReader) fetch() (found bool, err error) {
	ctx, cancel := b.m.ctx()
	defer cancel()
	rows, err := b.m.s.pool.Query(ctx, "SELECT data FROM chunks WHERE maildrop = $1 AND body = $2 AND n = $3",
		b.m.id, b.r.body, b.next)
	if err != nil {
		return false, leaseErr(ctx, err)
	}
	defer rows.Close()
	if !rows.Next() {
		return false, leaseErr(ctx, rows.Err())
	}
	var data pgtype.DriverBytes // valid until rows.Next or rows.Close
	if err := rows.Scan(&data); err != nil {
		return false, err
	}
	if len(data) == 0 || len(data) > ChunkSize {
		return false, errDamaged
	}
	b.buf = append((*b.bufp)[:0], data...)
	b.next++
	return true, leaseErr(ctx, rows.Err())
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.closed {
		return 0, errors.New("pg: read after close")
	}
	if len(b.buf) == 0 {
		if b.next == b.r.chunks {
			if b.read != b.size {
				return 0, errDamaged
			}
			return 0, io.EOF
		}
		found, err := b.fetch()
		if err != nil {
			return 0, err
		}
		if !found {
			return 0, fmt.Errorf("pg: chunk %d of the message is missing: %w", b.next, errDamaged)
		}
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	b.read += int64(n)
	if b.read > b.size {
		return n, errDamaged
	}
	return n, nil
}

func (b *bodyReader) Close() error {
	if !b.closed {
		b.closed = true
		b.buf = nil
		chunkBufs.Put(b.bufp)
	}
	return nil
}
