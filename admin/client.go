package admin

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"syscall"
	"time"

	"github.com/pouchmail/pouch/store"
)

// ErrNoServer means that no server listens on the socket: the file is
// missing, or nothing accepts connections on it.
var ErrNoServer = errors.New("no server is running")

// ErrDenied means that the socket refused this user.
var ErrDenied = errors.New("permission denied")

// Client talks to a running server. It is used by one goroutine at a time.
type Client struct {
	c net.Conn
	r *bufio.Reader
}

// Dial connects to the admin socket at path. Its error wraps ErrNoServer
// when no server is running there, and ErrDenied when the socket's
// permissions keep this user out.
func Dial(path string) (*Client, error) {
	if len(path) > maxPath {
		return nil, fmt.Errorf("the admin socket path %s is longer than a Unix socket allows (%d octets)", path, maxPath)
	}
	c, err := net.DialTimeout("unix", path, 10*time.Second)
	switch {
	case err == nil:
		return &Client{c: c, r: bufio.NewReaderSize(c, 4096)}, nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return nil, fmt.Errorf("%w (cannot connect to %s)", ErrNoServer, path)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("%w on %s: use root or the user pouch serve runs as", ErrDenied, path)
	}
	return nil, fmt.Errorf("cannot connect to %s: %v", path, err)
}

// Close closes the connection.
func (c *Client) Close() error { return c.c.Close() }

// call sends one request and reads its reply; a reply with an error
// becomes an error.
func (c *Client) call(req request) (reply, error) {
	req.V = Version
	b, err := json.Marshal(req)
	if err != nil {
		return reply{}, err
	}
	c.c.SetDeadline(time.Now().Add(callTimeout + writeTimeout))
	if _, err := c.c.Write(append(b, '\n')); err != nil {
		// A server that refused this user says so before closing.
		if rep, rerr := c.read(); rerr == nil && rep.Error != "" {
			return rep, errors.New(rep.Error)
		}
		return reply{}, fmt.Errorf("sending the request: %v", err)
	}
	rep, err := c.read()
	if err != nil {
		return reply{}, err
	}
	if rep.Error != "" {
		return rep, errors.New(rep.Error)
	}
	return rep, nil
}

func (c *Client) read() (reply, error) {
	line, err := readLine(c.r, maxReply)
	if err != nil {
		return reply{}, fmt.Errorf("reading the reply: %v", err)
	}
	var rep reply
	if err := json.Unmarshal(line, &rep); err != nil {
		return reply{}, fmt.Errorf("the server sent a reply that is not JSON: %v", err)
	}
	if rep.V != Version {
		return reply{}, fmt.Errorf("the server speaks protocol version %d, this program %d", rep.V, Version)
	}
	return rep, nil
}

// Who lists the server's open sessions, the oldest first.
func (c *Client) Who() ([]Session, error) {
	rep, err := c.call(request{Cmd: cmdWho})
	if err != nil {
		return nil, err
	}
	if rep.Sessions == nil {
		return nil, errors.New("the server's reply lists no sessions")
	}
	return *rep.Sessions, nil
}

// Kick closes the sessions of a user, or the session with that id, and
// returns how many it closed.
func (c *Client) Kick(target string) (int, error) {
	rep, err := c.call(request{Cmd: cmdKick, Target: target})
	if err != nil {
		return 0, err
	}
	if rep.Kicked == nil {
		return 0, errors.New("the server's reply does not say how many sessions it closed")
	}
	return *rep.Kicked, nil
}

// Reload has the server read its users file, certificates, OAuth key set
// and ban list again, as SIGHUP does.
func (c *Client) Reload() error {
	rep, err := c.call(request{Cmd: cmdReload})
	if err != nil {
		return err
	}
	if !rep.Reloaded {
		return errors.New("the server's reply does not confirm the reload")
	}
	return nil
}

// MailboxStats describes user's maildrop.
func (c *Client) MailboxStats(user string) (store.Stats, error) {
	rep, err := c.call(request{Cmd: cmdMailboxStats, User: user})
	if err != nil {
		return store.Stats{}, err
	}
	if rep.Stats == nil {
		return store.Stats{}, errors.New("the server's reply has no statistics")
	}
	return rep.Stats.Store(), nil
}
