package sqlsource_test

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xdg-go/scram"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/auth/sqlsource"
	"github.com/pouchmail/pouch/internal/mariadbtest"
	"github.com/pouchmail/pouch/internal/pgtest"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	mariadbtest.StopShared()
	os.Exit(code)
}

// Stored passwords made by real tools (doveadm pw, perl's crypt), the same
// vectors as the users file's tests.
const (
	vecArgon2 = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$IXIj2NuzFa76EZB9kiyT+g$YUQT7hLEP7oWQid2WOM+vqMDj96/hajjXiAMTNsk7zk" // correct horse
	vecBcrypt = "{BLF-CRYPT}$2y$05$QUem9ObjPUppboktss0r4OjIkvnKdAgmpN4B2I0boq.GaNuiUQ9Yq"                                     // bcrypt pass
	vecSHA512 = "{SHA512-CRYPT}$6$AODy/KxyPFD6MCGW$kIyhBNPh6J3ycw0np8DdFQMw50hCpnKYj4Hx3nVQM.yHH8zZ82RbEo1zhgePRyet/oukzMvcGfrar4Xhe1SnF0"
	vecCrypt  = "$2b$04$abcdefghijklmnopqrstuu6nBDBr3af7g9pejmTXqBRgApBb1Elfy" // b pass, no scheme prefix
)

// scramPassword is the {SCRAM-SHA-256} stored form of password.
func scramPassword(t *testing.T, password string) string {
	t.Helper()
	c, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		t.Fatal(err)
	}
	sc, err := c.GetStoredCredentialsWithError(scram.KeyFactors{Salt: "0123456789abcdef", Iters: 4096})
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.StdEncoding.EncodeToString
	return "{SCRAM-SHA-256}" + strconv.Itoa(sc.Iters) + "," + enc([]byte(sc.Salt)) + "," + enc(sc.StoredKey) + "," + enc(sc.ServerKey)
}

// user is a row of the test table, and the password that logs it in.
type user struct {
	email, password, login string
	quota                  any // quota_storage, NULL when nil
	disabled               any
}

func users(t *testing.T) []user {
	return []user{
		{"argon@example.org", vecArgon2, "correct horse", "1M", false},
		{"bcrypt@example.org", vecBcrypt, "bcrypt pass", nil, nil},
		{"sha@example.org", vecSHA512, "sha pass", nil, nil},
		{"crypt@example.org", vecCrypt, "b pass", nil, nil},
		{"plain@example.org", "{PLAIN}plain pass", "plain pass", nil, nil},
		{"scram@example.org", scramPassword(t, "scram pass"), "scram pass", nil, nil},
		{"alice@example.org", "{PLAIN}org pass", "org pass", nil, nil},
		{"alice@example.net", "{PLAIN}net pass", "net pass", nil, nil},
		{"off@example.org", "{PLAIN}off pass", "off pass", nil, true},
		{"badquota@example.org", "{PLAIN}bq pass", "bq pass", "lots", nil},
	}
}

// database is a test's database of each kind, and the config of a source
// of it, with the users table made and filled.
type database struct {
	name  string
	cfg   sqlsource.Config
	setup *sql.DB
	stop  func() error
	start func() error
}

