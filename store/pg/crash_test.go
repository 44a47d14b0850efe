package pg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/storetest"
)

// The crash tests run a child process (this test binary) that delivers or
// commits with POUCH_CRASHPOINT set, so that it is SIGKILLed at that
// moment, its connections cut mid-transaction. The parent then checks that
// the database shows all or nothing, and that the child's lease lapses.
const helperEnv = "POUCH_PG_CRASH_URL"

// childTTL is the crashing child's lock TTL.
const childTTL = time.Second

func crashHelper() {
	ctx := context.Background()
	s, err := Connect(ctx, os.Getenv(helperEnv), Options{LockTTL: childTTL})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	switch os.Getenv("POUCH_PG_CRASH_OP") {
	case "deliver":
		size, _ := strconv.Atoi(os.Getenv("POUCH_PG_CRASH_SIZE"))
		err = s.Deliver(ctx, "u", bytes.NewReader(crashMessage(size)))
	case "commit":
		var md store.Maildrop
		if md, err = s.Open(ctx, "u"); err == nil {
			var del []int
			for _, f := range strings.Split(os.Getenv("POUCH_PG_CRASH_DELETE"), ",") {
				n, _ := strconv.Atoi(f)
				del = append(del, n)
			}
			err = md.Commit(del)
		}
	case "sweep":
		_, err = s.Sweep(ctx, "u", store.Policy{Expire: time.Nanosecond, Window: time.Hour}, time.Now())
	case "restore":
		_, err = s.Restore(ctx, "u", time.Time{}, true)
	}
	fmt.Fprintln(os.Stderr, "not killed:", err)
	os.Exit(2)
}

// crashMessage is a message of about size octets with LF line ends.
func crashMessage(size int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "line %d of a message that a crash interrupts\n", i)
	}
	return b.Bytes()
}

func runCrash(t *testing.T, url, point, op string, env ...string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+url, crashpoint.Env+"="+point, "POUCH_PG_CRASH_OP="+op)
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("helper was not killed at %s: %v\n%s", point, err, out)
	}
}

// holder is the node whose lease is on u's maildrop (0: none).
func holder(t *testing.T, s *Store) int64 {
	t.Helper()
	var node int64
	err := s.pool.QueryRow(context.Background(), `SELECT coalesce(max(node), 0) FROM leases
		WHERE maildrop = (SELECT id FROM maildrops WHERE name = 'u')`).Scan(&node)
	if err != nil {
		t.Fatal(err)
	}
	return node
}

