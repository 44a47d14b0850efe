package fetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pouchmail/pouch/internal/popscript"
)

// fiveMessages returns five messages u1..u5 with the body of message
// broken replaced by edit's.
func fiveMessages(broken int, edit func(m *popscript.Message)) (msgs []popscript.Message, bodies []string) {
	for i := 1; i <= 5; i++ {
		body := fmt.Sprintf("Subject: %d\n\nbody of message %d\n", i, i)
		m := popscript.Message{UID: fmt.Sprintf("u%d", i), Body: body}
		if i == broken {
			edit(&m)
		}
		msgs = append(msgs, m)
		bodies = append(bodies, body)
	}
	return msgs, bodies
}

// sent reports whether a session's commands include one starting with cmd.
func sent(session []string, cmd string) bool {
	return slices.ContainsFunc(session, func(c string) bool { return strings.HasPrefix(c, cmd) })
}

// checkBrokenRun checks the first run against a server that broke the
// stream at message 2: it failed naming the server's fault, sent no DELE
// and no QUIT, stored only message 1, and marked u2 suspect.
func checkBrokenRun(t *testing.T, b *popscript.Box, a *Account, err error, bodies []string) {
	t.Helper()
	if !errors.Is(err, ErrBrokenServer) || !strings.Contains(err.Error(), "message 2 (UIDL u2)") {
		t.Fatalf("first run: %v", err)
	}
	b.WaitIdle(t) // every command the client sent has been read
	s := b.Sessions()[0]
	if sent(s, "DELE") || sent(s, "QUIT") {
		t.Fatalf("the broken session sent DELE or QUIT: %q", s)
	}
	if d := b.Deleted(); len(d) != 0 {
		t.Fatalf("deleted %v", d)
	}
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), bodies[:1])
	j, jerr := OpenJournal(a.StateDir, a.StateName(), true)
	if jerr != nil {
		t.Fatal(jerr)
	}
	defer j.Close()
	if !j.Suspect("u2") {
		t.Fatal("u2 is not recorded as suspect")
	}
}

// checkLaterRuns runs twice more: the others are stored once and deleted,
// message 2 is neither downloaded nor deleted.
func checkLaterRuns(t *testing.T, b *popscript.Box, a *Account, bodies []string) {
	t.Helper()
	for run := 2; run <= 3; run++ {
		b.WaitIdle(t) // the last session has let the maildrop go
		obs := &recObserver{}
		st, err := Run(context.Background(), a, obs)
		if err != nil {
			t.Fatalf("run %d: %+v %v", run, st, err)
		}
		if !slices.ContainsFunc(obs.warns, func(w string) bool { return strings.Contains(w, `UIDL "u2" arrived damaged in an earlier run`) }) {
			t.Fatalf("run %d warnings %q", run, obs.warns)
		}
		s := b.Sessions()[len(b.Sessions())-1]
		if sent(s, "RETR 2") || sent(s, "DELE 2") {
			t.Fatalf("run %d touched message 2: %q", run, s)
		}
	}
	if d := b.Deleted(); !slices.Equal(d, []string{"u1", "u3", "u4", "u5"}) {
		t.Fatalf("deleted %v", d)
	}
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), []string{bodies[0], bodies[2], bodies[3], bodies[4]})
}

// A server that does not dot-stuff a body line "." in message 2 of 5. When
// the line is followed by "+OK" and "." (a reply that looks like the next
// one), a client that trusts the stream stores a truncated message 2 and an
// empty message 3 and then deletes all five.
func TestUnstuffedDotLine(t *testing.T) {
	for _, tc := range []struct{ name, wire string }{
		{"last-line", "Subject: 2\r\n\r\nfirst half\r\n.\r\n.\r\n"},
		{"then-reply", "Subject: 2\r\n\r\nfirst half\r\n.\r\n+OK\r\n.\r\n"},
		{"then-text", "Subject: 2\r\n\r\nfirst half\r\n.\r\nother text\r\n.\r\n"},
	} {
		for _, pipe := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/pipelining=%v", tc.name, pipe), func(t *testing.T) {
				msgs, bodies := fiveMessages(2, func(m *popscript.Message) {
					m.Size = int64(len(tc.wire) - 3)
					m.Wire = tc.wire
				})
				b := (&popscript.Box{Messages: msgs, Pipelining: pipe}).Start(t)
				a := testAccount(t, b.Addr)
				_, err := Run(context.Background(), a, nil)
				checkBrokenRun(t, b, a, err, bodies)
				checkExactlyOnce(t, quarantineDir(a), []string{"Subject: 2\n\nfirst half\n"})
				checkLaterRuns(t, b, a, bodies)
			})
		}
	}
}

// A message whose size disagrees with LIST is kept whole in quarantine,
// not stored; LF line ends counted by LIST are not a disagreement.
func TestSizeDisagreesWithList(t *testing.T) {
	for _, pipe := range []bool{false, true} {
		t.Run(fmt.Sprint("pipelining=", pipe), func(t *testing.T) {
			msgs, bodies := fiveMessages(2, func(m *popscript.Message) { m.Size = 1000 })
			msgs[0].Size = popscript.WireSize(msgs[0].Body) - 3 // three LF line ends
			b := (&popscript.Box{Messages: msgs, Pipelining: pipe}).Start(t)
			a := testAccount(t, b.Addr)
			_, err := Run(context.Background(), a, nil)
			if err == nil || !strings.Contains(err.Error(), "where LIST announced 1000") {
				t.Fatalf("got %v", err)
			}
			checkBrokenRun(t, b, a, err, bodies)
			checkExactlyOnce(t, quarantineDir(a), bodies[1:2])
			checkLaterRuns(t, b, a, bodies)
		})
	}
}

