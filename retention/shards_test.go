package retention

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pouchmail/pouch/store"
)

// sharedStore is a store that several nodes sweep, split into shards as
// store/pg splits it: a claimed shard is not handed out again, and a
// swept one not before fresh has passed.
type sharedStore struct {
	store.Retainer // not called but for Sweep
	mu             sync.Mutex
	now            time.Time
	shards         [][]string
	claimed        map[int]bool
	swept          map[int]time.Time
	sweeps         map[string]int // per user
}

func newSharedStore(users, shards int) *sharedStore {
	s := &sharedStore{now: time.Unix(1e9, 0), shards: make([][]string, shards),
		claimed: map[int]bool{}, swept: map[int]time.Time{}, sweeps: map[string]int{}}
	for i := range users {
		s.shards[i%shards] = append(s.shards[i%shards], fmt.Sprintf("u%d", i))
	}
	return s
}

func (s *sharedStore) ClaimShard(ctx context.Context, fresh time.Duration) (int, []string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	best := -1
	for id := range s.shards {
		t, ok := s.swept[id]
		if s.claimed[id] || ok && t.After(s.now.Add(-fresh)) {
			continue
		}
		if best < 0 || t.Before(s.swept[best]) {
			best = id
		}
	}
	if best < 0 {
		return -1, nil, nil
	}
	s.claimed[best] = true
	return best, s.shards[best], nil
}

func (s *sharedStore) ShardDone(ctx context.Context, id int, swept bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.claimed, id)
	if swept {
		s.now = s.now.Add(time.Millisecond)
		s.swept[id] = s.now
	}
	return nil
}

func (s *sharedStore) Sweep(ctx context.Context, user string, p store.Policy, now time.Time) (store.SweepResult, error) {
	s.mu.Lock()
	s.sweeps[user]++
	s.mu.Unlock()
	return store.SweepResult{}, nil
}

func (s *sharedStore) Users(ctx context.Context) ([]string, error) {
	panic("a shared store is swept by shards, not by listing every user")
}

// Three nodes sweeping a shared store at once sweep each maildrop once a
// round, not three times; a round within the interval sweeps nothing; a
// one-off sweep (no interval) sweeps each once and ends.
func TestSweepByShards(t *testing.T) {
	st := newSharedStore(500, 64)
	policy := func(string) (store.Policy, error) { return store.Policy{}, nil }
	var wg sync.WaitGroup
	sums := make([]Summary, 3)
	for i := range sums {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sw := &Sweeper{Store: st, Policy: policy, Interval: time.Hour}
			var err error
			if sums[i], err = sw.Sweep(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	shards, users := 0, 0
	for _, s := range sums {
		shards += s.Shards
		users += s.Users
	}
	if shards != 64 || users != 500 {
		t.Fatalf("the nodes swept %d shards and %d maildrops, want 64 and 500", shards, users)
	}
	for u, n := range st.sweeps {
		if n != 1 {
			t.Fatalf("%s swept %d times", u, n)
		}
	}
	// Within the interval nothing is due.
	sw := &Sweeper{Store: st, Policy: policy, Interval: time.Hour}
	if sum, err := sw.Sweep(context.Background()); err != nil || sum.Users != 0 {
		t.Fatalf("a second round swept %d maildrops (%v)", sum.Users, err)
	}
	// A one-off sweep takes every shard once, and stops.
	sw.Interval = 0
	if sum, err := sw.Sweep(context.Background()); err != nil || sum.Users != 500 || sum.Shards != 64 {
		t.Fatalf("a one-off sweep: %+v, %v", sum, err)
	}
}
