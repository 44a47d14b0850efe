// Package mariadbtest runs a private MariaDB server for the tests of one
// test binary: mariadb-install-db into a temporary directory, mariadbd on a
// free loopback port and a Unix socket in that directory (as the mysql user
// when the tests run as root), stopped and removed when the tests end. Each
// test gets a database and a user of its own in it.
//
// A test binary calls Main from its TestMain; a test calls Get, which starts
// the server the first time it is asked for. Without MariaDB installed
// (Debian's mariadb-server), Get skips the test, or fails it when
// POUCH_REQUIRE_INTEROP=1.
package mariadbtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/pouchmail/pouch/internal/testkit"
)

// Server is a running private MariaDB server.
type Server struct {
	mariadbd string
	dir      string // temporary directory: data/, the socket, the log
	data     string
	socket   string
	port     int
	cred     *syscall.Credential // the mysql user's, when run as root

	daemon *testkit.Daemon
	dbs    atomic.Int64
}

var (
	once     sync.Once
	shared   *Server
	startErr error
)

// Main runs the tests of a binary and stops the server afterwards, if a
// test started it. Call it from TestMain: os.Exit(mariadbtest.Main(m)).
func Main(m *testing.M) int {
	code := m.Run()
	StopShared()
	return code
}

// StopShared stops the server of this test binary and removes it, if a
// test started it: for a TestMain that runs the tests otherwise.
func StopShared() {
	if shared != nil {
		if err := shared.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "mariadbtest: stopping MariaDB:", err)
		}
	}
}

// MissingError says that MariaDB's programs are not installed.
type MissingError struct{ Program string }

func (e *MissingError) Error() string {
	return "MariaDB is not installed (no " + e.Program + "; Debian's mariadb-server has it)"
}

// Get returns this test binary's server, starting it on first use. When
// MariaDB is not installed it skips t, or fails it under
// POUCH_REQUIRE_INTEROP=1; when it cannot start, it fails t.
func Get(t testing.TB) *Server {
	t.Helper()
	once.Do(func() { shared, startErr = Start() })
	var missing *MissingError
	switch {
	case errors.As(startErr, &missing) && os.Getenv("POUCH_REQUIRE_INTEROP") != "1":
		t.Skipf("%v", startErr)
	case startErr != nil:
		t.Fatalf("MariaDB: %v", startErr)
	}
	return shared
}

// look finds a program in PATH or the system directories.
func look(names ...string) (string, error) {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
		for _, d := range []string{"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"} {
			if p := filepath.Join(d, n); isExec(p) {
				return p, nil
			}
		}
	}
	return "", &MissingError{Program: names[0]}
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode()&0o111 != 0
}

