package fetch

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/popscript"
)

// A server trickling one octet at a time never lets the per-reply timeout
// fire; the account's deadline cuts the run off: no DELE, no QUIT, and the
// message stored before the cut is journaled.
func TestDeadlineCutsOffTrickle(t *testing.T) {
	small := "Subject: 1\n\nsmall\n"
	b := (&popscript.Box{Trickle: time.Millisecond, Messages: []popscript.Message{
		{UID: "u1", Body: small},
		{UID: "u2", Body: "Subject: 2\n\n" + strings.Repeat("slow line\n", 20000)},
	}}).Start(t)
	a := testAccount(t, b.Addr)
	a.Timeout = 500 * time.Millisecond
	a.Deadline = 1500 * time.Millisecond
	start := time.Now()
	st, err := Run(context.Background(), a, nil)
	took := time.Since(start)
	if !errors.Is(err, ErrDeadline) || st.Fetched != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	if took > a.Deadline+3*time.Second {
		t.Fatalf("the run took %v with a deadline of %v", took, a.Deadline)
	}
	if s := b.Sessions()[0]; sent(s, "DELE") || sent(s, "QUIT") {
		t.Fatalf("commands after the cut: %q", s)
	}
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), []string{small})
	j, err := OpenJournal(a.StateDir, a.StateName(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, seen := j.Seen("u1"); !seen {
		t.Fatal("the message stored before the cut is not journaled")
	}
}

// An MDA or an LMTP server that hangs is stopped at the run's deadline.
func TestDeadlineStopsDestinations(t *testing.T) {
	d := &mda{cmd: "sleep 60"}
	d.setDeadline(time.Now().Add(300 * time.Millisecond))
	start := time.Now()
	if err := d.Deliver(Msg{}, strings.NewReader("x\r\n")); err == nil || time.Since(start) > 10*time.Second {
		t.Fatalf("MDA: %v after %v", err, time.Since(start))
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			defer c.Close()
			io.Copy(io.Discard, c) // never greets
		}
	}()
	s := &smtpDest{lmtp: true, addr: l.Addr().String(), rcpt: "alice"}
	s.setDeadline(time.Now().Add(300 * time.Millisecond))
	start = time.Now()
	if err := s.Deliver(Msg{}, strings.NewReader("x\r\n")); err == nil || time.Since(start) > 10*time.Second {
		t.Fatalf("LMTP: %v after %v", err, time.Since(start))
	}
}
