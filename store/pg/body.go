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

// writeBody stores the chunks of body in maildrop md after the first,
// read from r through buf, and returns their size and number. Each chunk
// is written in a transaction of its own (writeChunk), so that none stays
// open while the sender is slow, and no more than one chunk is in memory.
func (s *Store) writeBody(ctx context.Context, md, body int64, r io.Reader, buf []byte) (size int64, chunks int, err error) {
	for {
		n, rerr := io.ReadFull(r, buf)
		if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
			return 0, 0, rerr
		}
		if n > 0 {
			if err := s.writeChunk(ctx, md, body, 1+chunks, buf[:n]); err != nil {
				return 0, 0, err
			}
			size += int64(n)
			chunks++
		}
		if rerr != nil {
			return size, chunks, nil
		}
	}
}

// writeChunk stores chunk n of body, with the uploads row that marks the
// chunks of a delivery under way along with chunk 0, in one round trip.
// The transaction commits without waiting for the disk (synchronous_commit
// off): the delivery's final transaction waits, and a commit is durable
// only with all that the database logged before it, the chunks included.
// put checks that they are all there, since a database that crashed
// meanwhile may have lost them.
func (s *Store) writeChunk(ctx context.Context, md, body int64, n int, data []byte) error {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue("SET LOCAL synchronous_commit = off")
	if n == 0 {
		b.Queue("INSERT INTO uploads (maildrop, body) VALUES ($1, $2)", md, body)
	}
	b.Queue("INSERT INTO chunks (maildrop, body, n, data) VALUES ($1, $2, $3, $4)", md, body, n, data)
	b.Queue("COMMIT")
	// A failure leaves the connection in a failed transaction, and the
	// pool closes such a connection rather than reuse it.
	return s.pool.SendBatch(ctx, b).Close()
}

// bodyReader streams a message's chunks, one query each, so that a slow
// client holds neither a connection nor a snapshot between reads. While
// the caller sends one chunk, the next is on its way: RETR runs at the
// speed of the slower of the two rather than of their sum.
type bodyReader struct {
	m      *maildrop
	r      row
	size   int64        // wire size, as the snapshot says
	read   int64        // octets handed out
	cur    chunk        // the chunk being handed out; cur.data is what is left of it
	next   int          // the chunk after cur
	ahead  []chan chunk // the fetches of the chunks from next on, under way
	closed bool
}

// fetchDepth is how many chunks of a message are fetched ahead of the one
// being sent, each on a connection of its own: the database reads one
// while the next is on its way and the node sends a third.
const fetchDepth = 2

// chunk is a chunk fetched into a pooled buffer.
type chunk struct {
	bufp  *[]byte
	data  []byte
	found bool // false: not in the database
	err   error
}

func (c chunk) release() {
	if c.bufp != nil {
		chunkBufs.Put(c.bufp)
	}
}

// errDamaged says that a message's chunks do not add up to its size.
var errDamaged = errors.New("pg: the message's stored body does not match its size")

// openBody opens the message of r, fetching its first chunk at once, so
// that a message that is gone is ErrNotFound before anything is sent.
func openBody(m *maildrop, r row, size int64) (*bodyReader, error) {
	b := &bodyReader{m: m, r: r, size: size}
	if r.chunks == 0 {
		return b, nil
	}
	c := b.fetch(0)
	if c.err == nil && !c.found {
		c.err = store.ErrNotFound
	}
	if c.err != nil {
		c.release()
		return nil, c.err
	}
	b.cur, b.next = c, 1
	b.prefetch()
	return b, nil
}

// fetch reads chunk n.
func (b *bodyReader) fetch(n int) chunk {
	c := chunk{bufp: chunkBufs.Get().(*[]byte)}
	ctx, cancel := b.m.ctx()
	defer cancel()
	rows, err := b.m.s.pool.Query(ctx, "SELECT data FROM chunks WHERE maildrop = $1 AND body = $2 AND n = $3",
		b.m.id, b.r.body, n)
	if err != nil {
		c.err = leaseErr(ctx, err)
		return c
	}
	defer rows.Close()
	if !rows.Next() {
		c.err = leaseErr(ctx, rows.Err())
		return c
	}
	var data pgtype.DriverBytes // valid until rows.Next or rows.Close
	if c.err = rows.Scan(&data); c.err != nil {
		return c
	}
	if len(data) == 0 || len(data) > ChunkSize {
		c.err = errDamaged
		return c
	}
	c.data, c.found = append((*c.bufp)[:0], data...), true
	c.err = leaseErr(ctx, rows.Err())
	return c
}