// Start creates and starts a server in a new temporary directory.
func Start() (*Server, error) {
	mariadbd, err := look("mariadbd", "mysqld")
	if err != nil {
		return nil, err
	}
	install, err := look("mariadb-install-db", "mysql_install_db")
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pouch-mariadb-")
	if err != nil {
		return nil, err
	}
	s := &Server{mariadbd: mariadbd, dir: dir, data: filepath.Join(dir, "data"), socket: filepath.Join(dir, "mysqld.sock"),
		daemon: &testkit.Daemon{Name: "mariadbd", Log: filepath.Join(dir, "mariadbd.log")}}
	if err := s.init(install); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := s.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// init runs mariadb-install-db.
func (s *Server) init(install string) error {
	if os.Geteuid() == 0 {
		// mariadbd refuses to run as root.
		u, err := user.Lookup("mysql")
		if err != nil {
			return fmt.Errorf("running as root needs the mysql user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(s.dir, uid, gid); err != nil {
			return err
		}
	}
	if err := os.Mkdir(s.data, 0o700); err != nil {
		return err
	}
	if s.cred != nil {
		if err := os.Chown(s.data, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return err
		}
	}
	port, err := testkit.Port()
	if err != nil {
		return err
	}
	s.port = port
	cmd := s.command(install, "--no-defaults", "--datadir="+s.data, "--auth-root-authentication-method=normal",
		"--skip-test-db", "--skip-name-resolve")
	if s.cred != nil {
		cmd.Args = append(cmd.Args, "--user=mysql")
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v\n%s", filepath.Base(install), err, out)
	}
	return nil
}

// command prepares one of MariaDB's programs, run as the mysql user when
// the tests run as root.
func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = s.dir
	cmd.Env = []string{"LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + s.dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	return cmd
}

// Start starts the server (again, after Stop) and waits until it accepts
// connections. mariadbd is this process's child and dies with it.
func (s *Server) Start() error {
	cmd := s.command(s.mariadbd, "--no-defaults", "--datadir="+s.data, "--socket="+s.socket,
		"--port="+strconv.Itoa(s.port), "--bind-address=127.0.0.1", "--skip-name-resolve",
		"--pid-file="+filepath.Join(s.dir, "mariadbd.pid"), "--innodb-buffer-pool-size=16M",
		"--skip-log-bin", "--innodb-flush-log-at-trx-commit=2")
	if s.cred != nil {
		cmd.Args = append(cmd.Args, "--user=mysql")
	}
	return s.daemon.Start(cmd, time.Minute, func() error {
		db, err := s.root()
		if err != nil {
			return err
		}
		defer db.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return db.PingContext(ctx)
	})
}

// root connects as MariaDB's root user over the socket.
func (s *Server) root() (*sql.DB, error) {
	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr = "root", "unix", s.socket
	cfg.Logger = &mysql.NopLogger{}
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	return sql.OpenDB(c), nil
}

// Stop stops the server: SIGTERM, a clean shutdown.
func (s *Server) Stop() error { return s.daemon.Stop(syscall.SIGTERM, time.Minute) }

// Crash kills the server with SIGKILL, as a power cut looks to clients.
func (s *Server) Crash() error { return s.daemon.Stop(syscall.SIGKILL, time.Minute) }

// Close stops the server and removes its directory.
func (s *Server) Close() error {
	err := s.Stop()
	if rerr := os.RemoveAll(s.dir); err == nil {
		err = rerr
	}
	return err
}

// Port is the server's TCP port on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// Database is a database of one test, and a user who may use only it.
type Database struct {
	Name, User, Password string
	// DSN connects as User over TCP, in go-sql-driver/mysql's form.
	DSN string
	// URL is the same as a mysql:// URL.
	URL string
	// Root connects as MariaDB's root user to the database, for setting
	// it up.
	Root *sql.DB
}

// Database creates a database and a user for t, both dropped when t ends.
func (s *Server) Database(t testing.TB) *Database {
	t.Helper()
	n := s.dbs.Add(1)
	d := &Database{Name: fmt.Sprintf("t%d", n), User: fmt.Sprintf("u%d", n), Password: fmt.Sprintf("pw-%d-secret", n)}
	root, err := s.root()
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	for _, q := range []string{
		"CREATE DATABASE " + d.Name + " CHARACTER SET utf8mb4",
		fmt.Sprintf("CREATE USER '%s'@'127.0.0.1' IDENTIFIED BY '%s'", d.User, d.Password),
		fmt.Sprintf("GRANT SELECT ON %s.* TO '%s'@'127.0.0.1'", d.Name, d.User),
	} {
		if _, err := root.Exec(q); err != nil {
			t.Fatalf("mariadbtest: %s: %v", q, err)
		}
	}
	cfg := mysql.NewConfig()
	cfg.User, cfg.Net, cfg.Addr, cfg.DBName, cfg.MultiStatements = "root", "unix", s.socket, d.Name, true
	cfg.Logger = &mysql.NopLogger{}
	c, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.Root = sql.OpenDB(c)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	d.DSN = fmt.Sprintf("%s:%s@tcp(%s)/%s", d.User, d.Password, addr, d.Name)
	d.URL = fmt.Sprintf("mysql://%s:%s@%s/%s", d.User, d.Password, addr, d.Name)
	t.Cleanup(func() {
		d.Root.Close()
		if root, err := s.root(); err == nil {
			root.Exec("DROP DATABASE IF EXISTS " + d.Name)
			root.Exec(fmt.Sprintf("DROP USER IF EXISTS '%s'@'127.0.0.1'", d.User))
			root.Close()
		}
	})
	return d
}
