package pg

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pouchmail/pouch/internal/pgtest"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/storetest"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		crashHelper()
		return
	}
	os.Exit(pgtest.Main(m))
}

// newSchema returns the URL of a new schema with Pouch's tables.
func newSchema(t testing.TB) string {
	t.Helper()
	url := pgtest.Get(t).Schema(t)
	if err := Init(context.Background(), url); err != nil {
		t.Fatal(err)
	}
	return url
}

// connect returns a Store on url, closed when t ends.
func connect(t testing.TB, url string, opt Options) *Store {
	t.Helper()
	s, err := Connect(context.Background(), url, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newStore(t testing.TB) *Store { return connect(t, newSchema(t), Options{}) }

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		s := newStore(t)
		t.Cleanup(func() { checkConsistent(t, s) })
		return s
	})
}

func TestRetention(t *testing.T) {
	storetest.RunRetention(t, func(t *testing.T) storetest.RetentionBackend {
		s := newStore(t)
		t.Cleanup(func() { checkConsistent(t, s) })
		return s
	})
}

// checkConsistent checks what no interruption may break: the usage
// counters match the messages, every message has all its chunks and they
// add up to its size, and no chunk belongs to nothing (a message or a
// delivery under way).
func checkConsistent(t testing.TB, s *Store) {
	t.Helper()
	ctx := context.Background()
	var bad int
	err := s.pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM maildrops d, LATERAL (SELECT count(*) AS n, coalesce(sum(size), 0) AS o
			FROM messages m WHERE m.maildrop = d.id AND m.deleted IS NULL) a
			WHERE d.messages <> a.n OR d.octets <> a.o)
		+ (SELECT count(*) FROM messages m, LATERAL (SELECT count(*) AS n, coalesce(sum(octet_length(data)), 0) AS o
			FROM chunks c WHERE c.maildrop = m.maildrop AND c.body = m.body) a
			WHERE m.chunks <> a.n OR m.size <> a.o)
		+ (SELECT count(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.maildrop = c.maildrop AND m.body = c.body)
			AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.maildrop = c.maildrop AND u.body = c.body))`).Scan(&bad)
	if err != nil {
		t.Fatalf("checking consistency: %v", err)
	}
	if bad != 0 {
		t.Errorf("%d inconsistencies between counters, messages and chunks", bad)
	}
}

func TestSchemaVersions(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Get(t).Schema(t)
	if _, err := Connect(ctx, url, Options{}); !errors.Is(err, ErrNoSchema) {
		t.Fatalf("Connect to an empty database: %v, want ErrNoSchema", err)
	}
	if _, _, err := Upgrade(ctx, url); !errors.Is(err, ErrNoSchema) {
		t.Fatalf("Upgrade of an empty database: %v, want ErrNoSchema", err)
	}
	if err := Init(ctx, url); err != nil {
		t.Fatal(err)
	}
	if err := Init(ctx, url); err != nil {
		t.Fatalf("Init again: %v", err)
	}
	if v, err := SchemaVersion(ctx, url); err != nil || v != Version {
		t.Fatalf("version %d, %v; want %d", v, err, Version)
	}
	s := connect(t, url, Options{})
	if err := s.Deliver(ctx, "u", stringReader("kept across the upgrade\r\n")); err != nil {
		t.Fatal(err)
	}
	s.Close()

	// A newer Pouch with a second migration: it refuses the old schema
	// until upgraded, and upgrading keeps the mail.
	defer func(m []string, v int) { migrations, Version = m, v }(migrations, Version)
	migrations = append(migrations[:len(migrations):len(migrations)], "CREATE TABLE later (x integer)")
	Version = len(migrations)
	var se *SchemaError
	if _, err := Connect(ctx, url, Options{}); !errors.As(err, &se) || se.Have != Version-1 || se.Want != Version {
		t.Fatalf("Connect to an old schema: %v", err)
	}
	if err := Init(ctx, url); !errors.As(err, &se) {
		t.Fatalf("Init of an old schema: %v, want a SchemaError", err)
	}
	from, to, err := Upgrade(ctx, url)
	if err != nil || from != Version-1 || to != Version {
		t.Fatalf("Upgrade: %d → %d, %v", from, to, err)
	}
	if from, to, err := Upgrade(ctx, url); err != nil || from != Version || to != Version {
		t.Fatalf("Upgrade again: %d → %d, %v", from, to, err)
	}
	s = connect(t, url, Options{})
	m, err := s.Open(ctx, "u")
	if err != nil || len(m.Messages()) != 1 {
		t.Fatalf("after the upgrade: %v", err)
	}
	m.Close()
	s.Close()

	// An older Pouch refuses the newer schema.
	migrations, Version = migrations[:Version-1], Version-1
	if _, err := Connect(ctx, url, Options{}); !errors.As(err, &se) || se.Have != Version+1 {
		t.Fatalf("Connect to a newer schema: %v", err)
	}
	if _, _, err := Upgrade(ctx, url); !errors.As(err, &se) {
		t.Fatalf("Upgrade to an older version: %v", err)
	}
}

// sql runs one statement on url, for tests that look under the store.
func sql(t testing.TB, url, q string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// waitExpired waits until node id's heartbeat has expired by the database's
// clock, as another node sees it.
func waitExpired(t testing.TB, s *Store, id int64) time.Duration {
	t.Helper()
	var sec float64
	if err := s.pool.QueryRow(context.Background(),
		"SELECT greatest(extract(epoch FROM expires - now()), 0)::float8 FROM nodes WHERE id = $1", id).Scan(&sec); err != nil {
		t.Fatal(err)
	}
	left := time.Duration(sec * float64(time.Second))
	time.Sleep(left + time.Millisecond)
	return left
}

var _ store.Store = (*Store)(nil)
