package retention

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/pouchmail/pouch/audit"
	"github.com/pouchmail/pouch/store"
)

// Sweeper applies the policies to every maildrop in the background. It
// never touches a maildrop while a session has it open, nor one whose
// user's policy cannot be known (Policy's error: an account refused for its
// settings, or accounts that cannot be looked up): such a maildrop is left
// for the next sweep.
type Sweeper struct {
	Store store.Retainer
	// Policy gives each user's policy, or an error when it is not known
	// (Policies.Lookup).
	Policy func(user string) (store.Policy, error)
	Now    func() time.Time // nil: time.Now
	Log    *slog.Logger     // nil: slog.Default()
	Audit  *audit.Log       // every expiry and purge, one line per message
	// Interval is how often the sweeps run (Run sets it): with a Store
	// shared by several nodes (Shards), a shard swept by any node within
	// nine tenths of it is left for the next round.
	Interval time.Duration
}

// Shards is implemented by a Store that several nodes share and sweep
// (store/pg): rather than every node sweeping every maildrop each round,
// a sweep claims one shard of the maildrops at a time, among those that no
// node swept within the round and that no live node is sweeping now.
type Shards interface {
	// ClaimShard claims the shard that was swept longest ago, among those
	// not swept for fresh and not being swept, and lists its maildrops'
	// users; id is -1 when none is due.
	ClaimShard(ctx context.Context, fresh time.Duration) (id int, users []string, err error)
	// ShardDone ends the claim, recording the shard as swept now when
	// swept is set.
	ShardDone(ctx context.Context, id int, swept bool) error
}

func (s *Sweeper) logger() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

// Summary counts what one sweep did.
type Summary struct {
	Users   int // maildrops swept
	Busy    int // maildrops skipped because a session had them open
	Unsure  int // maildrops skipped because their policy is not known
	Failed  int // maildrops whose sweep failed (logged)
	Expired int
	Purged  int
	Octets  int64 // wire size of the purged messages
	Shards  int   // shards of a shared store swept by this node (Shards)
}

// Sweep sweeps every maildrop once: with a Store shared by several nodes
// (Shards), every maildrop of the shards that are due. It stops early,
// returning ctx's error, when ctx is done.
func (s *Sweeper) Sweep(ctx context.Context) (Summary, error) {
	var sum Summary
	shards, ok := s.Store.(Shards)
	if !ok {
		users, err := s.Store.Users(ctx)
		if err != nil {
			return sum, err
		}
		return sum, s.sweep(ctx, users, &sum)
	}
	fresh := s.Interval - s.Interval/10
	swept := map[int]bool{}
	for {
		id, users, err := shards.ClaimShard(ctx, fresh)
		if err != nil || id < 0 {
			return sum, err
		}
		if swept[id] {
			// Swept in this round already: every shard due was.
			return sum, shards.ShardDone(ctx, id, false)
		}
		swept[id] = true
		err = s.sweep(ctx, users, &sum)
		if derr := shards.ShardDone(context.WithoutCancel(ctx), id, err == nil); err == nil {
			err = derr
		}
		if err != nil {
			return sum, err
		}
		sum.Shards++
	}
}

// sweep sweeps the maildrops of users, adding to sum.
func (s *Sweeper) sweep(ctx context.Context, users []string, sum *Summary) error {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	log := s.logger()
	for _, user := range users {
		if err := ctx.Err(); err != nil {
			return err
		}
		p, err := s.Policy(user)
		if err != nil {
			sum.Unsure++
			log.Warn("retention sweep: maildrop left as it is: its user's policy is not known", "user", user, "err", err)
			continue
		}
		res, err := s.Store.Sweep(ctx, user, p, now())
		s.record(log, user, p, res)
		sum.Expired += len(res.Expired)
		sum.Purged += len(res.Purged)
		for _, r := range res.Purged {
			sum.Octets += r.Size
		}
		switch {
		case errors.Is(err, store.ErrLocked):
			sum.Busy++
		case err != nil && ctx.Err() == nil:
			sum.Failed++
			log.Error("retention sweep failed", "user", user, "err", err)
		case err == nil:
			sum.Users++
		}
	}
	return nil
}

// record writes the audit lines of one maildrop's sweep.
func (s *Sweeper) record(log *slog.Logger, user string, p store.Policy, res store.SweepResult) {
	for _, r := range res.Expired {
		if err := s.Audit.Event("expire", "user", user, "uid", r.UID, "size", r.Size,
			"delivered", stamp(r.Delivered), "restorable", p.Window > 0); err != nil {
			log.Error("audit log", "err", err)
		}
	}
	for _, r := range res.Purged {
		if err := s.Audit.Event("purge", "user", user, "uid", r.UID, "size", r.Size,
			"delivered", stamp(r.Delivered), "deleted", stamp(r.Deleted)); err != nil {
			log.Error("audit log", "err", err)
		}
	}
	if len(res.Expired)+len(res.Purged) > 0 {
		log.Info("retention", "user", user, "expired", len(res.Expired), "purged", len(res.Purged))
	}
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// Run sweeps at once and then every interval until ctx is done.
func (s *Sweeper) Run(ctx context.Context, every time.Duration) {
	log := s.logger()
	s.Interval = every
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		start := time.Now()
		sum, err := s.Sweep(ctx)
		if err != nil && ctx.Err() == nil {
			log.Error("retention sweep failed", "err", err)
		}
		if sum.Expired+sum.Purged+sum.Failed > 0 || sum.Busy+sum.Unsure > 0 {
			log.Info("retention sweep", "maildrops", sum.Users, "busy", sum.Busy, "unsure", sum.Unsure, "failed", sum.Failed,
				"expired", sum.Expired, "purged", sum.Purged, "purged_octets", sum.Octets,
				"took", time.Since(start).Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
