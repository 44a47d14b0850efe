package server

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pouchmail/pouch/guard"
)

// TestAttack: attackers on eight loopback addresses send thousands of wrong
// passwords while a real user on 127.0.0.1 keeps logging in and downloading.
// Every real session must succeed; every attacker must be slowed, then
// banned and refused at connect.
func TestAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("attack test skipped in -short mode")
	}
	g, err := guard.New(guard.Config{MaxFailures: 10, DelayStep: 10 * time.Millisecond, MaxDelay: 80 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, func(c *Config) {
		c.Guard = g
		c.MaxConnectionsPerIP = 4
	})
	ts.deliver(t, "alice", msg1, msg2)

	const attackers, attemptsEach = 8, 400
	type result struct {
		wrongAnswers int           // -ERR [AUTH] replies received
		refused      int           // connections refused as banned
		firstDelay   time.Duration // time of the first failure's answer
		lastDelay    time.Duration // and of the last before the ban
	}
	results := make([]result, attackers)
	var wg sync.WaitGroup
	stopLegit := make(chan struct{})
	var legitOK, legitFail atomic.Int64

	// The real user, on a clean address, all through the attack.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stopLegit:
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

	var attackWG sync.WaitGroup
	for a := 0; a < attackers; a++ {
		attackWG.Add(1)
		go func() {
			defer attackWG.Done()
			ip := fmt.Sprintf("127.0.0.%d", a+2)
			r := &results[a]
			for i := 0; i < attemptsEach; i++ {
				refused, d, err := attack(ts.addr, ip, fmt.Sprintf("guess-%d", i))
				switch {
				case err != nil:
					t.Errorf("attacker %s: %v", ip, err)
					return
				case refused:
					r.refused++
				default:
					if r.wrongAnswers == 0 {
						r.firstDelay = d
					}
					r.wrongAnswers++
					r.lastDelay = d
				}
			}
		}()
	}
	attackWG.Wait()
	close(stopLegit)
	wg.Wait()

	total := 0
	for a, r := range results {
		total += r.wrongAnswers + r.refused
		if r.wrongAnswers > 10 {
			t.Errorf("attacker %d got %d password checks; the ban comes after 10", a, r.wrongAnswers)
		}
		if r.refused == 0 {
			t.Errorf("attacker %d was never refused at connect", a)
		}
		if r.lastDelay < 60*time.Millisecond || r.lastDelay <= r.firstDelay {
			t.Errorf("attacker %d was not slowed down: first answer after %v, last after %v", a, r.firstDelay, r.lastDelay)
		}
	}
	if legitOK.Load() < 5 || legitFail.Load() != 0 {
		t.Errorf("legitimate sessions: %d succeeded, %d failed", legitOK.Load(), legitFail.Load())
	}
	t.Logf("%d attack attempts by %d addresses; %d legitimate sessions, all complete", total, attackers, legitOK.Load())
}

// attack makes one login attempt from ip; it reports whether the connection
// was refused as banned, and how long the wrong password took to answer.
func attack(addr, ip, guess string) (refused bool, took time.Duration, err error) {
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
	fmt.Fprintf(c, "USER alice\r\nPASS %s\r\n", guess)
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
	fmt.Fprint(c, "USER alice\r\nPASS secret\r\nRETR 1\r\nRETR 2\r\nQUIT\r\n")
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
