// Package cluster_test runs three real pouch serve processes on 127.0.0.2,
// .3 and .4, sharing one private PostgreSQL (internal/pgtest), and checks
// what several nodes must keep between them: every delivery arrives once
// whichever node takes it, the maildrop lock holds across nodes, a node
// killed or paused in the middle of a session deletes nothing it should
// not, the database going away leaves nothing half done, and an
// installation moved from Maildir with pouch migrate downloads nothing
// twice in a real client.
//
// Without PostgreSQL the tests skip, unless POUCH_REQUIRE_INTEROP=1.
package cluster_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/pgtest"
)

var pouchBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pouch-cluster-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pouchBin = filepath.Join(dir, "pouch")
	args := []string{"build", "-race", "-o", pouchBin, "../../cmd/pouch"}
	if os.Getenv("POUCH_INTEROP_NORACE") != "" {
		args = []string{"build", "-o", pouchBin, "../../cmd/pouch"}
	}
	build := exec.Command("go", args...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building pouch:", err)
		os.Exit(1)
	}
	code := pgtest.Main(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// The nodes' addresses: three loopback addresses, as three machines.
var nodeIPs = []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}

// password is every test user's.
const password = "correct horse battery staple"

// pouch runs a pouch command to its end and returns its output; it fails
// the test unless the command succeeds.
func pouch(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := pouchErr(stdin, nil, args...)
	if err != nil {
		t.Fatalf("pouch %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// pouchErr runs a pouch command with env added and returns its combined
// output and error.
func pouchErr(stdin string, env []string, args ...string) (string, error) {
	cmd := exec.Command(pouchBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// cluster is a database with Pouch's schema and the nodes serving it.
type cluster struct {
	t     *testing.T
	pg    *pgtest.Cluster
	url   string
	users []string
	nodes []*node
}

// newCluster makes a database with Pouch's schema, and users on it.
func newCluster(t *testing.T, users ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, pg: pgtest.Get(t), users: users}
	c.url = c.pg.Schema(t)
	pouch(t, "", "store", "init", "--store", c.url)
	for _, u := range users {
		pouch(t, password+"\n", "user", "add", "--data", t.TempDir(), "--store", c.url, u)
	}
	return c
}

// node is one running pouch serve.
type node struct {
	t       *testing.T
	name    string
	data    string
	cmd     *exec.Cmd
	pop3    string // its addresses
	lmtp    string
	metrics string
	mu      sync.Mutex
	log     bytes.Buffer
	done    chan struct{}
}

var listenRE = regexp.MustCompile(`msg=listening protocol=(pop3|lmtp|metrics) addr=(\S+)`)

// start runs pouch serve on the i-th address with extra flags, and waits
// until it listens on POP3, LMTP and metrics.
func (c *cluster) start(i int, extra ...string) *node {
	t := c.t
	t.Helper()
	ip := nodeIPs[i]
	n := &node{t: t, name: fmt.Sprintf("node%d", i+1), data: filepath.Join(t.TempDir(), "data"), done: make(chan struct{})}
	if err := os.Mkdir(n.data, 0o700); err != nil {
		t.Fatal(err)
	}
	n.run(append([]string{"--store", c.url, "--pop3", ip + ":0"}, extra...)...)
	c.nodes = append(c.nodes, n)
	return n
}

// run runs pouch serve on n's data directory with args after the fixed
// ones, and waits until it listens on POP3, LMTP and metrics.
func (n *node) run(args ...string) {
	t := n.t
	t.Helper()
	ip, _, _ := strings.Cut(args[slices.Index(args, "--pop3")+1], ":")
	args = append([]string{"serve", "--data", n.data, "--hostname", n.name,
		"--pop3s", "", "--lmtp", ip + ":0", "--metrics", ip + ":0",
		"--auth-fail-delay", "0", "--audit-log", "off"}, args...)
	n.cmd = exec.Command(pouchBin, args...)
	stderr, err := n.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		found := 0
		for sc.Scan() {
			line := sc.Text()
			n.mu.Lock()
			n.log.WriteString(line + "\n")
			if m := listenRE.FindStringSubmatch(line); m != nil {
				switch m[1] {
				case "pop3":
					n.pop3 = m[2]
				case "lmtp":
					n.lmtp = m[2]
				case "metrics":
					n.metrics = m[2]
				}
				if found++; found == 3 {
					close(ready)
				}
			}
			n.mu.Unlock()
		}
		io.Copy(io.Discard, stderr)
		n.cmd.Wait()
		close(n.done)
	}()
	select {
	case <-ready:
	case <-n.done:
		t.Fatalf("%s exited before listening:\n%s", n.name, n.logText())
	case <-time.After(60 * time.Second):
		n.cmd.Process.Kill()
		t.Fatalf("%s did not start:\n%s", n.name, n.logText())
	}
	t.Cleanup(func() {
		n.cmd.Process.Signal(syscall.SIGCONT)
		n.stop()
		if t.Failed() {
			t.Logf("%s's log:\n%s", n.name, n.logText())
		}
	})
}

// startAll starts the three nodes with the same extra flags.
func (c *cluster) startAll(extra ...string) []*node {
	for i := range nodeIPs {
		c.start(i, extra...)
	}
	return c.nodes
}

func (n *node) logText() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.String()
}

// stop ends the node with SIGTERM and waits.
func (n *node) stop() {
	select {
	case <-n.done:
		return
	default:
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(30 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
		n.t.Errorf("%s ignored SIGTERM", n.name)
	}
}

// kill ends the node with SIGKILL, as a crash, and waits.
func (n *node) kill() {
	n.cmd.Process.Kill()
	<-n.done
}

func (n *node) signal(sig syscall.Signal) {
	n.t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		n.t.Fatal(err)
	}
}

// ready asks the node's /readyz.
func (n *node) ready() (bool, string) {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + n.metrics + "/readyz")
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == http.StatusOK, strings.TrimSpace(string(b))
}

// pop is a POP3 connection to a node.
type pop struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func (n *node) dial() *pop {
	n.t.Helper()
	return n.dialFrom("")
}

// dialFrom connects from the local address ip ("" for any) and reads the
// greeting.
func (n *node) dialFrom(ip string) *pop {
	n.t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	if ip != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(ip)}
	}
	c, err := d.Dial("tcp", n.pop3)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { c.Close() })
	p := &pop{t: n.t, conn: c, r: bufio.NewReader(c)}
	p.expect(`\+OK .*`)
	return p
}

