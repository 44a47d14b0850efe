package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pouchmail/pouch/lmtp"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/maildir"
	"github.com/pouchmail/pouch/store/pg"
)

// mailStore is what pouch serve and the commands around it need of a mail
// store: the Maildirs under --data, or a PostgreSQL database shared by
// several nodes (--store).
type mailStore interface {
	store.Store
	store.Retainer
	lmtp.Mailboxes
	SetPolicy(func(user string) store.Policy)
	SetLogger(*slog.Logger)
}

var (
	_ mailStore = (*maildir.Store)(nil)
	_ mailStore = (*pg.Store)(nil)
)

// urlSetting is a setting holding a URL that may carry a password: the
// effective configuration that check-config prints shows it without (give
// it in PGPASSWORD, ~/.pgpass, or a configuration file only pouch reads).
type urlSetting string

func (v *urlSetting) Set(s string) error { *v = urlSetting(s); return nil }
func (v *urlSetting) String() string     { return string(*v) }
func (v *urlSetting) Get() any           { return string(*v) }
func (v *urlSetting) typeName() string   { return "string" }
func (v *urlSetting) tomlValue() string {
	if *v == "" {
		return `""`
	}
	return strconv.Quote(redactedURL(string(*v)))
}

func urlVar(fs *flag.FlagSet, p *urlSetting, name, value, usage string) {
	*p = urlSetting(value)
	fs.Var(p, name, usage)
}

// checkStoreURL checks the form of a --store setting: "" (the Maildirs
// under --data) or a postgres:// URL that pgx can parse.
func checkStoreURL(v string) error {
	if v == "" {
		return nil
	}
	if !strings.HasPrefix(v, "postgres://") && !strings.HasPrefix(v, "postgresql://") {
		return errors.New("give a postgres:// URL, like postgres://pouch@db.example.net/pouch")
	}
	if _, err := pgxpool.ParseConfig(v); err != nil {
		return fmt.Errorf("not a usable PostgreSQL URL: %s", redactURL(err.Error(), v))
	}
	return nil
}

// redactURL replaces the password of the URL u wherever it appears in
// text (error messages of the driver quote the URL).
func redactURL(text, u string) string {
	p, err := url.Parse(u)
	if err != nil || p.User == nil {
		return text
	}
	if pw, ok := p.User.Password(); ok && pw != "" {
		text = strings.ReplaceAll(text, pw, "xxxxx")
		text = strings.ReplaceAll(text, url.UserPassword(p.User.Username(), pw).String(), p.User.Username()+":xxxxx")
	}
	return text
}

// minLockTTL is the shortest --lock-ttl: the heartbeat renews four times
// per TTL, and a renewal must fit in a quarter of it.
const minLockTTL = 4 * time.Second

// storeSettings say where the mail is.
type storeSettings struct {
	url     string // "" for the Maildirs under data
	lockTTL time.Duration
	data    string
}

// shared reports whether the mail is in PostgreSQL.
func (s storeSettings) shared() bool { return s.url != "" }

// openMailStore opens the mail store: the Maildirs under DATA/mail, or the
// database, whose schema must have this Pouch's version. node names this
// process in the database's table of nodes ("" for host name and pid).
func openMailStore(ctx context.Context, s storeSettings, node string) (mailStore, error) {
	if !s.shared() {
		return maildir.New(filepath.Join(s.data, "mail")), nil
	}
	st, err := pg.Connect(ctx, s.url, pg.Options{LockTTL: s.lockTTL, Node: node})
	if err != nil {
		return nil, storeError(err, s.url)
	}
	return st, nil
}

// storeError says in one sentence why the database cannot be used, with
// the command that fixes a missing or old schema.
func storeError(err error, u string) error {
	var se *pg.SchemaError
	switch {
	case errors.Is(err, pg.ErrNoSchema):
		return fmt.Errorf("the database at %s has no Pouch schema; run: pouch store init --store URL", redactedURL(u))
	case errors.As(err, &se) && se.Have < se.Want:
		return fmt.Errorf("the database at %s has Pouch's schema version %d, this Pouch needs %d; run: pouch store upgrade --store URL", redactedURL(u), se.Have, se.Want)
	case errors.As(err, &se):
		return fmt.Errorf("the database at %s has Pouch's schema version %d, newer than this Pouch's %d; run a Pouch as new as the schema", redactedURL(u), se.Have, se.Want)
	}
	// pgx puts each address it tried on a line of its own.
	msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), ":\n", ";\n")), " ")
	return fmt.Errorf("the database at %s cannot be used: %s", redactedURL(u), redactURL(msg, u))
}

