package pg

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// Two nodes sharing the sweeps: a shard claimed by one is not claimed by
// the other, a shard swept within the freshness is not due, the claims of
// a dead node lapse with its heartbeat, and every maildrop is in exactly
// one shard.
func TestShardClaims(t *testing.T) {
	ctx := context.Background()
	u := newSchema(t)
	a := connect(t, u, Options{LockTTL: testTTL, Node: "a"})
	b := connect(t, u, Options{LockTTL: testTTL, Node: "b"})
	var want []string
	for i := range 150 {
		name := fmt.Sprintf("user%03d", i)
		if err := a.Create(name); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}

	// A claims the shards one by one; B, meanwhile, never gets one A
	// holds.
	held := map[int]bool{}
	var seen []string
	for range SweepShards {
		id, users, err := a.ClaimShard(ctx, time.Hour)
		if err != nil || id < 0 {
			t.Fatalf("A's claim: %d, %v", id, err)
		}
		if held[id] {
			t.Fatalf("A claimed shard %d twice", id)
		}
		held[id] = true
		seen = append(seen, users...)
	}
	if id, _, err := a.ClaimShard(ctx, time.Hour); id >= 0 || err != nil {
		t.Fatalf("A claimed shard %d (%v) with all %d held", id, err, SweepShards)
	}
	if id, _, err := b.ClaimShard(ctx, time.Hour); id >= 0 || err != nil {
		t.Fatalf("B claimed shard %d (%v) that A holds", id, err)
	}
	slices.Sort(seen)
	if !slices.Equal(seen, want) {
		t.Fatalf("the shards list %d maildrops, want each of the %d once", len(seen), len(want))
	}

	// Shards A swept are not due for B within the freshness; one A gave
	// up unswept is.
	for id := range held {
		if err := a.ShardDone(ctx, id, id != 7); err != nil {
			t.Fatal(err)
		}
	}
	id, _, err := b.ClaimShard(ctx, time.Hour)
	if err != nil || id != 7 {
		t.Fatalf("B's claim: %d, %v; want the shard A did not sweep, 7", id, err)
	}
	if id, _, _ := b.ClaimShard(ctx, time.Hour); id >= 0 {
		t.Fatalf("B claimed shard %d, swept within the hour", id)
	}
	// With a freshness of zero, all are due again: the one swept longest
	// ago comes first.
	if id, _, _ := a.ClaimShard(ctx, 0); id < 0 || id == 7 {
		t.Fatalf("A's claim of a shard due: %d", id)
	}

	// B dies holding shard 7: once its heartbeat has expired, A may take
	// it.
	b.freeze()
	nb := b.node.Load().id
	if id, _, _ := a.ClaimShard(ctx, time.Hour); id == 7 {
		t.Fatal("A claimed the shard of a live node")
	}
	waitExpired(t, a, nb)
	if id, _, err := a.ClaimShard(ctx, time.Hour); id != 7 || err != nil {
		t.Fatalf("A's claim after B died: %d, %v; want 7", id, err)
	}
}
