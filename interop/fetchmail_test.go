package interop_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// What fetchmail 6.4 hands an MDA (the "mda" option), from the wire form:
//
//   - Line ends: CRLF becomes LF.
//   - A Received header, unless "set invisible" (--invisible): three lines put
//     before the first Received: field of the message, or at its top when it
//     has none (transact.c, readheaders):
//     "Received: from SERVER [IP]\n\tby LOCALHOST with POP3 (fetchmail-VERSION)\n\tfor <USER@LOCALHOST> (single-drop); DATE\n"
//     (fetchmailReceivedRE). Nothing else is added: no X-Fetchmail-Warning
//     (only for NULs or rejected recipients), no Delivered-To, no Status.
//   - Lines longer than its buffer: readbody reads a body line with
//     SockRead into MSGBUFSIZE (8192) octets, so at most 8191 octets at a
//     time, and a line longer than that arrives in pieces. Each piece but
//     the last is handed on as the piece, the NUL that SockRead put after
//     it, the one octet of the buffer after that (never written, so whatever
//     the stack held there) and the guard CRLF that readbody writes at the
//     end of its buffer; so a 20,000-octet line becomes 8191 octets, "\x00",
//     one unspecified octet, LF, 8191 octets, "\x00", one octet, LF, and the
//     last 3618 octets with their LF (fetchmailForm). RFC 5322 allows at
//     most 998 octets per line, so this is fetchmail's limit, not the
//     server's; the comparison is exact except for those unspecified octets.
//
// With "keep" fetchmail reads each message with "TOP n 99999999" instead of
// RETR (so that servers do not mark it read); without it, it sends RETR and
// DELE for each message after the MDA accepted it, then QUIT.
//
// fetchmail 6.4 requires TLS by default (sslcertck is on, which makes it
// insist on STLS); the plaintext runs turn that off with sslproto "" and
// no sslcertck.
const fetchmailChunk = 8191

var fetchmailReceivedRE = regexp.MustCompile(`^Received: from \S+ \[[0-9.]+\]\n` +
	`\tby \S+ with POP3 \(fetchmail-[0-9][^)\n]*\)\n` +
	`\tfor <[^>\n]+> \(single-drop\); [^\n]+\n`)

// fetchmailForm is what fetchmail gives its MDA for msg with "set invisible";
// wild lists the offsets of octets it takes from uninitialised memory.
func fetchmailForm(msg string) (want string, wild []int) {
	var b strings.Builder
	for _, line := range strings.SplitAfter(canonical(msg), "\r\n") {
		for len(line) > fetchmailChunk {
			b.WriteString(line[:fetchmailChunk])
			b.WriteByte(0)
			wild = append(wild, b.Len())
			b.WriteString("?\n")
			line = line[fetchmailChunk:]
		}
		b.WriteString(lf(line))
	}
	return b.String(), wild
}

// sameBut compares got with want except at the wild offsets, where got may
// hold any one octet or none (a CR there is taken by fetchmail's own CRLF to
// LF step); it returns a description of the first difference, or "".
func sameBut(got, want string, wild []int) string {
	g := []byte(got)
	var fixed []byte // got with its wild octets replaced by want's
	prev := 0
	for _, w := range wild {
		seg := want[prev:w]
		if !strings.HasPrefix(string(g), seg) {
			break
		}
		fixed = append(fixed, seg...)
		g = g[len(seg):]
		next := want[w+1:]
		if end := min(len(next), 64); !strings.HasPrefix(string(g), next[:end]) && len(g) > 0 {
			g = g[1:] // the octet is there, with whatever value
		}
		fixed = append(fixed, want[w])
		prev = w + 1
	}
	fixed = append(fixed, g...)
	if string(fixed) != want {
		return diff(string(fixed), want)
	}
	return ""
}

type fetchmailRun struct {
	t          *testing.T
	s          *server
	data       string
	dir, home  string
	out        string
	tls        bool
	keep, uidl bool
	invisible  bool
	apop       bool // proto APOP as carol, instead of POP3 with auth password as alice
}