// prefetch starts the fetches of the chunks from next on that are not
// under way, up to fetchDepth of them.
func (b *bodyReader) prefetch() {
	for n := b.next + len(b.ahead); n < b.r.chunks && len(b.ahead) < fetchDepth; n++ {
		ch := make(chan chunk, 1)
		go func() { ch <- b.fetch(n) }()
		b.ahead = append(b.ahead, ch)
	}
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.closed {
		return 0, errors.New("pg: read after close")
	}
	if len(b.cur.data) == 0 {
		if b.next == b.r.chunks {
			if b.read != b.size {
				return 0, errDamaged
			}
			return 0, io.EOF
		}
		b.cur.release()
		b.cur = <-b.ahead[0]
		b.ahead = b.ahead[1:]
		if b.cur.err != nil {
			return 0, b.cur.err
		}
		if !b.cur.found {
			return 0, fmt.Errorf("pg: chunk %d of the message is missing: %w", b.next, errDamaged)
		}
		b.next++
		b.prefetch()
	}
	n := copy(p, b.cur.data)
	b.cur.data = b.cur.data[n:]
	b.read += int64(n)
	if b.read > b.size {
		return n, errDamaged
	}
	return n, nil
}

// Close returns the buffers; a fetch under way returns its own when done.
func (b *bodyReader) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	b.cur.release()
	b.cur = chunk{}
	for _, ch := range b.ahead {
		go func() { c := <-ch; c.release() }()
	}
	b.ahead = nil
	return nil
}

// Read-ahead of small messages. A client downloading a maildrop retrieves
// its messages one after the other, and most are smaller than a chunk: one
// query each would cost a round trip and a query's work in the database per
// message. So the first RETR or TOP of a message of one chunk reads the
// bodies of the messages of one chunk that follow it, up to readAheadBatch
// octets, in the same query, and keeps them for the session. What a Store's
// sessions keep at once is bounded by readAheadBudget; past it, each
// message is read on its own. Bodies never change once written, so what is
// kept stays true while the session holds the lease.
const (
	readAheadBatch  = 256 << 10
	readAheadBudget = 32 << 20
)

// takeAhead returns the body of message i if it was read ahead, and
// forgets it.
func (m *maildrop) takeAhead(i int) ([]byte, bool) {
	data, ok := m.ahead[i]
	if ok {
		delete(m.ahead, i)
		m.s.aheadUsed.Add(-int64(len(data)))
	}
	return data, ok
}

// dropAhead forgets every body read ahead.
func (m *maildrop) dropAhead() {
	for i := range m.ahead {
		m.takeAhead(i)
	}
}

// readAhead reads the bodies of message i, which has one chunk, and of the
// messages of one chunk after it, within readAheadBatch and the Store's
// budget, in one query. It reads nothing when the budget has no room for
// more than message i: the caller then reads i alone.
func (m *maildrop) readAhead(i int) error {
	var (
		ids    []int64
		idx    = map[int64]int{}
		octets int64
	)
	for k := i; k < len(m.rows) && m.rows[k].chunks == 1; k++ {
		if _, ok := m.ahead[k]; ok {
			break
		}
		if len(ids) > 0 && octets+m.msgs[k].Size > readAheadBatch {
			break
		}
		ids = append(ids, m.rows[k].body)
		idx[m.rows[k].body] = k
		octets += m.msgs[k].Size
	}
	if len(ids) < 2 {
		return nil
	}
	if m.s.aheadUsed.Add(octets) > readAheadBudget {
		m.s.aheadUsed.Add(-octets)
		return nil
	}
	var kept int64
	defer func() { m.s.aheadUsed.Add(kept - octets) }() // what was not kept
	ctx, cancel := m.ctx()
	defer cancel()
	rows, err := m.s.pool.Query(ctx, "SELECT body, data FROM chunks WHERE maildrop = $1 AND n = 0 AND body = ANY($2)", m.id, ids)
	if err != nil {
		return leaseErr(ctx, err)
	}
	var (
		body int64
		data []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&body, &data}, func() error {
		k, ok := idx[body]
		if ok && len(data) > 0 && int64(len(data)) == m.msgs[k].Size {
			if m.ahead == nil {
				m.ahead = make(map[int][]byte)
			}
			m.ahead[k] = data
			kept += int64(len(data))
		}
		data = nil // a new slice for the next row
		return nil
	})
	return leaseErr(ctx, err)
}
