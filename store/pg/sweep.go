package pg

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// Retention sweeps shared out among the nodes.
//
// Every node runs the retention sweeper, and every maildrop is in the one
// database: if each node swept every maildrop each round, N nodes would do
// the work N times over (each sweep taking and checking the maildrop's
// lease). Instead the maildrops are split into SweepShards shards by id,
// and a sweep claims one shard at a time in sweep_shards: only a shard
// that no node has swept within the round's freshness and that no live
// node is sweeping now. A claim is held by the node's heartbeat, so the
// shard of a node that died mid-sweep is free again once its heartbeat
// has expired; a sweep that ends records the time, so the other nodes
// leave the shard alone until the next round is due.

// SweepShards is how many shards the maildrops are divided into for
// retention sweeps.
const SweepShards = 64

// ClaimShard claims for this node a shard of the maildrops that no node
// has swept for fresh and that no live node is sweeping now, the one swept
// longest ago, and lists its maildrops' users. id is -1 when no shard is
// due. The caller ends the claim with ShardDone.
func (s *Store) ClaimShard(ctx context.Context, fresh time.Duration) (id int, users []string, err error) {
	n, err := s.currentNode(ctx)
	if err != nil {
		return -1, nil, err
	}
	err = s.pool.QueryRow(ctx, `UPDATE sweep_shards SET node = $1 WHERE shard = (
			SELECT shard FROM sweep_shards t
			WHERE (swept IS NULL OR swept <= now() - make_interval(secs => $2))
			AND NOT EXISTS (SELECT 1 FROM nodes WHERE nodes.id = t.node AND nodes.expires > now())
			ORDER BY swept NULLS FIRST, shard LIMIT 1 FOR UPDATE SKIP LOCKED)
		RETURNING shard`, n.id, fresh.Seconds()).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return -1, nil, nil
	}
	if err != nil {
		return -1, nil, err
	}
	rows, err := s.pool.Query(ctx, "SELECT name FROM maildrops WHERE id % $1 = $2 ORDER BY name", SweepShards, id)
	if err == nil {
		users, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		s.ShardDone(context.WithoutCancel(ctx), id, false)
		return -1, nil, err
	}
	return id, users, nil
}

// ShardDone ends this node's claim on shard id, recording it as swept now
// when swept is set (otherwise another node may take it at once).
func (s *Store) ShardDone(ctx context.Context, id int, swept bool) error {
	n := s.node.Load()
	if n == nil {
		return nil // the node was lost: its claims lapsed with it
	}
	ctx, cancel := context.WithTimeout(ctx, s.ttl)
	defer cancel()
	_, err := s.pool.Exec(ctx, `UPDATE sweep_shards SET node = NULL,
			swept = CASE WHEN $3 THEN now() ELSE swept END
		WHERE shard = $1 AND node = $2`, id, n.id, swept)
	return err
}

// Ping checks that the database answers, for readiness probes.
func (s *Store) Ping(ctx context.Context) error {
	return s.pool.Ping(ctx)
}