func (p *pop) send(line string) {
	p.t.Helper()
	p.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(p.conn, line+"\r\n"); err != nil {
		p.t.Fatal(err)
	}
}

// reply reads one line, or "" and the error.
func (p *pop) reply(wait time.Duration) (string, error) {
	p.conn.SetReadDeadline(time.Now().Add(wait))
	l, err := p.r.ReadString('\n')
	return strings.TrimSuffix(l, "\r\n"), err
}

func (p *pop) expect(pattern string) string {
	p.t.Helper()
	l, err := p.reply(60 * time.Second)
	if err != nil {
		p.t.Fatalf("reading a reply: %v (got %q)", err, l)
	}
	if !regexp.MustCompile("^(?:" + pattern + ")$").MatchString(l) {
		p.t.Fatalf("got %q, want /%s/", l, pattern)
	}
	return l
}

// cmd sends a command and returns its one-line reply.
func (p *pop) cmd(line string) string {
	p.t.Helper()
	p.send(line)
	l, err := p.reply(60 * time.Second)
	if err != nil {
		p.t.Fatalf("%s: %v", line, err)
	}
	return l
}

// login logs user in and returns the reply to PASS.
func (p *pop) login(user string) string {
	p.t.Helper()
	if r := p.cmd("USER " + user); !strings.HasPrefix(r, "+OK") {
		p.t.Fatalf("USER: %s", r)
	}
	return p.cmd("PASS " + password)
}

