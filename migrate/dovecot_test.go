package migrate

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/client"
	"github.com/pouchmail/pouch/internal/dovecottest"
)

// These tests run Dovecot's POP3 server (internal/dovecottest) with the
// settings each needs, and compare what it lists with what the import reads.

// listing is what a POP3 server listed: UIDLs and sizes, in order.
type listing struct {
	uids  []string
	sizes []int64
}

// session logs in as alice, lists, retrieves the messages numbered in retr
// (1-based; a negative number -n deletes message n), and quits.
func session(t *testing.T, addr, pass string, retr ...int) listing {
	t.Helper()
	c, err := client.Dial(context.Background(), addr, client.Options{TLS: client.TLSNone, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.User("alice"); err != nil {
		t.Fatal(err)
	}
	if err := c.Pass(pass); err != nil {
		t.Fatal(err)
	}
	list, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	uidl, err := c.Uidl()
	if err != nil {
		t.Fatal(err)
	}
	var l listing
	for i := range list {
		l.sizes = append(l.sizes, list[i].Size)
		l.uids = append(l.uids, uidl[i].UID)
	}
	for _, n := range retr {
		if n < 0 { // DELE -n
			if err := c.Dele(-n); err != nil {
				t.Fatal(err)
			}
			continue
		}
		r, err := c.Retr(n)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, r)
		r.Close()
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	return l
}

// testMessages are stored as other programs store them: LF and CRLF line
// ends, a last line without line end, dots, a long line, 8-bit text.
var testMessages = []string{
	"Return-Path: <a@example.org>\nDelivered-To: alice@example.org\nReceived: from mx.example.org\n\tby pouch; Tue, 1 Jul 2025 10:00:00 +0000\nDate: Tue, 1 Jul 2025 10:00:00 +0000\nMessage-ID: <1@example.org>\nSubject: one\n\nfirst\n",
	"Date: Wed, 2 Jul 2025 10:00:00 +0000\r\nMessage-ID: <2@example.org>\r\nSubject: two\r\n\r\nsecond\r\n.\r\n",
	"Subject: three\nMessage-ID: <3@example.org>\n\nno final line end",
	"X-Delivery-ID: 42\nSubject: four\n\n." + strings.Repeat("long ", 5000) + "\n",
	"Received: from a\nReceived: from b\nDate: Thu, 3 Jul 2025 10:00:00 +0000\nSubject: f\xfcnf\n\n\xe4\xf6\xfc\n",
}

// dropMessages writes msgs into dir/new with Dovecot-style names, from the
// time t on.
func dropMessages(t *testing.T, dir string, from int, msgs []string) {
	t.Helper()
	for i, m := range msgs {
		name := fmt.Sprintf("%d.M%dP%d.old.example.org", 1751000000+from+i, 100+from+i, 4000+from+i)
		if err := os.WriteFile(filepath.Join(dir, "new", name), []byte(m), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// scanUIDs returns the UIDLs Scan gives the Maildir, in order.
func scanUIDs(t *testing.T, dir string, opt Options) (*Source, []string) {
	t.Helper()
	src, err := Scan(dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	var uids []string
	for _, m := range src.Messages {
		uids = append(uids, m.UID)
	}
	return src, uids
}

func TestScanAgreesWithDovecot(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"", "%f", "%g", "%u.%v", "%08Xu%08Xv%%", "%Lf"} {
		t.Run(cmpName(format), func(t *testing.T) {
			t.Parallel()
			d := dovecottest.New(t)
			dropMessages(t, d.Maildir(), 0, testMessages)
			extra := ""
			if format != "" {
				extra = "pop3_uidl_format = " + format
			}
			d.Start("maildir:"+d.Dir+"/mail/%u", extra)
			got := session(t, d.Addr, dovecottest.Password, 1, 3)
			// More mail, not yet seen by any client: listed at the end,
			// and given UIDLs that clients do not know yet.
			dropMessages(t, d.Maildir(), 10, testMessages[:2])
			d.Stop()
			src, uids := scanUIDs(t, d.Maildir(), Options{Format: format})
			if src.From != FromDovecot || len(uids) != len(testMessages)+2 {
				t.Fatalf("from %s, %d messages", src.From, len(uids))
			}
			if strings.Join(uids[:len(testMessages)], " ") != strings.Join(got.uids, " ") {
				t.Errorf("UIDLs\n got %q\nwant %q (Dovecot's)", uids[:len(testMessages)], got.uids)
			}
			for i, m := range src.Messages {
				if listed := i < len(testMessages); m.Listed != listed {
					t.Errorf("message %d listed: %v", i+1, m.Listed)
				}
				if retrieved := i == 0 || i == 2; !m.Seen.IsZero() != retrieved {
					t.Errorf("message %d: first retrieval %v, retrieved %v", i+1, m.Seen, retrieved)
				}
			}
		})
	}
}

func cmpName(format string) string {
	if format == "" {
		return "default"
	}
	return strings.NewReplacer("%", "", "{", "", "}", "").Replace(format)
}

// TestSavedUIDLsAndOrderAgreeWithDovecot hands Dovecot a dovecot-uidlist as
// a migration leaves it (saved P UIDLs, one empty, with octets that cannot
// be in a file name; POP3 order O for some), and checks that Scan gives the
// UIDLs in the order Dovecot lists them.
func TestSavedUIDLsAndOrderAgreeWithDovecot(t *testing.T) {
	t.Parallel()
	d := dovecottest.New(t)
	md := d.Maildir()
	var names []string
	for i, m := range testMessages {
		name := fmt.Sprintf("%d.M%dP1.old.example.org", 1751000000+i, i)
		names = append(names, name)
		if err := os.WriteFile(filepath.Join(md, "cur", name+":2,"), []byte(m), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	uidlist := "3 V1751000000 N6 G" + strings.Repeat("ab", 16) + "\n" +
		"1 P/saved:one O3 :" + names[0] + "\n" +
		"2 :" + names[1] + "\n" +
		"3 P O1 :" + names[2] + ":2,\n" +
		"4 P.dot+slash/ :" + names[3] + "\n" +
		"5 O2 :" + names[4] + "\n"
	os.WriteFile(filepath.Join(md, "dovecot-uidlist"), []byte(uidlist), 0o600)
	d.Start("maildir:"+d.Dir+"/mail/%u", "")
	got := session(t, d.Addr, dovecottest.Password)
	d.Stop()
	_, uids := scanUIDs(t, md, Options{})
	if strings.Join(uids, " ") != strings.Join(got.uids, " ") {
		t.Fatalf("UIDLs\n got %q\nwant %q (Dovecot's)", uids, got.uids)
	}
	// Dovecot's order: O1, O2, O3, then the rest by UID.
	want := []string{names[2], fmt.Sprintf("%08x%08x", 5, 1751000000), "/saved:one",
		fmt.Sprintf("%08x%08x", 2, 1751000000), ".dot+slash/"}
	if strings.Join(got.uids, " ") != strings.Join(want, " ") {
		t.Errorf("Dovecot lists %q, want %q", got.uids, want)
	}
}

// TestHeaderMD5AgreesWithDovecot runs Dovecot on an mbox with
// pop3_uidl_format = %m and checks HeaderMD5 of each message, as a Maildir
// file made from the mbox holds it, against Dovecot's UIDL.
func TestHeaderMD5AgreesWithDovecot(t *testing.T) {
	t.Parallel()
	d := dovecottest.New(t)
	msgs := append([]string{}, testMessages...)
	msgs = append(msgs,
		"Received: from x\n  (folded)\n  by y\nReceived: from z\nDate: ignored after Received\nMessage-Id: <ignored@x>\nDELIVERED-TO: upper@example.org\n\nbody\n",
		"Subject: no date\n\nbody\n",
		"Date:no space\nMessage-ID :  <spaces@x>  \nX-Delivery-ID:\t tab\n\nbody\n",
		"Date: Fri, 4 Jul 2025 10:00:00 +0000\r\nReceived: from crlf\r\n\tcontinued\r\nMessage-ID: <after@x>\r\n\r\nbody\r\n",
		"Delivered-To: first\nDelivered-To: second\nReceived: from a\n\nbody\n",
	)
	var mbox strings.Builder
	for _, m := range msgs {
		// A last line without line end needs one before the next "From ".
		fmt.Fprintf(&mbox, "From sender@example.org Tue Jul  1 10:00:00 2025\n%s\n", strings.TrimSuffix(m, "\n")+"\n")
	}
	inbox := filepath.Join(d.Dir, "mail", "alice", "inbox")
	if err := os.WriteFile(inbox, []byte(mbox.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	d.Start("mbox:"+d.Dir+"/mail/%u:INBOX="+d.Dir+"/mail/%u/inbox", "pop3_uidl_format = %m")
	got := session(t, d.Addr, dovecottest.Password)
	d.Stop()
	if len(got.uids) != len(msgs) {
		t.Fatalf("Dovecot lists %d messages, want %d:\n%s", len(got.uids), len(msgs), d.Log())
	}
	for i, m := range msgs {
		sum, err := HeaderMD5(strings.NewReader(m))
		if err != nil {
			t.Fatal(err)
		}
		if sum != got.uids[i] {
			t.Errorf("message %d: HeaderMD5 %s, Dovecot's UIDL %s", i+1, sum, got.uids[i])
		}
	}
}

// TestDeletedFlagAgreesWithDovecot: with pop3_deleted_flag, Dovecot keeps
// what POP3 clients delete, flagged, and hides it from POP3; the import
// leaves it behind.
func TestDeletedFlagAgreesWithDovecot(t *testing.T) {
	t.Parallel()
	d := dovecottest.New(t)
	dropMessages(t, d.Maildir(), 0, testMessages)
	d.Start(d.MaildirLocation(), "pop3_deleted_flag = POP3Deleted")
	session(t, d.Addr, dovecottest.Password, -2, -4)
	got := session(t, d.Addr, dovecottest.Password)
	d.Stop()
	if len(got.uids) != len(testMessages)-2 {
		t.Fatalf("Dovecot lists %d messages after deleting 2 of %d:\n%s", len(got.uids), len(testMessages), d.Log())
	}
	src, uids := scanUIDs(t, d.Maildir(), Options{DeletedFlag: "pop3deleted"})
	if strings.Join(uids, " ") != strings.Join(got.uids, " ") || src.Hidden != 2 {
		t.Errorf("UIDLs\n got %q (%d hidden)\nwant %q (Dovecot's)", uids, src.Hidden, got.uids)
	}
	if _, uids := scanUIDs(t, d.Maildir(), Options{}); len(uids) != len(testMessages) {
		t.Errorf("without the flag, %d messages", len(uids))
	}
}
