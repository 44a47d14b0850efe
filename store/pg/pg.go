// Package pg is Pouch's shared storage backend: the maildrops of several
// `pouch serve` nodes in one PostgreSQL database, with the POP3 maildrop
// lock (RFC 1939 §4) held across nodes as a lease.
//
// Tables (schema.go), each keyed by the maildrop first:
//
//	maildrops  one row per user: the usage counters that quotas read, and
//	           the legal hold
//	messages   one row per message: its UIDL, wire size, delivery order,
//	           delivery and first retrieval times, and when it entered the
//	           holding area (NULL while it is in the maildrop)
//	chunks     the bodies in wire form, in rows of up to ChunkSize octets,
//	           stored out of line and uncompressed
//	uploads    the bodies being written by a delivery not yet committed
//	nodes      one heartbeat row per running Store, with an expiry set by
//	           the database's clock
//	leases     the maildrop lock: which node's session holds a maildrop
//
// The lock (lease.go): a session holds a maildrop while its lease row names
// it and its node's heartbeat has not expired; a crashed node's leases lapse
// with its heartbeat, after the lock TTL. A QUIT commits in one transaction
// that first locks and re-checks the lease row, so a node that was paused or
// cut off past its lease deletes nothing once another has taken over. A
// node that cannot renew its heartbeat gives its sessions up: the Maildrops
// that Open returns have a method Lost() <-chan struct{}, closed then, for
// the server to end those sessions.
//
// Delivery writes the body's chunks first, each in a short transaction of
// its own, then the message row and the usage counters in one transaction;
// the message exists only once that one commits.
package pg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/store"
)

const (
	// DefaultLockTTL is how long a node's leases outlive its last
	// heartbeat: how long a crashed node's users wait to log in elsewhere.
	DefaultLockTTL = 20 * time.Second
	// ChunkSize is the largest body chunk: one row, one round trip.
	ChunkSize = 256 << 10
	// uploadMaxAge is the age at which a sweep takes the chunks of a
	// delivery that never committed (its process died) for garbage.
	uploadMaxAge = time.Hour
)

var (
	// ErrLeaseLost means that this node no longer holds the maildrop's
	// lease: its heartbeat lapsed, or another node took the maildrop over.
	// Nothing was changed.
	ErrLeaseLost = errors.New("pg: this node lost the maildrop's lease; nothing was changed")
	// ErrExists means that Import found a message with the same UIDL in
	// the maildrop or its holding area.
	ErrExists = errors.New("pg: the maildrop has a message with this UIDL already")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("pg: store closed")
	// errNoMaildrop is Stats' error for a user without a maildrop; it
	// matches fs.ErrNotExist as the Maildir backend's does.
	errNoMaildrop = fmt.Errorf("pg: no such maildrop: %w", fs.ErrNotExist)
)

// Options configure a Store.
type Options struct {
	// LockTTL is how long the maildrops a node holds stay locked after its
	// last heartbeat (DefaultLockTTL when zero). The node renews its
	// heartbeat four times per LockTTL, and closes its sessions (Lost) when
	// it has not managed to for nine tenths of it.
	LockTTL time.Duration
	// Node names this node in the nodes table, for operators (host name
	// and process id when empty).
	Node string
}

// Store is a connection pool to the database and this node's heartbeat.
// It is safe for concurrent use.
type Store struct {
	pool       *pgxpool.Pool
	connConfig *pgx.ConnConfig // for the heartbeat's connection
	ttl        time.Duration
	nodeName   string
	policy     func(user string) store.Policy
	now        func() time.Time
	log        *slog.Logger

	node     atomic.Pointer[node] // the live incarnation, nil until needed
	nodeMu   sync.Mutex           // serializes registrations and Close
	closed   bool                 // under nodeMu
	sessions atomic.Int64         // lease tokens of this Store
	bg       sync.WaitGroup       // the heartbeats

	relMu    sync.Mutex
	releases []lease // leases whose release failed, tried again

	aheadUsed atomic.Int64 // octets of the bodies its sessions read ahead (body.go)
}

var (
	_ store.Store     = (*Store)(nil)
	_ store.Deliverer = (*Store)(nil)
)

