// Package loadgen is a POP3 load generator (pouch bench): concurrent clients
// logging in as users from a list, running one of a few session mixes over
// plaintext or TLS, with or without pipelining, and measuring sessions,
// messages and octets per second and the latency of every command. Every
// message downloaded is checked against its LIST size. A share of the logins
// can send a mistyped password, to measure what honest typos cost the
// correct logins that run beside them.
//
// It speaks POP3 with the pop3 codec directly, so that it times each command
// from the moment it is sent to the end of its response.
package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pouchmail/pouch/pop3"
)

// Mix is what a session does after it connects.
type Mix string

const (
	// MixLogin logs in and quits.
	MixLogin Mix = "login"
	// MixFull logs in, runs STAT, LIST and UIDL, retrieves every message and
	// quits without deleting anything.
	MixFull Mix = "full"
	// MixTop logs in, runs LIST and "TOP n 0" for every message, and quits.
	MixTop Mix = "top"
	// MixUIDL logs in, runs UIDL and quits.
	MixUIDL Mix = "uidl"
	// MixIdle logs in and stays idle until the run ends, then quits.
	MixIdle Mix = "idle"
)

// TLS modes.
const (
	TLSNone     = "none"
	TLSImplicit = "implicit"
	TLSStartTLS = "starttls"
)

// Cred is one user's name and password.
type Cred struct{ User, Password string }

// Config describes a run. Zero values take the defaults.
type Config struct {
	Addr    string // host:port
	Users   []Cred
	Clients int // concurrent sessions (1)
	Mix     Mix // MixFull
	// Duration bounds the run; Sessions bounds the number of sessions
	// started, shared out in turn: client i runs sessions i, i+C, i+2C…
	// below Sessions (C clients), whatever the others' speed, so that with
	// Sessions = len(Users) ≥ C every user logs in exactly once. With
	// neither, each client runs one session.
	Duration time.Duration
	Sessions int64
	TLS      string      // TLSNone, TLSImplicit or TLSStartTLS
	TLSConf  *tls.Config // for TLS; nil: no certificate verification
	Pipeline bool        // pipeline RETR and TOP commands (window of PipelineDepth)
	// PipelineDepth is the most commands in flight when pipelining (16).
	PipelineDepth int
	Timeout       time.Duration // per network wait (60 s)
	// Probe, if set, is held open by one more session, logged in as the
	// last user (which the clients then leave alone), sending NOOP every interval while the run lasts: the NOOP
	// latency under load.
	Probe time.Duration
	// Ready, if set, receives one line when every idle session (MixIdle) is
	// logged in.
	Ready io.Writer
	// WrongPasswordRate is the fraction of sessions, drawn at random for
	// each one, that log in with a mistyped password (the user's own with
	// one character changed), expect -ERR and quit. Their PASS latency is
	// recorded as "PASS-wrong", apart from the correct logins' "PASS".
	WrongPasswordRate float64
	// Dial opens connections (net.Dialer by default).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Report is the result of a run.
type Report struct {
	Elapsed  time.Duration
	Sessions int64 // completed without error
	Failed   int64
	Messages int64 // retrieved (RETR) or scanned (TOP)
	Bytes    int64 // message octets received, after dot-unstuffing
	Errors   map[string]int64
	Commands map[string]*Histogram // per command, "CONNECT" for connect+TLS+greeting
	Session  *Histogram            // whole sessions
	Probe    *Histogram            // NOOP of the probe session, if any
	Peak     int64                 // most sessions open at once
	// CorrectRefused counts the sessions with the right password that did
	// not get in: the connection, the greeting, USER or PASS failed (an
	// -ERR, a closed connection, a timeout) while the run went on. Each is
	// also among Failed.
	CorrectRefused int64
	// Logins with a mistyped password (Config.WrongPasswordRate) that were
	// refused, as they should be, and that were let in, which is also a
	// failure. Neither counts among Sessions.
	WrongRefused, WrongAccepted int64
}

// PASSWrong is the key in Report.Commands of the latency of PASS commands
// that carried a mistyped password.
const PASSWrong = "PASS-wrong"

// worker state shared by one run.
type run struct {
	cfg      Config
	open     atomic.Int64
	peak     atomic.Int64
	loggedIn atomic.Int64
	mu       sync.Mutex
	rep      Report
}

// Run runs the load described by cfg until ctx is done, the duration has
// passed or the sessions are used up.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Addr == "" {
		return nil, errors.New("loadgen: no server address")
	}
	if len(cfg.Users) == 0 {
		return nil, errors.New("loadgen: no users")
	}
	if cfg.Clients <= 0 {
		cfg.Clients = 1
	}
	if cfg.Mix == "" {
		cfg.Mix = MixFull
	}
	switch cfg.Mix {
	case MixLogin, MixFull, MixTop, MixUIDL, MixIdle:
	default:
		return nil, fmt.Errorf("loadgen: unknown mix %q (login, full, top, uidl, idle)", cfg.Mix)
	}
	switch cfg.TLS {
	case "":
		cfg.TLS = TLSNone
	case TLSNone, TLSImplicit, TLSStartTLS:
	default:
		return nil, fmt.Errorf("loadgen: unknown TLS mode %q (none, implicit, starttls)", cfg.TLS)
	}
	if cfg.TLSConf == nil {
		cfg.TLSConf = &tls.Config{InsecureSkipVerify: true}
	}
	if cfg.PipelineDepth <= 0 {
		cfg.PipelineDepth = 16
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.WrongPasswordRate < 0 || cfg.WrongPasswordRate > 1 || cfg.WrongPasswordRate != cfg.WrongPasswordRate {
		return nil, fmt.Errorf("loadgen: wrong password rate %v is not a fraction from 0 to 1", cfg.WrongPasswordRate)
	}
	if cfg.WrongPasswordRate > 0 && cfg.Mix == MixIdle {
		return nil, errors.New("loadgen: the idle mix logs in once per client; it takes no wrong passwords")
	}
	if cfg.Dial == nil {
		d := &net.Dialer{}
		cfg.Dial = d.DialContext
	}
	if cfg.Duration <= 0 && cfg.Sessions <= 0 {
		cfg.Sessions = int64(cfg.Clients)
		if cfg.Mix == MixIdle {
			return nil, errors.New("loadgen: the idle mix needs a duration")
		}
	}
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	probeUser := cfg.Users[len(cfg.Users)-1]
	if cfg.Probe > 0 {
		if len(cfg.Users) < 2 {
			return nil, errors.New("loadgen: the probe needs a user of its own")
		}
		cfg.Users = cfg.Users[:len(cfg.Users)-1]
	}
	r := &run{cfg: cfg}
	r.rep = Report{Errors: map[string]int64{}, Commands: map[string]*Histogram{}, Session: &Histogram{}}

	var probeDone chan *Histogram
	probeCtx, stopProbe := context.WithCancel(context.Background())
	defer stopProbe()
	if cfg.Probe > 0 {
		probeDone = make(chan *Histogram, 1)
		ready := make(chan error, 1)
		go func() { probeDone <- r.probe(probeCtx, probeUser, ready) }()
		if err := <-ready; err != nil {
			return nil, fmt.Errorf("loadgen: probe session: %w", err)
		}
	}

	start := time.Now()
	var wg sync.WaitGroup
	for i := range cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.client(ctx, i)
		}()
	}
	wg.Wait()
	r.rep.Elapsed = time.Since(start)
	stopProbe()
	if probeDone != nil {
		r.rep.Probe = <-probeDone
	}
	r.rep.Peak = r.peak.Load()
	return &r.rep, nil
}

