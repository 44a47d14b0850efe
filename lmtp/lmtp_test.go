package lmtp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/store/maildir"
)

func TestCapabilities(t *testing.T) {
	e := newEnv(t, nil)
	c := e.client()
	for ext, param := range map[string]string{
		"PIPELINING": "", "8BITMIME": "", "ENHANCEDSTATUSCODES": "", "SIZE": "52428800",
	} {
		ok, got := c.Extension(ext)
		if !ok || got != param {
			t.Errorf("LHLO: %s = %v %q, want advertised with %q", ext, ok, got, param)
		}
	}
	// An SMTP greeting is refused: this is LMTP (RFC 2033 §4.1).
	r := e.raw()
	r.send("EHLO client.pouch.test\r\n")
	r.expect("500 5.5.1")
}

// A message is stored as received after dot-unstuffing: 8-bit octets, NUL,
// bare CR and a missing final line end all stay, with Return-Path and
// Delivered-To on top.
func TestStoredAsReceived(t *testing.T) {
	e := newEnv(t, nil)
	r := e.raw()
	r.send("MAIL FROM:<sender@example.net> BODY=8BITMIME\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
	r.expect("250 ")
	r.expect("250 ")
	r.expect("354 ")
	body := "From: sender@example.net\r\nSubject: caf\xc3\xa9\r\n\r\n" +
		"..leading dot\r\n...two\r\n..\r\x00nul and bare\rCR\r\n\xff\xfe\r\nlast line"
	r.send(body + "\r\n.\r\n")
	reply := r.expect("250 2.0.0 <alice@example.org> Delivered (")
	if !strings.Contains(e.logs.String(), "session="+strings.TrimSuffix(strings.SplitN(reply, "(", 2)[1], ")")) {
		t.Errorf("the session id of %q is not in the log:\n%s", reply, e.logs)
	}
	want := "Return-Path: <sender@example.net>\r\nDelivered-To: alice@example.org\r\n" +
		"From: sender@example.net\r\nSubject: caf\xc3\xa9\r\n\r\n" +
		".leading dot\r\n..two\r\n.\r\x00nul and bare\rCR\r\n\xff\xfe\r\nlast line\r\n"
	got := e.stored("alice")
	if len(got) != 1 || got[0] != want {
		t.Fatalf("stored %q\nwant %q", got, want)
	}
	name := e.storedNames("alice")[0]
	if !strings.Contains(name, fmt.Sprintf(",S=%d,W=%d", len(want), len(want))) {
		t.Errorf("file name %q lacks the sizes S=W=%d", name, len(want))
	}
	// The null sender is written <>.
	r.send("MAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
	r.expect("250 ")
	r.expect("250 ")
	r.expect("354 ")
	r.send("Subject: bounce\r\n\r\nx\r\n.\r\n")
	r.expect("250 2.0.0")
	if got := e.stored("alice"); len(got) != 2 || !strings.Contains(got[0]+got[1], "Return-Path: <>\r\nDelivered-To: alice@example.org\r\nSubject: bounce") {
		t.Errorf("null sender: stored %q", got)
	}
}

func TestRecipientReplies(t *testing.T) {
	e := newEnv(t, nil)
	if err := e.store.Deliver(context.Background(), "dave", strings.NewReader("old\r\n")); err != nil {
		t.Fatal(err)
	}
	c := e.client()
	for _, tc := range []struct {
		rcpt string
		size int64
		code int
		enh  smtp.EnhancedCode
	}{
		{"alice@example.org", 0, 250, smtp.EnhancedCode{}},
		{"ALICE@Example.ORG", 0, 250, smtp.EnhancedCode{}}, // the lower-case user
		{"alice@any.domain.test", 0, 250, smtp.EnhancedCode{}},
		{"nobody@example.org", 0, 550, smtp.EnhancedCode{5, 1, 1}},
		{"bob@example.org", 100, 250, smtp.EnhancedCode{}},
		// The quota is not checked at RCPT (see TestQuotaAfterData).
		{"bob@example.org", 2000, 250, smtp.EnhancedCode{}},
		{"dave@example.org", 0, 250, smtp.EnhancedCode{}},
		// An account refused for its settings: its mail waits for the fix.
		{"erin@example.org", 0, 451, smtp.EnhancedCode{4, 3, 0}},
		{"alice@example.org", 60 << 20, 552, smtp.EnhancedCode{5, 3, 4}}, // at MAIL: SIZE= over the limit
	} {
		t.Run(fmt.Sprintf("%s/%d", tc.rcpt, tc.size), func(t *testing.T) {
			defer c.Reset()
			var opts *smtp.MailOptions
			if tc.size > 0 {
				opts = &smtp.MailOptions{Size: tc.size}
			}
			err := c.Mail("sender@example.net", opts)
			if err == nil {
				err = c.Rcpt(tc.rcpt, nil)
			}
			if tc.code == 250 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var se *smtp.SMTPError
			if !errors.As(err, &se) || se.Code != tc.code || se.EnhancedCode != tc.enh {
				t.Fatalf("got %v, want %d %v", err, tc.code, tc.enh)
			}
			if strings.Contains(se.Message, "lots") || strings.Contains(se.Message, "users file") {
				t.Errorf("internal error text sent to the client: %q", se.Message)
			}
		})
	}

	// Malformed addresses.
	r := e.raw()
	r.send("MAIL FROM:<sender@example.net>\r\n")
	r.expect("250 ")
	for _, bad := range []string{"RCPT TO:<alice>", "RCPT TO:<alice@>", "RCPT TO:alice@example.org>", "RCPT TO:<a b@example.org>"} {
		r.send(bad + "\r\n")
		if line := r.reply(); !strings.HasPrefix(line, "501 5.5.") && !strings.HasPrefix(line, "500 5.5.") {
			t.Errorf("%s: %q, want a syntax error (500 or 501 5.5.x)", bad, line)
		}
	}
}

// By default the quota is checked after DATA only: an MTA that verifies
// recipients with RCPT probes would cache a refusal at RCPT for hours. Each
// recipient over quota gets its own 552 5.2.2, or 452 4.2.2 with
// QuotaTemporary.
func TestQuotaAfterData(t *testing.T) {
	for _, temporary := range []bool{false, true} {
		e := newEnv(t, func(c *Config) { c.Agent.QuotaTemporary = temporary })
		if err := e.store.Deliver(context.Background(), "dave", strings.NewReader("old\r\n")); err != nil {
			t.Fatal(err)
		}
		want := &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}}
		if temporary {
			want = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}}
		}
		c := e.client()
		if err := c.Mail("s@example.net", &smtp.MailOptions{Size: 2000}); err != nil {
			t.Fatal(err)
		}
		for _, r := range []string{"dave@example.org", "bob@example.org", "alice@example.org"} {
			if err := c.Rcpt(r, nil); err != nil {
				t.Fatalf("temporary=%v: RCPT %s: %v, want 250", temporary, r, err)
			}
		}
		c.Reset()
		msg := "Subject: x\r\n\r\n" + strings.Repeat("x", 2000) + "\r\n"
		rcptErrs, dataErrs := send(t, c, "s@example.net", []string{"dave@example.org", "bob@example.org", "alice@example.org"}, msg)
		if len(rcptErrs) != 0 {
			t.Errorf("temporary=%v: RCPT errors %v", temporary, rcptErrs)
		}
		for _, r := range []string{"dave@example.org", "bob@example.org"} {
			if se := dataErrs[r]; se == nil || se.Code != want.Code || se.EnhancedCode != want.EnhancedCode {
				t.Errorf("temporary=%v: %s after DATA: %v, want %d %v", temporary, r, se, want.Code, want.EnhancedCode)
			}
		}
		if se := dataErrs["alice@example.org"]; se != nil {
			t.Errorf("temporary=%v: alice: %v", temporary, se)
		}
		if n := len(e.stored("dave")); n != 1 {
			t.Errorf("dave has %d messages, want the old one only", n)
		}
		e.nothingStored("bob")
		// An account refused for a broken quota field is deferred at
		// RCPT already.
		rcptErrs, _ = send(t, c, "s@example.net", []string{"erin@example.org", "alice@example.org"}, "x\r\n")
		if se := rcptErrs["erin@example.org"]; se == nil || se.Code != 451 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) {
			t.Errorf("an account refused for its settings: %v, want 451 4.3.0", se)
		}
		if !strings.Contains(e.logs.String(), `quota_storage: \"lots\"`) || !strings.Contains(e.logs.String(), "user=erin") {
			t.Errorf("the refusal is not noted:\n%s", e.logs)
		}
		e.nothingStored("erin")
	}
}

