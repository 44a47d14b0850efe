// Package admin is the operator's channel to a running Pouch server: a small
// protocol over a local Unix socket (by default DATA/admin.sock, mode 0600)
// that pouch who, pouch kick, pouch reload and pouch mailbox stats speak.
//
// The protocol is one JSON object per line each way. A request names its
// version and command:
//
//	{"v":1,"cmd":"who"}
//	{"v":1,"cmd":"kick","target":"alice"}
//	{"v":1,"cmd":"reload"}
//	{"v":1,"cmd":"mailbox-stats","user":"alice"}
//
// and the reply to each is one line: {"v":1,"sessions":[...]},
// {"v":1,"kicked":2}, {"v":1,"reloaded":true}, {"v":1,"stats":{...}}, or,
// for any request that failed, {"v":1,"error":"one readable sentence"}.
// Several requests may follow one another on a connection. Only root and
// the user the server runs as may connect: the server checks the peer's
// credentials, whatever the socket's mode.
package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/pouchmail/pouch/internal/unixsock"
	"github.com/pouchmail/pouch/store"
)

// Version is the protocol version this package speaks.
const Version = 1

const (
	// idleTimeout bounds the wait for a request on an open connection.
	idleTimeout = 60 * time.Second
	// callTimeout bounds the client's wait for a reply (a reload may fetch
	// an OAuth key set) and the work of a mailbox-stats request.
	callTimeout = 60 * time.Second
	// writeTimeout bounds sending one reply.
	writeTimeout = 10 * time.Second
	// maxRequest bounds a request line.
	maxRequest = 64 * 1024
	// maxReply bounds a reply line (the session list of a busy server).
	maxReply = 64 << 20
	// maxPath is the longest socket path a sockaddr_un holds.
	maxPath = 107
)

// Handler carries out the requests; the server wires it to its parts.
type Handler interface {
	// Who lists the open sessions.
	Who() []Session
	// Kick closes the sessions of a user or the session with an id, and
	// returns how many.
	Kick(target string) int
	// Reload reads again what can change under a running server; sessions
	// stay. The error says what could not be reloaded.
	Reload() error
	// MailboxStats describes user's maildrop.
	MailboxStats(ctx context.Context, user string) (store.Stats, error)
}

// Session is an open POP3 session.
type Session struct {
	ID       string    `json:"id"`
	User     string    `json:"user"` // "" before login
	Remote   string    `json:"remote"`
	TLS      bool      `json:"tls"`
	Since    time.Time `json:"since"`
	BytesIn  int64     `json:"bytes_in"`
	BytesOut int64     `json:"bytes_out"`
	State    string    `json:"state"`
}

// Stats is the wire form of store.Stats.
type Stats struct {
	Messages      int       `json:"messages"`
	Octets        int64     `json:"octets"`
	Oldest        time.Time `json:"oldest,omitzero"`
	Newest        time.Time `json:"newest,omitzero"`
	Retrieved     int       `json:"retrieved"`
	Held          int       `json:"held"`
	HeldOctets    int64     `json:"held_octets"`
	OldestDeleted time.Time `json:"oldest_deleted,omitzero"`
	Hold          Hold      `json:"legal_hold"`
}

// Hold is the wire form of store.Hold.
type Hold struct {
	Set    bool      `json:"set"`
	Since  time.Time `json:"since,omitzero"`
	Reason string    `json:"reason,omitempty"`
}

// FromStore converts store.Stats to its wire form.
func FromStore(s store.Stats) Stats {
	return Stats{
		Messages: s.Messages, Octets: s.Octets, Oldest: s.Oldest, Newest: s.Newest,
		Retrieved: s.Retrieved, Held: s.Held, HeldOctets: s.HeldOctets, OldestDeleted: s.OldestDeleted,
		Hold: Hold{Set: s.Hold.Set, Since: s.Hold.Since, Reason: s.Hold.Reason},
	}
}

// Store converts the wire form back to store.Stats.
func (s Stats) Store() store.Stats {
	return store.Stats{
		Messages: s.Messages, Octets: s.Octets, Oldest: s.Oldest, Newest: s.Newest,
		Retrieved: s.Retrieved, Held: s.Held, HeldOctets: s.HeldOctets, OldestDeleted: s.OldestDeleted,
		Hold: store.Hold{Set: s.Hold.Set, Since: s.Hold.Since, Reason: s.Hold.Reason},
	}
}

// Commands of the protocol.
const (
	cmdWho          = "who"
	cmdKick         = "kick"
	cmdReload       = "reload"
	cmdMailboxStats = "mailbox-stats"
)

type request struct {
	V      int    `json:"v"`
	Cmd    string `json:"cmd"`
	Target string `json:"target,omitempty"`
	User   string `json:"user,omitempty"`
}

// reply is every reply's shape; a reply carries only the fields of its
// command.
type reply struct {
	V        int        `json:"v"`
	Error    string     `json:"error,omitempty"`
	Sessions *[]Session `json:"sessions,omitempty"`
	Kicked   *int       `json:"kicked,omitempty"`
	Reloaded bool       `json:"reloaded,omitempty"`
	Stats    *Stats     `json:"stats,omitempty"`
}