// afterCrash checks that the killed child's lease keeps u locked until its
// heartbeat expires, and no longer, and returns the maildrop then.
func afterCrash(t *testing.T, s *Store) store.Maildrop {
	t.Helper()
	ctx := context.Background()
	node := holder(t, s)
	if node == 0 {
		t.Fatal("the killed session left no lease")
	}
	if _, err := s.Open(ctx, "u"); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("Open while the dead node's lease runs: %v, want ErrLocked", err)
	}
	if left := waitExpired(t, s, node); left > childTTL {
		t.Fatalf("the dead node's lease had %v left, more than its TTL", left)
	}
	m, err := s.Open(ctx, "u")
	if err != nil {
		t.Fatalf("Open once the dead node's lease lapsed: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestCrashDuringCommit(t *testing.T) {
	for _, tc := range []struct {
		point string
		left  []int
	}{
		{"pg.commit.before-commit", []int{0, 1, 2, 3, 4, 5}}, // not committed: nothing removed
		{"pg.commit.committed", []int{1, 3, 5}},              // committed: all removed
	} {
		t.Run(tc.point, func(t *testing.T) {
			url := newSchema(t)
			s := connect(t, url, Options{})
			for i := range 6 {
				if err := s.Deliver(context.Background(), "u", stringReader(fmt.Sprintf("m%d\r\n", i))); err != nil {
					t.Fatal(err)
				}
			}
			runCrash(t, url, tc.point, "commit", "POUCH_PG_CRASH_DELETE=0,2,4")
			if st, err := s.Stats(context.Background(), "u"); err != nil || st.Messages != len(tc.left) {
				t.Fatalf("stats after the crash: %+v, %v", st, err)
			}
			m := afterCrash(t, s)
			if len(m.Messages()) != len(tc.left) {
				t.Fatalf("%d messages after the crash, want %d", len(m.Messages()), len(tc.left))
			}
			for i, n := range tc.left {
				if got, want := string(readAll(t, m, i)), fmt.Sprintf("m%d\r\n", n); got != want {
					t.Errorf("message %d = %q, want %q", i+1, got, want)
				}
			}
			checkConsistent(t, s)
		})
	}
}

func TestCrashDuringDelivery(t *testing.T) {
	const big, small = 2*ChunkSize + 1000, 10 << 10 // three chunks, and one written with the row
	for _, tc := range []struct {
		point     string
		size      int
		delivered bool
	}{
		{"pg.deliver.chunks-written", big, false},
		{"pg.deliver.before-commit", big, false},
		{"pg.deliver.committed", big, true},
		{"pg.deliver.before-commit", small, false},
		{"pg.deliver.committed", small, true},
	} {
		size := tc.size
		t.Run(fmt.Sprintf("%s/%d", tc.point, size), func(t *testing.T) {
			ctx := context.Background()
			url := newSchema(t)
			s := connect(t, url, Options{})
			runCrash(t, url, tc.point, "deliver", "POUCH_PG_CRASH_SIZE="+strconv.Itoa(size))
			m, err := s.Open(ctx, "u") // delivery takes no lease
			if err != nil {
				t.Fatal(err)
			}
			if !tc.delivered {
				if n := len(m.Messages()); n != 0 {
					t.Fatalf("%d messages after a crash before COMMIT, want 0", n)
				}
			} else {
				want := storetest.Canonical(crashMessage(size))
				if len(m.Messages()) != 1 || m.Messages()[0].Size != int64(len(want)) || !bytes.Equal(readAll(t, m, 0), want) {
					t.Fatalf("the message committed before the crash is not whole")
				}
			}
			m.Close()
			if n, octets, err := s.Usage("u"); err != nil || (n == 1) != tc.delivered || (octets > 0) != tc.delivered {
				t.Fatalf("usage after the crash: %d, %d, %v", n, octets, err)
			}
			checkConsistent(t, s)
			// What a dead delivery left is garbage once it is old enough.
			if !tc.delivered && size == big {
				sql(t, url, "UPDATE uploads SET started = started - interval '2 hours'")
				if _, err := s.Sweep(ctx, "u", store.Policy{}, time.Now()); err != nil {
					t.Fatal(err)
				}
				var chunks, uploads int
				if err := s.pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM chunks), (SELECT count(*) FROM uploads)").
					Scan(&chunks, &uploads); err != nil || chunks+uploads != 0 {
					t.Fatalf("left by the dead delivery after a sweep: %d chunks, %d uploads, %v", chunks, uploads, err)
				}
			}
		})
	}
}

func TestCrashDuringSweepAndRestore(t *testing.T) {
	ctx := context.Background()
	url := newSchema(t)
	s := connect(t, url, Options{})
	for i := range 3 {
		if err := s.Deliver(ctx, "u", stringReader(fmt.Sprintf("m%d\r\n", i))); err != nil {
			t.Fatal(err)
		}
	}
	runCrash(t, url, "pg.sweep.before-commit", "sweep")
	if st, _ := s.Stats(ctx, "u"); st.Messages != 3 || st.Held != 0 {
		t.Fatalf("after a crash in the sweep: %+v", st)
	}
	afterCrash(t, s).Close()
	if res, err := s.Sweep(ctx, "u", store.Policy{Expire: time.Nanosecond, Window: time.Hour}, time.Now()); err != nil || len(res.Expired) != 3 {
		t.Fatalf("sweep: %+v, %v", res, err)
	}
	runCrash(t, url, "pg.restore.before-commit", "restore")
	if st, _ := s.Stats(ctx, "u"); st.Messages != 0 || st.Held != 3 {
		t.Fatalf("after a crash in the restore: %+v", st)
	}
	afterCrash(t, s).Close()
	checkConsistent(t, s)
}

func stringReader(s string) *strings.Reader { return strings.NewReader(s) }

func readAll(t testing.TB, m store.Maildrop, i int) []byte {
	t.Helper()
	r, err := m.Open(i)
	if err != nil {
		t.Fatalf("open message %d: %v", i+1, err)
	}
	defer r.Close()
	var b bytes.Buffer
	if _, err := b.ReadFrom(r); err != nil {
		t.Fatalf("read message %d: %v", i+1, err)
	}
	return b.Bytes()
}
