package pg

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pouchmail/pouch/store"
)

// The maildrop lock across nodes (RFC 1939 §4), as a lease.
//
// Each Store that opens maildrops registers a node: a row of nodes whose
// expiry is now() + LockTTL by the database's clock, renewed every quarter
// of the TTL by a heartbeat that can only extend an expiry still in the
// future, so that a node once expired stays dead (a Store that loses its
// node registers a new one). A session holds a maildrop while the leases
// row of the maildrop names its node and session and that node is live:
// Open inserts the row, or takes it over only when the node it names has
// expired, in one statement, and answers ErrLocked at once when it cannot.
// Nothing depends on the nodes' clocks agreeing, nor on advisory locks
// (which a pooler in transaction mode breaks and some PostgreSQL-compatible
// databases do not have).
//
// A node that has not renewed its heartbeat for nine tenths of the TTL,
// by its own monotonic clock counted from the moment it sent the last
// renewal that succeeded, gives up before the database can expire it: it
// closes the Lost channel of every maildrop it holds, and registers anew
// for the next session. A node that was paused longer than that may not
// know it has lost its leases; that is why every transaction that removes
// messages first locks its lease row and checks that it is still the
// session's, under a live node (beginChecked). A takeover must update that
// row, so it waits for such a transaction, and after a takeover the check
// fails: the paused node's QUIT removes nothing.

// lease is one session's hold on a maildrop.
type lease struct {
	maildrop int64
	node     *node
	session  int64
}

// node is one incarnation of this Store's heartbeat row.
type node struct {
	id     int64
	ctx    context.Context // cancelled, with ErrLeaseLost or ErrClosed, when the node is gone
	cancel context.CancelCauseFunc
	stop   chan struct{} // closed to end the heartbeat without declaring the node lost
	once   sync.Once
	done   chan struct{} // closed when the heartbeat goroutine has ended
	lost   atomic.Bool
}

// halt ends n's heartbeat and waits for it.
func (n *node) halt() {
	n.once.Do(func() { close(n.stop) })
	<-n.done
}

// currentNode returns the live node, registering one when there is none.
func (s *Store) currentNode(ctx context.Context) (*node, error) {
	if n := s.node.Load(); n != nil && n.ctx.Err() == nil {
		return n, nil
	}
	s.nodeMu.Lock()
	defer s.nodeMu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if n := s.node.Load(); n != nil && n.ctx.Err() == nil {
		return n, nil
	}
	sent := time.Now()
	var id int64
	if err := s.pool.QueryRow(ctx, `INSERT INTO nodes (name, expires) VALUES ($1, now() + make_interval(secs => $2))
		RETURNING id`, s.nodeName, s.ttl.Seconds()).Scan(&id); err != nil {
		return nil, err
	}
	nctx, cancel := context.WithCancelCause(context.Background())
	n := &node{id: id, ctx: nctx, cancel: cancel, stop: make(chan struct{}), done: make(chan struct{})}
	s.node.Store(n)
	s.bg.Add(1)
	go s.heartbeat(n, sent)
	return n, nil
}

// heartbeat renews n's expiry every quarter of the TTL until n is halted
// or lost. lastOK is when the registration was sent.
func (s *Store) heartbeat(n *node, lastOK time.Time) {
	defer s.bg.Done()
	defer close(n.done)
	every, giveUp := s.ttl/4, s.ttl-s.ttl/10
	watchdog := time.AfterFunc(time.Until(lastOK.Add(giveUp)), func() {
		s.lose(n, "the database could not be reached to renew it")
	})
	defer watchdog.Stop()
	tick := time.NewTicker(every)
	defer tick.Stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for beat := 1; ; beat++ {
		select {
		case <-n.stop:
			return
		case <-n.ctx.Done():
			// Lost: the leases go at once, rather than when the row expires.
			ctx, cancel := context.WithTimeout(context.Background(), every)
			s.dropNode(ctx, n.id)
			cancel()
			return
		case <-tick.C:
		}
		sent := time.Now()
		ctx, cancel := context.WithTimeout(n.ctx, every)
		tag, err := s.renew(ctx, &conn, n.id)
		switch {
		case err == nil && tag.RowsAffected() == 1:
			watchdog.Reset(time.Until(sent.Add(giveUp)))
		case err == nil:
			s.lose(n, "the database had expired it")
		case n.ctx.Err() == nil:
			s.log.Warn("pg: renewing this node's heartbeat failed", "node", n.id, "err", err)
		}
		if n.ctx.Err() == nil {
			s.retryReleases(ctx)
			if beat%12 == 0 {
				s.tidy(ctx)
			}
		}
		cancel()
	}
}

// renew extends node id's expiry, unless it has passed, on a connection of
// the heartbeat's own, so that a pool busy with sessions cannot hold the
// heartbeat up; *conn is made, or made again, as needed.
func (s *Store) renew(ctx context.Context, conn **pgx.Conn, id int64) (pgconn.CommandTag, error) {
	if *conn == nil || (*conn).IsClosed() {
		c, err := pgx.ConnectConfig(ctx, s.connConfig)
		if err != nil {
			return pgconn.CommandTag{}, err
		}
		*conn = c
	}
	return (*conn).Exec(ctx, `UPDATE nodes SET expires = now() + make_interval(secs => $2)
		WHERE id = $1 AND expires > now()`, id, s.ttl.Seconds())
}

