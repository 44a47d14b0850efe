package pg

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/store"
)

// Retention: expiry (RFC 2449 §6.7), the holding area for deleted messages
// (the rows whose deleted time is set), and legal hold.

var _ store.Retainer = (*Store)(nil)

// Users lists the maildrops.
func (s *Store) Users(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, "SELECT name FROM maildrops ORDER BY name")
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// Hold reports the legal hold on user's maildrop.
func (s *Store) Hold(ctx context.Context, user string) (store.Hold, error) {
	if err := store.CheckUser(user); err != nil {
		return store.Hold{}, err
	}
	var (
		since  *time.Time
		reason string
	)
	err := s.pool.QueryRow(ctx, "SELECT hold_since, hold_reason FROM maildrops WHERE name = $1", user).Scan(&since, &reason)
	if errors.Is(err, pgx.ErrNoRows) || err == nil && since == nil {
		return store.Hold{}, nil
	}
	if err != nil {
		return store.Hold{}, err
	}
	return store.Hold{Set: true, Since: *since, Reason: reason}, nil
}

// SetHold sets or clears the legal hold. It waits for a sweep or commit
// that is removing messages of the maildrop (they read the hold under a
// lock of its row); once it returns, nothing is purged until the hold is
// cleared, and a QUIT keeps its deletions in the holding area.
func (s *Store) SetHold(ctx context.Context, user string, h store.Hold) error {
	md, err := s.maildropID(ctx, user, true)
	if err != nil {
		return err
	}
	if !h.Set {
		_, err = s.pool.Exec(ctx, "UPDATE maildrops SET hold_since = NULL, hold_reason = '' WHERE id = $1", md)
		return err
	}
	if h.Since.IsZero() {
		h.Since = s.now()
	}
	_, err = s.pool.Exec(ctx, "UPDATE maildrops SET hold_since = $2, hold_reason = $3 WHERE id = $1",
		md, h.Since, strings.ReplaceAll(h.Reason, "\n", " "))
	return err
}

// Stats describes user's maildrop without taking its lease.
func (s *Store) Stats(ctx context.Context, user string) (store.Stats, error) {
	var st store.Stats
	md, err := s.maildropID(ctx, user, false)
	if err != nil {
		return st, err
	}
	if st.Hold, err = s.Hold(ctx, user); err != nil {
		return st, err
	}
	var oldest, newest, oldestDeleted *time.Time
	err = s.pool.QueryRow(ctx, `SELECT
			count(*) FILTER (WHERE deleted IS NULL),
			coalesce(sum(size) FILTER (WHERE deleted IS NULL), 0),
			min(delivered) FILTER (WHERE deleted IS NULL),
			max(delivered) FILTER (WHERE deleted IS NULL),
			count(*) FILTER (WHERE deleted IS NULL AND retrieved IS NOT NULL),
			count(*) FILTER (WHERE deleted IS NOT NULL),
			coalesce(sum(size) FILTER (WHERE deleted IS NOT NULL), 0),
			min(deleted)
		FROM messages WHERE maildrop = $1`, md).Scan(&st.Messages, &st.Octets, &oldest, &newest,
		&st.Retrieved, &st.Held, &st.HeldOctets, &oldestDeleted)
	if err != nil {
		return st, err
	}
	for _, t := range []struct {
		dst *time.Time
		src *time.Time
	}{{&st.Oldest, oldest}, {&st.Newest, newest}, {&st.OldestDeleted, oldestDeleted}} {
		if t.src != nil {
			*t.dst = *t.src
		}
	}
	return st, nil
}