// Listen creates the admin socket at path with mode 0600. A socket file
// left by a server that is gone is replaced; while a server answers on it,
// Listen fails: two servers must not share one data directory.
func Listen(path string) (net.Listener, error) {
	if len(path) > maxPath {
		return nil, fmt.Errorf("admin socket %s: the path is %d octets, longer than a Unix socket allows (%d); choose a shorter one", path, len(path), maxPath)
	}
	l, err := unixsock.Listen(path, 0o600)
	switch {
	case errors.Is(err, unixsock.ErrInUse):
		return nil, fmt.Errorf("admin socket %s: another pouch serve is running with this data directory", path)
	case err != nil:
		return nil, fmt.Errorf("admin socket %s: %v", path, err)
	}
	return l, nil
}

// peerAllowed decides whether a peer's uid may use the socket: root, or the
// user this process runs as.
func peerAllowed(uid int) bool { return uid == 0 || uid == os.Geteuid() }

// Serve answers requests on l until ctx is done, then closes l and every
// open connection and returns. Each connection is checked: only root and
// the server's own user are served.
func Serve(ctx context.Context, l net.Listener, h Handler, log *slog.Logger) error {
	return serveWith(ctx, l, h, log, peerAllowed)
}

// serveWith is Serve with the check of a peer's uid, allowed.
func serveWith(ctx context.Context, l net.Listener, h Handler, log *slog.Logger, allowed func(uid int) bool) error {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	go func() {
		<-ctx.Done()
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			log.Warn("admin socket: accept failed", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			return nil
		}
		conns[c] = struct{}{}
		wg.Add(1)
		mu.Unlock()
		go func() {
			defer wg.Done()
			serveConn(ctx, c, h, log, allowed)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			c.Close()
		}()
	}
}

// serveConn answers the requests of one connection.
func serveConn(ctx context.Context, c net.Conn, h Handler, log *slog.Logger, allowed func(uid int) bool) {
	uid, err := peerUID(c)
	switch {
	case err != nil:
		log.Warn("admin socket: cannot check the peer", "err", err)
		writeReply(c, reply{Error: "the server cannot tell who you are"})
		return
	case uid >= 0 && !allowed(uid):
		log.Warn("admin socket: refused a user", "uid", uid)
		writeReply(c, reply{Error: fmt.Sprintf("uid %d may not use the admin socket: use root or the user pouch serve runs as", uid)})
		return
	}
	r := bufio.NewReaderSize(c, 4096)
	for {
		c.SetReadDeadline(time.Now().Add(idleTimeout))
		line, err := readLine(r, maxRequest)
		if errors.Is(err, errTooLong) {
			writeReply(c, reply{Error: fmt.Sprintf("the request is longer than %d octets", maxRequest)})
			return
		}
		if err != nil {
			return // closed, or idle too long
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if writeReply(c, answer(ctx, line, h, log)) != nil {
			return
		}
	}
}

// answer runs one request line and returns its reply; a panic in the
// handler becomes an error reply.
func answer(ctx context.Context, line []byte, h Handler, log *slog.Logger) (rep reply) {
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		return reply{Error: "the request is not a JSON object"}
	}
	if req.V != Version {
		return reply{Error: fmt.Sprintf("protocol version %d is not supported; this server speaks version %d", req.V, Version)}
	}
	defer func() {
		if v := recover(); v != nil {
			log.Error("admin request panicked", "cmd", req.Cmd, "panic", v)
			rep = reply{Error: fmt.Sprintf("the %s request failed inside the server; see its log", req.Cmd)}
		}
	}()
	switch req.Cmd {
	case cmdWho:
		sessions := h.Who()
		if sessions == nil {
			sessions = []Session{}
		}
		return reply{Sessions: &sessions}
	case cmdKick:
		if req.Target == "" {
			return reply{Error: "kick needs a user name or a session id"}
		}
		n := h.Kick(req.Target)
		log.Info("admin: kick", "target", req.Target, "sessions", n)
		return reply{Kicked: &n}
	case cmdReload:
		log.Info("admin: reload")
		if err := h.Reload(); err != nil {
			return reply{Error: err.Error()}
		}
		return reply{Reloaded: true}
	case cmdMailboxStats:
		if req.User == "" {
			return reply{Error: "mailbox stats needs a user name"}
		}
		ctx, cancel := context.WithTimeout(ctx, callTimeout)
		defer cancel()
		st, err := h.MailboxStats(ctx, req.User)
		if err != nil {
			return reply{Error: err.Error()}
		}
		ws := FromStore(st)
		return reply{Stats: &ws}
	case "":
		return reply{Error: "the request names no command"}
	}
	return reply{Error: fmt.Sprintf("unknown command %q", req.Cmd)}
}

func writeReply(c net.Conn, rep reply) error {
	rep.V = Version
	b, err := json.Marshal(rep)
	if err != nil {
		b, _ = json.Marshal(reply{V: Version, Error: "the reply could not be encoded"})
	}
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err = c.Write(append(b, '\n'))
	return err
}

var errTooLong = errors.New("line too long")

// readLine reads one line of at most max octets, without its end.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(chunk) > max+1 {
			return nil, errTooLong
		}
		line = append(line, chunk...)
		switch {
		case err == nil:
			return bytes.TrimRight(line, "\r\n"), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, err
		}
	}
}
