package interop_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pouchserver "github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/server/servertest"
	"github.com/pouchmail/pouch/store/maildir"
)

const fail2banFilter = "../contrib/fail2ban/filter.d/pouch.conf"

// fail2banMatches runs fail2ban-regex over a log and returns how many lines
// the shipped filter matched. It also checks that fail2ban read the time of
// each matched line from the line itself: a line whose time it cannot read
// it would date now, and a ban would then be counted over the wrong window.
func fail2banMatches(t *testing.T, log string) (matched int, output string) {
	t.Helper()
	bin := requireTool(t, "fail2ban-regex")
	// Move the lines to a day long past, keeping the format of their
	// times, so that a time fail2ban does not read (it takes now) cannot
	// pass for the line's.
	log = regexp.MustCompile(`(time=|"time":")\d{4}-\d\d-\d\dT\d\d`).ReplaceAllString(log, "${1}2024-03-05T10")
	path := filepath.Join(t.TempDir(), "pouch.log")
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx(t), bin, "-v", path, fail2banFilter)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fail2ban-regex: %v\n%s", err, out)
	}
	if got, want := fail2banTimes(t, string(out)), logTimes(t, log); !slices.Equal(got, want) {
		t.Fatalf("fail2ban dated the failures %v; the log says %v:\n%s", got, want, out)
	}
	m := regexp.MustCompile(`(?m)^Lines: \d+ lines, \d+ ignored, (\d+) matched`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("fail2ban-regex output not understood:\n%s", out)
	}
	n := 0
	for _, c := range m[1] {
		n = n*10 + int(c-'0')
	}
	return n, string(out)
}

// The failure lines of the real server, in its default text format, match
// the shipped filter, and no other line does.
func TestFail2banTextLog(t *testing.T) {
	requireTool(t, "fail2ban-regex")
	data := newData(t)
	s := startServer(t, data)
	for _, pass := range []string{"wrong", "also wrong"} {
		c := dialPOP3(t, s.addr)
		c.cmd("USER alice", "+OK")
		c.cmd("PASS "+pass, "-ERR [AUTH]")
		c.cmd("QUIT", "+OK")
	}
	c := dialPOP3(t, s.addr)
	c.login("alice", "secret one") // a success, which must not match
	c.cmd("QUIT", "+OK")
	c = dialPOP3(t, s.addr)
	c.cmd("USER nobody", "+OK")
	c.cmd("PASS x", "-ERR [AUTH]")
	c.cmd("QUIT", "+OK")
	s.stop()
	log := s.logText()
	if n := strings.Count(log, `msg="authentication failed"`); n != 3 {
		t.Fatalf("%d failure lines in the log, want 3:\n%s", n, log)
	}
	if got, out := fail2banMatches(t, log); got != 3 {
		t.Fatalf("the filter matched %d lines, want 3:\n%s", got, out)
	}
}

// JSON logs and IPv6 addresses match too.
func TestFail2banJSONLogIPv6(t *testing.T) {
	requireTool(t, "fail2ban-regex")
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	log := &lockedWriter{w: &strings.Builder{}}
	srv := pouchserver.New(pouchserver.Config{
		Store:         maildir.New(t.TempDir()),
		Auth:          servertest.Users{},
		Logger:        slog.New(slog.NewJSONHandler(log, nil)),
		AuthFailDelay: -1,
	})
	go srv.Serve(l)
	for i := 0; i < 2; i++ {
		c := dialPOP3(t, l.Addr().String())
		c.cmd("USER alice", "+OK")
		c.cmd("PASS wrong", "-ERR [AUTH]")
		c.cmd("QUIT", "+OK")
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	text := log.String()
	if !strings.Contains(text, `"ip":"::1"`) {
		t.Fatalf("no IPv6 failure in the log:\n%s", text)
	}
	if got, out := fail2banMatches(t, text); got != 2 {
		t.Fatalf("the filter matched %d lines, want 2:\n%s", got, out)
	}
}

// fail2banTimes returns the times fail2ban-regex -v gave the lines it
// matched ("|      ADDR  Tue Mar 05 09:11:12 2024"), in order.
func fail2banTimes(t *testing.T, out string) []string {
	t.Helper()
	var times []string
	for _, m := range regexp.MustCompile(`(?m)^\|\s+\S+\s+(\w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4})$`).FindAllStringSubmatch(out, -1) {
		at, err := time.Parse("Mon Jan 02 15:04:05 2006", m[1])
		if err != nil {
			t.Fatal(err)
		}
		times = append(times, at.UTC().Format(time.DateTime))
	}
	slices.Sort(times)
	return times
}

// logTimes returns the times of the failure lines of a text or JSON log, to
// the second.
func logTimes(t *testing.T, log string) []string {
	t.Helper()
	var times []string
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "authentication failed") {
			continue
		}
		m := regexp.MustCompile(`^(?:time=|\{"time":")([^" ]+)`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("no time in %q", line)
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			t.Fatal(err)
		}
		times = append(times, at.UTC().Format(time.DateTime))
	}
	slices.Sort(times)
	return times
}

// lockedWriter serializes writes and reads of a log kept in memory.
type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}