func databases(t *testing.T) []database {
	var dbs []database
	{
		c := pgtest.Get(t)
		url := c.Schema(t)
		db, err := sql.Open("pgx", url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		dbs = append(dbs, database{name: "postgres", setup: db, stop: c.Stop, start: c.Start, cfg: sqlsource.Config{
			Driver: "postgres", DSN: url,
			PasswordQuery: "SELECT password, quota_storage, disabled, home AS ignored_col FROM users WHERE email = %u",
			IterateQuery:  "SELECT email FROM users ORDER BY email",
			DomainQuery:   "SELECT 1 FROM users WHERE split_part(email, '@', 2) = %d LIMIT 1",
		}})
	}
	{
		s := mariadbtest.Get(t)
		d := s.Database(t)
		dbs = append(dbs, database{name: "mariadb", setup: d.Root, stop: s.Stop, start: s.Start, cfg: sqlsource.Config{
			Driver: "mysql", DSN: d.DSN,
			// Dovecot's quoted placeholders, split into user and domain.
			PasswordQuery: "SELECT password, quota_storage, disabled, home AS ignored_col FROM users " +
				"WHERE SUBSTRING_INDEX(email, '@', 1) = '%n' AND SUBSTRING_INDEX(email, '@', -1) = '%d'",
			IterateQuery: "SELECT SUBSTRING_INDEX(email, '@', 1) AS username, SUBSTRING_INDEX(email, '@', -1) AS domain FROM users ORDER BY email",
		}})
	}
	for _, d := range dbs {
		if _, err := d.setup.Exec(`CREATE TABLE users (email VARCHAR(255) PRIMARY KEY, password VARCHAR(255) NOT NULL,
			quota_storage VARCHAR(32), disabled BOOLEAN, home VARCHAR(255))`); err != nil {
			t.Fatalf("%s: %v", d.name, err)
		}
		for _, u := range users(t) {
			q := "INSERT INTO users (email, password, quota_storage, disabled) VALUES (?, ?, ?, ?)"
			if d.name == "postgres" {
				q = "INSERT INTO users (email, password, quota_storage, disabled) VALUES ($1, $2, $3, $4)"
			}
			if _, err := d.setup.Exec(q, u.email, u.password, u.quota, u.disabled); err != nil {
				t.Fatalf("%s: %v", d.name, err)
			}
		}
	}
	return dbs
}

func open(t *testing.T, cfg sqlsource.Config, opts auth.RemoteOptions) *auth.Remote {
	t.Helper()
	s, err := sqlsource.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := auth.NewRemote(s, opts)
	t.Cleanup(func() { r.Close() })
	return r
}

// Every scheme logs in from PostgreSQL and MariaDB; the settings columns
// fill the account; a bad one refuses it; other columns are ignored.
func TestLoginEachScheme(t *testing.T) {
	for _, d := range databases(t) {
		t.Run(d.name, func(t *testing.T) {
			r := open(t, d.cfg, auth.RemoteOptions{CacheTTL: time.Minute, NegativeTTL: time.Minute})
			for _, u := range users(t) {
				ok, err := r.Check(u.email, u.login)
				if !ok || err != nil {
					t.Errorf("%s: Check = %v, %v", u.email, ok, err)
				}
				if ok, err := r.Check(u.email, u.login+"x"); ok || err != nil {
					t.Errorf("%s: a wrong password: %v, %v", u.email, ok, err)
				}
			}
			a, err := r.Account("argon@example.org")
			if err != nil || a.Quota.Storage != auth.Own[int64](1<<20) || a.Disabled {
				t.Errorf("argon: %+v, %v", a, err)
			}
			if a, _ := r.Account("off@example.org"); !a.Disabled {
				t.Error("disabled = true does not disable")
			}
			if _, err := r.Account("badquota@example.org"); !errors.Is(err, auth.ErrInvalidAccount) {
				t.Errorf("a bad quota_storage: %v, want the account refused", err)
			}
			if _, ok := r.Source().(auth.SCRAMSource).SCRAMCredentials("scram@example.org"); !ok {
				t.Error("no SCRAM keys for a {SCRAM-SHA-256} password")
			}
			if s, ok := r.Source().(auth.APOPSource).APOPSecret("plain@example.org"); !ok || s != "plain pass" {
				t.Error("no APOP secret for a {PLAIN} password")
			}
			// Two people with one local part in two domains.
			if ok, _ := r.Check("alice@example.org", "net pass"); ok {
				t.Error("alice@example.net's password logs in alice@example.org")
			}
			rec, _, err := r.Inspect(context.Background(), "argon@example.org")
			if err != nil || !slices.Equal(rec.Ignored, []string{"ignored_col"}) {
				t.Errorf("Inspect: %+v, %v", rec, err)
			}
			var names []string
			for a, err := range r.Accounts() {
				if err == nil || errors.Is(err, auth.ErrInvalidAccount) {
					names = append(names, a.Name)
				} else {
					t.Errorf("Accounts: %v", err)
				}
			}
			if len(names) != len(users(t)) || !slices.Contains(names, "alice@example.net") {
				t.Errorf("Accounts = %q", names)
			}
		})
	}
}

// A name is a bound parameter: quotes, comment marks, wildcards and LDAP
// filter syntax in it match nobody, however the query is written.
func TestInjection(t *testing.T) {
	for _, d := range databases(t) {
		t.Run(d.name, func(t *testing.T) {
			r := open(t, d.cfg, auth.RemoteOptions{})
			for _, name := range []string{
				"' OR '1'='1", "' OR '1'='1' --", "alice@example.org' OR '1'='1", "alice@example.org'; DROP TABLE users; --",
				"%", "%@example.org", "_lice@example.org", "*)(uid=*", "*", `\' OR 1=1 #@example.org`,
			} {
				if ok, err := r.Check(name, "org pass"); ok || err != nil {
					t.Errorf("%q: %v, %v", name, ok, err)
				}
				if _, err := r.Account(name); !errors.Is(err, auth.ErrNoSuchUser) {
					t.Errorf("Account(%q) = %v, want no such user", name, err)
				}
			}
			var n int
			if err := d.setup.QueryRow("SELECT COUNT(*) FROM users").Scan(&n); err != nil || n != len(users(t)) {
				t.Errorf("users left: %d, %v", n, err)
			}
		})
	}
}

// PostgreSQL's domain query decides which domains mail is taken for.
func TestDomainQuery(t *testing.T) {
	d := databases(t)[0]
	r := open(t, d.cfg, auth.RemoteOptions{CacheTTL: time.Minute, NegativeTTL: time.Minute})
	for domain, want := range map[string]bool{"example.org": true, "EXAMPLE.NET": true, "example.com": false, "%": false} {
		if got, err := r.HasDomain(domain); got != want || err != nil {
			t.Errorf("HasDomain(%q) = %v, %v; want %v", domain, got, err, want)
		}
	}
}

// A queries' mistakes are refused when the source is made, naming the key.
func TestOpenRefuses(t *testing.T) {
	for _, tc := range []struct {
		cfg  sqlsource.Config
		want string
	}{
		{sqlsource.Config{Driver: "oracle", PasswordQuery: "x"}, `driver "oracle"`},
		{sqlsource.Config{Driver: "postgres"}, "password_query is missing"},
		{sqlsource.Config{Driver: "postgres", DSN: "postgres://x@127.0.0.1/db", PasswordQuery: "SELECT password FROM u WHERE e = '%n@%d'"}, "password_query: %n inside the string literal"},
		{sqlsource.Config{Driver: "mysql", DSN: "u:p@tcp(127.0.0.1:1)/db", PasswordQuery: "SELECT 1", IterateQuery: "SELECT e FROM u WHERE d = %d"}, "iterate_query"},
		{sqlsource.Config{Driver: "mysql", DSN: "no slash", PasswordQuery: "SELECT 1"}, "not a MySQL DSN"},
	} {
		_, err := sqlsource.Open(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// The database going away is not a wrong password and not an unknown
// user: look-ups fail with ErrUnavailable (never cached), Fault says so,
// accounts looked up before still log in, and all is well once it is back.
func TestDatabaseDown(t *testing.T) {
	for _, d := range databases(t) {
		t.Run(d.name, func(t *testing.T) {
			r := open(t, d.cfg, auth.RemoteOptions{CacheTTL: time.Hour, NegativeTTL: time.Hour, Timeout: 2 * time.Second,
				RetryEvery: time.Millisecond})
			if ok, _ := r.Check("plain@example.org", "plain pass"); !ok {
				t.Fatal("plain refused")
			}
			if err := d.stop(); err != nil {
				t.Fatal(err)
			}
			restarted := false
			defer func() {
				if !restarted {
					d.start()
				}
			}()
			ok, err := r.Check("sha@example.org", "sha pass")
			if ok || !errors.Is(err, auth.ErrUnavailable) {
				t.Errorf("Check while down = %v, %v; want ErrUnavailable", ok, err)
			}
			if _, err := r.Account("nobody@example.org"); !errors.Is(err, auth.ErrUnavailable) {
				t.Errorf("Account of an unknown name while down = %v; want ErrUnavailable, not unknown", err)
			}
			if r.Fault() == nil {
				t.Error("no Fault while down")
			}
			if ok, err := r.Check("plain@example.org", "plain pass"); !ok || err != nil {
				t.Errorf("a user looked up before, while down: %v, %v", ok, err)
			}
			if err := d.start(); err != nil {
				t.Fatal(err)
			}
			restarted = true
			if ok, err := r.Check("sha@example.org", "sha pass"); !ok || err != nil {
				t.Errorf("Check after the restart = %v, %v", ok, err)
			}
			if r.Fault() != nil {
				t.Errorf("Fault after the restart: %v", r.Fault())
			}
		})
	}
}

// BenchmarkLookupStorm is a storm of look-ups of 1,000 accounts in
// PostgreSQL from 16 goroutines at once (logins, RCPTs), with the cache at
// its default TTL and without: the queries that reach the database per
// look-up, and the time of each. (A login adds its password check, which
// costs the same with either: an Argon2id computation.)
func BenchmarkLookupStorm(b *testing.B) {
	c := pgtest.Get(b)
	url := c.Schema(b)
	db, err := sql.Open("pgx", url)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE users (email text PRIMARY KEY, password text NOT NULL);
		INSERT INTO users SELECT 'u' || i || '@example.org', '{PLAIN}pw' || i FROM generate_series(0, 999) i`); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ttl  time.Duration
	}{{"cached", auth.DefaultCacheTTL}, {"uncached", 0}} {
		b.Run(tc.name, func(b *testing.B) {
			s, err := sqlsource.Open(sqlsource.Config{Driver: "postgres", DSN: url,
				PasswordQuery: "SELECT password FROM users WHERE email = %u"})
			if err != nil {
				b.Fatal(err)
			}
			counting := &countingBackend{Backend: s}
			r := auth.NewRemote(counting, auth.RemoteOptions{CacheTTL: tc.ttl, NegativeTTL: tc.ttl})
			defer r.Close()
			var i atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n := i.Add(1) % 1000
					if _, err := r.Account(fmt.Sprintf("u%d@example.org", n)); err != nil {
						b.Errorf("look-up %d: %v", n, err)
						return
					}
				}
			})
			b.ReportMetric(float64(counting.n.Load())/float64(b.N), "queries/lookup")
		})
	}
}

// countingBackend counts the look-ups that reach a Backend.
type countingBackend struct {
	auth.Backend
	n atomic.Int64
}

func (c *countingBackend) Lookup(ctx context.Context, name string) (auth.Record, error) {
	c.n.Add(1)
	return c.Backend.Lookup(ctx, name)
}