// With RcptCheckQuota, RCPT refuses a recipient over quota already.
func TestRcptCheckQuota(t *testing.T) {
	for _, temporary := range []bool{false, true} {
		e := newEnv(t, func(c *Config) { c.RcptCheckQuota = true; c.Agent.QuotaTemporary = temporary })
		e.store.Deliver(context.Background(), "dave", strings.NewReader("old\r\n"))
		full, fullEnh := 552, smtp.EnhancedCode{5, 2, 2}
		if temporary {
			full, fullEnh = 452, smtp.EnhancedCode{4, 2, 2}
		}
		c := e.client()
		for _, tc := range []struct {
			rcpt string
			size int64
			code int
			enh  smtp.EnhancedCode
		}{
			{"bob@example.org", 100, 250, smtp.EnhancedCode{}},
			{"bob@example.org", 2000, full, fullEnh}, // SIZE= over the 1K quota
			{"dave@example.org", 0, full, fullEnh},   // one message of one allowed
			{"erin@example.org", 0, 451, smtp.EnhancedCode{4, 3, 0}},
		} {
			var opts *smtp.MailOptions
			if tc.size > 0 {
				opts = &smtp.MailOptions{Size: tc.size}
			}
			if err := c.Mail("s@example.net", opts); err != nil {
				t.Fatal(err)
			}
			err := c.Rcpt(tc.rcpt, nil)
			c.Reset()
			var se *smtp.SMTPError
			switch {
			case tc.code == 250 && err != nil:
				t.Errorf("%s SIZE=%d: %v", tc.rcpt, tc.size, err)
			case tc.code != 250 && (!errors.As(err, &se) || se.Code != tc.code || se.EnhancedCode != tc.enh):
				t.Errorf("temporary=%v: %s SIZE=%d: %v, want %d %v", temporary, tc.rcpt, tc.size, err, tc.code, tc.enh)
			}
		}
	}
}

