package interop_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pouchmail/pouch/internal/dovecottest"
)

// The move from Dovecot: Dovecot serves a Maildir and mpop, keeping mail on
// the server, downloads it; more mail arrives; Dovecot stops and pouch
// import brings the Maildir over; Pouch serves it, and the same mpop with
// its UIDLs file downloads exactly the new mail, and then nothing.

// popListing is what a POP3 server lists, in order.
type popListing struct {
	uids  []string
	sizes []int
}

func listing(t *testing.T, addr, user, pass string) popListing {
	t.Helper()
	c := dialPOP3(t, addr)
	c.login(user, pass)
	var l popListing
	c.cmd("LIST", "+OK")
	for _, line := range strings.Split(strings.TrimSuffix(c.multiLine(), ".\r\n"), "\r\n") {
		var n, size int
		if _, err := fmt.Sscanf(line, "%d %d", &n, &size); err == nil {
			l.sizes = append(l.sizes, size)
		}
	}
	c.cmd("UIDL", "+OK")
	for _, line := range strings.Split(strings.TrimSuffix(c.multiLine(), ".\r\n"), "\r\n") {
		if _, uid, ok := strings.Cut(line, " "); ok {
			l.uids = append(l.uids, uid)
		}
	}
	c.cmd("QUIT", "+OK")
	return l
}

// mpopRun is one run of mpop, keeping mail on the server, against addr,
// delivering into md and remembering UIDLs in uidls.
func mpopRun(t *testing.T, dir, home, addr, pass, md, uidls string) string {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	rc := filepath.Join(dir, "mpoprc")
	writeFile(t, rc, fmt.Sprintf("account default\nhost %s\nport %s\ntls off\nuser alice\npassword %s\nauth user\ndelivery maildir %s\n",
		host, port, pass, md), 0o600)
	return mustClient(t, dir, home, nil, "mpop", "-C", rc, "--timeout=30", "--keep=on",
		"--received-header=off", "--uidls-file="+uidls)
}

// mailIn returns the contents of the messages mpop delivered into md.
func mailIn(t *testing.T, md string) []string {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(md, "new", "*"))
	var out []string
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	slices.Sort(out)
	return out
}

