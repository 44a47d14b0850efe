// Package testkit holds the small helpers that tests of several packages
// share: a buffer that goroutines write while the test reads it, a free
// loopback port, and the rule for a test whose program or privilege is
// missing. Tests only.
package testkit

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// SyncBuffer is a bytes.Buffer that goroutines (a logger, a server) write
// while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// RequireEnv is the environment variable that turns SkipOrFail's skips
// into failures, as CI sets it where every program is installed.
const RequireEnv = "POUCH_REQUIRE_INTEROP"

// SkipOrFail skips the test with why, a one-line reason (a program from
// Debian's packages or root is missing), or fails it when
// POUCH_REQUIRE_INTEROP=1.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	why := fmt.Sprintf(format, args...)
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s (%s=1)", why, RequireEnv)
	}
	t.Skip(why)
}

// FreePort returns a TCP port of 127.0.0.1 that nothing listens on now,
// for a program the test starts (Dovecot, Postfix, PostgreSQL) to listen on;
// see Port.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := Port()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Port returns a TCP port of 127.0.0.1 that nothing listens on now. It is
// drawn from below the kernel's range of ephemeral ports, which a listener
// on port 0 or a connection gets its port from: so no other test can be
// given it in the moment before the program the port is for binds it.
func Port() (int, error) {
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 2*portFloor {
				lo = n
			}
		}
	}
	var err error
	for range 100 {
		p := portFloor + rand.IntN(lo-portFloor)
		var l net.Listener
		if l, err = net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p)); err == nil {
			l.Close()
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free port below %d: %w", lo, err)
}

// portFloor is the lowest port Port gives: above the well-known and the
// commonly registered ports.
const portFloor = 10000