func TestDomains(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Domains = []string{"Example.org", "b.test."} })
	c := e.client()
	c.Mail("s@example.net", nil)
	for rcpt, code := range map[string]int{"alice@example.org": 250, "alice@EXAMPLE.ORG": 250, "alice@b.test": 250,
		"alice@other.test": 550, "alice@sub.example.org": 550} {
		err := c.Rcpt(rcpt, nil)
		var se *smtp.SMTPError
		switch {
		case code == 250 && err != nil:
			t.Errorf("%s refused: %v", rcpt, err)
		case code != 250 && (!errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != smtp.EnhancedCode{5, 1, 2}):
			t.Errorf("%s: %v, want 550 5.1.2", rcpt, err)
		}
	}
}

// One message, four recipients: one unknown (refused at RCPT), one whose
// quota the message exceeds (refused after DATA), two delivered, each with
// its own Delivered-To.
func TestMultipleRecipients(t *testing.T) {
	e := newEnv(t, nil)
	c := e.client()
	msg := "Subject: to all\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 100)
	rcptErrs, dataErrs := send(t, c, "sender@example.net",
		[]string{"alice@example.org", "nobody@example.org", "bob@example.org", "carol@example.org"}, msg)
	if se := rcptErrs["nobody@example.org"]; len(rcptErrs) != 1 || se == nil || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
		t.Errorf("RCPT errors %v, want only nobody: 550 5.1.1", rcptErrs)
	}
	if se := dataErrs["bob@example.org"]; len(dataErrs) != 1 || se == nil || se.Code != 552 || se.EnhancedCode != (smtp.EnhancedCode{5, 2, 2}) {
		t.Errorf("DATA errors %v, want only bob: 552 5.2.2", dataErrs)
	}
	for _, u := range []string{"alice", "carol"} {
		want := "Return-Path: <sender@example.net>\r\nDelivered-To: " + u + "@example.org\r\n" + msg
		if got := e.stored(u); len(got) != 1 || got[0] != want {
			t.Errorf("%s: stored %q, want %q", u, got, want)
		}
	}
	e.nothingStored("bob")
	if left, _ := os.ReadDir(e.spool); len(left) != 0 {
		t.Errorf("spool directory holds %d files", len(left))
	}
	// Temporary quota: the same transaction gets 452 4.2.2 for bob.
	e2 := newEnv(t, func(c *Config) { c.Agent.QuotaTemporary = true })
	_, dataErrs = send(t, e2.client(), "s@example.net", []string{"alice@example.org", "bob@example.org"}, msg)
	if se := dataErrs["bob@example.org"]; se == nil || se.Code != 452 || se.EnhancedCode != (smtp.EnhancedCode{4, 2, 2}) {
		t.Errorf("temporary quota: %v", dataErrs)
	}
}

func TestQuotaStreaming(t *testing.T) {
	e := newEnv(t, nil)
	c := e.client()
	// One recipient streams straight into the maildrop; the message stops at
	// the quota and nothing of it stays.
	_, dataErrs := send(t, c, "s@example.net", []string{"bob@example.org"}, strings.Repeat("x", 2000)+"\r\n")
	if se := dataErrs["bob@example.org"]; se == nil || se.Code != 552 || se.EnhancedCode != (smtp.EnhancedCode{5, 2, 2}) {
		t.Fatalf("over quota: %v, want 552 5.2.2", dataErrs)
	}
	e.nothingStored("bob")
	// The connection is still in step: a message that fits is delivered.
	if _, dataErrs := send(t, c, "s@example.net", []string{"bob@example.org"}, "small\r\n"); len(dataErrs) != 0 {
		t.Fatalf("small message: %v", dataErrs)
	}
	if n := len(e.stored("bob")); n != 1 {
		t.Fatalf("bob has %d messages, want 1", n)
	}
	// dave may have one message: the second is refused after DATA.
	send(t, c, "s@example.net", []string{"dave@example.org"}, "one\r\n")
	rcptErrs, dataErrs := send(t, c, "s@example.net", []string{"dave@example.org"}, "two\r\n")
	if se := dataErrs["dave@example.org"]; len(rcptErrs) != 0 || se == nil || se.Code != 552 {
		t.Fatalf("second message for dave: RCPT %v, DATA %v", rcptErrs, dataErrs)
	}
}

func TestMessageTooBig(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Agent.MaxMessageSize = 1000 })
	c := e.client()
	if ok, size := c.Extension("SIZE"); !ok || size != "1000" {
		t.Errorf("SIZE %q", size)
	}
	for _, rcpts := range [][]string{{"alice@example.org"}, {"alice@example.org", "carol@example.org"}} {
		_, dataErrs := send(t, c, "s@example.net", rcpts, strings.Repeat("y", 5000)+"\r\n")
		for _, r := range rcpts {
			if se := dataErrs[r]; se == nil || se.Code != 552 || se.EnhancedCode != (smtp.EnhancedCode{5, 3, 4}) {
				t.Errorf("%v: %s got %v, want 552 5.3.4", rcpts, r, dataErrs[r])
			}
		}
	}
	e.nothingStored("alice")
	e.nothingStored("carol")
	if _, dataErrs := send(t, c, "s@example.net", []string{"alice@example.org"}, "fits\r\n"); len(dataErrs) != 0 {
		t.Fatalf("after a refused message, a small one: %v", dataErrs)
	}
}

