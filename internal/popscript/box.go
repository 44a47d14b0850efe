package popscript

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Message is one message of a Box.
type Message struct {
	// UID is its UIDL; "" leaves it out of the UIDL listing.
	UID string
	// Body is sent by RETR with LF turned into CRLF, dot-stuffed and
	// terminated, as RFC 1939 §3 asks.
	Body string
	// Wire, if set, is sent by RETR verbatim after "+OK" CRLF instead of
	// Body: the test writes the dots and the terminating line, or leaves
	// them out.
	Wire string
	// Size is what LIST says; 0 means the octets a correct RETR of Body
	// carries (CRLF line ends, not stuffed).
	Size int64
	// Status, if set, replaces RETR's "+OK" status line.
	Status string
}

// WireSize returns the octets of Body in wire form: CRLF line ends, a
// final CRLF, dots not stuffed (what RFC 1939 §11 has LIST count).
func WireSize(body string) int64 {
	return int64(len(wireBody(body)))
}

func wireBody(body string) string {
	s := strings.ReplaceAll(strings.ReplaceAll(body, "\r\n", "\n"), "\n", "\r\n")
	if s != "" && !strings.HasSuffix(s, "\r\n") {
		s += "\r\n"
	}
	return s
}

func (m Message) listSize() int64 {
	if m.Size != 0 {
		return m.Size
	}
	return WireSize(m.Body)
}

// Box is a POP3 server for tests over a fixed set of messages, answering
// whatever its clients ask, across any number of sessions: CAPA (RFC 2449
// §5), USER, PASS, STAT, LIST, UIDL, RETR, DELE, NOOP, RSET and QUIT
// (RFC 1939), AUTH with bearer tokens as Gmail's and Microsoft's servers
// answer it (OAuth), and LOGIN-DELAY (RFC 2449 §6.5, §8.1.1), with the
// maildrop locked by one session at a time. Deletions are committed by
// QUIT only. Each message's RETR reply can be sent exactly as the test
// wrote it (Message.Wire), so that a client can be tested against a server
// that breaks the protocol.
type Box struct {
	Addr string

	Messages []Message
	// Count and Gen, when Count > 0, stand for Messages: Gen(i) returns
	// message i (from 0), and is called afresh each time, so a listing of
	// millions of messages costs the server no memory.
	Count int
	Gen   func(i int) Message
	// Pipelining offers PIPELINING (RFC 2449 §6.6).
	Pipelining bool
	// Trickle, if set, is the pause before each octet sent after the
	// greeting.
	Trickle time.Duration
	// OAuth, if set, offers bearer-token logins with AUTH.
	OAuth *OAuth
	// LoginDelay, if set, is announced in CAPA before and after login and
	// enforced: a login accepted sooner than this after the +OK of the
	// last one gets -ERR [LOGIN-DELAY] instead.
	LoginDelay time.Duration
	// Down, while it returns a non-empty text, answers every connection
	// with that -ERR greeting and closes it, as an overloaded server does.
	Down func() string

	l         net.Listener
	wg        sync.WaitGroup
	mu        sync.Mutex
	idle      *sync.Cond // on mu: broadcast when a session ends
	locked    bool
	deleted   map[int]bool
	sessions  [][]string
	conns     map[net.Conn]bool
	closed    bool
	connects  []time.Time
	logins    []time.Time
	lastLogin time.Time
	problems  []string
}

// OAuth says how a Box answers AUTH with a bearer token (OAUTHBEARER,
// RFC 7628, and XOAUTH2).
type OAuth struct {
	// Mechanisms are offered in CAPA's SASL line; default XOAUTH2 and
	// OAUTHBEARER.
	Mechanisms []string
	// Check says whether token is good for user.
	Check func(user, token string) bool
	// TwoStepOnly answers a message on the AUTH line with "-ERR Protocol
	// error", as Microsoft's server does: the message must follow an empty
	// "+" continuation.
	TwoStepOnly bool
	// Challenge, if set, is the JSON error challenge sent (base64) for a
	// refused token, as Gmail does; the client must answer it as its
	// mechanism says (XOAUTH2: an empty line; OAUTHBEARER: 0x01). Without
	// it a refused token gets -ERR at once, as Microsoft's server does.
	Challenge string
	// Refusal is the text of the -ERR that ends a refused login.
	Refusal string
}

