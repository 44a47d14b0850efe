package interop_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// uidls lists the UIDL of a logged-in session.
func (p *pop3Conn) uidls() []string {
	p.t.Helper()
	p.cmd("UIDL", "+OK")
	var out []string
	for {
		l, err := p.line()
		if err != nil {
			p.t.Fatal(err)
		}
		if l == "." {
			return out
		}
		_, uid, _ := strings.Cut(l, " ")
		out = append(out, uid)
	}
}

// A message deleted by a client inside the deletion window comes back with
// its original UIDL; with --as-new, with a new one.
func TestDeletionWindowRestore(t *testing.T) {
	data := newData(t)
	dropAll(t, data, "alice")
	s := startServerArgs(t, data, []string{"--deletion-window", "30d"})
	p := dialPOP3(t, s.addr)
	p.login("alice", "secret one")
	before := p.uidls()
	p.cmd("DELE 1", "+OK")
	p.cmd("DELE 3", "+OK")
	p.cmd("QUIT", "+OK")
	if n := mailFiles(t, data, "alice"); n != 2 {
		t.Fatalf("%d messages after QUIT, want 2", n)
	}
	out := pouch(t, "", "mailbox", "stats", "--data", data, "alice")
	if !strings.Contains(out, "2") {
		t.Errorf("stats: %s", out)
	}
	pouch(t, "", "mailbox", "restore", "--data", data, "alice")
	p = dialPOP3(t, s.addr)
	p.login("alice", "secret one")
	after := p.uidls()
	if !slices.Equal(slices.Sorted(slices.Values(after)), slices.Sorted(slices.Values(before))) {
		t.Fatalf("UIDLs after restore %v, want %v", after, before)
	}
	p.cmd("DELE 1", "+OK")
	p.cmd("QUIT", "+OK")
	pouch(t, "", "mailbox", "restore", "--as-new", "--data", data, "alice")
	p = dialPOP3(t, s.addr)
	p.login("alice", "secret one")
	again := p.uidls()
	p.cmd("QUIT", "+OK")
	if len(again) != 4 {
		t.Fatalf("%d messages after restore --as-new", len(again))
	}
	same := 0
	for _, u := range again {
		for _, b := range before {
			if u == b {
				same++
			}
		}
	}
	if same != 3 {
		t.Fatalf("restore --as-new kept the old UIDL: %v vs %v", again, before)
	}
	audit, _ := os.ReadFile(filepath.Join(data, "audit.log"))
	if strings.Count(string(audit), `"event":"restore"`) != 3 {
		t.Fatalf("audit log:\n%s", audit)
	}
}

// The sweeper of a running server expires old mail, leaves a held user's
// mail alone, and writes every expiry to the audit log; EXPIRE says so.
func TestExpirySweep(t *testing.T) {
	data := newData(t)
	dropAll(t, data, "alice") // delivered in 2023
	dropAll(t, data, "bob")
	pouch(t, "", "mailbox", "hold", "--reason", "case 7", "--data", data, "bob")
	s := startServerArgs(t, data, []string{"--expire", "30d", "--deletion-window", "1h", "--sweep-interval", "1s"})
	deadline := time.Now().Add(20 * time.Second)
	for mailFiles(t, data, "alice") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("alice still has %d messages\n%s", mailFiles(t, data, "alice"), s.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
	p := dialPOP3(t, s.addr)
	p.cmd("CAPA", "+OK")
	var capa []string
	for l, _ := p.line(); l != "."; l, _ = p.line() {
		capa = append(capa, l)
	}
	if !slices.Contains(capa, "EXPIRE 30") {
		t.Errorf("CAPA %v has no EXPIRE 30", capa)
	}
	p.login("bob", "hQ4v-Lw9xTz2pB")
	if u := p.uidls(); len(u) != 4 {
		t.Fatalf("held bob has %d messages", len(u))
	}
	p.cmd("QUIT", "+OK")
	audit, _ := os.ReadFile(filepath.Join(data, "audit.log"))
	if n := strings.Count(string(audit), `"event":"expire"`); n != 4 {
		t.Fatalf("%d expire events in the audit log:\n%s", n, audit)
	}
	if !strings.Contains(string(audit), `"event":"hold_set"`) {
		t.Fatalf("no hold_set in the audit log:\n%s", audit)
	}
}
