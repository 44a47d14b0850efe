package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/store"
)

// RetentionBackend is what a backend that carries out retention policies
// provides to RunRetention.
type RetentionBackend interface {
	Backend
	store.Retainer
	// SetPolicy sets each user's policy, whose Window decides whether a
	// commit keeps deleted messages in the holding area.
	SetPolicy(func(user string) store.Policy)
	// SetClock replaces time.Now for delivery, deletion and hold times.
	SetClock(func() time.Time)
}

// RunRetention runs the retention suite: expiry (RFC 2449 §6.7), the
// holding area and its window, restore, legal hold, statistics and first
// retrievals, through the store interfaces only. newBackend returns an
// empty backend for each subtest.
func RunRetention(t *testing.T, newBackend func(t *testing.T) RetentionBackend) {
	tests := []struct {
		name string
		fn   func(*testing.T, *retained)
	}{
		{"DeletionWindowAndRestore", testWindowAndRestore},
		{"RestoreSince", testRestoreSince},
		{"WindowPurge", testWindowPurge},
		{"ZeroWindowDeletesAtOnce", testZeroWindow},
		{"ExpireFromDelivery", testExpireFromDelivery},
		{"ExpireIntoWindow", testExpireIntoWindow},
		{"ExpireFromRetrieval", testExpireFromRetrieval},
		{"SweepSkipsOpenMaildrop", testSweepSkipsOpen},
		{"LegalHold", testLegalHold},
		{"Stats", testStats},
		{"Users", testUsers},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t)
			r := &retained{b: b, now: time.Unix(1_800_000_000, 0)}
			b.SetClock(func() time.Time { return r.now })
			b.SetPolicy(func(string) store.Policy { return r.policy })
			tt.fn(t, r)
		})
	}
}

// retained is a backend under a settable clock and policy.
type retained struct {
	b      RetentionBackend
	now    time.Time
	policy store.Policy
}

func (r *retained) advance(d time.Duration) { r.now = r.now.Add(d) }

// fill delivers n messages "m0".."m(n-1)" to u, one second apart.
func (r *retained) fill(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		deliver(t, r.b, "u", fmt.Appendf(nil, "m%d\r\n", i))
		r.advance(time.Second)
	}
}

func (r *retained) uids(t *testing.T) []string {
	t.Helper()
	m, err := r.b.Open(context.Background(), "u")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var out []string
	for _, msg := range m.Messages() {
		out = append(out, msg.UID)
	}
	return out
}

func (r *retained) commit(t *testing.T, del ...int) {
	t.Helper()
	m, err := r.b.Open(context.Background(), "u")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Commit(del); err != nil {
		t.Fatal(err)
	}
}