// Sweep applies p to user's maildrop as of now, in one transaction under
// the maildrop's lease (ErrLocked while a session holds it): it expires
// messages (into the holding area if p has a Window, otherwise for good),
// purges the holding area of what has been there for Window or longer, and
// removes the chunks of deliveries that died before they committed. Under
// legal hold it removes nothing. A sweep with nothing to do takes no lease.
func (s *Store) Sweep(ctx context.Context, user string, p store.Policy, now time.Time) (store.SweepResult, error) {
	var res store.SweepResult
	md, err := s.maildropID(ctx, user, false)
	if errors.Is(err, errNoMaildrop) {
		return res, nil
	}
	if err != nil {
		return res, err
	}
	expireCol := "delivered"
	if p.FromRetrieval {
		expireCol = "retrieved" // never retrieved: NULL, never expired
	}
	expireCut, purgeCut := now.Add(-p.Expire), now.Add(-p.Window)
	var work bool
	if err := s.pool.QueryRow(ctx, `SELECT hold_since IS NULL AND (
			($2 AND EXISTS (SELECT 1 FROM messages WHERE maildrop = $1 AND deleted IS NULL AND `+expireCol+` <= $3))
			OR EXISTS (SELECT 1 FROM messages WHERE maildrop = $1 AND deleted <= $4)
			OR EXISTS (SELECT 1 FROM uploads WHERE maildrop = $1 AND started < now() - make_interval(secs => $5)))
		FROM maildrops WHERE id = $1`, md, p.Expire > 0, expireCut, purgeCut, uploadMaxAge.Seconds()).Scan(&work); err != nil || !work {
		return res, err
	}
	l, err := s.acquire(ctx, md)
	if err != nil {
		return res, err
	}
	defer s.release(l)
	tx, hold, err := s.beginChecked(ctx, md, l)
	if err != nil {
		return res, err
	}
	defer tx.Rollback(context.Background())
	if hold {
		return res, nil
	}
	if p.Expire > 0 {
		rows, err := tx.Query(ctx, `SELECT id, uid, size, delivered FROM messages
			WHERE maildrop = $1 AND deleted IS NULL AND `+expireCol+` <= $2 ORDER BY id`, md, expireCut)
		if err != nil {
			return res, err
		}
		var (
			id  int64
			r   store.Removed
			ids []int64
		)
		if _, err := pgx.ForEachRow(rows, []any{&id, &r.UID, &r.Size, &r.Delivered}, func() error {
			if p.Window > 0 {
				r.Deleted = now
			}
			ids = append(ids, id)
			res.Expired = append(res.Expired, r)
			return nil
		}); err != nil {
			return store.SweepResult{}, err
		}
		if err := takeOut(ctx, tx, md, ids, p.Window > 0, now); err != nil {
			return store.SweepResult{}, err
		}
	}
	rows, err := tx.Query(ctx, `DELETE FROM messages WHERE maildrop = $1 AND deleted <= $2
		RETURNING uid, size, delivered, deleted, body, id`, md, purgeCut)
	if err != nil {
		return store.SweepResult{}, err
	}
	var (
		r      store.Removed
		body   int64
		id     int64
		bodies []int64
		order  = map[string]int64{}
	)
	if _, err := pgx.ForEachRow(rows, []any{&r.UID, &r.Size, &r.Delivered, &r.Deleted, &body, &id}, func() error {
		res.Purged = append(res.Purged, r)
		bodies = append(bodies, body)
		order[r.UID] = id
		return nil
	}); err != nil {
		return store.SweepResult{}, err
	}
	slices.SortFunc(res.Purged, func(a, b store.Removed) int {
		if c := a.Deleted.Compare(b.Deleted); c != 0 {
			return c
		}
		return cmp.Compare(order[a.UID], order[b.UID])
	})
	// Bodies of deliveries whose process died before they committed.
	rows, err = tx.Query(ctx, `DELETE FROM uploads WHERE maildrop = $1 AND started < now() - make_interval(secs => $2)
		RETURNING body`, md, uploadMaxAge.Seconds())
	if err != nil {
		return store.SweepResult{}, err
	}
	stale, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return store.SweepResult{}, err
	}
	if b := append(bodies, stale...); len(b) > 0 {
		if _, err := tx.Exec(ctx, "DELETE FROM chunks WHERE maildrop = $1 AND body = ANY($2)", md, b); err != nil {
			return store.SweepResult{}, err
		}
	}
	if len(stale) > 0 {
		s.log.Info("pg: removed the chunks of deliveries that never committed", "user", user, "count", len(stale))
	}
	crashpoint.Hit("pg.sweep.before-commit")
	if err := tx.Commit(ctx); err != nil {
		return store.SweepResult{}, err
	}
	return res, nil
}

// Restore puts the messages that entered the holding area at or after
// since back into the maildrop, in one transaction under the maildrop's
// lease (ErrLocked while a session holds it): with their UIDLs and places
// in the delivery order, or as new deliveries with new UIDLs when asNew
// is set.
func (s *Store) Restore(ctx context.Context, user string, since time.Time, asNew bool) ([]store.Removed, error) {
	md, err := s.maildropID(ctx, user, false)
	if errors.Is(err, errNoMaildrop) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	l, err := s.acquire(ctx, md)
	if err != nil {
		return nil, err
	}
	defer s.release(l)
	tx, _, err := s.beginChecked(ctx, md, l)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.Background())
	rows, err := tx.Query(ctx, `SELECT id, uid, size, delivered, deleted FROM messages
		WHERE maildrop = $1 AND deleted >= $2 ORDER BY deleted, id`, md, since)
	if err != nil {
		return nil, err
	}
	var (
		out    []store.Removed
		ids    []int64
		octets int64
		id     int64
		r      store.Removed
	)
	if _, err := pgx.ForEachRow(rows, []any{&id, &r.UID, &r.Size, &r.Delivered, &r.Deleted}, func() error {
		out = append(out, r)
		ids = append(ids, id)
		octets += r.Size
		return nil
	}); err != nil || len(out) == 0 {
		return nil, err
	}
	b := &pgx.Batch{}
	for i, id := range ids {
		if !asNew {
			b.Queue("UPDATE messages SET deleted = NULL WHERE maildrop = $1 AND id = $2", md, id)
			continue
		}
		// A new delivery: the next id in the order, a new UIDL.
		var newID int64
		if err := tx.QueryRow(ctx, "SELECT nextval('message_ids')").Scan(&newID); err != nil {
			return nil, err
		}
		out[i].UID = newUID(newID)
		b.Queue(`UPDATE messages SET id = $3, uid = $4, delivered = $5, retrieved = NULL, deleted = NULL
			WHERE maildrop = $1 AND id = $2`, md, id, newID, out[i].UID, s.now())
	}
	b.Queue("UPDATE maildrops SET messages = messages + $2, octets = octets + $3 WHERE id = $1", md, len(ids), octets)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	crashpoint.Hit("pg.restore.before-commit")
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	return out, nil
}

// Listing lists user's maildrop without taking its lease, for checks: the
// messages a session would see, in their order, and those of the holding
// area, the oldest deletion first. A user without a maildrop has none.
func (s *Store) Listing(ctx context.Context, user string) (live, held []store.Message, err error) {
	md, err := s.maildropID(ctx, user, false)
	if errors.Is(err, errNoMaildrop) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT uid, size, deleted IS NOT NULL FROM messages WHERE maildrop = $1
		ORDER BY deleted NULLS FIRST, id`, md)
	if err != nil {
		return nil, nil, err
	}
	var (
		m       store.Message
		deleted bool
	)
	_, err = pgx.ForEachRow(rows, []any{&m.UID, &m.Size, &deleted}, func() error {
		if deleted {
			held = append(held, m)
		} else {
			live = append(live, m)
		}
		return nil
	})
	return live, held, err
}
