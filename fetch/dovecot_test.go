package fetch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/dovecottest"
)

// startDovecot runs Dovecot's POP3 server (internal/dovecottest) with user
// alice, whose Maildir first receives msgs.
func startDovecot(t testing.TB, msgs []string) *dovecottest.Server {
	t.Helper()
	d := dovecottest.New(t)
	for i, m := range msgs {
		name := fmt.Sprintf("%d.M%dP1.test", 1700000000+i, i)
		if err := os.WriteFile(filepath.Join(d.Maildir(), "new", name), []byte(m), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d.Start(d.MaildirLocation(), "")
	return d
}

// onServer counts the messages left in alice's Maildir.
func onServer(d *dovecottest.Server) int {
	n := 0
	for _, sub := range []string{"new", "cur"} {
		e, _ := os.ReadDir(filepath.Join(d.Maildir(), sub))
		n += len(e)
	}
	return n
}

func TestAgainstDovecot(t *testing.T) {
	msgs := testMessages(300)
	msgs = append(msgs, "Subject: crlf\r\n\r\n.\r\n..\r\nFrom x\r\n", "Subject: long\n\n"+strings.Repeat("w", 200000)+"\n")
	d := startDovecot(t, msgs)
	a := testAccount(t, d.Addr)
	a.Keep = time.Hour
	st, err := Run(context.Background(), a, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Fetched != len(msgs) || st.Deleted != 0 || st.Mechanism != "PLAIN" {
		t.Fatalf("%+v", st)
	}
	want := make([]string, len(msgs))
	for i, m := range msgs {
		want[i] = strings.ReplaceAll(m, "\r\n", "\n")
	}
	dir := strings.TrimPrefix(a.To, "maildir:")
	checkExactlyOnce(t, dir, want)
	st, err = Run(context.Background(), a, nil)
	if err != nil || st.Fetched != 0 || st.Kept != len(msgs) {
		t.Fatalf("second run: %+v %v", st, err)
	}
	a.Keep = 0
	st, err = Run(context.Background(), a, nil)
	if err != nil || st.Deleted != len(msgs) {
		t.Fatalf("third run: %+v %v", st, err)
	}
	if n := onServer(d); n != 0 {
		t.Fatalf("%d messages left in Dovecot", n)
	}
	checkExactlyOnce(t, dir, want)
}
