package server

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pouchmail/pouch/audit"
	"github.com/pouchmail/pouch/guard"
)

// guessAuth is alice's account, which counts the passwords checked per
// attacking source (named in each guess) and notes any checked while its
// source was banned.
type guessAuth struct {
	fakeAuth
	g *guard.Guard

	mu          sync.Mutex
	checks      map[string]int
	whileBanned map[string]int
}

func (a *guessAuth) Verify(user, password string) bool {
	if ip, ok := strings.CutPrefix(password, "from-"); ok {
		ip, _, _ = strings.Cut(ip, "/")
		_, banned := a.g.Banned(netip.MustParseAddr(ip))
		a.mu.Lock()
		a.checks[ip]++
		if banned {
			a.whileBanned[ip]++
		}
		a.mu.Unlock()
	}
	return a.fakeAuth.Verify(user, password)
}

func (a *guessAuth) count(ip string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.checks[ip]
}

// TestAttack: attackers send wrong passwords, some one connection at a time
// for one name, some spraying many names over many parallel connections
// with pipelined commands, while a real user on 127.0.0.1 keeps logging in
// and downloading. Every real session must succeed. The attackers on one
// name must be slowed, then refused for that name, then banned and refused
// at connect; the sprayers get no more passwords checked than the names
// that ban them, however many connections they open. No attacker's password
// is checked while it is banned, and each ban of a source comes after the
// one before ended and lasts twice as long.
func TestAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("attack test skipped in -short mode")
	}
	const (
		maxFailures = 10
		banTime     = 300 * time.Millisecond
	)
	g, err := guard.New(guard.Config{MaxFailures: maxFailures, DelayStep: 10 * time.Millisecond, MaxDelay: 80 * time.Millisecond, BanTime: banTime})
	if err != nil {
		t.Fatal(err)
	}
	auditPath := filepath.Join(t.TempDir(), "audit.log")
	al, err := audit.Open(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	auth := &guessAuth{
		fakeAuth:    fakeAuth{users: map[string]string{"alice": goodPassword}},
		g:           g,
		checks:      make(map[string]int),
		whileBanned: make(map[string]int),
	}
	ts := newTestServer(t, func(c *Config) {
		c.Guard, c.Auth, c.Audit = g, auth, al
		c.MaxConnectionsPerIP = 16
	})
	ts.deliver(t, "alice", msg1, msg2)

	var wg sync.WaitGroup
	stop := make(chan struct{})
	var legitOK, legitFail atomic.Int64

	// The real user, on a clean address, all through the attack.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := legitSession(ts.addr); err != nil {
				legitFail.Add(1)
				t.Errorf("legitimate session failed: %v", err)
				return
			}
			legitOK.Add(1)
		}
	}()

	// Attackers one connection at a time, each on one name, until the
	// others are done and each was refused at connect once.
	targets := []string{"alice", "postmaster", "admin", "info"}
	type result struct {
		wrongAnswers int           // -ERR [AUTH] replies received
		refused      int           // connections refused as banned
		firstDelay   time.Duration // time of the first failure's answer
		lastDelay    time.Duration // and of the slowest before a ban
		banned       chan struct{} // closed at the first refusal
	}
	results := make([]result, len(targets))
	for a, user := range targets {
		results[a].banned = make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			ip := fmt.Sprintf("127.0.0.%d", a+2)
			r := &results[a]
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				refused, d, err := attack(ts.addr, ip, user, fmt.Sprintf("from-%s/%d", ip, i))
				switch {
				case err != nil:
					t.Errorf("attacker %s: %v", ip, err)
					close(r.banned)
					return
				case refused:
					if r.refused++; r.refused == 1 {
						close(r.banned)
					}
				default:
					if r.wrongAnswers == 0 {
						r.firstDelay = d
					}
					r.wrongAnswers++
					r.lastDelay = max(r.lastDelay, d)
				}
			}
		}()
	}

	// Attackers with 12 connections at once, 5 pipelined attempts on each,
	// each for another name, in three bursts, each after the ban of the one
	// before ended.
	const parallel, bursts = 4, 3
	var attackWG sync.WaitGroup
	for a := range parallel {
		attackWG.Add(1)
		go func() {
			defer attackWG.Done()
			ip := fmt.Sprintf("127.0.0.%d", a+20)
			for b := 1; b <= bursts; b++ {
				before := auth.count(ip)
				authAt, _ := sprayFrom(t, ts.addr, ip, 12, 5)
				if n := auth.count(ip) - before; n != maxFailures || len(authAt) != maxFailures {
					t.Errorf("burst %d from %s: %d passwords checked, %d answered; want %d", b, ip, n, len(authAt), maxFailures)
					return
				}
				ban, banned := g.Banned(netip.MustParseAddr(ip))
				if !banned || ban.Count != b || ban.Until.Sub(ban.Since) != banTime<<(b-1) || !strings.Contains(ban.Reason, "user names") {
					t.Errorf("after burst %d from %s: ban %+v, want ban number %d of %v", b, ip, ban, b, banTime<<(b-1))
					return
				}
				if b < bursts {
					waitUnbanned(t, g, ip)
				}
			}
		}()
	}
	attackWG.Wait()
	for i := range results {
		<-results[i].banned // not a copy: the attackers still write the rest
	}
	close(stop)
	wg.Wait()

	total := 0
	for a, r := range results {
		total += r.wrongAnswers + r.refused
		if r.refused == 0 {
			t.Errorf("attacker %d was never refused at connect", a)
		}
		if r.lastDelay < 60*time.Millisecond || r.lastDelay <= r.firstDelay {
			t.Errorf("attacker %d was not slowed down: first answer after %v, slowest after %v", a, r.firstDelay, r.lastDelay)
		}
	}
	auth.mu.Lock()
	for ip, n := range auth.whileBanned {
		t.Errorf("%d passwords of %s checked while it was banned", n, ip)
	}
	checks := 0
	for _, n := range auth.checks {
		checks += n
	}
	auth.mu.Unlock()
	// Each ban of a source begins after the one before ended.
	bans := auditEvents(t, auditPath, "ban")
	lastUntil := map[string]time.Time{}
	for _, e := range bans {
		at, _ := time.Parse(time.RFC3339Nano, e["time"].(string))
		until, _ := time.Parse(time.RFC3339Nano, e["until"].(string))
		net := e["net"].(string)
		if at.Before(lastUntil[net]) {
			t.Errorf("%s banned again at %v, during its ban until %v", net, at, lastUntil[net])
		}
		lastUntil[net] = until
	}
	if legitOK.Load() < 5 || legitFail.Load() != 0 {
		t.Errorf("legitimate sessions: %d succeeded, %d failed", legitOK.Load(), legitFail.Load())
	}
	t.Logf("%d connections of serial attackers and %d bursts of parallel ones; %d attacker passwords checked, %d bans; %d legitimate sessions, all complete",
		total, parallel*bursts, checks, len(bans), legitOK.Load())
}