// SMTP smuggling: only CRLF.CRLF ends DATA. A bare LF, alone or in "\n.\n",
// never ends the message: go-smtp reads it as data, and Pouch then refuses
// the whole message with 554 5.6.0, so the commands hidden after it are
// neither run nor stored.
func TestBareLF(t *testing.T) {
	e := newEnv(t, nil)
	for name, data := range map[string]string{
		"LF.LF":     "Subject: x\r\n\r\nhello\n.\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\nsmuggled\r\n",
		"CRLF.LF":   "Subject: x\r\n\r\nhello\r\n.\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\nsmuggled\r\n",
		"LF.CRLF":   "Subject: x\r\n\r\nhello\n.\r\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<carol@example.org>\r\nDATA\r\nsmuggled\r\n",
		"bare LF":   "Subject: x\n\nbody\n",
		"last line": "Subject: x\r\n\r\nbody\n",
	} {
		t.Run(name, func(t *testing.T) {
			r := e.raw()
			r.send("MAIL FROM:<s@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
			r.expect("250 ")
			r.expect("250 ")
			r.expect("354 ")
			r.send(data)
			// Still inside the message: no reply yet.
			r.c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if line, err := r.r.ReadString('\n'); err == nil {
				t.Fatalf("reply before the end of the data: %q", line)
			}
			r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
			r.send("\r\n.\r\nNOOP\r\n")
			r.expect("554 5.6.0 <alice@example.org> ")
			r.expect("250 2.0.0") // NOOP: the next reply; none for smuggled commands
			e.nothingStored("alice")
			e.nothingStored("carol")
		})
	}
}

// A line over the limit in a message gets one reply per recipient, and no
// other: the connection then closes, as the rest cannot be read in step.
func TestLongLine(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxLineLength = 1000 })
	for _, rcpts := range [][]string{{"alice"}, {"alice", "carol"}} {
		r := e.raw()
		r.mailTo(rcpts...)
		r.send("DATA\r\n")
		r.expect("354 ")
		r.send("Subject: x\r\n\r\n" + strings.Repeat("z", 1500) + "\r\n.\r\n")
		for _, u := range rcpts {
			r.expect("500 5.5.0 <" + u + "@example.org> Line too long")
		}
		r.closed()
		e.nothingStored("alice")
		e.nothingStored("carol")
	}
	// A line of exactly the limit, CRLF included, is taken.
	r := e.raw()
	r.send("MAIL FROM:<s@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
	r.expect("250 ")
	r.expect("250 ")
	r.expect("354 ")
	r.send("Subject: x\r\n\r\n" + strings.Repeat("z", 998) + "\r\n.\r\n")
	r.expect("250 2.0.0 <alice@example.org>")

	// A command line, too.
	r = e.raw()
	r.send("MAIL FROM:<" + strings.Repeat("s", 1500) + "@example.net>\r\n")
	r.expect("500 5.4.0")
	r.closed()
}

func TestSequenceErrors(t *testing.T) {
	e := newEnv(t, nil)
	// MAIL before LHLO.
	nc, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	early := &raw{t: t, c: nc, r: bufio.NewReader(nc)}
	early.expect("220 ")
	early.send("MAIL FROM:<s@example.net>\r\n")
	early.expect("503 5.5.1")

	r := e.raw()
	// Commands out of order get 503 (RFC 5321 §4.3.2); 502 means a command
	// that is not implemented.
	r.send("DATA\r\n")
	r.expect("503 5.5.1")
	r.send("BDAT 3 LAST\r\nabc")
	r.expect("503 5.5.1")
	r.send("RCPT TO:<alice@example.org>\r\n")
	r.expect("503 5.5.1")
	r.send("MAIL FROM:<s@example.net>\r\nDATA\r\n")
	r.expect("250 ")
	r.expect("503 5.5.1")
	r.send("RCPT TO:<nobody@example.org>\r\nDATA\r\n")
	r.expect("550 5.1.1")
	r.expect("503 5.5.1") // no recipient was accepted
	r.send("EXPN staff\r\n")
	r.expect("502 5.5.1") // not implemented
	r.send("QUIT\r\n")
	r.expect("221 ")
	e.nothingStored("alice")
}

// A line that names no known command gets 500 5.5.1 (RFC 5321 §4.2.4),
// whatever its length, and the session goes on.
func TestUnknownCommands(t *testing.T) {
	e := newEnv(t, nil)
	// go-smtp ends a session after its fourth protocol error: three a
	// connection.
	for _, lines := range [][]string{
		{"HELLO\r\n", "XYZZ\r\n", "QU\r\n"},
		{"MAIL:FROM:<s@example.net>\r\n", "FOOBAR baz\r\n", "xyzz with arguments\r\n"},
	} {
		r := e.raw()
		for _, line := range lines {
			r.send(line)
			if got := r.reply(); got != "500 5.5.1 Unknown command" {
				t.Errorf("%q: %q, want 500 5.5.1 Unknown command", line, got)
			}
		}
		r.send("NOOP\r\n")
		r.expect("250 ")
	}
}