// Append adds messages, as new mail arriving; sessions see them from their
// next login on.
func (b *Box) Append(msgs ...Message) {
	b.mu.Lock()
	b.Messages = append(b.Messages[:len(b.Messages):len(b.Messages)], msgs...)
	b.mu.Unlock()
}

// Problems lists what clients did against the protocol: a wrong answer to
// an error challenge, a login sooner than LOGIN-DELAY allows.
func (b *Box) Problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.problems...)
}

// Connects returns when each connection was accepted.
func (b *Box) Connects() []time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]time.Time(nil), b.connects...)
}

// Logins returns when each login was accepted.
func (b *Box) Logins() []time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]time.Time(nil), b.logins...)
}

func (b *Box) problem(format string, args ...any) {
	b.mu.Lock()
	b.problems = append(b.problems, fmt.Sprintf(format, args...))
	b.mu.Unlock()
}

// Start starts b on a 127.0.0.1:0 listener; the test's cleanup closes it
// and every session it has open.
func (b *Box) Start(t testing.TB) *Box {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.l = l
	b.Addr = l.Addr().String()
	b.deleted = map[int]bool{}
	b.conns = map[net.Conn]bool{}
	b.idle = sync.NewCond(&b.mu)
	b.wg.Add(1)
	go b.accept()
	t.Cleanup(b.Close)
	return b
}

// WaitIdle waits until every session the box accepted has ended: a client
// that hung up without QUIT still holds the maildrop until the box has read
// its end, as a real server's session does, so a test that runs a client
// again at once waits here first. It fails the test after 10 s.
func (b *Box) WaitIdle(t testing.TB) {
	t.Helper()
	timedOut := false
	timer := time.AfterFunc(10*time.Second, func() {
		b.mu.Lock()
		timedOut = true
		b.idle.Broadcast()
		b.mu.Unlock()
	})
	defer timer.Stop()
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.conns) > 0 && !timedOut {
		b.idle.Wait()
	}
	if len(b.conns) > 0 {
		t.Fatalf("popscript: %d sessions still open after 10 s", len(b.conns))
	}
}

// Close stops the server and ends its sessions.
func (b *Box) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	b.l.Close()
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func (b *Box) accept() {
	defer b.wg.Done()
	for {
		c, err := b.l.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.conns[c] = true
		b.connects = append(b.connects, time.Now())
		b.sessions = append(b.sessions, nil)
		id := len(b.sessions) - 1
		b.mu.Unlock()
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.serve(c, id)
			b.mu.Lock()
			delete(b.conns, c)
			b.idle.Broadcast()
			b.mu.Unlock()
			c.Close()
		}()
	}
}

func (b *Box) count() int {
	if b.Count > 0 {
		return b.Count
	}
	return len(b.Messages)
}

func (b *Box) msg(i int) Message {
	if b.Count > 0 {
		return b.Gen(i)
	}
	return b.Messages[i]
}

// Deleted returns the UIDLs (or, for messages without one, "#" and the
// message's index) that committed QUITs deleted.
func (b *Box) Deleted() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for i := range b.count() {
		if b.deleted[i] {
			if uid := b.msg(i).UID; uid != "" {
				out = append(out, uid)
			} else {
				out = append(out, "#"+strconv.Itoa(i))
			}
		}
	}
	return out
}

// Sessions returns the command lines of each session so far, in order.
func (b *Box) Sessions() [][]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([][]string, len(b.sessions))
	for i, s := range b.sessions {
		out[i] = append([]string(nil), s...)
	}
	return out
}

// trickler writes one octet at a time with a pause before each.
type trickler struct {
	w     io.Writer
	pause time.Duration
}

func (t trickler) Write(p []byte) (int, error) {
	for i := range p {
		time.Sleep(t.pause)
		if _, err := t.w.Write(p[i : i+1]); err != nil {
			return i, err
		}
	}
	return len(p), nil
}

