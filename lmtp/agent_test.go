package lmtp

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/store/maildir"
)

func newAgent(t *testing.T, users fakeUsers) (*Agent, string) {
	root := t.TempDir()
	return &Agent{Store: maildir.New(root), Users: users}, root
}

func readNew(t *testing.T, root, user string) []string {
	t.Helper()
	dir := filepath.Join(root, user, "new")
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

// The added header lines take the line ending of the message's first line,
// so an LF message (from a pipe) stays LF throughout.
func TestAgentHeaders(t *testing.T) {
	a, root := newAgent(t, fakeUsers{"u": {}})
	ctx := context.Background()
	for _, tc := range []struct {
		d    Delivery
		msg  string
		want string
	}{
		{Delivery{User: "u", Recipient: "u", Sender: "a@b.example"}, "Subject: lf\n\nbody\n",
			"Return-Path: <a@b.example>\nDelivered-To: u\nSubject: lf\n\nbody\n"},
		{Delivery{User: "u", Recipient: "u@example.org", Sender: ""}, "Subject: crlf\r\n\r\nbody\r\n",
			"Return-Path: <>\r\nDelivered-To: u@example.org\r\nSubject: crlf\r\n\r\nbody\r\n"},
		{Delivery{User: "u", Recipient: "u", NoReturnPath: true}, "no newline at all",
			"Delivered-To: u\nno newline at all"},
		{Delivery{User: "u", Recipient: "u\r\nBcc: evil", Sender: "x\n@y"}, "Subject: s\n\n",
			"Return-Path: <x@y>\nDelivered-To: \"uBcc: evil\"\nSubject: s\n\n"},
		{Delivery{User: "u", Recipient: "u", Sender: "s", LineEnd: "\r\n"}, "",
			"Return-Path: <s>\r\nDelivered-To: u\r\n"},
	} {
		before := len(readNew(t, root, "u"))
		n, err := a.Deliver(ctx, tc.d, strings.NewReader(tc.msg))
		if err != nil || n != int64(len(tc.msg)) {
			t.Fatalf("Deliver(%+v) = %d, %v", tc.d, n, err)
		}
		got := readNew(t, root, "u")
		if len(got) != before+1 {
			t.Fatalf("%d messages, want %d", len(got), before+1)
		}
		found := false
		for _, g := range got {
			found = found || g == tc.want
		}
		if !found {
			t.Errorf("%+v: no stored message is %q; have %q", tc.d, tc.want, got)
		}
	}
}

func TestAgentUser(t *testing.T) {
	a, _ := newAgent(t, fakeUsers{"alice": {}, "Bob": {}, "list+owner": {}, "j\u00f6rg": {}})
	for in, want := range map[string]string{"alice": "alice", "ALICE": "alice", "Bob": "Bob", "bob": "", "": "", "carol": "",
		"alice+news": "", "list+owner": "list+owner",
		// A decomposed name finds the user stored in the normalized form.
		"jo\u0308rg": "j\u00f6rg", "j\u00f6rg": "j\u00f6rg"} {
		got, err := a.User(in)
		if got != want || (err == nil) != (want != "") || (err != nil && !errors.Is(err, ErrUnknownUser)) {
			t.Errorf("User(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	// With a recipient delimiter, the part before the first delimiter names
	// the user, unless the whole local part does.
	a.RecipientDelimiter = "+-"
	for in, want := range map[string]string{"alice+news": "alice", "ALICE+News": "alice", "alice-list+x": "alice",
		"Bob+": "Bob", "list+owner": "list+owner", "list+other": "", "+alice": "", "carol+x": "", "alice": "alice"} {
		got, err := a.User(in)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("with delimiters +-: User(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := a.Deliver(context.Background(), Delivery{User: "nobody"}, strings.NewReader("x")); !errors.Is(err, ErrUnknownUser) {
		t.Errorf("Deliver to an unknown user: %v", err)
	}
}

// A storage quota is exact: a message that fills it to the octet is taken,
// one octet more is refused while streaming and leaves nothing behind.
func TestAgentQuotaBoundary(t *testing.T) {
	a, root := newAgent(t, fakeUsers{"u": storage(100), "v": storage(0)})
	a.Quota = Quota{Storage: 10}
	ctx := context.Background()
	d := Delivery{User: "u", Recipient: "u", NoReturnPath: true, LineEnd: "\n"}
	header := len("Delivered-To: u\n")
	_, err := a.Deliver(ctx, d, strings.NewReader(strings.Repeat("x", 100-header+1)))
	var qe *QuotaError
	if !errors.As(err, &qe) || qe.Temporary || qe.Limit != 100 || qe.User != "u" {
		t.Fatalf("one octet over: %v, want a permanent QuotaError", err)
	}
	for _, sub := range []string{"tmp", "new"} {
		if entries, _ := os.ReadDir(filepath.Join(root, "u", sub)); len(entries) != 0 {
			t.Errorf("%s/ holds %d files after a refusal", sub, len(entries))
		}
	}
	if _, err := a.Deliver(ctx, d, strings.NewReader(strings.Repeat("x", 100-header))); err != nil {
		t.Fatalf("exactly at the quota: %v", err)
	}
	if err := a.Check("u", 0); !errors.As(err, &qe) {
		t.Fatalf("Check of a full mailbox: %v", err)
	}
	// quota_storage=0 lifts the default limit for v.
	if _, err := a.Deliver(ctx, Delivery{User: "v"}, strings.NewReader(strings.Repeat("y", 1000))); err != nil {
		t.Fatalf("a user without quota: %v", err)
	}
	// The known size of a spooled message is checked before reading.
	a.QuotaTemporary = true
	r := &countReader{r: strings.NewReader("zz")}
	if _, err := a.Deliver(ctx, Delivery{User: "u", Size: 2, LineEnd: "\n"}, r); !errors.As(err, &qe) || !qe.Temporary {
		t.Fatalf("known size over quota: %v", err)
	}
	if r.n != 0 {
		t.Errorf("read %d octets of a message refused by its known size", r.n)
	}
}

func TestAgentSizeLimitAndInputErrors(t *testing.T) {
	a, root := newAgent(t, fakeUsers{"u": {}})
	a.MaxMessageSize = 10
	ctx := context.Background()
	if _, err := a.Deliver(ctx, Delivery{User: "u"}, strings.NewReader(strings.Repeat("x", 11))); !errors.Is(err, ErrTooBig) {
		t.Fatalf("11 octets over a limit of 10: %v", err)
	}
	if err := a.Check("u", 11); !errors.Is(err, ErrTooBig) {
		t.Fatalf("Check with a size over the limit: %v", err)
	}
	if _, err := a.Deliver(ctx, Delivery{User: "u"}, strings.NewReader(strings.Repeat("x", 10))); err != nil {
		t.Fatalf("10 octets: %v", err)
	}
	lost := errors.New("connection lost")
	_, err := a.Deliver(ctx, Delivery{User: "u"}, io.MultiReader(strings.NewReader("part"), errReader{lost}))
	var ie *InputError
	if !errors.As(err, &ie) || !errors.Is(err, lost) {
		t.Fatalf("a failing reader: %v, want an InputError", err)
	}
	if n := len(readNew(t, root, "u")); n != 1 {
		t.Fatalf("%d messages, want 1", n)
	}
}

// An account refused for a setting that cannot be read (here a malformed
// quota, never taken for no quota) is found, and its mail is held up:
// nothing is stored, and the error is the account's.
func TestAgentRefusedAccount(t *testing.T) {
	a, root := newAgent(t, nil)
	a.RecipientDelimiter = "+"
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte("u:{PLAIN}x::::::quota_messages=-3\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := auth.OpenUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	a.Users = users
	refused := func(err error) bool {
		return errors.Is(err, auth.ErrInvalidAccount) && strings.Contains(err.Error(), "quota_messages") &&
			!errors.Is(err, ErrUnknownUser) && !errors.Is(err, ErrUnconfirmed)
	}
	if user, err := a.User("u+tag"); user != "u" || !refused(err) {
		t.Errorf("User(u+tag) = %q, %v", user, err)
	}
	if err := a.Check("u", 0); !refused(err) {
		t.Errorf("Check: %v", err)
	}
	if _, err := a.Deliver(context.Background(), Delivery{User: "u"}, strings.NewReader("x\r\n")); !refused(err) {
		t.Errorf("Deliver: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "u", "new")); len(entries) != 0 {
		t.Errorf("%d messages stored for a refused account", len(entries))
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// Envelope addresses are written in RFC 5321 syntax: a local part that is
// not a Dot-string is quoted again.
func TestMailbox(t *testing.T) {
	for in, want := range map[string]string{
		"":                      "",
		"alice@example.org":     "alice@example.org",
		"a.b+c-d_e@x.test":      "a.b+c-d_e@x.test",
		"!#$%&'*/=?^`{|}~@x":    "!#$%&'*/=?^`{|}~@x",
		"caf\xc3\xa9@x.test":    "caf\xc3\xa9@x.test",
		"john doe@x.test":       `"john doe"@x.test`,
		`a"b\c@x.test`:          `"a\"b\\c"@x.test`,
		"a@b@x.test":            `"a@b"@x.test`,
		".alice@x.test":         `".alice"@x.test`,
		"al..ice@x.test":        `"al..ice"@x.test`,
		"alice.@x.test":         `"alice."@x.test`,
		"@x.test":               `""@x.test`,
		`"john doe"@x.test`:     `"john doe"@x.test`, // already quoted
		`"a\"b"@x.test`:         `"a\"b"@x.test`,
		`"unbalanced@x.test`:    `"\"unbalanced"@x.test`,
		"MAILER-DAEMON":         "MAILER-DAEMON",
		"john doe":              `"john doe"`,
		"alice(comment)@x.test": `"alice(comment)"@x.test`,
	} {
		if got := mailbox(in); got != want {
			t.Errorf("mailbox(%q) = %q, want %q", in, got, want)
		}
	}
}

// A piped message (pouch deliver) loses a leading mbox "From " line, and
// keeps the Return-Path and Delivered-To lines that the MTA wrote at the top
// instead of getting a second set.
func TestAgentPiped(t *testing.T) {
	a, root := newAgent(t, fakeUsers{"u": {}})
	ctx := context.Background()
	d := Delivery{User: "u", Recipient: "u", Sender: "s@x.test", Piped: true}
	for _, tc := range []struct{ msg, want string }{
		// Postfix's local(8) for a mailbox_command.
		{"From s@x.test  Thu Nov 26 01:42:30 2026\nReturn-Path: <s@x.test>\nX-Original-To: u@vm\nDelivered-To: u@vm\nReceived: by vm\n\nbody\n",
			"Return-Path: <s@x.test>\nX-Original-To: u@vm\nDelivered-To: u@vm\nReceived: by vm\n\nbody\n"},
		// CRLF, other case, Delivered-To first: still the MTA's block.
		{"From s@x.test Thu Nov 26 01:42:30 2026\r\ndelivered-to: u@vm\r\nRETURN-PATH: <>\r\nSubject: x\r\n\r\nbody\r\n",
			"delivered-to: u@vm\r\nRETURN-PATH: <>\r\nSubject: x\r\n\r\nbody\r\n"},
		// A From line alone: both lines added, with its line ending.
		{"From s@x.test Thu Nov 26 01:42:30 2026\r\nSubject: x\r\n\r\nbody\r\n",
			"Return-Path: <s@x.test>\r\nDelivered-To: u\r\nSubject: x\r\n\r\nbody\r\n"},
		// Only Return-Path at the top: Delivered-To is added.
		{"Return-Path: <s@x.test>\nSubject: x\n\nbody\n",
			"Delivered-To: u\nReturn-Path: <s@x.test>\nSubject: x\n\nbody\n"},
		// A Delivered-To further down (an earlier hop's) does not count.
		{"Received: by a\nDelivered-To: someone@else\nSubject: x\n\nbody\n",
			"Return-Path: <s@x.test>\nDelivered-To: u\nReceived: by a\nDelivered-To: someone@else\nSubject: x\n\nbody\n"},
		// "From " inside the message, or "From:" at the top, stays.
		{"From: a@b\n\nFrom here\n", "Return-Path: <s@x.test>\nDelivered-To: u\nFrom: a@b\n\nFrom here\n"},
		// A From line longer than the buffer, and nothing after it.
		{"From " + strings.Repeat("x", 10000) + "\n", "Return-Path: <s@x.test>\nDelivered-To: u\n"},
	} {
		before := len(readNew(t, root, "u"))
		n, err := a.Deliver(ctx, d, strings.NewReader(tc.msg))
		if err != nil {
			t.Fatalf("Deliver(%.40q): %v", tc.msg, err)
		}
		got := readNew(t, root, "u")
		found := false
		for _, g := range got {
			found = found || g == tc.want
		}
		if len(got) != before+1 || !found {
			t.Errorf("%.60q: stored %q, want %q", tc.msg, got, tc.want)
		}
		if from, _, _ := strings.Cut(tc.msg, "\n"); strings.HasPrefix(from, "From ") && n != int64(len(tc.msg)-len(from)-1) {
			t.Errorf("%.40q: %d octets counted, want the message without its From line", tc.msg, n)
		}
	}
	// Over LMTP (not piped) nothing is dropped or kept.
	msg := "From s@x.test Thu Nov 26 01:42:30 2026\nReturn-Path: <forged@x.test>\n\nbody\n"
	if _, err := a.Deliver(ctx, Delivery{User: "u", Recipient: "u", Sender: "s@x.test"}, strings.NewReader(msg)); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, g := range readNew(t, root, "u") {
		found = found || g == "Return-Path: <s@x.test>\nDelivered-To: u\n"+msg
	}
	if !found {
		t.Errorf("a message that is not piped was changed: %q", readNew(t, root, "u"))
	}
}

// Recipients are looked up by their whole address: two users with one
// local part in two domains are two accounts; the delimiter and the case of
// the local part apply at each domain; a user named without a domain takes
// mail at any domain; a bare recipient takes the default domain first.
func TestAgentUserAddresses(t *testing.T) {
	a, root := newAgent(t, fakeUsers{"alice@example.org": {}, "alice@example.net": {}, "bob": {}, "carol@example.org": {}})
	a.RecipientDelimiter = "+"
	for in, want := range map[string]string{
		"alice@example.org": "alice@example.org", "alice@example.net": "alice@example.net",
		"Alice@Example.NET": "alice@example.net", "alice+news@example.net": "alice@example.net",
		"alice@example.com": "", "alice": "", "bob@example.org": "bob", "bob@anything.test": "bob",
		"carol@example.net": "", "@example.org": "", "alice@": "",
	} {
		got, err := a.User(in)
		if got != want || (err == nil) != (want != "") {
			t.Errorf("User(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	a.DefaultDomain = "example.org"
	for in, want := range map[string]string{"alice": "alice@example.org", "alice+x": "alice@example.org", "bob": "bob"} {
		if got, err := a.User(in); got != want || err != nil {
			t.Errorf("with a default domain: User(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	ctx := context.Background()
	for _, u := range []string{"alice@example.org", "alice@example.net"} {
		if _, err := a.Deliver(ctx, Delivery{User: u, Recipient: u, NoReturnPath: true}, strings.NewReader("for "+u+"\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []string{"example.org/alice", "example.net/alice"} {
		if got := readNew(t, root, u); len(got) != 1 || !strings.Contains(got[0], "for alice@"+strings.Split(u, "/")[0]) {
			t.Errorf("%s holds %q", u, got)
		}
	}
}