// RCPT TO:<Postmaster> without a domain is taken (RFC 5321 §4.1.1.3, §4.5.1),
// whatever the served domains: it is the user postmaster, at the default
// domain first, and 550 5.1.1 when there is none, never a syntax error.
func TestPostmaster(t *testing.T) {
	for _, tc := range []struct {
		name          string
		users         fakeUsers
		defaultDomain string
		maildrop      string // the maildrop that gets the message, or "" for 550 5.1.1
	}{
		{"plain user", fakeUsers{"postmaster": {}}, "", "postmaster"},
		{"default domain", fakeUsers{"postmaster": {}, "postmaster@example.org": {}}, "example.org", "example.org/postmaster"},
		{"no such user", testUsers, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) {
				c.Agent.Users = tc.users
				c.Agent.DefaultDomain = tc.defaultDomain
				c.Domains = []string{"example.org"}
			})
			r := e.raw()
			r.send("MAIL FROM:<s@example.net>\r\n")
			r.expect("250 ")
			r.send("RCPT TO:<postmaster@other.test>\r\n")
			r.expect("550 5.1.2 ") // a domain is still checked
			r.send("RCPT TO:<Postmaster>\r\n")
			if tc.maildrop == "" {
				r.expect("550 5.1.1 ")
				return
			}
			r.expect("250 ")
			r.send("DATA\r\n")
			r.expect("354 ")
			r.send("Subject: hello\r\n\r\nhi\r\n.\r\n")
			r.expect("250 2.0.0 <Postmaster> Delivered")
			want := "Return-Path: <s@example.net>\r\nDelivered-To: Postmaster\r\nSubject: hello\r\n\r\nhi\r\n"
			if got := e.stored(tc.maildrop); len(got) != 1 || got[0] != want {
				t.Errorf("%s: stored %q, want %q", tc.maildrop, got, want)
			}
		})
	}
}

// A client that stalls inside a message gets 451 4.4.2 for it, then 421, and
// the connection closes, all within one read timeout; nothing is stored.
func TestStall(t *testing.T) {
	const timeout = 300 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.ReadTimeout, c.IdleTimeout = timeout, timeout })
	for _, rcpts := range [][]string{{"alice"}, {"alice", "carol"}} {
		r := e.raw()
		r.mailTo(rcpts...)
		r.send("DATA\r\n")
		r.expect("354 ")
		r.send("Subject: x\r\n\r\npartial line")
		start := time.Now()
		for _, u := range rcpts {
			r.expect("451 4.4.2 <" + u + "@example.org> ")
		}
		r.expect("421 4.4.2")
		r.closed()
		if d := time.Since(start); d > 5*timeout {
			t.Errorf("stall noticed after %v, timeout %v", d, timeout)
		}
		e.nothingStored("alice")
		e.nothingStored("carol")
	}
	// Idle between commands (IdleTimeout), too.
	r := e.raw()
	r.expect("421 4.4.2")
	r.closed()
}

// A client that stalls inside a BDAT chunk gets a temporary failure that
// names nothing internal (go-smtp would answer 554 with the read error), and
// nothing is stored.
func TestStallInBDAT(t *testing.T) {
	const timeout = 300 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.ReadTimeout = timeout })
	r := e.raw()
	r.send("MAIL FROM:<s@example.net>\r\nRCPT TO:<alice@example.org>\r\n")
	r.expect("250 ")
	r.expect("250 ")
	r.send("BDAT 100 LAST\r\nSubject: x\r\n")
	line := r.expect("4")
	if !strings.HasPrefix(line, "451 4.3.0 ") || strings.Contains(line, "127.0.0.1") || strings.Contains(line, "timeout") {
		t.Errorf("stall in BDAT answered %q", line)
	}
	// The chunk's first octets went through go-smtp's io.Pipe, so LMTPData
	// was running (and counted) before the reply; it ends on its own, in
	// its own goroutine, once it sees the failed read.
	e.srv.deliveries.Wait()
	e.nothingStored("alice")
}