// client runs sessions one after another. Client i uses users i, i+C, i+2C…
// (C clients) so that no two clients share a maildrop while there are at
// least as many users as clients.
func (r *run) client(ctx context.Context, i int) {
	users := r.cfg.Users
	local := map[string]*Histogram{}
	sess := &Histogram{}
	defer func() {
		r.mu.Lock()
		for k, h := range local {
			if r.rep.Commands[k] == nil {
				r.rep.Commands[k] = &Histogram{}
			}
			r.rep.Commands[k].Merge(h)
		}
		r.rep.Session.Merge(sess)
		r.mu.Unlock()
	}()
	for k := 0; ctx.Err() == nil; k++ {
		if r.cfg.Sessions > 0 && int64(k)*int64(r.cfg.Clients)+int64(i) >= r.cfg.Sessions {
			return
		}
		u := users[userIndex(i, k, r.cfg.Clients, len(users))]
		wrong := r.cfg.WrongPasswordRate > 0 && rand.Float64() < r.cfg.WrongPasswordRate
		t0 := time.Now()
		st, err := r.session(ctx, u, wrong, local)
		if err != nil {
			if ended(ctx) && (r.cfg.Mix == MixIdle || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || isClosed(err)) {
				return // the run ended mid-session
			}
			r.mu.Lock()
			r.rep.Failed++
			r.rep.Errors[errKey(err)]++
			switch {
			case st.wrongAccepted:
				r.rep.WrongAccepted++
			case !wrong && !st.loggedIn:
				r.rep.CorrectRefused++
			}
			r.mu.Unlock()
			if r.cfg.Mix == MixIdle {
				return // one idle session per client
			}
			continue
		}
		if wrong {
			r.mu.Lock()
			r.rep.WrongRefused++
			r.mu.Unlock()
			continue
		}
		sess.Record(time.Since(t0))
		r.mu.Lock()
		r.rep.Sessions++
		r.rep.Messages += st.messages
		r.rep.Bytes += st.bytes
		r.mu.Unlock()
		if r.cfg.Mix == MixIdle {
			return
		}
	}
}