// Connect opens a pool of connections to the database named by connString
// (a postgres:// URL or key=value string, with pgxpool's pool_* settings)
// and checks that its schema has this code's version (ErrNoSchema,
// *SchemaError). The node's heartbeat starts with the first maildrop
// opened, so a Store that only delivers keeps no node row.
func Connect(ctx context.Context, connString string, opt Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, err
	}
	reset := &resetter{}
	cfg.ConnConfig.Tracer = reset
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	reset.pool.Store(pool)
	if err := checkSchema(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	s := &Store{pool: pool, connConfig: cfg.ConnConfig.Copy(), ttl: opt.LockTTL, nodeName: opt.Node, now: time.Now, log: slog.Default()}
	if s.ttl <= 0 {
		s.ttl = DefaultLockTTL
	}
	if s.nodeName == "" {
		host, _ := os.Hostname()
		s.nodeName = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	return s, nil
}

// resetter closes the pool's idle connections when a connection finds the
// server gone (it was restarted, or failed over): they are gone too, and
// each would fail one more operation otherwise.
type resetter struct{ pool atomic.Pointer[pgxpool.Pool] }

func (r *resetter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (r *resetter) TraceQueryEnd(_ context.Context, c *pgx.Conn, d pgx.TraceQueryEndData) {
	r.check(c, d.Err)
}

func (r *resetter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

func (r *resetter) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

func (r *resetter) TraceBatchEnd(_ context.Context, c *pgx.Conn, d pgx.TraceBatchEndData) {
	r.check(c, d.Err)
}

// check resets the pool after an error that broke the connection, unless
// a context ended it (pgx closes a connection whose query it cancels).
func (r *resetter) check(c *pgx.Conn, err error) {
	if err == nil || !c.IsClosed() || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return
	}
	if p := r.pool.Load(); p != nil {
		p.Reset()
	}
}

// SetPolicy sets the function that gives each user's retention policy; its
// Window decides whether a committed deletion keeps the messages in the
// holding area. Call it before the Store is used.
func (s *Store) SetPolicy(f func(user string) store.Policy) { s.policy = f }

// SetClock replaces time.Now for delivery, deletion and hold times, for
// tests of time-based policies. Leases never use it.
func (s *Store) SetClock(now func() time.Time) { s.now = now }

// SetLogger sets where the Store reports a lost heartbeat and what it
// cleans up (slog.Default() otherwise). Call it before the Store is used.
func (s *Store) SetLogger(l *slog.Logger) { s.log = l }

func (s *Store) policyOf(user string) store.Policy {
	if s.policy == nil {
		return store.Policy{}
	}
	return s.policy(user)
}

// Close ends the heartbeat, releases this node's leases at once (its
// sessions must be over) and closes the pool.
func (s *Store) Close() error {
	s.nodeMu.Lock()
	if s.closed {
		s.nodeMu.Unlock()
		return nil
	}
	s.closed = true
	n := s.node.Swap(nil)
	s.nodeMu.Unlock()
	var err error
	if n != nil {
		n.halt()
		n.cancel(ErrClosed)
		ctx, cancel := context.WithTimeout(context.Background(), s.ttl)
		err = s.dropNode(ctx, n.id)
		cancel()
	}
	s.bg.Wait()
	s.pool.Close()
	return err
}

// maildropID returns the id of user's maildrop, creating it when create
// is set; otherwise a missing one is errNoMaildrop.
func (s *Store) maildropID(ctx context.Context, user string, create bool) (int64, error) {
	if err := store.CheckUser(user); err != nil {
		return 0, err
	}
	var id int64
	err := s.pool.QueryRow(ctx, "SELECT id FROM maildrops WHERE name = $1", user).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) && create {
		err = s.pool.QueryRow(ctx,
			"INSERT INTO maildrops (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id", user).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			// Made by another session after the first look, and committed
			// once the insert saw it: a new statement sees it.
			err = s.pool.QueryRow(ctx, "SELECT id FROM maildrops WHERE name = $1", user).Scan(&id)
		}
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, errNoMaildrop
	}
	return id, err
}

// Create makes user's maildrop if it does not exist.
func (s *Store) Create(user string) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.ttl)
	defer cancel()
	_, err := s.maildropID(ctx, user, true)
	return err
}