// Delivery does not take the POP3 lock: messages delivered while a session
// holds it (concurrently, from several connections) appear in the next one.
func TestDeliveryWhilePOP3SessionOpen(t *testing.T) {
	e := newEnv(t, nil)
	e.agent.Quota = Quota{Messages: 1000} // so that Usage runs under the lock too
	if err := e.store.Deliver(context.Background(), "alice", strings.NewReader("first\r\n")); err != nil {
		t.Fatal(err)
	}
	md, err := e.store.Open(context.Background(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	const conns, each = 6, 5
	var wg sync.WaitGroup
	errs := make(chan error, conns*each)
	for i := range conns {
		c := e.client()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				if err := c.SendMail("s@example.net", []string{"alice@example.org"},
					strings.NewReader(fmt.Sprintf("Subject: %d.%d\r\n\r\nhi\r\n", i, j))); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("delivery during a POP3 session: %v", err)
	}
	if n := len(md.Messages()); n != 1 {
		t.Errorf("the open session sees %d messages, want its snapshot of 1", n)
	}
	md.Close()
	md, err = e.store.Open(context.Background(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer md.Close()
	if n := len(md.Messages()); n != 1+conns*each {
		t.Fatalf("the next session sees %d messages, want %d", n, 1+conns*each)
	}
}

// failingStore reads the whole message, then fails as a full disk would.
type failingStore struct{ Mailboxes }

func (f failingStore) Deliver(_ context.Context, _ string, r io.Reader) error {
	io.Copy(io.Discard, r)
	return errors.New("write /secret/path/tmp/x: no space left on device")
}

func TestStorageFailure(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Agent.Store = failingStore{c.Agent.Store} })
	c := e.client()
	for _, rcpts := range [][]string{{"alice@example.org"}, {"alice@example.org", "carol@example.org"}} {
		_, dataErrs := send(t, c, "s@example.net", rcpts, "Subject: x\r\n\r\nbody\r\n")
		for _, r := range rcpts {
			se := dataErrs[r]
			if se == nil || se.Code != 451 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) {
				t.Fatalf("%s: %v, want 451 4.3.0", r, se)
			}
			if strings.Contains(se.Message, "secret") || strings.Contains(se.Message, "space") {
				t.Errorf("internal error sent to the client: %q", se.Message)
			}
			id := strings.TrimSuffix(strings.SplitN(se.Message, "(", 2)[1], ")")
			if !strings.Contains(e.logs.String(), "session="+id) || !strings.Contains(e.logs.String(), "no space left on device") {
				t.Errorf("the failure is not logged with session %s:\n%s", id, e.logs)
			}
		}
	}
}

func TestUnixSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lmtp.sock")
	// A socket left by a crashed server is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	l, err := Listen("unix:" + path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o660 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket %v, %v; want a socket of mode 0660", fi.Mode(), err)
	}
	// A live one is not taken over, nor is a file that is not a socket.
	if _, err := Listen("unix:" + path); err == nil || !strings.Contains(err.Error(), "another server") {
		t.Errorf("Listen over a live socket: %v", err)
	}
	regular := filepath.Join(dir, "file")
	os.WriteFile(regular, []byte("keep me"), 0o600)
	if _, err := Listen("unix:" + regular); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(regular); string(b) != "keep me" {
		t.Error("Listen damaged a regular file")
	}

	root := t.TempDir()
	srv := New(Config{Agent: &Agent{Store: maildir.New(root), Users: testUsers}, Logger: slog.New(slog.DiscardHandler)})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	nc, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := smtp.NewClientLMTP(nc)
	c.CommandTimeout, c.SubmissionTimeout = 10*time.Second, 10*time.Second
	if err := c.Hello("localhost"); err != nil {
		t.Fatal(err)
	}
	if err := c.SendMail("s@example.net", []string{"alice@example.org"}, strings.NewReader("via socket\r\n")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	<-served
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after shutdown: %v", err)
	}
	if names, _ := os.ReadDir(filepath.Join(root, "alice", "new")); len(names) != 1 {
		t.Errorf("%d messages delivered through the socket, want 1", len(names))
	}
}

// Shutdown closes idle connections at once, lets a message in progress
// finish and be acknowledged, and cuts one that does not finish in the grace
// period without acknowledging or storing it.
func TestShutdown(t *testing.T) {
	e := newEnv(t, nil)
	idle := e.raw()
	busy := e.raw()
	busy.send("MAIL FROM:<s@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
	busy.expect("250 ")
	busy.expect("250 ")
	busy.expect("354 ")
	busy.send("Subject: in flight\r\n\r\nfirst half\r\n")
	time.Sleep(50 * time.Millisecond) // let the server start reading it

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stopped <- e.srv.Shutdown(ctx)
	}()
	idle.closed()
	select {
	case err := <-stopped:
		t.Fatalf("Shutdown returned %v while a message was in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	busy.send("second half\r\n.\r\n")
	busy.expect("250 2.0.0 <alice@example.org> Delivered")
	busy.closed() // no new transaction after shutdown began
	if err := <-stopped; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if got := e.stored("alice"); len(got) != 1 || !strings.HasSuffix(got[0], "first half\r\nsecond half\r\n") {
		t.Fatalf("stored %q", got)
	}
	if _, err := net.DialTimeout("tcp", e.addr, time.Second); err == nil {
		t.Error("still accepting connections after Shutdown")
	}

	// A message that does not finish within the grace period.
	e2 := newEnv(t, nil)
	slow := e2.raw()
	slow.send("MAIL FROM:<s@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
	slow.expect("250 ")
	slow.expect("250 ")
	slow.expect("354 ")
	slow.send("Subject: never finished\r\n\r\n")
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := e2.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the grace period exceeded", err)
	}
	for {
		line, err := slow.r.ReadString('\n')
		if err != nil {
			break
		}
		if strings.HasPrefix(line, "250") {
			t.Fatalf("an unfinished message was acknowledged: %q", line)
		}
	}
	e2.nothingStored("alice")
}

// BDAT (CHUNKING, RFC 3030) goes through the same checks.
func TestBDAT(t *testing.T) {
	e := newEnv(t, nil)
	r := e.raw()
	msg := "Subject: chunked\r\n\r\nbody\r\n"
	r.send("MAIL FROM:<s@example.net>\r\nRCPT TO:<alice@example.org>\r\n")
	r.expect("250 ")
	r.expect("250 ")
	r.send(fmt.Sprintf("BDAT %d\r\n%s", 10, msg[:10]))
	r.expect("250 ")
	r.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(msg)-10, msg[10:]))
	r.expect("250 2.0.0 <alice@example.org> Delivered")
	if got := e.stored("alice"); len(got) != 1 || !strings.HasSuffix(got[0], "\r\nDelivered-To: alice@example.org\r\n"+msg) {
		t.Fatalf("stored %q", got)
	}
	bad := "Subject: x\n\nbare\n"
	r.send("MAIL FROM:<s@example.net>\r\nRCPT TO:<carol@example.org>\r\n")
	r.expect("250 ")
	r.expect("250 ")
	r.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(bad), bad))
	r.expect("554 5.6.0")
	e.nothingStored("carol")
}