// redactedURL is u without its password, for messages and logs.
func redactedURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(an unreadable URL)"
	}
	return p.Redacted()
}

const storeUsage = `Usage: pouch store init|upgrade|version --store URL

Manages Pouch's schema in a PostgreSQL database, where several pouch serve
nodes keep their maildrops, accounts and bans (pouch serve --store URL).

  init      create the schema in an empty database (does nothing when this
            Pouch's schema is there already)
  upgrade   bring the schema of an older Pouch to this Pouch's version, one
            step (one transaction) at a time; nodes of the older version
            refuse to start on it afterwards, so upgrade them all
  version   print the schema's version and this Pouch's

A node refuses to start on a schema of another version than its own.

Examples:
  pouch store init --store postgres://pouch@db.example.net/pouch
  PGPASSWORD=... pouch store upgrade --store postgres://pouch@db.example.net/pouch

Flags:
`

func runStore(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pouch store", flag.ContinueOnError)
	sf := storeFlag(fs, nil, nil)
	pos, err := parseCommand(fs, storeUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageError("store: say init, upgrade or version")
	}
	u, err := sf.url(fs, true)
	if err != nil {
		return fmt.Errorf("store %s: %v", pos[0], err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	switch pos[0] {
	case "init":
		if err := pg.Init(ctx, u); err != nil {
			return fmt.Errorf("store init: %v", storeError(err, u))
		}
		fmt.Fprintf(stderr, "the database at %s has Pouch's schema, version %d\n", redactedURL(u), pg.Version)
	case "upgrade":
		from, to, err := pg.Upgrade(ctx, u)
		if err != nil {
			return fmt.Errorf("store upgrade: %v", storeError(err, u))
		}
		if from == to {
			fmt.Fprintf(stderr, "the schema is at version %d already\n", to)
		} else {
			fmt.Fprintf(stderr, "upgraded the schema from version %d to %d\n", from, to)
		}
	case "version":
		v, err := pg.SchemaVersion(ctx, u)
		if err != nil {
			return fmt.Errorf("store version: %v", storeError(err, u))
		}
		fmt.Fprintf(stdout, "schema %d (this Pouch: %d)\n", v, pg.Version)
	default:
		return usageError("store: unknown action %q (use init, upgrade or version)", pos[0])
	}
	return nil
}

// storeFlags are the --store flag of the commands that work on pouch
// serve's mail store, and the --config and --data flags it goes with.
type storeFlags struct {
	store      string
	configFile *string // --config: pouch serve's TOML file
	data       *string // --data, when the command has it
}

// storeFlag defines --store on fs, and --config unless config points to
// the command's own; data, if not nil, is the command's --data, which the
// --config file also gives.
func storeFlag(fs *flag.FlagSet, config, data *string) *storeFlags {
	f := &storeFlags{configFile: config, data: data}
	fs.StringVar(&f.store, "store", "", "the PostgreSQL `URL` of pouch serve --store (default: the Maildirs under --data)")
	if config == nil {
		f.configFile = fs.String("config", "", "take --store from pouch serve's TOML `file` (flags win)")
	}
	return f
}

// url returns the --store URL, from the command line or else from the
// --config file (which gives --data too when the command line does not),
// checked; "" for the Maildirs, unless required.
func (f *storeFlags) url(fs *flag.FlagSet, required bool) (string, error) {
	set := flagNames(fs)
	if *f.configFile != "" && (!set["store"] || f.data != nil && !set["data"]) {
		sc, err := readServeConfig(*f.configFile)
		if err != nil {
			return "", err
		}
		if !set["store"] {
			f.store = sc.Store.String()
		}
		if f.data != nil && !set["data"] {
			*f.data = sc.Data.String()
		}
	}
	if f.store == "" && required {
		return "", errors.New("give the database with --store postgres://…")
	}
	if err := checkStoreURL(f.store); err != nil {
		return "", fmt.Errorf("--store: %v", err)
	}
	return f.store, nil
}

// nodeName names this process in the database's table of nodes.
func nodeName(hostname string) string {
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	return fmt.Sprintf("%s:%d", hostname, os.Getpid())
}
