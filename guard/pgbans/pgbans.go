// Package pgbans keeps the guard's bans in PostgreSQL, in the bans table of
// Pouch's schema (store/pg makes it), so that every pouch serve node on the
// database enforces the same bans: an automatic ban made by one node, and
// pouch ban add or del run anywhere, reach every node at once through
// LISTEN/NOTIFY (Watch), and within a couple of seconds of the database
// coming back after an outage.
//
// Only the bans are shared. The failures that lead to a ban are counted by
// each node for the logins it sees, so that checking a password costs no
// database round trip: behind a load balancer that spreads one source over
// N nodes, a source may fail up to N times the threshold before one node
// bans it (and then every node does).
package pgbans

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/store/pg"
)

// channel is the NOTIFY channel of ban changes.
const channel = "pouch_bans"

// opTimeout bounds one read or change of the bans: a ban made while the
// database cannot be reached holds in memory, and is written later.
const opTimeout = 5 * time.Second

// keepEnded is how long a ban that ended stays in the table, remembered
// for doubling the next one (guard.Config.BanMemory's default).
const keepEnded = 7 * 24 * time.Hour

// Store is the bans table. It implements guard.BanStore.
type Store struct {
	pool       *pgxpool.Pool
	connString string // for Watch's connection
	log        *slog.Logger
	// Now is the clock that tells which bans ended long ago (time.Now).
	Now func() time.Time
}

var _ guard.BanStore = (*Store)(nil)

// Open connects to the database at connString (a postgres:// URL), with a
// small pool of its own. The schema is checked by store/pg's Connect.
func Open(ctx context.Context, connString string, log *slog.Logger) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	return &Store{pool: pool, connString: connString, log: log, Now: time.Now}, nil
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func load(ctx context.Context, q querier) (map[netip.Prefix]guard.Ban, error) {
	rows, err := q.Query(ctx, "SELECT net, since, until, reason, count FROM bans ORDER BY net")
	if err != nil {
		return nil, err
	}
	bans := make(map[netip.Prefix]guard.Ban)
	var (
		b   guard.Ban
		net string
	)
	_, err = pgx.ForEachRow(rows, []any{&net, &b.Since, &b.Until, &b.Reason, &b.Count}, func() error {
		p, err := netip.ParsePrefix(net)
		if err != nil {
			return fmt.Errorf("pgbans: the bans table holds %q, not a network", net)
		}
		b.Net = p.Masked()
		bans[b.Net] = b
		return nil
	})
	if err != nil {
		return nil, err
	}
	return bans, nil
}

// Load reads every ban.
func (s *Store) Load() (map[netip.Prefix]guard.Ban, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	bans, err := load(ctx, s.pool)
	return bans, s.failed(err)
}

// failed empties the pool after an error: the database may have been
// restarted or failed over, and the pool's idle connections are then
// gone too, each of which would fail one more write.
func (s *Store) failed(err error) error {
	if err != nil {
		s.pool.Reset()
	}
	return err
}

// Update reads the bans and writes what change made of them in one
// transaction: the rows it removed, added or changed, row by row, so that
// changes of other nodes to other networks stand. The rows it reads are
// locked until the end, so that an Update elsewhere waits for it; a row
// another Update adds meanwhile is written over when this one adds the
// same network. Every node is then told (NOTIFY), and bans that ended more
// than a week ago are removed.
func (s *Store) Update(change func(map[netip.Prefix]guard.Ban)) (map[netip.Prefix]guard.Ban, error) {
	bans, err := s.update(change)
	return bans, s.failed(err)
}

func (s *Store) update(change func(map[netip.Prefix]guard.Ban)) (map[netip.Prefix]guard.Ban, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.Background())
	before, err := load(ctx, lockingQuerier{tx})
	if err != nil {
		return nil, err
	}
	after := maps.Clone(before)
	change(after)
	b := &pgx.Batch{}
	for k := range before {
		if _, ok := after[k]; !ok {
			b.Queue("DELETE FROM bans WHERE net = $1", k.String())
		}
	}
	for k, v := range after {
		if old, ok := before[k]; ok && old == v {
			continue
		}
		b.Queue(`INSERT INTO bans (net, since, until, reason, count) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (net) DO UPDATE SET since = excluded.since, until = excluded.until,
				reason = excluded.reason, count = excluded.count`,
			k.Masked().String(), v.Since, v.Until, v.Reason, v.Count)
	}
	cut := s.Now().Add(-keepEnded)
	b.Queue("DELETE FROM bans WHERE until < $1", cut)
	b.Queue("SELECT pg_notify($1, '')", channel)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	for k, v := range after {
		if v.Until.Before(cut) {
			delete(after, k)
		}
	}
	return after, nil
}

// lockingQuerier reads the bans rows FOR UPDATE.
type lockingQuerier struct{ tx pgx.Tx }

func (l lockingQuerier) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return l.tx.Query(ctx, sql+" FOR UPDATE", args...)
}

// Changed says false: Watch tells the guard of changes.
func (s *Store) Changed() bool { return false }

// Watch calls reload each time the bans change, until ctx is done: it
// listens for the notifications of Update on a connection of its own, and
// calls reload also each time it (re)connects, for what changed while it
// was not listening. While the database cannot be reached, or reload
// fails, it tries again every retry.
func (s *Store) Watch(ctx context.Context, retry time.Duration, reload func() error) {
	pg.Watch(ctx, s.connString, channel, retry, reload, s.log)
}