// The size limit is exact and the same everywhere: LHLO advertises it in
// SIZE, MAIL takes a SIZE= of exactly the limit, and a message of exactly the
// limit is delivered through DATA and BDAT, for one recipient or several; one
// octet more is refused with 552 5.3.4.
func TestMessageSizeBoundary(t *testing.T) {
	const limit = 1000
	e := newEnv(t, func(c *Config) { c.Agent.MaxMessageSize = limit })
	c := e.client()
	if ok, size := c.Extension("SIZE"); !ok || size != "1000" {
		t.Fatalf("LHLO: SIZE %q, want 1000", size)
	}
	// n octets as delivered; in DATA the client dot-stuffs the second line.
	msg := func(n int) string {
		head := "Subject: size\r\n\r\n..dots\r\n"
		return head + strings.Repeat("x", n-len(head)-2) + "\r\n"
	}
	tooBig := func(se *smtp.SMTPError) bool {
		return se != nil && se.Code == 552 && se.EnhancedCode == (smtp.EnhancedCode{5, 3, 4})
	}
	for _, rcpts := range [][]string{{"alice@example.org"}, {"alice@example.org", "carol@example.org"}} {
		for _, n := range []int{limit - 1, limit, limit + 1} {
			_, dataErrs := send(t, c, "s@example.net", rcpts, msg(n))
			for _, r := range rcpts {
				if got := dataErrs[r]; (n <= limit) != (got == nil) || (n > limit && !tooBig(got)) {
					t.Errorf("DATA, %d octets, %d recipients: %s got %v", n, len(rcpts), r, got)
				}
			}
		}
	}
	r := e.raw()
	for _, n := range []int{limit, limit + 1} {
		m := msg(n) // BDAT is not dot-stuffed
		r.send("MAIL FROM:<s@example.net>\r\nRCPT TO:<alice@example.org>\r\n")
		r.expect("250 ")
		r.expect("250 ")
		r.send(fmt.Sprintf("BDAT 10\r\n%sBDAT %d LAST\r\n%s", m[:10], len(m)-10, m[10:]))
		r.expect("250 ")
		if n == limit {
			r.expect("250 2.0.0 <alice@example.org>")
		} else {
			r.expect("552 5.3.4")
		}
	}
	if got := len(e.stored("alice")); got != 5 {
		t.Errorf("alice has %d messages, want 5 (two by DATA alone, two with carol, one by BDAT)", got)
	}
	for _, stored := range append(e.stored("alice"), e.stored("carol")...) {
		if n := len(stored) - len("Return-Path: <s@example.net>\r\nDelivered-To: alice@example.org\r\n"); n > limit {
			t.Errorf("a message of %d octets was stored", n)
		}
	}
	// MAIL FROM's SIZE=.
	r.send(fmt.Sprintf("MAIL FROM:<s@example.net> SIZE=%d\r\n", limit))
	r.expect("250 ")
	r.send(fmt.Sprintf("RSET\r\nMAIL FROM:<s@example.net> SIZE=%d\r\n", limit+1))
	r.expect("250 ")
	r.expect("552 5.3.4")
}

