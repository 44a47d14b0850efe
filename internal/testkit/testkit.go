// Package testkit holds the small helpers that tests of several packages
// share: a buffer that goroutines write while the test reads it, a free
// loopback port, and the rule for a test whose program or privilege is
// missing. Tests only.
package testkit

import (
	"bytes"
	"fmt"
	"net"
	"os"
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

// FreePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