func newFetchmailRun(t *testing.T, s *server, data string) *fetchmailRun {
	dir, home := clientDir(t)
	r := &fetchmailRun{t: t, s: s, data: data, dir: dir, home: home, out: filepath.Join(dir, "out")}
	if err := os.Mkdir(r.out, 0o700); err != nil {
		t.Fatal(err)
	}
	// The MDA: one file per message.
	writeFile(t, filepath.Join(dir, "deliver.sh"),
		"#!/bin/sh\nexec cat > \"$(mktemp "+r.out+"/msg.XXXXXX)\"\n", 0o700)
	return r
}

// run runs fetchmail once and returns its output and exit code (0: mail
// delivered, 1: no mail).
func (r *fetchmailRun) run() (string, int) {
	t := r.t
	t.Helper()
	var rc strings.Builder
	if r.invisible {
		rc.WriteString("set invisible\n")
	}
	host, port := r.s.host(), r.s.port()
	if r.tls {
		host, port = "localhost", r.s.tlsPort()
	}
	proto, auth, user, pass := "pop3", " auth password", "alice", "secret one"
	if r.apop {
		proto, auth, user, pass = "apop", "", "carol", "tanstaaf"
	}
	fmt.Fprintf(&rc, "poll %s port %s proto %s", host, port, proto)
	if r.uidl {
		rc.WriteString(" uidl")
	}
	fmt.Fprintf(&rc, "%s\n", auth)
	fmt.Fprintf(&rc, "  user \"%s\" there password \"%s\" is \"%s\" here\n", user, pass, user)
	fmt.Fprintf(&rc, "  mda \"%s\"\n", filepath.Join(r.dir, "deliver.sh"))
	if r.keep {
		rc.WriteString("  keep\n")
	}
	if r.tls {
		fmt.Fprintf(&rc, "  ssl sslcertck sslcertfile \"%s\"\n", caFile(r.data))
	} else {
		rc.WriteString("  sslproto \"\" no sslcertck\n")
	}
	rcfile := filepath.Join(r.dir, "fetchmailrc")
	writeFile(t, rcfile, rc.String(), 0o600) // fetchmail refuses a readable rc file
	return client(t, r.dir, r.home, []string{"FETCHMAILHOME=" + r.home}, "fetchmail",
		"-f", rcfile, "--idfile", filepath.Join(r.home, "fetchids"),
		"--pidfile", filepath.Join(r.home, "fetchmail.pid"), "--nosyslog", "-v")
}

// check compares what the MDA received with fetchmailForm of every test
// message (and the Received header when not invisible).
func (r *fetchmailRun) check(log string) {
	t := r.t
	t.Helper()
	got := readMessages(t, filepath.Join(r.out, "*"))
	for id, g := range got {
		if !r.invisible {
			rcvd := fetchmailReceivedRE.FindString(g)
			if rcvd == "" {
				t.Errorf("fetchmail message %s does not start with fetchmail's Received header:\n%q", id, clip(g, 300))
				continue
			}
			got[id] = g[len(rcvd):]
		}
	}
	for _, m := range testMessages {
		id := messageID(m.content)
		g, ok := got[id]
		if !ok {
			t.Errorf("fetchmail: message %s (%s) was not delivered", id, m.name)
			continue
		}
		want, wild := fetchmailForm(m.content)
		if d := sameBut(g, want, wild); d != "" {
			t.Errorf("fetchmail: message %s differs: %s", id, d)
		}
	}
	if len(got) != len(testMessages) {
		t.Errorf("fetchmail delivered %d messages, want %d", len(got), len(testMessages))
	}
	if t.Failed() {
		t.Logf("fetchmail output:\n%s", log)
	}
}