// Plus addressing: alice+news@ goes to alice, with the address as given in
// Delivered-To, unless a user of the whole name exists; an empty delimiter
// turns it off.
func TestRecipientDelimiter(t *testing.T) {
	users := fakeUsers{"alice": {}, "list+owner": {}}
	for _, delim := range []string{"+", "", "-+"} {
		e := newEnv(t, func(c *Config) { c.Agent.Users = users; c.Agent.RecipientDelimiter = delim })
		c := e.client()
		rcptErrs, dataErrs := send(t, c, "s@example.net",
			[]string{"alice+news@example.org", "Alice+Big@example.org", "list+owner@example.org", "list+other@example.org", "alice-x@example.org"},
			"Subject: plus\r\n\r\nbody\r\n")
		if len(dataErrs) != 0 {
			t.Errorf("delimiter %q: DATA errors %v", delim, dataErrs)
		}
		want := map[string]bool{"list+owner@example.org": true}
		if delim != "" {
			want["alice+news@example.org"], want["Alice+Big@example.org"] = true, true
		}
		if delim == "-+" {
			want["alice-x@example.org"] = true
		}
		var gotAlice []string
		for _, m := range e.stored("alice") {
			gotAlice = append(gotAlice, strings.SplitN(strings.SplitN(m, "Delivered-To: ", 2)[1], "\r\n", 2)[0])
		}
		for _, r := range []string{"alice+news@example.org", "Alice+Big@example.org", "alice-x@example.org", "list+other@example.org"} {
			se := rcptErrs[r]
			if want[r] != (se == nil) || (se != nil && se.Code != 550) {
				t.Errorf("delimiter %q: RCPT %s: %v", delim, r, se)
			}
			if want[r] != slices.Contains(gotAlice, r) {
				t.Errorf("delimiter %q: %s: alice's messages are delivered to %q", delim, r, gotAlice)
			}
		}
		if got := e.stored("list+owner"); len(got) != 1 || !strings.Contains(got[0], "Delivered-To: list+owner@example.org\r\n") {
			t.Errorf("delimiter %q: list+owner has %q", delim, got)
		}
	}
}

// A quoted local part keeps its quotes in Return-Path and Delivered-To
// (RFC 5321 §4.1.2): go-smtp hands the address over unquoted.
func TestQuotedAddresses(t *testing.T) {
	users := fakeUsers{"alice": {}, "john doe": {}}
	e := newEnv(t, func(c *Config) { c.Agent.Users = users })
	r := e.raw()
	r.send(`MAIL FROM:<"john doe"@x.test>` + "\r\n" + `RCPT TO:<"alice"@example.org>` + "\r\n" +
		`RCPT TO:<"john doe"@example.org>` + "\r\nDATA\r\n")
	r.expect("250 ")
	r.expect("250 ")
	r.expect("250 ")
	r.expect("354 ")
	r.send("Subject: q\r\n\r\nx\r\n.\r\n")
	r.expect("250 2.0.0")
	r.expect("250 2.0.0")
	r.send(`MAIL FROM:<"a\"b\\c d"@x.test>` + "\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
	r.expect("250 ")
	r.expect("250 ")
	r.expect("354 ")
	r.send("Subject: q2\r\n\r\nx\r\n.\r\n")
	r.expect("250 2.0.0")
	want := map[string][]string{
		"alice": {"Return-Path: <\"john doe\"@x.test>\r\nDelivered-To: alice@example.org\r\nSubject: q\r\n\r\nx\r\n",
			"Return-Path: <\"a\\\"b\\\\c d\"@x.test>\r\nDelivered-To: alice@example.org\r\nSubject: q2\r\n\r\nx\r\n"},
		"john doe": {"Return-Path: <\"john doe\"@x.test>\r\nDelivered-To: \"john doe\"@example.org\r\nSubject: q\r\n\r\nx\r\n"},
	}
	for u, msgs := range want {
		got := e.stored(u)
		slices.Sort(got)
		slices.Sort(msgs)
		if !slices.Equal(got, msgs) {
			t.Errorf("%s: stored %q\nwant %q", u, got, msgs)
		}
	}
}

func TestExposedWarning(t *testing.T) {
	for addr, exposed := range map[string]bool{
		"127.0.0.1:2424": false, "[::1]:2424": false, "127.0.0.2:2424": false,
		":2424": true, "0.0.0.0:2424": true, "[::]:2424": true, "192.0.2.7:2424": true, "[2001:db8::1]:2424": true,
	} {
		ta, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		w := ExposedWarning(ta)
		if (w != "") != exposed || (exposed && !strings.Contains(w, "without authentication")) {
			t.Errorf("ExposedWarning(%s) = %q, want a warning: %v", addr, w, exposed)
		}
	}
	if w := ExposedWarning(&net.UnixAddr{Name: "/run/pouch/lmtp", Net: "unix"}); w != "" {
		t.Errorf("a Unix socket: %q", w)
	}
}

// domainUsers knows its domains (auth.DomainSource), and cannot tell for
// one of them.
type domainUsers struct{ fakeUsers }

func (domainUsers) HasDomain(d string) (bool, error) {
	switch d {
	case "example.org":
		return true, nil
	case "broken.test":
		return false, fmt.Errorf("%w: directory down", auth.ErrUnavailable)
	}
	return false, nil
}

// Without --lmtp-domains, the account source says which domains are taken:
// another is refused with 550 5.1.2 before any lookup, and one it cannot
// tell about now is deferred with 451 4.3.0.
func TestDomainsFromTheSource(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Agent.Users = domainUsers{fakeUsers{"alice@example.org": {}}}
	})
	r := e.raw()
	r.send("MAIL FROM:<s@example.net>\r\n")
	r.expect("250 ")
	for rcpt, want := range map[string]string{"alice@example.org": "250 ", "alice@EXAMPLE.org": "250 ",
		"bob@example.org": "550 5.1.1 ", "alice@other.test": "550 5.1.2 ", "alice@broken.test": "451 4.3.0 "} {
		r.send("RCPT TO:<" + rcpt + ">\r\n")
		if got := r.reply(); !strings.HasPrefix(got, want) {
			t.Errorf("RCPT %s: %q, want %q", rcpt, got, want)
		}
	}
}