// A line that is neither +OK nor -ERR where RETR's status line is due.
func TestGarbageStatusLine(t *testing.T) {
	for _, status := range []string{"hello there", "+ continue", "+OKAY"} {
		for _, pipe := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/pipelining=%v", status, pipe), func(t *testing.T) {
				msgs, bodies := fiveMessages(2, func(m *popscript.Message) { m.Status = status })
				b := (&popscript.Box{Messages: msgs, Pipelining: pipe}).Start(t)
				a := testAccount(t, b.Addr)
				_, err := Run(context.Background(), a, nil)
				checkBrokenRun(t, b, a, err, bodies)
				checkExactlyOnce(t, quarantineDir(a), nil)
				checkLaterRuns(t, b, a, bodies)
			})
		}
	}
}

// An empty message is a sign of a broken stream even when LIST agrees.
func TestEmptyMessage(t *testing.T) {
	for _, size := range []int64{0, 40} {
		t.Run(fmt.Sprint("list=", size), func(t *testing.T) {
			msgs, bodies := fiveMessages(2, func(m *popscript.Message) {
				m.Wire = ".\r\n"
				m.Size = size
				m.Body = ""
			})
			b := (&popscript.Box{Messages: msgs, Pipelining: true}).Start(t)
			a := testAccount(t, b.Addr)
			_, err := Run(context.Background(), a, nil)
			if err == nil || !strings.Contains(err.Error(), "arrived empty") {
				t.Fatalf("got %v", err)
			}
			checkBrokenRun(t, b, a, err, bodies)
			checkLaterRuns(t, b, a, bodies)
		})
	}
}

// Once the server is fixed, --retry-quarantined downloads the message and
// clears its record.
func TestRetryQuarantined(t *testing.T) {
	wire := "Subject: 2\r\n\r\nfirst half\r\n.\r\nother text\r\n.\r\n"
	msgs, bodies := fiveMessages(2, func(m *popscript.Message) { m.Wire = wire })
	b := (&popscript.Box{Messages: msgs}).Start(t)
	a := testAccount(t, b.Addr)
	a.KeepForever = true
	_, err := Run(context.Background(), a, nil)
	checkBrokenRun(t, b, a, err, bodies)
	b.Messages[1].Wire = ""
	a.RetryQuarantined = true
	if st, err := Run(context.Background(), a, nil); err != nil || st.Fetched != 4 {
		t.Fatalf("%+v %v", st, err)
	}
	checkExactlyOnce(t, strings.TrimPrefix(a.To, "maildir:"), bodies)
	j, err := OpenJournal(a.StateDir, a.StateName(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, seen := j.Seen("u2"); !seen || j.Suspect("u2") {
		t.Fatalf("u2: seen %v, suspect %v", seen, j.Suspect("u2"))
	}
}

// After the downloads a STAT must count the listed messages, with nothing
// after it (sent in the same write, so that it has arrived), before any
// DELE goes out. A -ERR, which STAT never answers (RFC 1939 §5), may be a
// line left of a body cut short: no DELE goes out after it either.
func TestStatBarrier(t *testing.T) {
	for _, stat := range []string{"S: +OK 3 30", "S: hello", `S! +OK 1 7\r\n+OK\r\n`, "S: -ERR a body line"} {
		a, dir := fakeAccount(t, `
			C: LIST
			S: +OK
			S: 1 7
			S: .
			C: UIDL
			S: +OK
			S: 1 a
			S: .
			C: RETR 1
			S: +OK
			S: first
			S: .
			C: STAT
			`+stat)
		st, err := Run(context.Background(), a, nil)
		if !errors.Is(err, ErrBrokenServer) || !strings.Contains(err.Error(), "answering STAT before QUIT") || st.Deleted != 0 {
			t.Fatalf("%s: %+v %v", stat, st, err)
		}
		// Stored and journaled: deleted by a later run.
		checkExactlyOnce(t, dir, []string{"first\n"})
	}
}

// The size check counts CRLF pairs split between reads, accepts the CRLF
// and the LF count of LIST, and refuses anything else and empty bodies.
func TestCheckReader(t *testing.T) {
	body := "a\r\nbb\r\n\r\nc\r\n"
	for want, ok := range map[int64]bool{12: true, 8: true, 13: false, 11: false, 9: false, 0: false} {
		c := &checkReader{r: iotest.OneByteReader(strings.NewReader(body)), want: want, tee: &teeSpool{}}
		got, err := io.ReadAll(c)
		if ok != (err == nil) || string(got) != body || c.crlf != 4 {
			t.Errorf("LIST %d: %v, %d CRLF", want, err, c.crlf)
		}
	}
	c := &checkReader{r: strings.NewReader(""), tee: &teeSpool{}}
	if _, err := io.ReadAll(c); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty body: %v", err)
	}
}
