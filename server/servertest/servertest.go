// Package servertest runs a Pouch POP3 server in-process on loopback
// listeners for tests, and shuts it down when the test ends.
package servertest

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/server"
)

// Users is an account source for tests: user name → cleartext password,
// accounts without settings of their own, and no SCRAM or APOP.
type Users map[string]string

var _ server.Authenticator = Users(nil)

func (u Users) Account(name string) (auth.Account, error) {
	if _, ok := u[name]; !ok {
		return auth.Account{}, fmt.Errorf("%w: %s", auth.ErrNoSuchUser, name)
	}
	return auth.Account{Name: name}, nil
}

func (u Users) Verify(name, password string) bool { pw, ok := u[name]; return ok && pw == password }
func (Users) Summary() auth.Summary               { return auth.Summary{} }
func (Users) Fault() error                        { return nil }

// Start serves cfg on 127.0.0.1: POP3 always, and POP3S when cfg.TLS is set
// (implicit is "" otherwise). The server is shut down in t.Cleanup.
func Start(t testing.TB, cfg server.Config) (srv *server.Server, plain, implicit string) {
	t.Helper()
	srv = server.New(cfg)
	var done []chan struct{}
	listen := func(serve func(net.Listener) error) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		d := make(chan struct{})
		done = append(done, d)
		go func() { serve(l); close(d) }()
		return l.Addr().String()
	}
	plain = listen(srv.Serve)
	if cfg.TLS != nil {
		implicit = listen(srv.ServeTLS)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		for _, d := range done {
			<-d
		}
	})
	return srv, plain, implicit
}