func dropInto(t *testing.T, dir string, from int, msgs []string) {
	t.Helper()
	for i, m := range msgs {
		name := fmt.Sprintf("%d.M%dP%d.old.example.org", 1751000000+from+i, from+i, 100+from+i)
		if err := os.WriteFile(filepath.Join(dir, "new", name), []byte(m), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestImportFromDovecotWithMpop(t *testing.T) {
	requireTool(t, "mpop")
	dovecottest.Require(t)
	var first []string
	for _, m := range testMessages {
		first = append(first, m.content)
	}
	second := []string{"Subject: five\n\nfifth\n", "Subject: six\r\n\r\nsixth\r\n"}
	late := []string{"Subject: late one\n\narrived after the last session\n", "Subject: late two\n\n.\n..\n"}
	for _, tc := range []struct {
		name   string
		config string // Dovecot's settings while mpop downloads first
		later  string // and then second, if set
		format string // --uidl-format of the import
		move   bool
	}{
		{name: "default"},
		{name: "filename", config: "pop3_uidl_format = %f", format: "%f"},
		{name: "saved", config: "pop3_uidl_format = %f\npop3_save_uidl = yes", later: "pop3_save_uidl = yes"},
		{name: "move", move: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := dovecottest.New(t)
			dropInto(t, d.Maildir(), 0, first)
			d.Start(d.MaildirLocation(), tc.config)
			dir, home := clientDir(t)
			md, uidls := filepath.Join(dir, "md"), filepath.Join(home, "uidls")
			for _, sub := range []string{"new", "cur", "tmp"} {
				os.MkdirAll(filepath.Join(md, sub), 0o700)
			}
			mpopRun(t, dir, home, d.Addr, dovecottest.Password, md, uidls)
			known := len(first)
			if tc.later != "" {
				// The site changes its UIDL format; the UIDLs it saved
				// stay, and new mail gets the new format.
				dropInto(t, d.Maildir(), 10, second)
				d.Start(d.MaildirLocation(), tc.later)
				mpopRun(t, dir, home, d.Addr, dovecottest.Password, md, uidls)
				known += len(second)
			}
			if n := len(mailIn(t, md)); n != known {
				t.Fatalf("mpop downloaded %d messages from Dovecot, want %d", n, known)
			}
			old := listing(t, d.Addr, "alice", dovecottest.Password)
			// Mail that no client saw, then the cut-over: POP3 stops on
			// the old server, and the final import runs.
			dropInto(t, d.Maildir(), 20, late)
			d.Stop()
			data := newData(t)
			args := []string{"import", "maildir", "--data", data}
			if tc.format != "" {
				args = append(args, "--uidl-format", tc.format)
			}
			if tc.move {
				args = append(args, "--move")
			}
			out := pouchImport(t, 0, append(args, "alice", d.Maildir())...)
			if want := fmt.Sprintf("%d under the UIDLs their clients know, %d new to clients", known, len(late)); !strings.Contains(out, want) {
				t.Errorf("import summary %q lacks %q", out, want)
			}
			// Run again: nothing twice.
			if out := pouchImport(t, 0, append(args, "alice", d.Maildir())...); !strings.Contains(out, ": 0 imported") {
				t.Errorf("second import: %q", out)
			}
			s := startServer(t, data)
			got := listing(t, s.addr, "alice", "secret one")
			if len(got.uids) != known+len(late) || !slices.Equal(got.uids[:known], old.uids) {
				t.Fatalf("Pouch lists UIDLs\n%q\nDovecot listed\n%q", got.uids, old.uids)
			}
			for i := range old.sizes {
				// Dovecot does not count the CRLF it adds to a last line
				// without line end (TestSameBytesAsDovecot); Pouch does.
				noEnd := strings.HasSuffix(first[min(i, len(first)-1)], "last line") && i < len(first)
				if got.sizes[i] != old.sizes[i] && !(noEnd && got.sizes[i] == old.sizes[i]+2) {
					t.Errorf("message %d: Pouch lists %d octets, Dovecot %d", i+1, got.sizes[i], old.sizes[i])
				}
			}
			before := mailIn(t, md)
			mpopRun(t, dir, home, s.addr, "secret one", md, uidls)
			after := mailIn(t, md)
			if len(after) != known+len(late) {
				t.Fatalf("mpop has %d messages after Pouch, want %d (only the %d new ones downloaded)", len(after), known+len(late), len(late))
			}
			var fresh []string
			for _, m := range after {
				if i := slices.Index(before, m); i >= 0 {
					before = slices.Delete(before, i, i+1)
				} else {
					fresh = append(fresh, m)
				}
			}
			var want []string
			for _, m := range late {
				want = append(want, lfLines(m))
			}
			slices.Sort(want)
			if !slices.Equal(fresh, want) {
				t.Errorf("mpop downloaded from Pouch\n%q\nwant\n%q", fresh, want)
			}
			mpopRun(t, dir, home, s.addr, "secret one", md, uidls)
			if n := len(mailIn(t, md)); n != known+len(late) {
				t.Errorf("a second mpop run downloaded %d more", n-known-len(late))
			}
			if tc.move {
				if n := mailFiles(t, d.Dir, "alice"); n != 0 {
					t.Errorf("%d files left in the old Maildir after --move", n)
				}
			}
		})
	}
}

// pouchImport runs pouch import and returns its standard output; the test
// fails unless it exits with code.
func pouchImport(t *testing.T, code int, args ...string) string {
	t.Helper()
	cmd := exec.Command(pouchBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if got := cmd.ProcessState.ExitCode(); got != code {
		t.Fatalf("pouch %s: %v (exit %d, want %d)\n%s%s", strings.Join(args, " "), err, got, code, out.String(), errb.String())
	}
	return out.String()
}

// TestImportFromCourierWithMpop imports a Maildir that Courier's POP3
// server left (courierpop3dsizelist, version 3, written as Courier writes
// it), for an mpop whose UIDLs file lists what Courier showed it: mpop then
// downloads from Pouch exactly the messages Courier had not listed.
func TestImportFromCourierWithMpop(t *testing.T) {
	requireTool(t, "mpop")
	old := t.TempDir()
	for _, sub := range []string{"new", "cur", "tmp"} {
		os.MkdirAll(filepath.Join(old, sub), 0o700)
	}
	msgs := []string{"Subject: c1\n\none\n", "Subject: c2\n\ntwo\n", "Subject: c3\n\nno line end", "Subject: c4\n\n.dot\n",
		"Subject: c5 (not listed)\n\nnew\n", "Subject: c6 (not listed)\n\nnewer\n"}
	const uidv = 1751000000
	list := fmt.Sprintf("/3 5 %d\n", uidv)
	var courierUIDs []string
	for i, m := range msgs {
		name := fmt.Sprintf("%d.M%dP%dV0000000000000803I00000000000%05d_0.mail.example.org,S=%d", 1751000000+i, 100+i, 7000+i, i, len(m))
		file := name + ":2,"
		if i < 2 {
			file += "S" // retrieved
		}
		if err := os.WriteFile(filepath.Join(old, "cur", file), []byte(m), 0o600); err != nil {
			t.Fatal(err)
		}
		if i < 4 {
			size := len(canonical(m))
			list += fmt.Sprintf("%s %d %d:%d:0\n", file, size, i+1, uidv)
			courierUIDs = append(courierUIDs, fmt.Sprintf("UID%d-%d", i+1, uidv))
		}
	}
	writeFile(t, filepath.Join(old, "courierpop3dsizelist"), list, 0o644)
	data := newData(t)
	out := pouchImport(t, 0, "import", "maildir", "--data", data, "alice", old)
	if !strings.Contains(out, "UIDLs from courierpop3dsizelist") || !strings.Contains(out, "4 under the UIDLs their clients know, 2 new to clients") {
		t.Errorf("import summary: %q", out)
	}
	// The retrieved state came along: the first two count as retrieved.
	if stats := pouch(t, "", "mailbox", "stats", "--data", data, "alice"); !regexp.MustCompile(`(?m)^retrieved +2$`).MatchString(stats) {
		t.Errorf("mailbox stats after the import:\n%s", stats)
	}
	s := startServer(t, data)
	got := listing(t, s.addr, "alice", "secret one")
	if len(got.uids) != len(msgs) || !slices.Equal(got.uids[:4], courierUIDs) {
		t.Fatalf("Pouch lists %q, want Courier's %q first", got.uids, courierUIDs)
	}
	for i := 0; i < 4; i++ {
		if got.sizes[i] != len(canonical(msgs[i])) {
			t.Errorf("message %d: Pouch lists %d octets, Courier listed %d", i+1, got.sizes[i], len(canonical(msgs[i])))
		}
	}
	// mpop's UIDLs file as it was when Courier served the mailbox.
	dir, home := clientDir(t)
	md, uidls := filepath.Join(dir, "md"), filepath.Join(home, "uidls")
	for _, sub := range []string{"new", "cur", "tmp"} {
		os.MkdirAll(filepath.Join(md, sub), 0o700)
	}
	sorted := slices.Clone(courierUIDs)
	slices.Sort(sorted)
	writeFile(t, uidls, fmt.Sprintf(" %d %s alice\n%s\n", len(sorted), s.host(), strings.Join(sorted, "\n")), 0o600)
	mpopRun(t, dir, home, s.addr, "secret one", md, uidls)
	fresh := mailIn(t, md)
	want := []string{lfLines(msgs[4]), lfLines(msgs[5])}
	slices.Sort(want)
	if !slices.Equal(fresh, want) {
		t.Errorf("mpop downloaded\n%q\nwant only the messages Courier had not listed\n%q", fresh, want)
	}
}