// userIndex is the user of client i's k-th session among n users and c
// clients: client i cycles through users i, i+c, i+2c… below n, so no two
// clients share a user when n ≥ c.
func userIndex(i, k, c, n int) int {
	if n < c {
		return (i + k*c) % n
	}
	own := (n - i + c - 1) / c // users j < n with j % c == i
	return i + (k%own)*c
}

// ended reports whether the run is over. A dial or read bounded by the run's
// deadline can fail a moment before ctx itself reports it.
func ended(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

func isClosed(err error) bool {
	var ne net.Error
	return errors.Is(err, net.ErrClosed) || errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

// errKey shortens an error for the report's error table.
func errKey(err error) string {
	s := err.Error()
	if i := strings.Index(s, "127.0.0.1:"); i >= 0 { // drop the port numbers
		s = s[:i] + "ADDR" + strings.TrimLeft(s[i+10:], "0123456789")
	}
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}

type stats struct {
	messages, bytes int64
	// loggedIn: PASS got its +OK; wrongAccepted: it did for a mistyped
	// password.
	loggedIn, wrongAccepted bool
}

// conn is one client connection.
type conn struct {
	r    *run
	nc   net.Conn
	rd   *pop3.Reader
	w    *pop3.Writer
	hist map[string]*Histogram
}

func (c *conn) record(name string, d time.Duration) {
	h := c.hist[name]
	if h == nil {
		h = &Histogram{}
		c.hist[name] = h
	}
	h.Record(d)
}

func (c *conn) deadline() { c.nc.SetDeadline(time.Now().Add(c.r.cfg.Timeout)) }

// send writes a command without flushing.
func (c *conn) send(name string, args ...string) error {
	return pop3.WriteCommand(c.w, name, args...)
}

// reply reads a status line and fails on -ERR.
func (c *conn) reply(name string) (pop3.Reply, error) {
	c.deadline()
	rep, err := c.rd.ReadReply(64 << 10)
	if err != nil {
		return rep, fmt.Errorf("%s: %w", name, err)
	}
	if !rep.OK {
		return rep, fmt.Errorf("%s: -ERR %s", name, rep.Text)
	}
	return rep, nil
}

// cmd sends a command, waits for its status line and records its latency.
func (c *conn) cmd(name string, args ...string) (pop3.Reply, error) {
	t := time.Now()
	if err := c.send(name, args...); err != nil {
		return pop3.Reply{}, err
	}
	c.deadline()
	if err := c.w.Flush(); err != nil {
		return pop3.Reply{}, fmt.Errorf("%s: %w", name, err)
	}
	rep, err := c.reply(name)
	if err == nil {
		c.record(name, time.Since(t))
	}
	return rep, err
}

// lines reads the lines of a multi-line listing.
func (c *conn) lines(name string, each func(line []byte) error) error {
	for {
		c.deadline()
		l, err := c.rd.ReadLine(64 << 10)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if len(l) == 1 && l[0] == '.' {
			return nil
		}
		if len(l) > 0 && l[0] == '.' {
			l = l[1:]
		}
		if err := each(l); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
}

// multi runs a command with a multi-line answer, timing it to its end.
func (c *conn) multi(name string, each func(line []byte) error, args ...string) error {
	t := time.Now()
	if err := c.send(name, args...); err != nil {
		return err
	}
	c.deadline()
	if err := c.w.Flush(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := c.reply(name); err != nil {
		return err
	}
	if err := c.lines(name, each); err != nil {
		return err
	}
	c.record(name, time.Since(t))
	return nil
}

// body reads a dot-stuffed body and returns its length.
func (c *conn) body(buf []byte) (int64, error) {
	dr := c.rd.DotReader()
	var n int64
	for {
		c.deadline()
		m, err := dr.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

func (r *run) dial(ctx context.Context, hist map[string]*Histogram) (*conn, error) {
	t := time.Now()
	dctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	nc, err := r.cfg.Dial(dctx, "tcp", r.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	if r.cfg.TLS == TLSImplicit {
		tc := tls.Client(nc, r.tlsConfig())
		if err := tc.HandshakeContext(dctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		nc = tc
	}
	c := &conn{r: r, nc: nc, rd: newReader(nc), w: pop3.NewWriter(nc), hist: hist}
	if _, err := c.reply("greeting"); err != nil {
		nc.Close()
		return nil, err
	}
	if r.cfg.TLS == TLSStartTLS {
		if _, err := c.cmd("STLS"); err != nil {
			nc.Close()
			return nil, err
		}
		tc := tls.Client(nc, r.tlsConfig())
		if err := tc.HandshakeContext(dctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		c.nc, c.rd, c.w = tc, newReader(tc), pop3.NewWriter(tc)
	}
	c.record("CONNECT", time.Since(t))
	return c, nil
}

// newReader reads through a 64 KiB buffer, so that large bodies take few
// system calls (pop3.NewReader's buffer is 4 KiB).
func newReader(nc net.Conn) *pop3.Reader {
	return pop3.NewReaderSize(nc, 64<<10)
}

func (r *run) tlsConfig() *tls.Config {
	cfg := r.cfg.TLSConf.Clone()
	if cfg.ServerName == "" && !cfg.InsecureSkipVerify {
		host, _, _ := net.SplitHostPort(r.cfg.Addr)
		cfg.ServerName = host
	}
	return cfg
}

// login sends USER and PASS with u's password, or with a typo of it when
// wrong, and records PASS's latency: under "PASS" when the right password
// got +OK, under PASSWrong when a mistyped one got -ERR. Anything else is an
// error; ok reports whether PASS got +OK.
func (c *conn) login(u Cred, wrong bool) (ok bool, err error) {
	if _, err := c.cmd("USER", u.User); err != nil {
		return false, err
	}
	pw, key := u.Password, "PASS"
	if wrong {
		pw, key = typo(u.Password), PASSWrong
	}
	t := time.Now()
	if err := c.w.Line("PASS " + pw); err != nil {
		return false, fmt.Errorf("PASS: %w", err)
	}
	c.deadline()
	if err := c.w.Flush(); err != nil {
		return false, fmt.Errorf("PASS: %w", err)
	}
	rep, err := c.rd.ReadReply(64 << 10)
	if err != nil {
		return false, fmt.Errorf("login as %s: PASS: %w", u.User, err)
	}
	switch {
	case wrong && rep.OK:
		return true, fmt.Errorf("login as %s: PASS: +OK to a mistyped password", u.User)
	case !wrong && !rep.OK:
		return false, fmt.Errorf("login as %s: PASS: -ERR %s", u.User, rep.Text)
	}
	c.record(key, time.Since(t))
	return rep.OK, nil
}

// typo returns pw with one character, chosen at random, replaced by another
// letter or digit: a password that differs from pw but looks like it.
func typo(pw string) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	r := []rune(pw)
	if len(r) == 0 {
		return string(alphabet[rand.IntN(len(alphabet))])
	}
	i := rand.IntN(len(r))
	for {
		if c := rune(alphabet[rand.IntN(len(alphabet))]); c != r[i] {
			r[i] = c
			return string(r)
		}
	}
}

var bufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// session runs one session of the configured mix, or, when wrong, one that
// logs in with a mistyped password and quits once it is refused.
func (r *run) session(ctx context.Context, u Cred, wrong bool, hist map[string]*Histogram) (st stats, err error) {
	c, err := r.dial(ctx, hist)
	if err != nil {
		return st, err
	}
	defer c.nc.Close()
	n := r.open.Add(1)
	defer r.open.Add(-1)
	for p := r.peak.Load(); n > p && !r.peak.CompareAndSwap(p, n); p = r.peak.Load() {
	}
	// Cancelling the run interrupts any wait.
	var mu sync.Mutex
	quitting := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !quitting {
			c.nc.SetDeadline(time.Unix(1, 0))
		}
	})
	defer stop()
	ok, err := c.login(u, wrong)
	st.loggedIn, st.wrongAccepted = ok, ok && wrong
	if err != nil {
		return st, err
	}
	if wrong {
		// Refused as it should be: a client would ask its user again; this
		// one leaves (a server may close the connection after a failure,
		// so QUIT's answer does not matter).
		c.cmd("QUIT")
		return st, nil
	}
	switch r.cfg.Mix {
	case MixFull:
		if _, err := c.cmd("STAT"); err != nil {
			return st, err
		}
		sizes, err := c.list()
		if err != nil {
			return st, err
		}
		if err := c.multi("UIDL", func([]byte) error { return nil }); err != nil {
			return st, err
		}
		if st, err = c.fetchAll(sizes, "RETR"); err != nil {
			return st, err
		}
	case MixTop:
		sizes, err := c.list()
		if err != nil {
			return st, err
		}
		if st, err = c.fetchAll(sizes, "TOP"); err != nil {
			return st, err
		}
	case MixUIDL:
		if err := c.multi("UIDL", func([]byte) error { return nil }); err != nil {
			return st, err
		}
	case MixIdle:
		if r.loggedIn.Add(1) == int64(r.cfg.Clients) && r.cfg.Ready != nil {
			fmt.Fprintf(r.cfg.Ready, "loadgen: all %d idle sessions logged in\n", r.cfg.Clients)
		}
		<-ctx.Done()
		// The run is over: say goodbye (cmd sets a fresh deadline).
		mu.Lock()
		quitting = true
		mu.Unlock()
	}
	if _, err := c.cmd("QUIT"); err != nil {
		return st, err
	}
	return st, nil
}

// list runs LIST and returns the sizes by message number.
func (c *conn) list() (map[int]int64, error) {
	sizes := map[int]int64{}
	err := c.multi("LIST", func(l []byte) error {
		num, size, ok := strings.Cut(string(l), " ")
		n, err1 := strconv.Atoi(num)
		s, err2 := strconv.ParseInt(size, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			return fmt.Errorf("bad LIST line %q", l)
		}
		sizes[n] = s
		return nil
	})
	return sizes, err
}

// fetchAll runs RETR (checking each size) or "TOP n 0" for every message,
// pipelined when configured.
func (c *conn) fetchAll(sizes map[int]int64, verb string) (stats, error) {
	var st stats
	nums := make([]int, 0, len(sizes))
	for n := range sizes {
		nums = append(nums, n)
	}
	sort.Ints(nums)
	bp := bufs.Get().(*[]byte)
	defer bufs.Put(bp)
	depth := 1
	if c.r.cfg.Pipeline {
		depth = c.r.cfg.PipelineDepth
	}
	args := func(n int) []string {
		if verb == "TOP" {
			return []string{strconv.Itoa(n), "0"}
		}
		return []string{strconv.Itoa(n)}
	}
	sent := make([]time.Time, 0, len(nums))
	next := 0 // next command to send
	for done := 0; done < len(nums); done++ {
		for next < len(nums) && next-done < depth {
			if err := c.send(verb, args(nums[next])...); err != nil {
				return st, err
			}
			sent = append(sent, time.Now())
			next++
		}
		c.deadline()
		if err := c.w.Flush(); err != nil {
			return st, fmt.Errorf("%s: %w", verb, err)
		}
		n := nums[done]
		if _, err := c.reply(verb); err != nil {
			return st, err
		}
		got, err := c.body(*bp)
		if err != nil {
			return st, fmt.Errorf("%s %d: %w", verb, n, err)
		}
		if verb == "RETR" && got != sizes[n] {
			return st, fmt.Errorf("RETR %d: got %d octets, LIST said %d", n, got, sizes[n])
		}
		if verb == "TOP" && got > sizes[n] {
			return st, fmt.Errorf("TOP %d: got %d octets, more than the LIST size %d", n, got, sizes[n])
		}
		c.record(verb, time.Since(sent[done]))
		st.messages++
		st.bytes += got
	}
	return st, nil
}

// probe holds one session open, sending NOOP every interval, until ctx ends.
func (r *run) probe(ctx context.Context, u Cred, ready chan<- error) *Histogram {
	h := &Histogram{}
	hist := map[string]*Histogram{}
	c, err := r.dial(context.Background(), hist)
	if err == nil {
		_, err = c.login(u, false)
		if err != nil {
			c.nc.Close()
		}
	}
	ready <- err
	if err != nil {
		return h
	}
	defer c.nc.Close()
	tick := time.NewTicker(r.cfg.Probe)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			c.cmd("QUIT")
			return h
		case <-tick.C:
		}
		t := time.Now()
		if _, err := c.cmd("NOOP"); err != nil {
			return h
		}
		h.Record(time.Since(t))
	}
}

// ReadUsers reads "user:password" lines. Blank lines and lines starting with
// "#" are skipped. A Dovecot-style "{PLAIN}" or "{CLEARTEXT}" prefix on the
// password is removed, so the users file of a test server can be used as is.
func ReadUsers(r io.Reader) ([]Cred, error) {
	var out []Cred
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, pw, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("users line %d: want user:password", n)
		}
		for _, p := range []string{"{PLAIN}", "{CLEARTEXT}"} {
			pw = strings.TrimPrefix(pw, p)
		}
		out = append(out, Cred{User: user, Password: pw})
	}
	return out, sc.Err()
}
