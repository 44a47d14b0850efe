package lmtp

// Interoperability with real MTAs from Debian's packages: swaks speaking LMTP,
// and a Postfix relaying to the LMTP listener. A test whose program is missing
// skips with a one-line reason, unless POUCH_REQUIRE_INTEROP=1, in which case
// it fails.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/testkit"
	"github.com/pouchmail/pouch/server"
	"github.com/pouchmail/pouch/store/maildir"
)

// requireProgram skips the test when a program is missing, or fails it under
// POUCH_REQUIRE_INTEROP=1.
func requireProgram(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		path, err = exec.LookPath("/usr/sbin/" + name) // root's PATH may lack it
	}
	if err != nil {
		testkit.SkipOrFail(t, "%s is not installed", name)
	}
	return path
}

// interopMessage has what tends to break: 8-bit text, lines starting with
// dots, a long line, an empty line at the end.
const interopMessage = "From: Sender <sender@sender.test>\r\n" +
	"To: Alice <alice@example.org>\r\n" +
	"Subject: interop caf\xc3\xa9\r\n" +
	"Date: Tue, 25 Nov 2025 18:00:00 +0000\r\n" +
	"Message-ID: <interop-1@sender.test>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Content-Transfer-Encoding: 8bit\r\n" +
	"\r\n" +
	".a line starting with a dot\r\n" +
	"..two dots\r\n" +
	".\r\n" +
	"gr\xc3\xbc\xc3\x9fe \xe2\x80\x94 8-bit\r\n"

