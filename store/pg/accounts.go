package pg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Pouch's own accounts: the accounts table, one row per account, holding
// what a line of the users file holds (the stored password, and the
// settings named as its extra fields, in a jsonb object). pouch user
// --store and pouch migrate write it with the functions below; the nodes
// read it as any SQL database of accounts, through auth/sqlsource, with
// the queries that AccountQueries makes. Every change is announced on the
// AccountsChannel (NOTIFY, delivered at COMMIT), so that each node forgets
// the accounts it cached at once (Watch), rather than after its cache's TTL.
// This package stores the rows as given: the caller normalizes the names
// and makes the stored passwords (the auth package).

// AccountsChannel is the NOTIFY channel of account changes.
const AccountsChannel = "pouch_accounts"

var (
	// ErrAccountExists means that the accounts table has the name already.
	ErrAccountExists = errors.New("pg: the account exists already")
	// ErrNoAccount means that the accounts table does not have the name.
	ErrNoAccount = errors.New("pg: no such account")
)

// Account is a row of the accounts table.
type Account struct {
	Name     string
	Password string            // as the users file stores it
	Fields   map[string]string // settings by name; a flag has ""
}

// AccountQueries returns the queries of auth/sqlsource that read the
// accounts table: the password query, which returns the password and each
// of fields (auth.SettingFields) as a column; the iterate query; and the
// domain query, which takes a domain when an account is named in it, when
// an account is named without one (it takes mail at every domain, as in
// the users file) or when there are no accounts.
func AccountQueries(fields []string) (password, iterate, domain string) {
	var b strings.Builder
	b.WriteString("SELECT password")
	for _, f := range fields {
		if !plainName(f) {
			continue // never in the query's text
		}
		fmt.Fprintf(&b, ", settings->>'%s' AS %s", f, f)
	}
	b.WriteString(" FROM accounts WHERE name = %u")
	return b.String(), "SELECT name FROM accounts ORDER BY name",
		"SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM accounts) OR EXISTS (SELECT 1 FROM accounts " +
			"WHERE strpos(name, '@') = 0 OR right(name, length(%d) + 1) = '@' || %d)"
}

// plainName reports whether a setting's name is letters, digits and '_'.
func plainName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return s != ""
}

// AddAccount adds a, or fails with ErrAccountExists.
func (s *Store) AddAccount(ctx context.Context, a Account) error {
	fields, err := json.Marshal(nonNil(a.Fields))
	if err != nil {
		return err
	}
	return s.changeAccount(ctx, a.Name, `INSERT INTO accounts (name, password, settings) VALUES ($1, $2, $3)`,
		a.Name, a.Password, fields)
}

// SetAccountPassword stores a new password for name, with the settings
// that go with it (fields, which replace those of the same names), and
// removes the settings named in drop.
func (s *Store) SetAccountPassword(ctx context.Context, name, password string, fields map[string]string, drop []string) error {
	set, err := json.Marshal(nonNil(fields))
	if err != nil {
		return err
	}
	return s.changeAccount(ctx, name, `UPDATE accounts SET password = $2, settings = (settings - $4::text[]) || $3
		WHERE name = $1`, name, password, set, nonNilSlice(drop))
}

// SetAccountFields sets (value not nil) or removes (nil) settings of name.
func (s *Store) SetAccountFields(ctx context.Context, name string, fields map[string]*string) error {
	set := map[string]string{}
	drop := []string{}
	for k, v := range fields {
		if v == nil {
			drop = append(drop, k)
		} else {
			set[k] = *v
		}
	}
	js, err := json.Marshal(set)
	if err != nil {
		return err
	}
	return s.changeAccount(ctx, name, `UPDATE accounts SET settings = (settings - $3::text[]) || $2 WHERE name = $1`,
		name, js, drop)
}

// DeleteAccount removes name's account (its maildrop stays).
func (s *Store) DeleteAccount(ctx context.Context, name string) error {
	return s.changeAccount(ctx, name, `DELETE FROM accounts WHERE name = $1`, name)
}

// ImportAccount adds a unless the table has its name already; it reports
// whether it added it.
func (s *Store) ImportAccount(ctx context.Context, a Account) (bool, error) {
	err := s.AddAccount(ctx, a)
	if errors.Is(err, ErrAccountExists) {
		return false, nil
	}
	return err == nil, err
}

// changeAccount runs one statement on name's row and announces it, in one
// transaction: ErrNoAccount when it changed no row, ErrAccountExists when
// it added one that is there.
func (s *Store) changeAccount(ctx context.Context, name, sql string, args ...any) error {
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	b.Queue(sql, args...)
	b.Queue("SELECT pg_notify($1, $2)", AccountsChannel, name)
	res := s.pool.SendBatch(ctx, b)
	tx := res.Tx()
	defer tx.Rollback(context.Background())
	_, err := res.Exec() // BEGIN
	var tag pgconn.CommandTag
	if err == nil {
		tag, err = res.Exec()
	}
	if err == nil {
		_, err = res.Exec()
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe) && pe.Code == "23505": // unique_violation
		return fmt.Errorf("%w: %s", ErrAccountExists, name)
	case err != nil:
		return err
	case tag.RowsAffected() == 0:
		return fmt.Errorf("%w: %s", ErrNoAccount, name)
	}
	return tx.Commit(ctx)
}

// LookupAccount returns name's row.
func (s *Store) LookupAccount(ctx context.Context, name string) (Account, error) {
	a := Account{Name: name}
	var js []byte
	err := s.pool.QueryRow(ctx, "SELECT password, settings FROM accounts WHERE name = $1", name).Scan(&a.Password, &js)
	if errors.Is(err, pgx.ErrNoRows) {
		return a, fmt.Errorf("%w: %s", ErrNoAccount, name)
	}
	if err != nil {
		return a, err
	}
	return a, json.Unmarshal(js, &a.Fields)
}

// AccountNames lists the accounts' names, sorted.
func (s *Store) AccountNames(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, "SELECT name FROM accounts ORDER BY name")
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func nonNilSlice(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Watch calls changed each time a notification arrives on channel of the
// database at connString, until ctx is done, and also each time it
// (re)connects, for what changed while it was not listening. It listens on
// a connection of its own; while the database cannot be reached, or when
// changed fails, it tries again every retry. The guard's bans
// (guard/pgbans) and the accounts (AccountsChannel) are followed so.
func Watch(ctx context.Context, connString, channel string, retry time.Duration, changed func() error, log *slog.Logger) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		log.Error("pg: cannot follow changes", "channel", channel, "err", err)
		return
	}
	for ctx.Err() == nil {
		err := listen(ctx, cfg, channel, changed)
		if ctx.Err() != nil {
			return
		}
		log.Warn("pg: not told of changes for now; trying again", "channel", channel, "err", err, "retry_in", retry)
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// listenTimeout bounds connecting and LISTEN.
const listenTimeout = 5 * time.Second

// listen listens on channel until the connection fails or ctx is done.
func listen(ctx context.Context, cfg *pgx.ConnConfig, channel string, changed func() error) error {
	cctx, cancel := context.WithTimeout(ctx, listenTimeout)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err == nil {
		_, err = conn.Exec(cctx, "LISTEN "+pgx.Identifier{channel}.Sanitize())
	}
	cancel()
	if conn != nil {
		defer conn.Close(context.Background())
	}
	if err != nil {
		return err
	}
	for {
		if err := changed(); err != nil {
			// Listening on would miss what this call should have taken
			// in: listen anew, and call again, after the retry interval.
			return err
		}
		if _, err := conn.WaitForNotification(ctx); err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
	}
}
