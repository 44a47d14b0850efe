package lmtp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// A message whose last BDAT chunk is cut short by the end of the input (fewer
// octets than the command gave, RFC 3030 §2) is neither stored nor
// acknowledged: every recipient gets 451 4.4.2, as for a DATA cut short. A
// whole last chunk followed at once by the end of the input is delivered.
func TestBDATCutShort(t *testing.T) {
	msg := "Subject: chunked\r\n\r\nbody that is long enough\r\n"
	for _, tc := range []struct {
		name   string
		rcpts  []string
		chunks string
		whole  bool
	}{
		{"one recipient", []string{"alice"}, fmt.Sprintf("BDAT %d LAST\r\n%s", len(msg)+100, msg), false},
		{"two recipients", []string{"alice", "carol"}, fmt.Sprintf("BDAT %d LAST\r\n%s", len(msg)+100, msg), false},
		{"after a whole chunk", []string{"alice"},
			fmt.Sprintf("BDAT 10\r\n%sBDAT %d LAST\r\n%s", msg[:10], len(msg)+90, msg[10:]), false},
		{"no octet of the chunk", []string{"alice"}, "BDAT 100 LAST\r\n", false},
		{"one octet short", []string{"alice"}, fmt.Sprintf("BDAT %d LAST\r\n%s", len(msg)+1, msg), false},
		{"DATA", []string{"alice"}, "DATA\r\n" + msg, false},
		{"whole", []string{"alice", "carol"}, fmt.Sprintf("BDAT %d LAST\r\n%s", len(msg), msg), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, nil)
			r := e.raw()
			r.mailTo(tc.rcpts...)
			r.send(tc.chunks)
			if err := r.c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			switch {
			case strings.HasPrefix(tc.chunks, "BDAT 10\r\n"):
				r.expect("250 ")
			case strings.HasPrefix(tc.chunks, "DATA"):
				r.expect("354 ")
			}
			want := "451 4.4.2 <"
			if tc.whole {
				want = "250 2.0.0 <"
			}
			for _, u := range tc.rcpts {
				r.expect(want + u + "@example.org> ")
			}
			r.closed()
			for _, u := range tc.rcpts {
				if tc.whole {
					if got := e.stored(u); len(got) != 1 || !strings.HasSuffix(got[0], msg) {
						t.Errorf("%s: stored %q", u, got)
					}
					continue
				}
				e.nothingStored(u)
			}
		})
	}
}

// During shutdown a read that is not inside a message ends the session with
// net.ErrClosed, which go-smtp takes for a clean end between commands but, unlike
// io.EOF, not for the end of a BDAT chunk, and closes the connection.
func TestShutdownReadFails(t *testing.T) {
	srv := New(Config{Agent: &Agent{Users: testUsers}})
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	client, server := net.Pipe()
	defer client.Close()
	c := &conn{Conn: server, srv: srv}
	n, err := c.Read(make([]byte, 10))
	if n != 0 || err == io.EOF || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read during shutdown: %d, %v; want net.ErrClosed", n, err)
	}
	if _, err := client.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection not closed: %v", err)
	}
}

// A shutdown that begins between a BDAT LAST command and the first read of
// its chunk, before the message's delivery has started, stores nothing: not
// the message without its data. The connection closes without a reply, and
// the client sends the message again.
func TestShutdownBeforeBDATChunk(t *testing.T) {
	e := newEnv(t, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	hl := &hookListener{Listener: l, afterRead: func(c *hookConn, data []byte) {
		if !bytes.Contains(data, []byte("BDAT")) {
			return
		}
		// Shut down before go-smtp sees the command, and wait until the
		// connection, not busy with a message, is closed.
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			stopped <- e.srv.Shutdown(ctx)
		}()
		<-c.closed
	}}
	served := make(chan error, 1)
	go func() { served <- e.srv.Serve(hl) }()

	r := e.rawAt(l.Addr().String())
	r.send("MAIL FROM:<s@example.net>\r\nRCPT TO:<alice@example.org>\r\n")
	r.expect("250 ")
	r.expect("250 ")
	// With one thread go-smtp's goroutine that reads the chunk runs on,
	// without yielding, from the command to the first read of the chunk,
	// while the delivery's goroutine, started in between, waits: the read
	// comes before the delivery has begun, as it can with more threads.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	r.send("BDAT 100 LAST\r\n")
	for {
		line, err := r.r.ReadString('\n')
		if err != nil {
			break
		}
		t.Errorf("reply %q after shutdown began", line)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	if got := e.stored("alice"); len(got) != 0 {
		t.Errorf("stored %q", got)
	}
	e.nothingStored("alice")
}

// hookListener calls afterRead with the data of each read of its
// connections, before returning it.
type hookListener struct {
	net.Listener
	afterRead func(c *hookConn, data []byte)
}

func (l *hookListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &hookConn{Conn: c, l: l, closed: make(chan struct{})}, nil
}

type hookConn struct {
	net.Conn
	l         *hookListener
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *hookConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.l.afterRead(c, p[:n])
	return n, err
}

func (c *hookConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}
