// Package popscript is a scripted POP3 server for tests: it plays "S:" lines
// to one client on a loopback listener and checks the client's lines against
// "C:" regular expressions, so that clients can be tested against servers
// that misbehave on purpose.
package popscript

import (
	"bufio"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Server plays a script of "S: line" (sent, CRLF added) and "C: regexp"
// (the next client line must match) on a 127.0.0.1:0 listener, for one
// connection. "S!" sends the raw text without CRLF; "CLOSE" hangs up.
type Server struct {
	Addr string // the listener's address
	done chan error
}

// New starts a Server for one connection; the test fails if the script is
// not played to its end within 10 seconds.
func New(t testing.TB, script string) *Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fs := &Server{Addr: l.Addr().String(), done: make(chan error, 1)}
	go func() {
		defer l.Close()
		conn, err := l.Accept()
		if err != nil {
			fs.done <- err
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fs.done <- play(conn, script)
	}()
	t.Cleanup(func() {
		select {
		case err := <-fs.done:
			if err != nil {
				t.Errorf("fake server: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("fake server did not finish")
		}
	})
	return fs
}

type scriptError string

func (e scriptError) Error() string { return string(e) }

func play(conn net.Conn, script string) error {
	br := bufio.NewReader(conn)
	for _, raw := range strings.Split(script, "\n") {
		line := strings.TrimLeft(raw, " \t")
		switch {
		case line == "":
		case line == "CLOSE":
			return nil
		case line == "S:" || strings.HasPrefix(line, "S: "):
			if _, err := conn.Write([]byte(strings.TrimPrefix(line[2:], " ") + "\r\n")); err != nil {
				return err
			}
		case strings.HasPrefix(line, "S! "):
			if _, err := conn.Write([]byte(unescape(line[3:]))); err != nil {
				return err
			}
		case strings.HasPrefix(line, "C: "):
			got, err := br.ReadString('\n')
			if err != nil {
				return scriptError("waiting for " + line + ": " + err.Error())
			}
			if !strings.HasSuffix(got, "\r\n") {
				return scriptError("client line not ended by CRLF: " + got)
			}
			got = strings.TrimSuffix(got, "\r\n")
			if !regexp.MustCompile("^(?:" + line[3:] + ")$").MatchString(got) {
				return scriptError("client sent " + got + ", want " + line[3:])
			}
		default:
			return scriptError("bad script line " + line)
		}
	}
	return nil
}

func unescape(s string) string {
	return strings.NewReplacer(`\r`, "\r", `\n`, "\n").Replace(s)
}