// lose declares n lost: its maildrops' Lost channels close and their
// operations fail with ErrLeaseLost; the next Open registers a new node.
func (s *Store) lose(n *node, why string) {
	if n.ctx.Err() != nil || !n.lost.CompareAndSwap(false, true) {
		return
	}
	s.log.Error("pg: this node lost its heartbeat; closing its POP3 sessions", "node", n.id, "reason", why)
	s.node.CompareAndSwap(n, nil)
	n.cancel(ErrLeaseLost)
}

// dropNode removes node id's row and leases.
func (s *Store) dropNode(ctx context.Context, id int64) error {
	b := &pgx.Batch{}
	b.Queue("DELETE FROM leases WHERE node = $1", id)
	b.Queue("DELETE FROM nodes WHERE id = $1", id)
	return s.pool.SendBatch(ctx, b).Close()
}

// tidy removes the leases of nodes expired for a minute (which any session
// may take anyway) and the rows of nodes expired for an hour. It goes by
// the rows of expired nodes it sees, never by the absence of a live one: a
// node registered after the statement began is invisible to it, and its
// leases must stay.
func (s *Store) tidy(ctx context.Context) {
	b := &pgx.Batch{}
	b.Queue(`DELETE FROM leases USING nodes
		WHERE nodes.id = leases.node AND nodes.expires < now() - interval '1 minute'`)
	b.Queue("DELETE FROM nodes WHERE expires < now() - interval '1 hour'")
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		s.log.Warn("pg: removing expired leases failed", "err", err)
	}
}

// acquire takes the lease on maildrop md for a new session, or fails with
// ErrLocked at once while a live node holds it.
func (s *Store) acquire(ctx context.Context, md int64) (lease, error) {
	n, err := s.currentNode(ctx)
	if err != nil {
		return lease{}, err
	}
	s.retryReleases(ctx)
	l := lease{maildrop: md, node: n, session: s.sessions.Add(1)}
	tag, err := s.pool.Exec(ctx, `INSERT INTO leases (maildrop, node, session) VALUES ($1, $2, $3)
		ON CONFLICT (maildrop) DO UPDATE SET node = excluded.node, session = excluded.session, since = now()
		WHERE NOT EXISTS (SELECT 1 FROM nodes WHERE nodes.id = leases.node AND nodes.expires > now())`,
		md, n.id, l.session)
	if err != nil {
		return lease{}, err
	}
	if tag.RowsAffected() == 0 {
		return lease{}, store.ErrLocked
	}
	return l, nil
}

// beginChecked begins a transaction whose first statements, sent with
// BEGIN in one round trip, lock l's lease row and find it still l's, under
// a live node (ErrLeaseLost otherwise), and read whether maildrop md is
// under legal hold under a share lock of its row. Until the transaction
// ends, no other node can take the maildrop over, and the hold cannot
// change: SetHold's update waits, so nothing is purged once it returned.
// The caller ends tx.
func (s *Store) beginChecked(ctx context.Context, md int64, l lease) (tx pgx.Tx, hold bool, err error) {
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	b.Queue(`SELECT 1 FROM leases WHERE maildrop = $1 AND node = $2 AND session = $3
		AND EXISTS (SELECT 1 FROM nodes WHERE nodes.id = leases.node AND nodes.expires > now())
		FOR UPDATE`, md, l.node.id, l.session)
	b.Queue("SELECT hold_since IS NOT NULL FROM maildrops WHERE id = $1 FOR SHARE", md)
	res := s.pool.SendBatch(ctx, b)
	tx = res.Tx()
	_, err = res.Exec()
	if err == nil {
		var one int
		if err = res.QueryRow().Scan(&one); errors.Is(err, pgx.ErrNoRows) {
			err = ErrLeaseLost
		}
	}
	if err == nil {
		err = res.QueryRow().Scan(&hold)
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		tx.Rollback(context.Background())
		return nil, false, err
	}
	return tx, hold, nil
}

// release gives l up. When the database cannot be reached, it is tried
// again by the heartbeat and before the next lease is taken, as long as
// the node lives (a lost node's leases are free anyway).
func (s *Store) release(l lease) {
	ctx, cancel := context.WithTimeout(l.node.ctx, s.ttl/4)
	defer cancel()
	if err := s.drop(ctx, l); err != nil && l.node.ctx.Err() == nil {
		s.relMu.Lock()
		s.releases = append(s.releases, l)
		s.relMu.Unlock()
	}
}

func (s *Store) drop(ctx context.Context, l lease) error {
	_, err := s.pool.Exec(ctx, "DELETE FROM leases WHERE maildrop = $1 AND node = $2 AND session = $3",
		l.maildrop, l.node.id, l.session)
	return err
}

// retryReleases tries the releases that failed again.
func (s *Store) retryReleases(ctx context.Context) {
	s.relMu.Lock()
	pending := s.releases
	s.releases = nil
	s.relMu.Unlock()
	var failed []lease
	for _, l := range pending {
		if l.node.ctx.Err() != nil {
			continue
		}
		if err := s.drop(ctx, l); err != nil {
			failed = append(failed, l)
		}
	}
	if len(failed) > 0 {
		s.relMu.Lock()
		s.releases = append(s.releases, failed...)
		s.relMu.Unlock()
	}
}