func (b *Box) serve(c net.Conn, id int) {
	var out io.Writer = c
	w := bufio.NewWriterSize(out, 64<<10)
	br := bufio.NewReader(c)
	if b.Down != nil {
		if text := b.Down(); text != "" {
			w.WriteString("-ERR " + text + "\r\n")
			w.Flush()
			return
		}
	}
	w.WriteString("+OK popscript box ready\r\n")
	w.Flush()
	if b.Trickle > 0 {
		w.Reset(trickler{w: c, pause: b.Trickle})
	}
	// The session's view: message indexes by number, deletion marks, and
	// the messages as they were at login (Append may add more meanwhile).
	var nums []int
	var view []Message
	msgAt := func(i int) Message {
		if b.Count > 0 {
			return b.Gen(i)
		}
		return view[i]
	}
	marked := map[int]bool{}
	authed, user := false, false
	defer func() {
		if authed {
			b.mu.Lock()
			b.locked = false
			b.mu.Unlock()
		}
	}()
	reply := func(format string, args ...any) {
		fmt.Fprintf(w, format+"\r\n", args...)
	}
	// login opens the maildrop for a session whose credentials were
	// accepted, and answers.
	login := func() bool {
		b.mu.Lock()
		now := time.Now()
		if b.LoginDelay > 0 && !b.lastLogin.IsZero() && now.Sub(b.lastLogin) < b.LoginDelay {
			b.problems = append(b.problems, fmt.Sprintf("a login %v after the last one, where LOGIN-DELAY is %v", now.Sub(b.lastLogin).Round(time.Millisecond), b.LoginDelay))
			b.mu.Unlock()
			reply("-ERR [LOGIN-DELAY] minimum time between logins not reached")
			return false
		}
		busy := b.locked
		b.locked = !busy
		if busy {
			b.mu.Unlock()
			reply("-ERR [IN-USE] maildrop locked")
			return false
		}
		b.lastLogin = now
		b.logins = append(b.logins, now)
		for i := range b.count() {
			if !b.deleted[i] {
				nums = append(nums, i)
			}
		}
		view = b.Messages
		b.mu.Unlock()
		reply("+OK")
		return true
	}
	msgArg := func(arg string) (int, bool) {
		n, err := strconv.Atoi(arg)
		if err != nil || n < 1 || n > len(nums) || marked[n] {
			reply("-ERR no such message")
			return 0, false
		}
		return n, true
	}
	for {
		// A pipelining client's commands are answered together.
		if br.Buffered() == 0 {
			if err := w.Flush(); err != nil {
				return
			}
		}
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		b.mu.Lock()
		b.sessions[id] = append(b.sessions[id], line)
		b.mu.Unlock()
		cmd, arg, _ := strings.Cut(line, " ")
		switch cmd = strings.ToUpper(cmd); {
		case cmd == "CAPA":
			reply("+OK")
			reply("USER")
			reply("UIDL")
			if b.Pipelining {
				reply("PIPELINING")
			}
			if b.LoginDelay > 0 {
				reply("LOGIN-DELAY %d", int(b.LoginDelay/time.Second))
			}
			if b.OAuth != nil && !authed {
				mechs := b.OAuth.Mechanisms
				if len(mechs) == 0 {
					mechs = []string{"XOAUTH2", "OAUTHBEARER"}
				}
				reply("SASL %s", strings.Join(mechs, " "))
			}
			reply(".")
		case cmd == "USER" && !authed:
			user = true
			reply("+OK")
		case cmd == "PASS" && user && !authed:
			authed = login()
		case cmd == "AUTH" && !authed && b.OAuth != nil:
			authed = b.auth(arg, w, br, id, login)
		case cmd == "QUIT":
			if authed {
				// The UPDATE state ends before the reply, as a real
				// server's does: a client that logs in again at once
				// finds the maildrop free.
				b.mu.Lock()
				for n := range marked {
					b.deleted[nums[n-1]] = true
				}
				b.locked, authed = false, false
				b.mu.Unlock()
			}
			reply("+OK bye")
			w.Flush()
			return
		case !authed:
			reply("-ERR log in first")
		case cmd == "STAT":
			total, n := int64(0), 0
			for i, idx := range nums {
				if !marked[i+1] {
					total += msgAt(idx).listSize()
					n++
				}
			}
			reply("+OK %d %d", n, total)
		case cmd == "LIST" && arg == "":
			reply("+OK")
			for i, idx := range nums {
				if !marked[i+1] {
					reply("%d %d", i+1, msgAt(idx).listSize())
				}
			}
			reply(".")
		case cmd == "UIDL" && arg == "":
			reply("+OK")
			for i, idx := range nums {
				if uid := msgAt(idx).UID; uid != "" && !marked[i+1] {
					reply("%d %s", i+1, uid)
				}
			}
			reply(".")
		case cmd == "RETR":
			n, ok := msgArg(arg)
			if !ok {
				continue
			}
			m := msgAt(nums[n-1])
			if m.Status != "" {
				reply("%s", m.Status)
			} else {
				reply("+OK")
			}
			if m.Wire != "" {
				w.WriteString(m.Wire)
				continue
			}
			for _, l := range strings.SplitAfter(wireBody(m.Body), "\r\n") {
				if strings.HasPrefix(l, ".") {
					w.WriteString(".")
				}
				w.WriteString(l)
			}
			reply(".")
		case cmd == "DELE":
			if n, ok := msgArg(arg); ok {
				marked[n] = true
				reply("+OK")
			}
		case cmd == "NOOP":
			reply("+OK")
		case cmd == "RSET":
			clear(marked)
			reply("+OK")
		default:
			reply("-ERR unknown command")
		}
	}
}