// Usage reports the number of messages in user's maildrop and their wire
// size, for quotas, from the counters that delivery and removal keep in
// the same transactions as the messages. It takes no lock. A user without
// a maildrop has none.
func (s *Store) Usage(user string) (messages int, octets int64, err error) {
	if err := store.CheckUser(user); err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.ttl)
	defer cancel()
	err = s.pool.QueryRow(ctx, "SELECT messages, octets FROM maildrops WHERE name = $1", user).Scan(&messages, &octets)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, nil
	}
	return messages, octets, err
}

// row is what a snapshot keeps of a message besides store.Message.
type row struct {
	id, body int64
	chunks   int
}

// Open takes the lease on user's maildrop (ErrLocked at once if a live node
// holds it) and reads the snapshot: the messages not in the holding area,
// in delivery order. Both go in one round trip.
func (s *Store) Open(ctx context.Context, user string) (store.Maildrop, error) {
	if err := store.CheckUser(user); err != nil {
		return nil, err
	}
	n, err := s.currentNode(ctx)
	if err != nil {
		return nil, err
	}
	s.retryReleases(ctx)
	for try := 0; ; try++ {
		m := &maildrop{s: s, user: user, lease: lease{node: n, session: s.sessions.Add(1)}}
		ok, err := m.lockAndLoad(ctx)
		switch {
		case err != nil:
			return nil, err
		case ok:
			return m, nil
		case try > 0:
			return nil, store.ErrLocked
		}
		// Locked, or a maildrop that does not exist yet: make sure it
		// exists, and try once more.
		if _, err := s.maildropID(ctx, user, true); err != nil {
			return nil, err
		}
	}
}

type maildrop struct {
	s      *Store
	user   string
	id     int64
	lease  lease
	msgs   []store.Message
	rows   []row
	ahead  map[int][]byte // bodies read ahead, by index (body.go)
	done   bool           // committed or closed
	closed bool
}

var (
	_ store.Maildrop          = (*maildrop)(nil)
	_ store.RetrievalRecorder = (*maildrop)(nil)
	_ store.Leased            = (*maildrop)(nil)
)

