// Package pgtest runs a private PostgreSQL cluster for the tests of one test
// binary: initdb into a temporary directory, the server on a free loopback
// port (and a Unix socket in that directory), as the postgres user when the
// tests run as root, stopped and removed when the tests end. Each test gets
// a schema of its own in it, so that tests share one server and stay apart.
//
// A test binary calls Main from its TestMain; a test calls Get, which starts
// the cluster the first time it is asked for. Without PostgreSQL installed,
// Get skips the test, or fails it when POUCH_REQUIRE_INTEROP=1.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pouchmail/pouch/internal/testkit"
)

// Cluster is a running private PostgreSQL server.
type Cluster struct {
	bin  string // directory of initdb, pg_ctl and postgres
	dir  string // temporary directory: data/, the socket, the log
	data string
	port int
	cred *syscall.Credential // the postgres user's, when run as root

	daemon  *testkit.Daemon // the postmaster
	schemas atomic.Int64
}

var (
	once     sync.Once
	shared   *Cluster
	startErr error
)

// Main runs the tests of a binary and stops the cluster afterwards, if a
// test started it. Call it from TestMain: os.Exit(pgtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	if shared != nil {
		if err := shared.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "pgtest: stopping PostgreSQL:", err)
		}
	}
	return code
}

// Get returns this test binary's cluster, starting it on first use. When
// PostgreSQL is not installed it skips t, or fails it under
// POUCH_REQUIRE_INTEROP=1; when it cannot start, it fails t.
func Get(t testing.TB) *Cluster {
	t.Helper()
	once.Do(func() { shared, startErr = Start() })
	var missing *MissingError
	switch {
	case errors.As(startErr, &missing):
		testkit.SkipOrFail(t, "%v", startErr)
	case startErr != nil:
		t.Fatalf("PostgreSQL: %v", startErr)
	}
	return shared
}

// MissingError says that PostgreSQL's programs are not installed.
type MissingError struct{ Looked string }

func (e *MissingError) Error() string {
	return "PostgreSQL is not installed (no initdb in " + e.Looked + ")"
}

// BinDir finds the programs of the newest PostgreSQL installed under
// /usr/lib/postgresql (Debian's layout), or in PATH.
func BinDir() (string, error) {
	const root = "/usr/lib/postgresql"
	vers, _ := filepath.Glob(filepath.Join(root, "*", "bin", "initdb"))
	sort.Slice(vers, func(i, j int) bool { return version(vers[i]) > version(vers[j]) })
	if len(vers) > 0 {
		return filepath.Dir(vers[0]), nil
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", &MissingError{Looked: root + "/*/bin and PATH"}
}

// version is the major version in a path .../postgresql/15/bin/initdb.
func version(initdb string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdb))))
	return n
}

// Start creates and starts a cluster in a new temporary directory.
func Start() (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pouch-pg-")
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin, dir: dir, data: filepath.Join(dir, "data"),
		daemon: &testkit.Daemon{Name: "postgres", Log: filepath.Join(dir, "postgres.log")}}
	if err := c.init(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := c.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return c, nil
}

// init runs initdb and writes the server's settings.
func (c *Cluster) init() error {
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			return fmt.Errorf("running as root needs the postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chmod(c.dir, 0o711); err != nil {
			return err
		}
	}
	if err := os.Mkdir(c.data, 0o700); err != nil {
		return err
	}
	if c.cred != nil {
		if err := os.Chown(c.data, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return err
		}
	}
	out, err := c.command("initdb", "-D", c.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
		"--locale=C", "--no-sync").CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	port, err := testkit.Port()
	if err != nil {
		return err
	}
	c.port = port
	// The defaults otherwise (fsync, synchronous_commit), as a site runs it.
	conf := fmt.Sprintf("\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n"+
		"max_connections = 200\nlogging_collector = off\n", port, c.data)
	f, err := os.OpenFile(filepath.Join(c.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(conf); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// command prepares one of PostgreSQL's programs, run as the postgres user
// when the tests run as root.
func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	cmd.Dir = c.dir
	cmd.Env = []string{"LC_ALL=C", "PATH=" + c.bin + ":/usr/bin:/bin", "HOME=" + c.dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	return cmd
}

// Start starts the server (again, after Crash or Stop) and waits until it
// accepts connections. The postmaster is this process's child and dies
// with it, so a test binary killed by its timeout leaves no server behind.
func (c *Cluster) Start() error {
	// pg_ctl start -w does the same: ask until the server answers.
	return c.daemon.Start(c.command("postgres", "-D", c.data), time.Minute, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, c.URL())
		if err == nil {
			conn.Close(context.Background())
		}
		return err
	})
}

// stop runs pg_ctl stop in the given mode and waits for the postmaster.
func (c *Cluster) stop(mode string) error {
	return c.daemon.StopWith(time.Minute, func() error {
		out, err := c.command("pg_ctl", "stop", "-D", c.data, "-m", mode, "-w").CombinedOutput()
		if err != nil {
			return fmt.Errorf("pg_ctl stop -m %s: %v\n%s", mode, err, out)
		}
		return nil
	})
}

// Crash stops the server the way a power cut would look to its clients:
// pg_ctl stop -m immediate, no checkpoint, connections cut. Start recovers.
func (c *Cluster) Crash() error { return c.stop("immediate") }

// Stop stops the server cleanly.
func (c *Cluster) Stop() error { return c.stop("fast") }

// Close stops the server and removes its directory.
func (c *Cluster) Close() error {
	err := c.Stop()
	if rerr := os.RemoveAll(c.dir); err == nil {
		err = rerr
	}
	return err
}

// Port is the server's TCP port on 127.0.0.1.
func (c *Cluster) Port() int { return c.port }

// URL is the connection URL of the cluster's postgres database, as the
// superuser, over TCP.
func (c *Cluster) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
}

// Schema creates a new empty schema and returns a URL whose connections
// use it (search_path), so that a test's tables are its own. The schema is
// dropped when t ends.
func (c *Cluster) Schema(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%s", c.schemas.Add(1), sanitize(t.Name()))
	if len(name) > 60 {
		name = name[:60]
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create schema: %v", err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, c.URL())
		if err != nil {
			return // stopped by the test; the cluster goes anyway
		}
		defer conn.Close(ctx)
		conn.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{name}.Sanitize()+" CASCADE")
	})
	return WithSearchPath(c.URL(), name)
}

// WithSearchPath returns the connection URL u with search_path set.
func WithSearchPath(u, schema string) string {
	p, err := url.Parse(u)
	if err != nil {
		panic(err)
	}
	q := p.Query()
	q.Set("search_path", schema)
	p.RawQuery = q.Encode()
	return p.String()
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r + 'a' - 'A'
		}
		return '_'
	}, s)
}