// sprayFrom is burst with a user name for each guess, and guesses that
// name their source.
func sprayFrom(t *testing.T, addr, ip string, n, pairs int) (authAt []time.Duration, banned int) {
	return burstWith(t, addr, ip, n, pairs, func(i, j int) (string, string) {
		return fmt.Sprintf("name%d-%d", i, j), fmt.Sprintf("from-%s/%d-%d", ip, i, j)
	})
}

// waitUnbanned waits until ip's ban ends.
func waitUnbanned(t *testing.T, g *guard.Guard, ip string) {
	t.Helper()
	b, banned := g.Banned(netip.MustParseAddr(ip))
	if !banned {
		return
	}
	time.Sleep(time.Until(b.Until))
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if _, banned := g.Banned(netip.MustParseAddr(ip)); !banned {
			return
		}
	}
	t.Fatalf("%s still banned after its ban's end %v", ip, b.Until)
}

// attack makes one login attempt as user from ip; it reports whether the
// connection was refused as banned, and how long the wrong password took to
// answer.
func attack(addr, ip, user, guess string) (refused bool, took time.Duration, err error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return false, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	greeting, err := r.ReadString('\n')
	if err != nil {
		return false, 0, fmt.Errorf("greeting: %v", err)
	}
	if strings.HasPrefix(greeting, "-ERR [SYS/TEMP] too many failed logins") {
		return true, 0, nil
	}
	if strings.HasPrefix(greeting, "-ERR [SYS/TEMP] too many connections") {
		return false, 0, fmt.Errorf("refused for connections, not banned: %q", greeting)
	}
	start := time.Now()
	fmt.Fprintf(c, "USER %s\r\nPASS %s\r\n", user, guess)
	r.ReadString('\n')
	reply, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(reply, "-ERR [AUTH]") {
		return false, 0, fmt.Errorf("PASS answered %q, %v", reply, err)
	}
	return false, time.Since(start), nil
}

// legitSession logs in as alice from 127.0.0.1, downloads both messages and
// quits without deleting.
func legitSession(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	fmt.Fprint(c, "USER alice\r\nPASS "+goodPassword+"\r\nRETR 1\r\nRETR 2\r\nQUIT\r\n")
	var lines []string
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			break
		}
		lines = append(lines, strings.TrimSuffix(l, "\r\n"))
	}
	out := strings.Join(lines, "\n")
	if !strings.Contains(out, "+OK maildrop has 2 messages") || strings.Count(out, "\n.\n") != 2 || !strings.HasSuffix(out, "signing off (2 messages left)") {
		return fmt.Errorf("session transcript:\n%s", out)
	}
	return nil
}