// lockAndLoad takes the lease (acquire has the rules) and reads the
// snapshot in one implicit transaction; the listing reads nothing unless
// the lease was taken. ok is false when no lease was taken: the maildrop is
// locked or does not exist.
func (m *maildrop) lockAndLoad(ctx context.Context) (ok bool, err error) {
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO leases (maildrop, node, session) SELECT id, $2, $3 FROM maildrops WHERE name = $1
		ON CONFLICT (maildrop) DO UPDATE SET node = excluded.node, session = excluded.session, since = now()
		WHERE NOT EXISTS (SELECT 1 FROM nodes WHERE nodes.id = leases.node AND nodes.expires > now())
		RETURNING maildrop`, m.user, m.lease.node.id, m.lease.session)
	b.Queue(`SELECT m.id, m.uid, m.size, m.body, m.chunks FROM leases l JOIN messages m ON m.maildrop = l.maildrop
		WHERE l.maildrop = (SELECT id FROM maildrops WHERE name = $1) AND l.node = $2 AND l.session = $3
		AND m.deleted IS NULL ORDER BY m.id`, m.user, m.lease.node.id, m.lease.session)
	res := m.s.pool.SendBatch(ctx, b)
	defer func() {
		if cerr := res.Close(); err == nil {
			err = cerr
		}
	}()
	err = res.QueryRow().Scan(&m.id)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	m.lease.maildrop = m.id
	rows, err := res.Query()
	if err != nil {
		return false, err
	}
	var (
		r   row
		msg store.Message
	)
	_, err = pgx.ForEachRow(rows, []any{&r.id, &msg.UID, &msg.Size, &r.body, &r.chunks}, func() error {
		m.rows = append(m.rows, r)
		m.msgs = append(m.msgs, msg)
		return nil
	})
	return err == nil, err
}

func (m *maildrop) Messages() []store.Message { return m.msgs }

// Lost is closed when this node can no longer vouch for the maildrop's
// lease: its heartbeat failed for most of the lock TTL, or the database
// expired it. The server then ends the session; Commit would fail with
// ErrLeaseLost.
func (m *maildrop) Lost() <-chan struct{} { return m.lease.node.ctx.Done() }

// ctx is the context of one database operation of the session: cancelled
// when the lease is lost, and bounded by the lock TTL.
func (m *maildrop) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(m.lease.node.ctx, m.s.ttl)
}

// Open returns message i in wire form, read from the database one chunk
// at a time.
func (m *maildrop) Open(i int) (io.ReadCloser, error) {
	if m.closed {
		return nil, errors.New("pg: maildrop closed")
	}
	if i < 0 || i >= len(m.rows) {
		return nil, store.ErrNotFound
	}
	if m.rows[i].chunks == 1 {
		if _, ok := m.ahead[i]; !ok {
			if err := m.readAhead(i); err != nil {
				return nil, err
			}
		}
		if data, ok := m.takeAhead(i); ok {
			return &bodyReader{m: m, r: m.rows[i], size: m.msgs[i].Size, cur: chunk{data: data, found: true}, next: 1}, nil
		}
	}
	return openBody(m, m.rows[i], m.msgs[i].Size)
}

// Commit removes the messages at the given indexes in one transaction that
// first re-checks the lease (lease.go): for good, or into the holding area
// when the user's policy has a deletion window or the maildrop is under
// legal hold. It fails with ErrLeaseLost, having removed nothing, when
// this node no longer holds the maildrop.
func (m *maildrop) Commit(deleted []int) error {
	if m.done {
		return errors.New("pg: commit after commit or close")
	}
	m.done = true
	if len(deleted) == 0 {
		return nil
	}
	ids := make([]int64, len(deleted))
	for k, i := range deleted {
		if i < 0 || i >= len(m.rows) {
			return store.ErrNotFound
		}
		ids[k] = m.rows[i].id
	}
	ctx, cancel := m.ctx()
	defer cancel()
	err := m.s.remove(ctx, m.id, m.lease, ids, m.s.policyOf(m.user).Window > 0, m.s.now(), "pg.commit")
	return leaseErr(ctx, err)
}

// Retrieved records the first retrieval of the messages at the given
// indexes, unless one is on record.
func (m *maildrop) Retrieved(indexes []int, t time.Time) error {
	var ids []int64
	for _, i := range indexes {
		if i >= 0 && i < len(m.rows) {
			ids = append(ids, m.rows[i].id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	ctx, cancel := m.ctx()
	defer cancel()
	_, err := m.s.pool.Exec(ctx, `UPDATE messages SET retrieved = $3
		WHERE maildrop = $1 AND id = ANY($2) AND retrieved IS NULL`, m.id, ids, t)
	return leaseErr(ctx, err)
}

// Close releases the lease. It removes nothing.
func (m *maildrop) Close() error {
	m.done = true
	if m.closed {
		return nil
	}
	m.closed = true
	m.dropAhead()
	m.s.release(m.lease)
	return nil
}

// remove takes the messages ids out of maildrop md in one transaction that
// first checks that l still holds the lease: into the holding area,
// stamped at, when keep is set or the maildrop is under legal hold,
// otherwise for good. crash names its crash points.
func (s *Store) remove(ctx context.Context, md int64, l lease, ids []int64, keep bool, at time.Time, crash string) error {
	tx, hold, err := s.beginChecked(ctx, md, l)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	if err := takeOut(ctx, tx, md, ids, keep || hold, at); err != nil {
		return err
	}
	crashpoint.Hit(crash + ".before-commit")
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	crashpoint.Hit(crash + ".committed")
	return nil
}

// takeOut removes the live messages ids of maildrop md in tx, in one
// statement: into the holding area, stamped at, when keep is set,
// otherwise with their bodies; and counts them out of the usage.
func takeOut(ctx context.Context, tx pgx.Tx, md int64, ids []int64, keep bool, at time.Time) error {
	var err error
	if keep {
		_, err = tx.Exec(ctx, `WITH gone AS (UPDATE messages SET deleted = $3
				WHERE maildrop = $1 AND id = ANY($2) AND deleted IS NULL RETURNING size)
			UPDATE maildrops SET messages = messages - (SELECT count(*) FROM gone),
				octets = octets - (SELECT coalesce(sum(size), 0) FROM gone)
			WHERE id = $1`, md, ids, at)
	} else {
		_, err = tx.Exec(ctx, `WITH gone AS (DELETE FROM messages
				WHERE maildrop = $1 AND id = ANY($2) AND deleted IS NULL RETURNING size, body),
			bodies AS (DELETE FROM chunks WHERE maildrop = $1 AND body IN (SELECT body FROM gone))
			UPDATE maildrops SET messages = messages - (SELECT count(*) FROM gone),
				octets = octets - (SELECT coalesce(sum(size), 0) FROM gone)
			WHERE id = $1`, md, ids)
	}
	return err
}

// leaseErr explains an error of an operation under ctx: ErrLeaseLost
// when the lease's context ended it.
func leaseErr(ctx context.Context, err error) error {
	if err == nil || errors.Is(err, ErrLeaseLost) {
		return err
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrLeaseLost) || errors.Is(cause, ErrClosed) {
		return fmt.Errorf("%w (%v)", cause, err)
	}
	return err
}

// Deliver stores the message read from r as the newest of user's maildrop
// (put). When it returns nil the message is committed.
func (s *Store) Deliver(ctx context.Context, user string, r io.Reader) error {
	return s.put(ctx, user, r, nil)
}

// Imported describes a message that Import brings from another store.
type Imported struct {
	// UID is kept verbatim: 1–70 octets in 0x21–0x7E (RFC 1939 §7).
	UID string
	// Delivered is when it arrived (now when zero).
	Delivered time.Time
	// Retrieved is its first retrieval (zero: never).
	Retrieved time.Time
	// Deleted, when not zero, puts it into the holding area, as deleted
	// at that time.
	Deleted time.Time
}

// Import stores a message read from r (as stored: Import makes its wire
// form) into user's maildrop with the UIDL and times of m, as the newest
// message. It fails with ErrExists, adding nothing, when the maildrop or
// its holding area has a message with that UIDL, so an import that was
// cut short can be run again.
func (s *Store) Import(ctx context.Context, user string, m Imported, r io.Reader) error {
	if !store.ValidUID(m.UID) {
		return fmt.Errorf("pg: invalid UIDL %q", m.UID)
	}
	return s.put(ctx, user, r, &m)
}

// newUID is the UIDL of a message delivered here: its id, which comes from
// a sequence and is never handed out twice, and the time, which keeps it
// unique even if a database restored from a backup hands out an id again.
func newUID(id int64) string {
	return strconv.FormatInt(id, 36) + "." + strconv.FormatInt(time.Now().UnixMicro(), 36)
}

// put stores a message: its body in chunks, then its row and the usage
// counters in one transaction. A message of one chunk is written in that
// transaction; a longer one first (writeBody), and the transaction checks
// that every chunk is there. imp, if not nil, gives its UIDL and times.
func (s *Store) put(ctx context.Context, user string, r io.Reader, imp *Imported) (err error) {
	sent := false // COMMIT went out
	md, body, err := s.newBody(ctx, user)
	if err != nil {
		return err
	}
	if imp != nil {
		var there bool
		if err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM messages WHERE maildrop = $1 AND uid = $2)",
			md, imp.UID).Scan(&there); err != nil {
			return err
		}
		if there {
			return ErrExists
		}
	}
	bufp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bufp)
	r = store.NewCanonicalReader(store.ContextReader(ctx, r))
	n, err := io.ReadFull(r, *bufp)
	first := (*bufp)[:n]
	size, chunks, whole := int64(n), min(n, 1), err != nil
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
	case err != nil:
		return err
	default:
		// More than a chunk: the chunks go first, each in a transaction
		// of its own. Until COMMIT is sent, a failure removes them; after,
		// the outcome may be unknown, and a sweep removes them if the
		// message did not commit.
		defer func() {
			if err != nil && !sent {
				s.discard(md, body)
			}
		}()
		if err := s.writeChunk(ctx, md, body, 0, first); err != nil {
			return err
		}
		more, n, err := s.writeBody(ctx, md, body, r, *bufp)
		if err != nil {
			return err
		}
		size, chunks = size+more, 1+n
		crashpoint.Hit("pg.deliver.chunks-written")
	}
	uid, delivered := newUID(body), s.now()
	var retrieved, deleted *time.Time
	if imp != nil {
		uid = imp.UID
		if !imp.Delivered.IsZero() {
			delivered = imp.Delivered
		}
		if !imp.Retrieved.IsZero() {
			retrieved = &imp.Retrieved
		}
		if !imp.Deleted.IsZero() {
			deleted = &imp.Deleted
		}
	}
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	if whole {
		if n > 0 {
			b.Queue("INSERT INTO chunks (maildrop, body, n, data) VALUES ($1, $2, 0, $3)", md, body, first)
		}
	} else {
		b.Queue("DELETE FROM uploads WHERE maildrop = $1 AND body = $2", md, body)
		b.Queue("SELECT count(*), coalesce(sum(octet_length(data)), 0) FROM chunks WHERE maildrop = $1 AND body = $2", md, body)
	}
	b.Queue(`INSERT INTO messages (maildrop, id, uid, body, size, chunks, delivered, retrieved, deleted)
		VALUES ($1, $2, $3, $2, $4, $5, $6, $7, $8)`, md, body, uid, size, chunks, delivered, retrieved, deleted)
	if deleted == nil {
		b.Queue("UPDATE maildrops SET messages = messages + 1, octets = octets + $2 WHERE id = $1", md, size)
	}
	res := s.pool.SendBatch(ctx, b)
	tx := res.Tx()
	defer tx.Rollback(context.Background())
	err = finalChecks(res, whole, n > 0, chunks, size)
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		var pe *pgconn.PgError
		if imp != nil && errors.As(err, &pe) && pe.Code == "23505" { // unique_violation
			return ErrExists
		}
		return err
	}
	crashpoint.Hit("pg.deliver.before-commit")
	sent = true
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	crashpoint.Hit("pg.deliver.committed")
	return nil
}

// finalChecks reads the results of put's batch up to the message's row:
// for a message written in chunks beforehand, that its uploads row and all
// its chunks are there.
func finalChecks(res pgx.BatchResults, whole, chunk bool, chunks int, size int64) error {
	if _, err := res.Exec(); err != nil { // BEGIN
		return err
	}
	if whole {
		if chunk {
			if _, err := res.Exec(); err != nil {
				return err
			}
		}
	} else {
		tag, err := res.Exec()
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return errors.New("pg: the delivery's upload record is gone (taken for garbage by a sweep)")
		}
		var n, octets int64
		if err := res.QueryRow().Scan(&n, &octets); err != nil {
			return err
		}
		if n != int64(chunks) || octets != size {
			return fmt.Errorf("pg: the database has %d chunks of %d octets of the message, not %d of %d", n, octets, chunks, size)
		}
	}
	_, err := res.Exec()
	return err
}

// newBody returns the id of user's maildrop, created if need be, and a new
// id for a message.
func (s *Store) newBody(ctx context.Context, user string) (md, body int64, err error) {
	if err := store.CheckUser(user); err != nil {
		return 0, 0, err
	}
	for try := 0; ; try++ {
		err := s.pool.QueryRow(ctx, "SELECT id, nextval('message_ids') FROM maildrops WHERE name = $1", user).Scan(&md, &body)
		if !errors.Is(err, pgx.ErrNoRows) || try > 0 {
			return md, body, err
		}
		if _, err := s.maildropID(ctx, user, true); err != nil {
			return 0, 0, err
		}
	}
}

// discard removes what a delivery that failed wrote, if it can; what is
// left is taken for garbage by a later sweep (uploadMaxAge).
func (s *Store) discard(md, body int64) {
	ctx, cancel := context.WithTimeout(context.Background(), s.ttl)
	defer cancel()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return
	}
	defer tx.Rollback(context.Background())
	b := &pgx.Batch{}
	b.Queue("DELETE FROM chunks WHERE maildrop = $1 AND body = $2", md, body)
	b.Queue("DELETE FROM uploads WHERE maildrop = $1 AND body = $2", md, body)
	if err := tx.SendBatch(ctx, b).Close(); err == nil {
		tx.Commit(ctx)
	}
}