func TestFetchmail(t *testing.T) {
	t.Parallel()
	requireTool(t, "fetchmail")
	{
		dir, home := clientDir(t)
		out, _ := client(t, dir, home, []string{"FETCHMAILHOME=" + home}, "fetchmail", "--version")
		if m := regexp.MustCompile(`This is fetchmail release \S+`).FindString(out); m != "" {
			t.Log(m)
		}
	}

	// The default: RETR, DELE after delivery, QUIT. The Received header is
	// left on and stripped here.
	for _, tls := range []bool{false, true} {
		name := "plain/delete"
		if tls {
			name = "tls/delete"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			data := newData(t)
			dropAll(t, data, "alice")
			s := startServer(t, data)
			r := newFetchmailRun(t, s, data)
			r.tls, r.invisible = tls, !tls
			out, code := r.run()
			if code != 0 {
				t.Fatalf("fetchmail: exit %d\n%s", code, out)
			}
			r.check(out)
			checkLogins(t, s, "alice PASS") // auth password: USER/PASS
			if n := mailFiles(t, data, "alice"); n != 0 {
				t.Errorf("%d messages left after fetchmail, want 0\n%s", n, out)
			}
		})
	}

	// APOP (proto APOP), for a {PLAIN} user.
	t.Run("plain/apop/delete", func(t *testing.T) {
		t.Parallel()
		data := newData(t)
		addAPOPUser(t, data)
		s := startServer(t, data)
		r := newFetchmailRun(t, s, data)
		r.apop, r.invisible = true, true
		out, code := r.run()
		if code != 0 {
			t.Fatalf("fetchmail: exit %d\n%s", code, out)
		}
		r.check(out)
		checkLogins(t, s, "carol APOP")
		if n := mailFiles(t, data, "carol"); n != 0 {
			t.Errorf("%d messages left after fetchmail, want 0\n%s", n, out)
		}
	})

	// keep + uidl: everything downloaded and left on the server; the next
	// run finds nothing new by UIDL.
	for _, tls := range []bool{false, true} {
		name := "plain/keep-uidl"
		if tls {
			name = "tls/keep-uidl"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			data := newData(t)
			dropAll(t, data, "alice")
			s := startServer(t, data)
			r := newFetchmailRun(t, s, data)
			r.tls, r.keep, r.uidl, r.invisible = tls, true, true, true
			out, code := r.run()
			if code != 0 {
				t.Fatalf("fetchmail: exit %d\n%s", code, out)
			}
			r.check(out)
			if n := mailFiles(t, data, "alice"); n != len(testMessages) {
				t.Errorf("%d messages left after fetchmail --keep, want %d", n, len(testMessages))
			}
			ids, err := os.ReadFile(filepath.Join(r.home, "fetchids"))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range testMessages {
				if !strings.Contains(string(ids), " "+m.name+"\n") {
					t.Errorf("fetchmail's idfile does not list %s:\n%s", m.name, ids)
				}
			}
			out, code = r.run()
			if code != 1 { // 1: no mail
				t.Errorf("second fetchmail run: exit %d, want 1 (no new mail)\n%s", code, out)
			}
			if names, _ := filepath.Glob(filepath.Join(r.out, "*")); len(names) != len(testMessages) {
				t.Errorf("%d messages delivered after the second run, want %d", len(names), len(testMessages))
			}
			if n := mailFiles(t, data, "alice"); n != len(testMessages) {
				t.Errorf("%d messages left after fetchmail --keep twice, want %d", n, len(testMessages))
			}
			checkLogins(t, s, "alice PASS", "alice PASS")
		})
	}
}

func TestFetchmailFormTolerance(t *testing.T) {
	want, wild := fetchmailForm("a\r\n" + strings.Repeat("x", fetchmailChunk+5) + "\r\n")
	base := "a\n" + strings.Repeat("x", fetchmailChunk) + "\x00"
	for _, tc := range []struct {
		got string
		ok  bool
	}{
		{base + "Z\nxxxxx\n", true},
		{base + "\nxxxxx\n", true}, // the octet was a CR and went with the CRLF
		{base + "\n\nxxxxx\n", true},
		{base + "Z\nxxxx\n", false},
		{base + "ZZ\nxxxxx\n", false},
		{"b" + base[1:] + "Z\nxxxxx\n", false},
	} {
		if d := sameBut(tc.got, want, wild); (d == "") != tc.ok {
			t.Errorf("sameBut(%q…) = %q, want ok=%v", tc.got[len(tc.got)-10:], d, tc.ok)
		}
	}
}