// auth answers AUTH MECH [initial-response] with a bearer token as o says
// (RFC 5034 §4); login opens the maildrop once the token is accepted.
func (b *Box) auth(arg string, w *bufio.Writer, br *bufio.Reader, id int, login func() bool) bool {
	o := b.OAuth
	reply := func(format string, args ...any) {
		fmt.Fprintf(w, format+"\r\n", args...)
	}
	readLine := func() (string, bool) {
		w.Flush()
		line, err := br.ReadString('\n')
		if err != nil {
			return "", false
		}
		line = strings.TrimRight(line, "\r\n")
		b.mu.Lock()
		b.sessions[id] = append(b.sessions[id], line)
		b.mu.Unlock()
		return line, true
	}
	mech, ir, hasIR := strings.Cut(arg, " ")
	mech = strings.ToUpper(mech)
	mechs := o.Mechanisms
	if len(mechs) == 0 {
		mechs = []string{"XOAUTH2", "OAUTHBEARER"}
	}
	offered := false
	for _, m := range mechs {
		offered = offered || strings.EqualFold(m, mech)
	}
	if !offered {
		reply("-ERR unsupported mechanism")
		return false
	}
	if hasIR && o.TwoStepOnly {
		reply("-ERR Protocol error")
		return false
	}
	if !hasIR {
		reply("+ ")
		var ok bool
		if ir, ok = readLine(); !ok {
			return false
		}
	}
	if ir == "*" {
		reply("-ERR cancelled")
		return false
	}
	msg, err := base64.StdEncoding.DecodeString(ir)
	if err != nil {
		reply("-ERR invalid base64")
		return false
	}
	user, token := parseBearer(mech, string(msg))
	if user == "" || token == "" {
		b.problem("a malformed %s message", mech)
		reply("-ERR malformed SASL message")
		return false
	}
	if o.Check != nil && o.Check(user, token) {
		return login()
	}
	if o.Challenge != "" {
		reply("+ %s", base64.StdEncoding.EncodeToString([]byte(o.Challenge)))
		answer, ok := readLine()
		if !ok {
			return false
		}
		want := ""
		if mech == "OAUTHBEARER" {
			want = "AQ==" // 0x01, RFC 7628 §3.2.3
		}
		if answer != want {
			b.problem("%s error challenge answered %q, want %q", mech, answer, want)
		}
	}
	refusal := o.Refusal
	if refusal == "" {
		refusal = "[AUTH] Invalid credentials"
	}
	reply("-ERR %s", refusal)
	return false
}

// parseBearer takes the user and the token out of an XOAUTH2 message
// ("user=" USER ^A "auth=Bearer " TOKEN ^A ^A) or an OAUTHBEARER one
// (RFC 7628 §3.1: gs2-header with "a=" USER, then ^A-separated pairs).
func parseBearer(mech, msg string) (user, token string) {
	parts := strings.Split(msg, "\x01")
	if mech == "OAUTHBEARER" {
		gs2 := parts[0]
		for _, f := range strings.Split(gs2, ",") {
			if v, ok := strings.CutPrefix(f, "a="); ok {
				user = strings.NewReplacer("=2C", ",", "=3D", "=").Replace(v)
			}
		}
		parts = parts[1:]
	}
	for _, p := range parts {
		if v, ok := strings.CutPrefix(p, "user="); ok && mech == "XOAUTH2" {
			user = v
		}
		if v, ok := strings.CutPrefix(p, "auth="); ok {
			if scheme, t, ok := strings.Cut(v, " "); ok && strings.EqualFold(scheme, "Bearer") {
				token = t
			}
		}
	}
	return user, token
}