func TestSwaks(t *testing.T) {
	swaks := requireProgram(t, "swaks")
	e := newEnv(t, func(c *Config) {
		users := maps.Clone(testUsers)
		users["postmaster"] = fakeUser{}
		c.Agent.Users = users
	})
	// With --no-data-fixup swaks sends the file as it is: give it the wire
	// form, dot-stuffed and ending with the final dot.
	wire := func(msg string) string {
		t.Helper()
		path := filepath.Join(t.TempDir(), "msg")
		stuffed := strings.ReplaceAll("\r\n"+msg, "\r\n.", "\r\n..")[2:]
		if err := os.WriteFile(path, []byte(stuffed+".\r\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	body := interopMessage + strings.Repeat("0123456789 ", 90) + "\r\n\r\n"
	file := wire(body)
	host, port, _ := net.SplitHostPort(e.addr)
	run := func(to string, extra ...string) (string, int) {
		args := append([]string{"--protocol", "LMTP", "--server", host, "--port", port, "--helo", "swaks.test",
			"--from", "sender@sender.test", "--to", to, "--timeout", "20"}, extra...)
		cmd := exec.Command(swaks, args...)
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	out, code := run("alice@example.org,carol@example.org", "--data", "@"+file, "--no-data-fixup")
	if code != 0 {
		t.Fatalf("swaks exit %d:\n%s", code, out)
	}
	for _, u := range []string{"alice", "carol"} {
		if !strings.Contains(out, "250 2.0.0 <"+u+"@example.org> Delivered") {
			t.Errorf("no per-recipient reply for %s:\n%s", u, out)
		}
		want := "Return-Path: <sender@sender.test>\r\nDelivered-To: " + u + "@example.org\r\n" + body
		if got := e.stored(u); len(got) != 1 || got[0] != want {
			t.Errorf("%s: stored %q\nwant %q", u, got, want)
		}
	}
	// Refusals: an unknown user at RCPT, a full mailbox after DATA.
	if out, code := run("nobody@example.org", "--data", "@"+file, "--no-data-fixup"); code != 24 || !strings.Contains(out, "550 5.1.1") {
		t.Errorf("unknown user: swaks exit %d, want 24 (no RCPT accepted):\n%s", code, out)
	}
	big := wire("Subject: big\r\n\r\n" + strings.Repeat("x", 3000) + "\r\n")
	if out, code := run("bob@example.org", "--data", "@"+big, "--no-data-fixup"); code != 26 || !strings.Contains(out, "552 5.2.2") {
		t.Errorf("over quota: swaks exit %d, want 26 (refused after data):\n%s", code, out)
	}
	e.nothingStored("bob")
	// Postmaster without a domain (RFC 5321 §4.5.1), as swaks --to postmaster
	// sends it.
	if out, code := run("postmaster", "--data", "@"+file, "--no-data-fixup"); code != 0 ||
		!strings.Contains(out, "RCPT TO:<postmaster>") || !strings.Contains(out, "250 2.0.0 <postmaster> Delivered") {
		t.Errorf("postmaster: swaks exit %d:\n%s", code, out)
	}
	if n := len(e.stored("postmaster")); n != 1 {
		t.Errorf("postmaster has %d messages, want 1", n)
	}

	// The Unix socket.
	sock := filepath.Join(t.TempDir(), "lmtp.sock")
	l, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := New(Config{Agent: e.agent, Logger: slog.New(slog.DiscardHandler)})
	go srv.Serve(l)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	cmd := exec.Command(swaks, "--protocol", "LMTP", "--socket", sock, "--from", "s@sender.test",
		"--to", "alice@example.org", "--data", "@"+file, "--no-data-fixup", "--timeout", "20")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("swaks over the socket: %v\n%s", err, out)
	}
	if n := len(e.stored("alice")); n != 2 {
		t.Errorf("alice has %d messages, want 2", n)
	}
}

// TestPostfix runs a Postfix of its own (config, queue and data directories
// in a temp dir, listening on loopback only, with the system's stock
// master.cf, so its daemons run chrooted as they do for users) that relays
// example.org to the LMTP listener, submits messages to it over SMTP, waits
// for delivery, and downloads them through Pouch's POP3 server to compare
// them byte for byte. docs/delivery.md's other recipes go through it too: the
// LMTP socket inside Postfix's queue directory, pouch deliver as a pipe(8)
// transport and as local(8)'s mailbox_command.
func TestPostfix(t *testing.T) {
	postfix := requireProgram(t, "postfix")
	if os.Geteuid() != 0 {
		testkit.SkipOrFail(t, "postfix needs root to start its master process")
	}
	stockMaster, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		testkit.SkipOrFail(t, "no stock master.cf: %v", err)
	}
	e := newEnv(t, func(c *Config) {
		c.Agent.RecipientDelimiter = "+" // pouch serve's default
		c.Agent.Users = unsureUsers{testUsers, "gina"}
	})
	// bob's mailbox is full when Postfix verifies him; LMTP accepts him at
	// RCPT all the same and refuses the message after DATA.
	if err := e.store.Deliver(context.Background(), "bob", strings.NewReader(strings.Repeat("f", 1024))); err != nil {
		t.Fatal(err)
	}
	_, lmtpPort, _ := net.SplitHostPort(e.addr)

	// Postfix daemons run as the postfix user: every directory on the way
	// must be searchable by it, so use a directory of our own, not t.TempDir.
	dir, err := os.MkdirTemp("", "pouch-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	conf := filepath.Join(dir, "conf")
	queue := filepath.Join(dir, "queue")
	for _, d := range []string{conf, queue, filepath.Join(dir, "data"), filepath.Join(queue, "etc")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The files that Debian's postfix service copies into the chroot.
	for _, f := range []string{"localtime", "services", "resolv.conf", "hosts", "host.conf", "nsswitch.conf"} {
		if b, err := os.ReadFile("/etc/" + f); err == nil {
			os.WriteFile(filepath.Join(queue, "etc", f), b, 0o644)
		}
	}
	// The data directory (master.lock) belongs to the mail_owner.
	pf, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("no postfix user: %v", err)
	}
	uid, _ := strconv.Atoi(pf.Uid)
	if err := os.Chown(filepath.Join(dir, "data"), uid, -1); err != nil {
		t.Fatal(err)
	}
	// A second listener on a Unix socket, for lmtp:unix:, as docs/delivery.md
	// sets it up: in a directory of Pouch's own inside the queue directory
	// (lmtp runs chrooted there), of group postfix and set-group-ID, so that
	// the socket gets Postfix's group (its daemons keep no other group).
	gid, _ := strconv.Atoi(pf.Gid)
	sockDir := filepath.Join(queue, "pouch")
	if err := os.Mkdir(sockDir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(sockDir, -1, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(sockDir, os.ModeSetgid|0o750); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(sockDir, "lmtp")
	sl, err := Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Sys().(*syscall.Stat_t).Gid != uint32(gid) || fi.Mode().Perm() != 0o660 {
		t.Fatalf("the socket in a set-group-ID directory: %v, %v; want mode 0660, group postfix", fi.Mode(), err)
	}
	sockSrv := New(Config{Agent: e.agent, Logger: slog.New(slog.DiscardHandler)})
	go sockSrv.Serve(sl)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		sockSrv.Shutdown(ctx)
	})
	// pouch deliver as Postfix's pipe(8) command, for pipe.example.org: the
	// sysexits statuses become Postfix's outcomes.
	bin := filepath.Join(dir, "pouch")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/pouch").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// And as local(8)'s mailbox_command, for the Unix account nobody.
	pipeData := filepath.Join(dir, "pipe-data")
	localData := filepath.Join(dir, "local-data")
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	nobodyUID, _ := strconv.Atoi(nobody.Uid)
	for data, users := range map[string]string{
		pipeData:  "alice:{PLAIN}x::::::\nbob:{PLAIN}x::::::quota_storage=100\nfrank:{PLAIN}x::::::\n",
		localData: "nobody:{PLAIN}x::::::\n",
	} {
		os.MkdirAll(data, 0o700)
		os.WriteFile(filepath.Join(data, "users"), []byte(users), 0o600)
		for _, p := range []string{data, filepath.Join(data, "users")} {
			if err := os.Chown(p, nobodyUID, -1); err != nil {
				t.Fatal(err)
			}
		}
	}
	smtpPort := strconv.Itoa(testkit.FreePort(t))
	maillog := filepath.Join(dir, "maillog")
	mainCf := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
maillog_file = %[2]s
maillog_file_prefixes = %[1]s
myhostname = postfix.pouch.test
mydomain = pouch.test
myorigin = $myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.2/32
alias_maps =
alias_database =
smtputf8_enable = no
biff = no
# As Debian's main.cf has it.
recipient_delimiter = +
# Unix accounts, delivered by local(8) through pouch deliver: docs/delivery.md's
# mailbox_command.
mydestination = local.pouch.test
mailbox_command = %[5]s deliver --data %[6]s -f "$SENDER" "$USER"
# The domain Pouch serves, relayed over LMTP: docs/delivery.md's virtual_transport style.
virtual_mailbox_domains = example.org, sock.example.org, pipe.example.org
virtual_mailbox_maps =
smtpd_reject_unlisted_recipient = no
# Unknown users are refused during the SMTP session: Postfix asks Pouch.
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination, reject_unverified_recipient
unverified_recipient_reject_code = 550
address_verify_poll_delay = 1s
virtual_transport = lmtp:inet:127.0.0.1:%[3]s
transport_maps = inline:{ sock.example.org=lmtp:unix:%[4]s, pipe.example.org=pouch: }
pouch_destination_recipient_limit = 1
# Nothing leaves this machine: bounces to other domains fail at once.
default_transport = error:no mail leaves this test
relay_transport = error:no mail leaves this test
delay_warning_time = 0
`, dir, maillog, lmtpPort, "pouch/lmtp", bin, localData)
	// The stock master.cf, with smtpd on a free loopback port instead of
	// port 25, and docs/delivery.md's pipe(8) transport.
	smtpd := regexp.MustCompile(`(?m)^smtp(\s+inet\s)`)
	if !smtpd.Match(stockMaster) {
		t.Fatalf("/etc/postfix/master.cf has no smtp inet service")
	}
	if m := regexp.MustCompile(`(?m)^lmtp\s+unix(\s+\S+){3}`).Find(stockMaster); m != nil {
		t.Logf("stock master.cf: %s (the fifth column is chroot)", m)
	}
	masterCf := smtpd.ReplaceAllString(string(stockMaster), "127.0.0.1:"+smtpPort+"${1}") + fmt.Sprintf(`
pouch     unix  -       n       n       -       -       pipe
  user=nobody null_sender= argv=%s deliver --data %s -f ${sender} ${recipient}
`, bin, pipeData)
	os.WriteFile(filepath.Join(conf, "main.cf"), []byte(mainCf), 0o644)
	os.WriteFile(filepath.Join(conf, "master.cf"), []byte(masterCf), 0o644)
	showLog := func() string { b, _ := os.ReadFile(maillog); return string(b) }
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("postfix's log:\n%s", showLog())
		}
	})
	start := exec.Command(postfix, "-c", conf, "start")
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("postfix start: %v\n%s\n%s", err, out, showLog())
	}
	t.Cleanup(func() {
		pid := filepath.Join(dir, "queue", "pid", "master.pid")
		if out, err := exec.Command(postfix, "-c", conf, "stop").CombinedOutput(); err != nil {
			t.Logf("postfix stop: %v\n%s", err, out)
		}
		if !waitMasterGone(pid, 10*time.Second) {
			exec.Command(postfix, "-c", conf, "abort").Run()
			waitMasterGone(pid, 5*time.Second)
		}
	})

	// Submit over SMTP once smtpd answers.
	var c *smtp.Client
	deadline := time.Now().Add(30 * time.Second)
	for {
		nc, err := net.DialTimeout("tcp", "127.0.0.1:"+smtpPort, time.Second)
		if err == nil {
			c = smtp.NewClient(nc)
			c.CommandTimeout, c.SubmissionTimeout = 20*time.Second, 20*time.Second
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("postfix's smtpd does not answer: %v\n%s", err, showLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer c.Close()
	if err := c.Hello("client.sender.test"); err != nil {
		t.Fatalf("EHLO: %v\n%s", err, showLog())
	}
	body := interopMessage + strings.Repeat("a line of a long enough message\r\n", 3000)
	submitFrom := func(from string, to []string, msg string) {
		t.Helper()
		if err := c.Mail(from, &smtp.MailOptions{Body: smtp.Body8BitMIME}); err != nil {
			t.Fatalf("MAIL: %v", err)
		}
		for _, r := range to {
			if err := c.Rcpt(r, nil); err != nil {
				t.Fatalf("RCPT %s: %v", r, err)
			}
		}
		w, err := c.Data()
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(w, msg)
		if err := w.Close(); err != nil {
			t.Fatalf("end of DATA: %v\n%s", err, showLog())
		}
	}
	submit := func(to []string, msg string) { t.Helper(); submitFrom("sender@sender.test", to, msg) }
	// An unknown user is refused at RCPT, after Postfix's probe over LMTP
	// (not from mynetworks, so that the restriction applies).
	if err := c.Mail("sender@sender.test", nil); err != nil {
		t.Fatal(err)
	}
	var se *smtp.SMTPError
	if err := c.Rcpt("nobody@example.org", nil); !errors.As(err, &se) || se.Code != 550 {
		t.Errorf("RCPT of an unknown user through Postfix: %v, want 550", err)
	}
	// A recipient that Pouch cannot confirm (its users file is unusable)
	// is deferred by the probe too: the sender is told to try again.
	if err := c.Rcpt("gina@example.org", nil); !errors.As(err, &se) || se.Code/100 != 4 {
		t.Errorf("RCPT of an unconfirmable user through Postfix: %v, want 4xx", err)
	}
	c.Reset()
	submit([]string{"alice@example.org", "carol@example.org"}, body)
	submit([]string{"bob@example.org"}, "Subject: too big for bob\r\n\r\n"+strings.Repeat("x", 3000)+"\r\n")
	viaSocket := "From: sender@sender.test\r\nTo: dave@sock.example.org\r\nDate: Tue, 25 Nov 2025 18:00:00 +0000\r\n" +
		"Message-ID: <interop-2@sender.test>\r\nSubject: through the socket\r\n\r\nhello\r\n"
	submit([]string{"dave@sock.example.org"}, viaSocket)
	submit([]string{"alice@pipe.example.org", "nobody@pipe.example.org"}, body)
	submit([]string{"bob@pipe.example.org"}, "Subject: too big for bob\r\n\r\n"+strings.Repeat("x", 3000)+"\r\n")
	submit([]string{"nobody@local.pouch.test"}, body)
	// A bounce (null sender) to extension addresses, over LMTP and pipe(8).
	bounce := "From: MAILER-DAEMON@sender.test\r\nDate: Tue, 25 Nov 2025 18:00:00 +0000\r\nSubject: Undelivered Mail\r\n" +
		"Message-ID: <interop-3@sender.test>\r\n\r\nsorry\r\n"
	submitFrom("", []string{"frank+news@example.org", "frank+list@pipe.example.org"}, bounce)
	c.Quit()
	// From mynetworks, without the probe: Postfix queues the message, and
	// its LMTP delivery is deferred, not bounced.
	nc, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}).Dial("tcp", "127.0.0.1:"+smtpPort)
	if err != nil {
		t.Fatal(err)
	}
	c = smtp.NewClient(nc)
	c.CommandTimeout, c.SubmissionTimeout = 20*time.Second, 20*time.Second
	if err := c.Hello("client.sender.test"); err != nil {
		t.Fatalf("EHLO from mynetworks: %v\n%s", err, showLog())
	}
	submit([]string{"gina@example.org"}, "Subject: for gina\r\n\r\nlater\r\n")
	c.Quit()

	// Wait (bounded) for Postfix to report every outcome (not the probes of
	// address verification, which say status=deliverable).
	outcome := regexp.MustCompile(`to=<([^>]+)>.*status=(sent|bounced|deferred)`)
	deadline = time.Now().Add(60 * time.Second)
	for {
		done := map[string]bool{}
		for _, m := range outcome.FindAllStringSubmatch(showLog(), -1) {
			done[m[1]] = true
		}
		if done["alice@example.org"] && done["carol@example.org"] && done["bob@example.org"] &&
			done["dave@sock.example.org"] && done["alice@pipe.example.org"] && done["nobody@pipe.example.org"] &&
			done["bob@pipe.example.org"] && done["nobody@local.pouch.test"] && done["frank+news@example.org"] &&
			done["frank+list@pipe.example.org"] && done["gina@example.org"] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("postfix did not deliver within 60 s (its log follows)")
		}
		time.Sleep(200 * time.Millisecond)
	}
	log := showLog()
	for _, line := range strings.Split(log, "\n") {
		if !outcome.MatchString(line) {
			continue
		}
		t.Logf("postfix: %s", line)
		switch {
		case strings.Contains(line, "to=<alice@example.org>"), strings.Contains(line, "to=<carol@example.org>"),
			strings.Contains(line, "to=<dave@sock.example.org>"), strings.Contains(line, "to=<frank+news@example.org>"):
			if !strings.Contains(line, "status=sent") || !strings.Contains(line, "250 2.0.0") {
				t.Errorf("postfix: %s", line)
			}
		case strings.Contains(line, "to=<gina@example.org>"):
			if !strings.Contains(line, "status=deferred") || !strings.Contains(line, "451 4.3.0") {
				t.Errorf("postfix, unconfirmable user: %s", line)
			}
		case strings.Contains(line, "to=<bob@example.org>"):
			if !strings.Contains(line, "status=bounced") || !strings.Contains(line, "552 5.2.2") {
				t.Errorf("postfix, over quota: %s", line)
			}
		case strings.Contains(line, "to=<alice@pipe.example.org>"), strings.Contains(line, "to=<frank+list@pipe.example.org>"):
			if !strings.Contains(line, "status=sent") || !strings.Contains(line, "delivered via pouch service") {
				t.Errorf("postfix, pipe: %s", line)
			}
		case strings.Contains(line, "to=<nobody@pipe.example.org>"):
			if !strings.Contains(line, "status=bounced") || !strings.Contains(line, "dsn=5.1.1") || !strings.Contains(line, "Command output: pouch: deliver: no such user (details logged, id d") ||
				strings.Contains(line, "/users") {
				t.Errorf("postfix, pipe, unknown user: %s", line)
			}
		case strings.Contains(line, "to=<bob@pipe.example.org>"):
			if !strings.Contains(line, "status=bounced") || !strings.Contains(line, "the mailbox of bob is full") {
				t.Errorf("postfix, pipe, over quota: %s", line)
			}
		case strings.Contains(line, "to=<nobody@local.pouch.test>"):
			if !strings.Contains(line, "status=sent") || !strings.Contains(line, "relay=local") {
				t.Errorf("postfix, local(8): %s", line)
			}
		}
	}
	if got := e.stored("bob"); len(got) != 1 || !strings.HasPrefix(got[0], "ffff") {
		t.Errorf("bob, over quota: %d messages, want the one that filled the mailbox", len(got))
	}
	if entries, _ := os.ReadDir(filepath.Join(e.root, "bob", "tmp")); len(entries) != 0 {
		t.Errorf("bob/tmp holds %d files", len(entries))
	}
	// The bounce, over LMTP with plus addressing: Return-Path <>.
	if got := e.stored("frank"); len(got) != 1 || !strings.HasPrefix(got[0], "Return-Path: <>\r\nDelivered-To: frank+news@example.org\r\nReceived: ") ||
		!strings.HasSuffix(got[0], "\r\n"+bounce) {
		t.Errorf("frank, a bounce over LMTP: %q", got)
	}
	if got := e.stored("dave"); len(got) != 1 || !strings.HasPrefix(got[0], "Return-Path: <sender@sender.test>\r\nDelivered-To: dave@sock.example.org\r\nReceived: ") ||
		!strings.HasSuffix(got[0], "\r\n"+viaSocket) {
		t.Errorf("dave, through the socket: %q", got)
	}

	// pipe(8) writes LF line endings; the message is stored as received.
	piped := mailIn(t, filepath.Join(pipeData, "mail", "alice", "new"))
	lfBody := strings.ReplaceAll(body, "\r\n", "\n")
	if len(piped) != 1 || !strings.HasPrefix(piped[0], "Return-Path: <sender@sender.test>\nDelivered-To: alice@pipe.example.org\nReceived: ") ||
		!strings.HasSuffix(piped[0], "\n"+lfBody) {
		t.Errorf("through pipe(8) and pouch deliver: %.300q", piped)
	}
	if bob := mailIn(t, filepath.Join(pipeData, "mail", "bob", "new")); len(bob) != 0 {
		t.Errorf("bob got %d messages over quota through pipe(8)", len(bob))
	}
	// pipe(8) with null_sender= passes the null sender as -f "".
	lfBounce := strings.ReplaceAll(bounce, "\r\n", "\n")
	if got := mailIn(t, filepath.Join(pipeData, "mail", "frank", "new")); len(got) != 1 ||
		!strings.HasPrefix(got[0], "Return-Path: <>\nDelivered-To: frank+list@pipe.example.org\nReceived: ") || !strings.HasSuffix(got[0], "\n"+lfBounce) {
		t.Errorf("a bounce through pipe(8) and pouch deliver: %q", got)
	}

	// local(8) writes a From line, Return-Path, X-Original-To and
	// Delivered-To before the message it pipes to the mailbox_command:
	// pouch deliver drops the From line and adds nothing of its own.
	local := mailIn(t, filepath.Join(localData, "mail", "nobody", "new"))
	if len(local) != 1 {
		t.Fatalf("nobody has %d messages through local(8), want 1", len(local))
	}
	header, _, _ := strings.Cut(local[0], "\n\n")
	t.Logf("through local(8): %q", header[:strings.Index(header, "\nReceived: ")])
	if !strings.HasPrefix(local[0], "Return-Path: <sender@sender.test>\nX-Original-To: nobody@local.pouch.test\n"+
		"Delivered-To: nobody@local.pouch.test\nReceived: ") || !strings.HasSuffix(local[0], "\n"+lfBody) {
		t.Errorf("through local(8) and pouch deliver: %.400q", local[0])
	}
	for _, f := range []string{"Return-Path:", "Delivered-To:", "X-Original-To:"} {
		if n := strings.Count(header, f); n != 1 {
			t.Errorf("through local(8): %d %s lines, want 1", n, f)
		}
	}
	if strings.HasPrefix(header, "From ") || strings.Contains(header, "\nFrom ") {
		t.Errorf("through local(8): an mbox From line was stored")
	}

	// Download through POP3 and compare.
	for _, u := range []string{"alice", "carol"} {
		got := pop3Retr(t, e.root, u)
		rest, ok := strings.CutPrefix(got, "Return-Path: <sender@sender.test>\r\nDelivered-To: "+u+"@example.org\r\n")
		if !ok {
			t.Fatalf("%s: the message does not start with Pouch's header lines:\n%.300q", u, got)
		}
		// Postfix adds exactly one Received: field (with folded lines; no
		// "for <…>" clause, as the message had two recipients).
		received, rest, ok := cutField(rest, "Received: ")
		if !ok || !strings.Contains(received, "by postfix.pouch.test (Postfix) with ESMTP id") {
			t.Fatalf("%s: no Received: field of Postfix after Pouch's lines:\n%.500q", u, received+rest)
		}
		t.Logf("%s: Postfix added %q", u, received)
		if rest != body {
			i := 0
			for i < len(rest) && i < len(body) && rest[i] == body[i] {
				i++
			}
			t.Fatalf("%s: the message differs from the one submitted at octet %d: %.80q vs %.80q", u, i, rest[i:], body[i:])
		}
	}
}

// mailIn returns the contents of the files in dir.
func mailIn(t *testing.T, dir string) []string {
	t.Helper()
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

// cutField removes the header field starting with name (and its folded
// continuation lines) from the top of msg.
func cutField(msg, name string) (field, rest string, ok bool) {
	if !strings.HasPrefix(msg, name) {
		return "", msg, false
	}
	end := 0
	for {
		i := strings.Index(msg[end:], "\r\n")
		if i < 0 {
			return "", msg, false
		}
		end += i + 2
		if end >= len(msg) || (msg[end] != ' ' && msg[end] != '\t') {
			return msg[:end], msg[end:], true
		}
	}
}

// waitMasterGone waits at most d for the master process named in pidFile to
// exit (or be a zombie: nothing may reap it here), and reports whether it did.
func waitMasterGone(pidFile string, d time.Duration) bool {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return true
	}
	pid := strings.TrimSpace(string(b))
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			return true
		}
		if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return true
		}
	}
	return false
}

// pop3Retr downloads user's only message through Pouch's POP3 server, with a
// line-level client: USER, PASS, STAT, RETR 1 (dot-unstuffed), QUIT.
func pop3Retr(t *testing.T, root, user string) string {
	t.Helper()
	usersFile := filepath.Join(t.TempDir(), "users")
	os.WriteFile(usersFile, []byte(user+":{PLAIN}secret::::::\n"), 0o600)
	users, err := auth.OpenUsers(usersFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Config{Store: maildir.New(root), Auth: users, Logger: slog.New(slog.DiscardHandler)})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	nc, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(nc)
	line := func() string {
		s, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("POP3: %v", err)
		}
		return s
	}
	cmd := func(c string) string {
		if c != "" {
			fmt.Fprintf(nc, "%s\r\n", c)
		}
		s := line()
		if !strings.HasPrefix(s, "+OK") {
			t.Fatalf("POP3 %s: %q", c, s)
		}
		return s
	}
	cmd("")
	cmd("USER " + user)
	cmd("PASS secret")
	if s := cmd("STAT"); !strings.HasPrefix(s, "+OK 1 ") {
		t.Fatalf("STAT: %q, want one message", s)
	}
	cmd("RETR 1")
	var msg strings.Builder
	for {
		s := line()
		if s == ".\r\n" {
			break
		}
		msg.WriteString(strings.TrimPrefix(s, ".")) // RFC 1939 §3: unstuff
	}
	cmd("QUIT")
	return msg.String()
}