func (r *retained) stats(t *testing.T) store.Stats {
	t.Helper()
	st, err := r.b.Stats(context.Background(), "u")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (r *retained) sweep(t *testing.T, p store.Policy) store.SweepResult {
	t.Helper()
	res, err := r.b.Sweep(context.Background(), "u", p, r.now)
	if err != nil {
		t.Fatalf("sweep: %v", err)
	}
	return res
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func testWindowAndRestore(t *testing.T, r *retained) {
	ctx := context.Background()
	r.policy = store.Policy{Window: time.Hour}
	r.fill(t, 4)
	before := r.uids(t)
	r.commit(t, 1, 2)
	if got := r.uids(t); !slices.Equal(got, []string{before[0], before[3]}) {
		t.Fatalf("after deleting 2 and 3: %v", got)
	}
	if st := r.stats(t); st.Messages != 2 || st.Held != 2 || st.HeldOctets != 8 || !st.OldestDeleted.Equal(r.now) {
		t.Fatalf("stats = %+v", st)
	}
	// A sweep within the window purges nothing.
	r.advance(59 * time.Minute)
	if res := r.sweep(t, r.policy); len(res.Purged)+len(res.Expired) != 0 {
		t.Fatalf("sweep inside the window: %+v", res)
	}
	// Restore puts them back under their original UIDs.
	restored, err := r.b.Restore(ctx, "u", time.Time{}, false)
	if err != nil || len(restored) != 2 {
		t.Fatalf("restore: %v, %v", restored, err)
	}
	if got := sorted(r.uids(t)); !slices.Equal(got, sorted(before)) {
		t.Fatalf("after restore: %v, want %v", got, before)
	}
	// Deleted again, restored as new: new UIDs, same contents.
	r.commit(t, 0)
	restored, err = r.b.Restore(ctx, "u", time.Time{}, true)
	if err != nil || len(restored) != 1 || slices.Contains(before, restored[0].UID) {
		t.Fatalf("restore as new: %+v, %v", restored, err)
	}
	m := open(t, r.b, "u")
	var bodies []string
	for i, msg := range m.Messages() {
		if msg.UID == before[0] {
			t.Errorf("old UID %s still listed", msg.UID)
		}
		bodies = append(bodies, string(read(t, m, i)))
	}
	m.Close()
	if got := strings.Join(sorted(bodies), ""); got != "m0\r\nm1\r\nm2\r\nm3\r\n" {
		t.Fatalf("bodies after restore: %q", got)
	}
	if st := r.stats(t); st.Messages != 4 || st.Octets != 16 || st.Held != 0 {
		t.Fatalf("stats after restore: %+v", st)
	}
}

func testRestoreSince(t *testing.T, r *retained) {
	r.policy = store.Policy{Window: 24 * time.Hour}
	r.fill(t, 3)
	all := r.uids(t)
	r.commit(t, 0)
	r.advance(time.Hour)
	cut := r.now
	r.commit(t, 0) // the second message, now first
	restored, err := r.b.Restore(context.Background(), "u", cut, false)
	if err != nil || len(restored) != 1 || restored[0].UID != all[1] {
		t.Fatalf("restore since: %+v, %v", restored, err)
	}
	if got := r.uids(t); len(got) != 2 || slices.Contains(got, all[0]) {
		t.Fatalf("after restore since: %v", got)
	}
}

func testWindowPurge(t *testing.T, r *retained) {
	r.policy = store.Policy{Window: 10 * time.Second}
	r.fill(t, 3)
	r.commit(t, 0, 1)
	r.advance(10 * time.Second)
	if res := r.sweep(t, r.policy); len(res.Purged) != 2 || len(res.Expired) != 0 {
		t.Fatalf("sweep after the window: %+v", res)
	}
	if st := r.stats(t); st.Held != 0 || st.Messages != 1 {
		t.Fatalf("stats after purge: %+v", st)
	}
	if got, err := r.b.Restore(context.Background(), "u", time.Time{}, false); err != nil || len(got) != 0 {
		t.Fatalf("restore after purge: %v, %v", got, err)
	}
}

func testZeroWindow(t *testing.T, r *retained) {
	r.fill(t, 2)
	r.commit(t, 0)
	if st := r.stats(t); st.Held != 0 || st.Messages != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func testExpireFromDelivery(t *testing.T, r *retained) {
	r.fill(t, 3) // delivered at t0, t0+1s, t0+2s; now t0+3s
	p := store.Policy{Expire: 5 * time.Second}
	r.advance(time.Second) // t0+4s: nothing is 5 s old
	if res := r.sweep(t, p); len(res.Expired) != 0 {
		t.Fatalf("early sweep: %+v", res)
	}
	r.advance(2 * time.Second) // t0+6s: the first two are
	all := r.uids(t)
	res := r.sweep(t, p)
	if len(res.Expired) != 2 || res.Expired[0].UID != all[0] || res.Expired[1].UID != all[1] || len(res.Purged) != 0 {
		t.Fatalf("sweep: %+v", res)
	}
	if res.Expired[0].Size != 4 || !res.Expired[0].Delivered.Equal(time.Unix(1_800_000_000, 0)) {
		t.Fatalf("expired: %+v", res.Expired[0])
	}
	if got := r.uids(t); !slices.Equal(got, all[2:]) {
		t.Fatalf("left %v, want %v", got, all[2:])
	}
	if st := r.stats(t); st.Held != 0 || st.Messages != 1 {
		t.Fatalf("expired without a window: %+v", st)
	}
}

func testExpireIntoWindow(t *testing.T, r *retained) {
	r.fill(t, 2)
	p := store.Policy{Expire: time.Second, Window: time.Minute}
	if res := r.sweep(t, p); len(res.Expired) != 2 || len(res.Purged) != 0 || !res.Expired[0].Deleted.Equal(r.now) {
		t.Fatalf("sweep: %+v", res)
	}
	if st := r.stats(t); st.Held != 2 || st.Messages != 0 {
		t.Fatalf("stats: %+v", st)
	}
	r.advance(time.Minute)
	if res := r.sweep(t, p); len(res.Purged) != 2 {
		t.Fatalf("purge: %+v", res)
	}
	if st := r.stats(t); st.Held != 0 || st.Messages != 0 {
		t.Fatalf("stats after purge: %+v", st)
	}
}

func testExpireFromRetrieval(t *testing.T, r *retained) {
	ctx := context.Background()
	r.fill(t, 3)
	all := r.uids(t)
	p := store.Policy{Expire: 10 * time.Second, FromRetrieval: true}
	r.advance(time.Hour)
	if res := r.sweep(t, p); len(res.Expired) != 0 {
		t.Fatalf("never retrieved, yet expired: %+v", res)
	}
	retrieve := func() {
		t.Helper()
		m, err := r.b.Open(ctx, "u")
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		rec, ok := m.(store.RetrievalRecorder)
		if !ok {
			t.Fatal("the maildrop does not record retrievals")
		}
		if err := rec.Retrieved([]int{1}, r.now); err != nil {
			t.Fatal(err)
		}
	}
	retrieve()
	// A later retrieval does not restart the clock.
	r.advance(5 * time.Second)
	retrieve()
	if st := r.stats(t); st.Retrieved != 1 {
		t.Fatalf("retrieved = %d, want 1", st.Retrieved)
	}
	r.advance(4 * time.Second)
	if res := r.sweep(t, p); len(res.Expired) != 0 {
		t.Fatalf("expired 9 s after retrieval: %+v", res)
	}
	r.advance(time.Second)
	if res := r.sweep(t, p); len(res.Expired) != 1 || res.Expired[0].UID != all[1] {
		t.Fatalf("sweep: %+v", res)
	}
}

func testSweepSkipsOpen(t *testing.T, r *retained) {
	r.fill(t, 2)
	m := open(t, r.b, "u")
	_, err := r.b.Sweep(context.Background(), "u", store.Policy{Expire: time.Nanosecond}, r.now.Add(time.Hour))
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("sweep during a session: %v, want ErrLocked", err)
	}
	if _, err := r.b.Restore(context.Background(), "u", time.Time{}, false); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("restore during a session: %v, want ErrLocked", err)
	}
	m.Close()
	if got := r.uids(t); len(got) != 2 {
		t.Fatalf("%d messages left", len(got))
	}
}

func testLegalHold(t *testing.T, r *retained) {
	ctx := context.Background()
	r.fill(t, 3)
	if err := r.b.SetHold(ctx, "u", store.Hold{Set: true, Reason: "case 4711"}); err != nil {
		t.Fatal(err)
	}
	h, err := r.b.Hold(ctx, "u")
	if err != nil || !h.Set || h.Reason != "case 4711" || !h.Since.Equal(r.now) {
		t.Fatalf("hold = %+v, %v", h, err)
	}
	// No window, but the hold keeps a client's deletion in the holding area.
	r.commit(t, 0)
	harsh := store.Policy{Expire: time.Nanosecond}
	for range 3 {
		r.advance(24 * time.Hour)
		if res := r.sweep(t, harsh); len(res.Expired)+len(res.Purged) != 0 {
			t.Fatalf("sweep under hold: %+v", res)
		}
	}
	if st := r.stats(t); st.Messages != 2 || st.Held != 1 || !st.Hold.Set {
		t.Fatalf("stats under hold: %+v", st)
	}
	// Released: the next sweep applies the policy again.
	if err := r.b.SetHold(ctx, "u", store.Hold{}); err != nil {
		t.Fatal(err)
	}
	if h, err := r.b.Hold(ctx, "u"); err != nil || h.Set {
		t.Fatalf("hold after release = %+v, %v", h, err)
	}
	if res := r.sweep(t, harsh); len(res.Expired) != 2 || len(res.Purged) != 1 {
		t.Fatalf("sweep after release: %+v", res)
	}
}

func testStats(t *testing.T, r *retained) {
	first := r.now
	r.fill(t, 3) // 4 octets each, a second apart
	m := open(t, r.b, "u")
	if rec, ok := m.(store.RetrievalRecorder); ok {
		if err := rec.Retrieved([]int{0, 2}, r.now); err != nil {
			t.Fatal(err)
		}
	}
	m.Close()
	st := r.stats(t)
	want := store.Stats{Messages: 3, Octets: 12, Retrieved: 2}
	if st.Messages != want.Messages || st.Octets != want.Octets || st.Retrieved != want.Retrieved ||
		!st.Oldest.Equal(first) || !st.Newest.Equal(first.Add(2*time.Second)) || st.Held != 0 || st.Hold.Set {
		t.Fatalf("stats = %+v", st)
	}
	if _, err := r.b.Stats(context.Background(), "../x"); !errors.Is(err, store.ErrBadUser) {
		t.Fatalf("stats of a bad name: %v, want ErrBadUser", err)
	}
}

func testUsers(t *testing.T, r *retained) {
	deliver(t, r.b, "bob", []byte("x\r\n"))
	deliver(t, r.b, "alice", []byte("y\r\n"))
	got, err := r.b.Users(context.Background())
	if err != nil || !slices.Equal(sorted(got), []string{"alice", "bob"}) {
		t.Fatalf("users = %v, %v", got, err)
	}
}
