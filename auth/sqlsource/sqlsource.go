// Package sqlsource reads accounts from an SQL database, PostgreSQL (through
// pgx's database/sql driver) or MySQL and MariaDB (go-sql-driver/mysql),
// with the operator's queries, as Dovecot's passdb sql does: it is the
// auth.Backend behind an auth.Remote.
//
// The password query returns at most one row for a name, with a column
// named password holding the stored password in any scheme Pouch reads
// ({ARGON2ID}, {BLF-CRYPT}, {SHA512-CRYPT}, {PLAIN}, {CRYPT}, ...), and any
// of the columns named as the users file's settings (auth.SettingFields:
// nologin or disabled, quota_storage, quota_messages, login_delay,
// allow_nets, ..., scram_sha_256); a NULL column sets nothing. Other
// columns are ignored. The iterate query lists the names of the accounts:
// its first column, or the columns username and domain together.
//
// In the queries, %u is the full name (user@domain), %n the part before
// the last '@' (the whole name when it has none) and %d the part after it
// ("" for none), also written as Dovecot's %{user}, %{username} and
// %{domain}. Each is sent as a bound parameter ($1 or ?), never spliced
// into the query's text: see parseQuery.
package sqlsource

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"iter"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/pouchmail/pouch/auth"
)

// Config is an SQL source's configuration: the [accounts] keys of pouch
// serve's configuration file with source = "sql".
type Config struct {
	// Driver is "postgres" (or "postgresql", "pgx") or "mysql" (or
	// "mariadb").
	Driver string
	// DSN says where the database is: a PostgreSQL URL or key=value
	// string, or for MySQL the driver's form user:password@tcp(host:port)/db
	// or a URL mysql://user:password@host:port/db.
	DSN string
	// PasswordFile, if set, holds the database password (its first line),
	// which then need not be in the DSN.
	PasswordFile string
	// PasswordQuery finds an account by name (see the package comment).
	PasswordQuery string
	// IterateQuery lists the accounts' names; without it they cannot be
	// listed.
	IterateQuery string
	// DomainQuery, if set, returns a row when mail is taken for the domain
	// %d: LMTP then refuses other domains (550 5.1.2) before looking the
	// recipient up.
	DomainQuery string
	// Timeout bounds connecting (the requests are bounded by the Remote's
	// timeout).
	Timeout time.Duration
}

// Source is an SQL database of accounts, an auth.Backend.
type Source struct {
	db       *sql.DB
	name     string // "PostgreSQL 127.0.0.1:5432/mail"
	password query
	iterate  *query
	domain   *query
}

var (
	_ auth.Backend       = (*Source)(nil)
	_ auth.DomainBackend = (*Source)(nil)
)

// Open checks cfg and prepares the connections to the database; it does
// not connect yet (Ping does).
func Open(cfg Config) (*Source, error) {
	dollar, err := dollarMarkers(cfg.Driver)
	if err != nil {
		return nil, err
	}
	if cfg.PasswordQuery == "" {
		return nil, errors.New("password_query is missing")
	}
	s := &Source{}
	if s.password, err = parseQuery(cfg.PasswordQuery, dollar); err != nil {
		return nil, fmt.Errorf("password_query: %w", err)
	}
	for _, q := range []struct {
		key, text string
		dst       **query
	}{{"iterate_query", cfg.IterateQuery, &s.iterate}, {"domain_query", cfg.DomainQuery, &s.domain}} {
		if q.text == "" {
			continue
		}
		pq, err := parseQuery(q.text, dollar)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", q.key, err)
		}
		*q.dst = &pq
	}
	if s.iterate != nil && len(s.iterate.params) > 0 {
		return nil, errors.New("iterate_query: it lists every account, so it takes no %u, %n or %d")
	}
	pw := ""
	if cfg.PasswordFile != "" {
		if pw, err = readPasswordFile(cfg.PasswordFile); err != nil {
			return nil, err
		}
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = auth.DefaultTimeout
	}
	if dollar {
		s.db, s.name, err = openPostgres(cfg.DSN, pw, timeout)
	} else {
		s.db, s.name, err = openMySQL(cfg.DSN, pw, timeout)
	}
	if err != nil {
		return nil, err
	}
	// A few connections serve a login storm well: look-ups are short, and
	// the cache takes the repeats.
	s.db.SetMaxOpenConns(8)
	s.db.SetMaxIdleConns(8)
	s.db.SetConnMaxIdleTime(5 * time.Minute)
	return s, nil
}

