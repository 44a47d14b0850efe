package fetch

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
)

type smtpBackend struct {
	mu    sync.Mutex
	got   []string
	rcpts []string
}

func (b *smtpBackend) NewSession(*smtp.Conn) (smtp.Session, error) { return &smtpSession{b: b}, nil }

type smtpSession struct{ b *smtpBackend }

func (s *smtpSession) Reset()                               {}
func (s *smtpSession) Logout() error                        { return nil }
func (s *smtpSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.b.mu.Lock()
	s.b.rcpts = append(s.b.rcpts, to)
	s.b.mu.Unlock()
	return nil
}
func (s *smtpSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	s.b.mu.Lock()
	s.b.got = append(s.b.got, string(b))
	s.b.mu.Unlock()
	return err
}

func TestLMTPAndSMTPDestinations(t *testing.T) {
	for _, lmtp := range []bool{false, true} {
		be := &smtpBackend{}
		s := smtp.NewServer(be)
		s.LMTP = lmtp
		s.Domain = "localhost"
		s.AllowInsecureAuth = true
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go s.Serve(l)
		p := newPouch(t)
		p.deliver(t, "Subject: a\n\n.dot\nx\n", "Subject: b\n\ny\n")
		a := testAccount(t, p.addr)
		a.Rcpt = "me@localhost"
		a.To = "smtp:" + l.Addr().String()
		if lmtp {
			a.To = "lmtp:" + l.Addr().String()
		}
		st, err := Run(context.Background(), a, nil)
		s.Close()
		if err != nil || st.Fetched != 2 || st.Deleted != 2 {
			t.Fatalf("%s: %+v %v", a.To, st, err)
		}
		be.mu.Lock()
		if len(be.got) != 2 || be.got[0] != "Subject: a\r\n\r\n.dot\r\nx\r\n" || be.rcpts[0] != "me@localhost" {
			t.Fatalf("%s: got %q to %q", a.To, be.got, be.rcpts)
		}
		be.mu.Unlock()
	}
}

// TestCrashLMTPAtEveryPoint: see crashHandOver.
func TestCrashLMTPAtEveryPoint(t *testing.T) {
	crashHandOver(t, func(t *testing.T, a *Account) func() []string {
		be := &smtpBackend{}
		s := smtp.NewServer(be)
		s.LMTP = true
		s.Domain = "localhost"
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go s.Serve(l)
		t.Cleanup(func() { s.Close() })
		a.Rcpt = "me@localhost"
		a.To = "lmtp:" + l.Addr().String()
		return func() []string {
			be.mu.Lock()
			defer be.mu.Unlock()
			var got []string
			for _, m := range be.got {
				got = append(got, strings.ReplaceAll(m, "\r\n", "\n"))
			}
			return got
		}
	})
}