// multi reads the lines of a multi-line response, dot-unstuffed.
func (p *pop) multi() []string {
	p.t.Helper()
	var out []string
	for {
		l, err := p.reply(60 * time.Second)
		if err != nil {
			p.t.Fatal(err)
		}
		if l == "." {
			return out
		}
		out = append(out, strings.TrimPrefix(l, "."))
	}
}

// uidls lists the maildrop's UIDLs by message number.
func (p *pop) uidls() []string {
	p.t.Helper()
	if r := p.cmd("UIDL"); !strings.HasPrefix(r, "+OK") {
		p.t.Fatalf("UIDL: %s", r)
	}
	var out []string
	for _, l := range p.multi() {
		_, uid, _ := strings.Cut(l, " ")
		out = append(out, uid)
	}
	return out
}

// retr returns message i.
func (p *pop) retr(i int) string {
	p.t.Helper()
	if r := p.cmd(fmt.Sprintf("RETR %d", i)); !strings.HasPrefix(r, "+OK") {
		p.t.Fatalf("RETR %d: %s", i, r)
	}
	return strings.Join(p.multi(), "\n")
}

// session logs user in on n, or fails the test.
func (n *node) session(user string) *pop {
	n.t.Helper()
	p := n.dial()
	if r := p.login(user); !strings.HasPrefix(r, "+OK") {
		n.t.Fatalf("login of %s on %s: %s", user, n.name, r)
	}
	return p
}

// contents logs user in on n, reads every message, and quits.
func (n *node) contents(user string) []string {
	n.t.Helper()
	p := n.session(user)
	count := len(p.uidls())
	var out []string
	for i := 1; i <= count; i++ {
		out = append(out, p.retr(i))
	}
	if r := p.cmd("QUIT"); !strings.HasPrefix(r, "+OK") {
		n.t.Fatalf("QUIT: %s", r)
	}
	return out
}

// deliver sends one message to rcpt over the node's LMTP and returns the
// reply to the end of DATA (or the first refusal).
func (n *node) deliver(rcpt, body string) (string, error) {
	if !strings.Contains(rcpt, "@") {
		rcpt += "@example.org"
	}
	c, err := net.DialTimeout("tcp", n.lmtp, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	read := func() (string, error) {
		var last string
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return l, err
			}
			last = strings.TrimSuffix(l, "\r\n")
			if len(last) < 4 || last[3] != '-' {
				return last, nil
			}
		}
	}
	if l, err := read(); err != nil || !strings.HasPrefix(l, "220") {
		return l, fmt.Errorf("greeting %q: %v", l, err)
	}
	for _, cmd := range []string{"LHLO test.example", "MAIL FROM:<sender@example.org>", "RCPT TO:<" + rcpt + ">", "DATA"} {
		fmt.Fprintf(c, "%s\r\n", cmd)
		l, err := read()
		if err != nil {
			return l, err
		}
		if !strings.HasPrefix(l, "2") && !strings.HasPrefix(l, "3") {
			return l, nil
		}
	}
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
		if strings.HasPrefix(line, ".") {
			b.WriteString(".")
		}
		b.WriteString(line + "\r\n")
	}
	b.WriteString(".\r\n")
	io.WriteString(c, b.String())
	l, err := read()
	fmt.Fprintf(c, "QUIT\r\n")
	return l, err
}

// waitLogin logs user in on n as soon as it can: it tries every 50 ms
// until the login succeeds or limit passes, and returns how long it took.
// Every refusal must be [IN-USE].
func (n *node) waitLogin(user string, limit time.Duration) (*pop, time.Duration) {
	n.t.Helper()
	start := time.Now()
	for {
		p := n.dial()
		r := p.login(user)
		if strings.HasPrefix(r, "+OK") {
			return p, time.Since(start)
		}
		if !strings.HasPrefix(r, "-ERR [IN-USE]") {
			n.t.Fatalf("login on %s while waiting for the lock: %s", n.name, r)
		}
		p.conn.Close()
		if time.Since(start) > limit {
			n.t.Fatalf("%s did not get %s's maildrop within %v", n.name, user, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