// dollarMarkers reports whether driver takes $1 markers (PostgreSQL) rather
// than ? (MySQL).
func dollarMarkers(driver string) (bool, error) {
	switch strings.ToLower(driver) {
	case "postgres", "postgresql", "pgx":
		return true, nil
	case "mysql", "mariadb":
		return false, nil
	case "":
		return false, errors.New(`driver is missing: say "postgres" or "mysql"`)
	}
	return false, fmt.Errorf(`driver %q: say "postgres" or "mysql"`, driver)
}

// readPasswordFile returns the first line of a password file.
func readPasswordFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("password_file: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimRight(line, "\r"), nil
}

func openPostgres(dsn, password string, timeout time.Duration) (*sql.DB, string, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx's errors repeat the DSN, password included.
		return nil, "", errors.New("dsn: not a PostgreSQL connection URL or key=value string")
	}
	if password != "" {
		cfg.Password = password
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > timeout {
		cfg.ConnectTimeout = timeout
	}
	name := "PostgreSQL " + net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))) + "/" + cfg.Database
	if strings.HasPrefix(cfg.Host, "/") {
		name = "PostgreSQL " + cfg.Host + "/" + cfg.Database
	}
	return stdlib.OpenDB(*cfg), name, nil
}

func openMySQL(dsn, password string, timeout time.Duration) (*sql.DB, string, error) {
	cfg, err := mysqlConfig(dsn)
	if err != nil {
		return nil, "", err
	}
	if password != "" {
		cfg.Passwd = password
	}
	cfg.ParseTime = true // DATETIME and TIMESTAMP as times
	// The driver's own log lines are of connections it drops and
	// database/sql opens again; a failure that matters reaches the Remote.
	cfg.Logger = &mysql.NopLogger{}
	if cfg.Timeout == 0 || cfg.Timeout > timeout {
		cfg.Timeout = timeout
	}
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("dsn: %w", err)
	}
	return sql.OpenDB(conn), "MySQL " + cfg.Addr + "/" + cfg.DBName, nil
}

// mysqlConfig reads a MySQL DSN: the driver's own form, or a URL.
func mysqlConfig(dsn string) (*mysql.Config, error) {
	if !strings.HasPrefix(dsn, "mysql://") && !strings.HasPrefix(dsn, "mariadb://") {
		cfg, err := mysql.ParseDSN(dsn)
		if err != nil {
			return nil, errors.New("dsn: not a MySQL DSN (user:password@tcp(host:port)/database) or URL (mysql://user:password@host:port/database)")
		}
		return cfg, nil
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return nil, errors.New("dsn: not a MySQL URL (mysql://user:password@host:port/database)")
	}
	cfg := mysql.NewConfig()
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	cfg.DBName = strings.TrimPrefix(u.Path, "/")
	if sock := u.Query().Get("socket"); sock != "" {
		cfg.Net, cfg.Addr = "unix", sock
	} else {
		cfg.Net, cfg.Addr = "tcp", u.Host
		if u.Port() == "" {
			cfg.Addr = net.JoinHostPort(u.Hostname(), "3306")
		}
	}
	return cfg, nil
}

// String names the database.
func (s *Source) String() string { return s.name }

// Close closes the connections.
func (s *Source) Close() error { return s.db.Close() }

// Ping checks that the database answers.
func (s *Source) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Lookup runs the password query for name.
func (s *Source) Lookup(ctx context.Context, name string) (auth.Record, error) {
	rows, err := s.db.QueryContext(ctx, s.password.text, s.password.args(name)...)
	if err != nil {
		return auth.Record{}, fmt.Errorf("password_query: %w", err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return auth.Record{}, fmt.Errorf("password_query: %w", err)
	}
	pwCol := -1
	for i, c := range cols {
		if strings.EqualFold(c, "password") {
			pwCol = i
		}
	}
	if pwCol < 0 {
		return auth.Record{}, fmt.Errorf("password_query returns no column named password (it returns %s)", strings.Join(cols, ", "))
	}
	known := make(map[string]bool)
	for _, f := range auth.SettingFields() {
		known[f] = true
	}
	var rec auth.Record
	n := 0
	for rows.Next() {
		n++
		if n > 1 {
			continue
		}
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return auth.Record{}, fmt.Errorf("password_query: %w", err)
		}
		rec = auth.Record{Where: "password_query", Fields: make(map[string]string)}
		for i, c := range cols {
			c = strings.ToLower(c)
			switch {
			case i == pwCol:
				rec.Password, _ = text(vals[i])
			case known[c]:
				if v, ok := text(vals[i]); ok {
					rec.Fields[c] = v
				}
			default:
				rec.Ignored = append(rec.Ignored, c)
			}
		}
	}
	if err := rows.Err(); err != nil {
		return auth.Record{}, fmt.Errorf("password_query: %w", err)
	}
	switch {
	case n == 0:
		return auth.Record{}, auth.ErrNoSuchUser
	case n > 1:
		return auth.Record{}, &auth.AccountError{Name: name, Where: s.name + ": password_query",
			Errs: []error{fmt.Errorf("the query returns %d rows for this name, not one", n)}}
	}
	return rec, nil
}

// text returns a column's value as a setting's text; ok is false for NULL.
// Booleans are "true" or "false", times are Unix seconds.
func text(v any) (string, bool) {
	switch v := v.(type) {
	case nil:
		return "", false
	case []byte:
		return string(v), true
	case string:
		return v, true
	case bool:
		return strconv.FormatBool(v), true
	case int64:
		return strconv.FormatInt(v, 10), true
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), true
	case time.Time:
		return strconv.FormatInt(v.Unix(), 10), true
	}
	return fmt.Sprint(v), true
}

// Names runs the iterate query.
func (s *Source) Names(ctx context.Context) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		if s.iterate == nil {
			yield("", errors.New("no iterate_query: the accounts cannot be listed"))
			return
		}
		rows, err := s.db.QueryContext(ctx, s.iterate.text)
		if err != nil {
			yield("", fmt.Errorf("iterate_query: %w", err))
			return
		}
		defer rows.Close()
		cols, err := rows.Columns()
		if err != nil {
			yield("", fmt.Errorf("iterate_query: %w", err))
			return
		}
		userCol, domainCol := 0, -1
		for i, c := range cols {
			switch strings.ToLower(c) {
			case "username":
				userCol = i
			case "domain":
				domainCol = i
			}
		}
		if domainCol < 0 {
			userCol = 0
		}
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				yield("", fmt.Errorf("iterate_query: %w", err))
				return
			}
			name, ok := text(vals[userCol])
			if !ok || name == "" {
				continue
			}
			if domainCol >= 0 {
				if d, ok := text(vals[domainCol]); ok && d != "" {
					name += "@" + d
				}
			}
			if !yield(name, nil) {
				return
			}
		}
		if err := rows.Err(); err != nil {
			yield("", fmt.Errorf("iterate_query: %w", err))
		}
	}
}

// HasDomain runs the domain query, if there is one; without it every domain
// is taken (each recipient is then looked up alone).
func (s *Source) HasDomain(ctx context.Context, domain string) (bool, error) {
	if s.domain == nil {
		return true, nil
	}
	rows, err := s.db.QueryContext(ctx, s.domain.text, s.domain.args("@"+domain)...)
	if err != nil {
		return false, fmt.Errorf("domain_query: %w", err)
	}
	defer rows.Close()
	found := rows.Next()
	if err := rows.Err(); err != nil {
		return false, fmt.Errorf("domain_query: %w", err)
	}
	return found, nil
}
