package fetch

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/sys/unix"

	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/internal/fsx"
	"github.com/pouchmail/pouch/store/maildir"
)

// Msg describes the message being delivered.
type Msg struct {
	UID  string
	Key  string // digest of server, user and UIDL (see messageKey)
	Size int64  // from LIST
}

// Destination stores downloaded messages. Deliver receives the message in
// wire form (CRLF line ends, unstuffed) and writes it with LF line ends; once
// Sync returns nil every message Deliver accepted is durable. A failed
// Deliver leaves nothing behind. What a destination can do besides is
// told by the capabilities below.
type Destination interface {
	Deliver(m Msg, body io.Reader) error
	Sync() error
	Close() error
	String() string
}

// The capabilities a destination may have besides Destination, each a
// small interface. The run looks them up once, when it opens the
// destination (capsOf), and asks nothing else of it.
type (
	// deduper tells, by a message's key, whether the message is stored
	// already: a Maildir finds the digest in its file names, so that a
	// message stored by a run killed before its journal entry is not
	// stored twice.
	deduper interface {
		Has(key string) (bool, error)
	}
	// dirSyncer makes durable the renames of messages that a killed run
	// stored (a Maildir's new/ and cur/), before the journal records them.
	dirSyncer interface{ SyncDirs() error }
	// releaser drops a lock that the destination holds from its first
	// Deliver on (an mbox's); the run calls it once the journal recorded
	// a batch.
	releaser interface{ Release() }
	// marker takes the function that records durably where an append
	// starts, called before the first append under a lock, so that the
	// next run can cut back an append a kill left unrecorded (an mbox;
	// see Journal.Mark).
	marker interface {
		setMark(func(size int64, path string) error)
	}
	// deadliner bounds the destination's own waits (an MDA, an LMTP or
	// SMTP server) by the run's deadline.
	deadliner interface{ setDeadline(time.Time) }
)

// destCaps are a destination's capabilities, each nil where it has none.
type destCaps struct {
	dedup    deduper
	dirs     dirSyncer
	release  releaser
	mark     marker
	deadline deadliner
}

// capsOf looks up d's capabilities; a nil d has none.
func capsOf(d Destination) destCaps {
	var c destCaps
	if d == nil {
		return c
	}
	c.dedup, _ = d.(deduper)
	c.dirs, _ = d.(dirSyncer)
	c.release, _ = d.(releaser)
	c.mark, _ = d.(marker)
	c.deadline, _ = d.(deadliner)
	return c
}

// OpenDestination parses "maildir:DIR", "mbox:FILE", "mda:CMD",
// "lmtp:HOST:PORT" or "smtp:HOST:PORT". rcpt is the envelope recipient for
// LMTP and SMTP. tag names the account in Maildir temporary files, so that
// a run holding the account lock can remove those a killed run left.
func OpenDestination(spec, rcpt, tag string) (Destination, error) {
	return openDestination(spec, rcpt, tag, osCalls)
}

func openDestination(spec, rcpt, tag string, sys fsCalls) (Destination, error) {
	kind, arg, ok := strings.Cut(spec, ":")
	if !ok || arg == "" {
		return nil, fmt.Errorf("destination %q: use maildir:DIR, mbox:FILE, mda:CMD, lmtp:HOST:PORT or smtp:HOST:PORT", spec)
	}
	switch kind {
	case "maildir":
		return openMaildir(ExpandHome(arg), tag, sys)
	case "mbox":
		return &mbox{path: ExpandHome(arg), fsync: sys.fsync, syncDir: sys.syncDir}, nil
	case "mda":
		return &mda{cmd: arg}, nil
	case "lmtp", "smtp":
		if rcpt == "" {
			return nil, fmt.Errorf("destination %s needs a recipient (--rcpt)", spec)
		}
		if _, _, err := net.SplitHostPort(arg); err != nil {
			return nil, fmt.Errorf("destination %q: %v", spec, err)
		}
		return &smtpDest{lmtp: kind == "lmtp", addr: arg, rcpt: rcpt}, nil
	}
	return nil, fmt.Errorf("destination %q: unknown kind %q", spec, kind)
}

// ExpandHome replaces a leading "~/" in a path with the home directory.
func ExpandHome(p string) string {
	if strings.HasPrefix(p, "~/") {
		if h, err := os.UserHomeDir(); err == nil {
			return filepath.Join(h, p[2:])
		}
	}
	return p
}

// lfWriter turns CRLF into LF as it writes; bare CRs pass unchanged.
type lfWriter struct {
	w   io.Writer
	cr  bool // a CR ended the last write
	buf []byte
}

func (l *lfWriter) Write(p []byte) (int, error) {
	n := len(p)
	buf := l.buf[:0]
	if l.cr && len(p) > 0 {
		if p[0] != '\n' {
			buf = append(buf, '\r')
		}
		l.cr = false
	}
	for {
		i := bytes.IndexByte(p, '\r')
		if i < 0 {
			buf = append(buf, p...)
			break
		}
		buf = append(buf, p[:i]...)
		if i+1 == len(p) {
			l.cr = true
			break
		}
		if p[i+1] != '\n' {
			buf = append(buf, '\r')
		}
		p = p[i+1:]
	}
	l.buf = buf
	if _, err := l.w.Write(buf); err != nil {
		return 0, err
	}
	return n, nil
}

// Close writes a pending CR.
func (l *lfWriter) Close() error {
	if l.cr {
		l.cr = false
		_, err := l.w.Write([]byte{'\r'})
		return err
	}
	return nil
}

// copyBufs holds copyLF's buffers: the read buffer and the converted one.
var copyBufs = sync.Pool{New: func() any { return &[2][]byte{make([]byte, 32<<10), make([]byte, 0, 32<<10)} }}

// copyLF copies body to w with LF line ends.
func copyLF(w io.Writer, body io.Reader) error {
	bufs := copyBufs.Get().(*[2][]byte)
	defer copyBufs.Put(bufs)
	lw := &lfWriter{w: w, buf: bufs[1]}
	_, err := io.CopyBuffer(lw, body, bufs[0])
	bufs[1] = lw.buf[:0]
	if err != nil {
		return err
	}
	return lw.Close()
}

// maildirDest delivers into a Maildir as store/maildir's Delivery does:
// tmp/, fsync, rename into new/; Sync fsyncs new/. Each name carries
// ",PF=<key>" so that a message stored just before a crash is recognised by
// the next run, and each temporary file ",PA=<tag>" so that a run of the
// same account can remove those a killed one left.
type maildirDest struct {
	dir       string
	tag       string
	keys      map[string]bool // the digests in new/ and cur/, read by the first Has
	syncDir   func(string) error
	readNames func(string) ([]string, error)

	// fsyncs and renames run on a pool of workers, so that the file
	// system can commit many files in one journal transaction; Sync waits
	// for them.
	jobs chan maildirJob
	wg   sync.WaitGroup
	mu   sync.Mutex
	err  error

	bw *bufio.Writer // Deliver's buffer, reused
}

type maildirJob struct {
	d    *maildir.Delivery
	info string // the fields after the sizes
}

const maildirWorkers = 16

func openMaildir(dir, tag string, sys fsCalls) (*maildirDest, error) {
	for _, sub := range []string{"tmp", "new", "cur"} {
		// A directory made here is synced into its parent: a message in
		// new/ is durable only once new/ and the Maildir are.
		if err := mkdirSynced(filepath.Join(dir, sub), sys.syncDir); err != nil {
			return nil, fmt.Errorf("maildir: %w", err)
		}
	}
	m := &maildirDest{dir: dir, tag: tag, syncDir: sys.syncDir, readNames: sys.readNames, jobs: make(chan maildirJob, 1024)}
	// Our own temporary files were left by a killed run of this account
	// (the caller holds its lock); others' are abandoned after 36 hours.
	if names, err := fsx.Names(filepath.Join(dir, "tmp")); err == nil {
		for _, n := range names {
			p := filepath.Join(dir, "tmp", n)
			if tag != "" && strings.HasSuffix(n, ",PA="+tag) {
				os.Remove(p)
			} else if st, err := os.Stat(p); err == nil && time.Since(st.ModTime()) > 36*time.Hour {
				os.Remove(p)
			}
		}
	}
	for range maildirWorkers {
		go m.worker()
	}
	return m, nil
}

// keyOf returns the ",PF=" field of a Maildir file name.
func keyOf(name string) string {
	base, _, _ := strings.Cut(name, ":")
	i := strings.Index(base, ",PF=")
	if i < 0 {
		return ""
	}
	k, _, _ := strings.Cut(base[i+4:], ",")
	return k
}

func (m *maildirDest) String() string { return "maildir:" + m.dir }

// Has reports whether new/ or cur/ holds a file named with the digest key.
// The names are read at the first call, before this run stores anything:
// only a run after a killed one asks.
func (m *maildirDest) Has(key string) (bool, error) {
	if m.keys == nil {
		keys := map[string]bool{}
		for _, sub := range []string{"new", "cur"} {
			names, err := m.readNames(filepath.Join(m.dir, sub))
			if err != nil {
				return false, fmt.Errorf("maildir: %w", err)
			}
			for _, n := range names {
				if k := keyOf(n); k != "" {
					keys[k] = true
				}
			}
		}
		m.keys = keys
	}
	return m.keys[key], nil
}

func (m *maildirDest) Deliver(msg Msg, body io.Reader) error {
	m.mu.Lock()
	err := m.err
	m.mu.Unlock()
	if err != nil {
		return err
	}
	var tmpSuffix string
	if m.tag != "" {
		tmpSuffix = ",PA=" + m.tag
	}
	d, err := maildir.NewDelivery(m.dir, time.Now(), tmpSuffix)
	if err != nil {
		return fmt.Errorf("maildir: %w", err)
	}
	if m.bw == nil {
		m.bw = bufio.NewWriterSize(nil, 64<<10)
	}
	bw := m.bw
	bw.Reset(d)
	err = copyLF(bw, body)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		d.Abort()
		return err
	}
	var info string
	if msg.Key != "" {
		info = ",PF=" + msg.Key
	}
	m.wg.Add(1)
	m.jobs <- maildirJob{d: d, info: info}
	return nil
}

// worker commits a delivery: fsync, rename into new/.
func (m *maildirDest) worker() {
	for j := range m.jobs {
		if _, err := j.d.Commit(j.info); err != nil {
			m.mu.Lock()
			if m.err == nil {
				m.err = fmt.Errorf("maildir: %w", err)
			}
			m.mu.Unlock()
		}
		m.wg.Done()
	}
}

// Sync waits for the fsyncs and renames, then fsyncs new/. An error is
// sticky: after one, no message delivered since the last good Sync can be
// trusted, and the destination stays unusable.
func (m *maildirDest) Sync() error {
	m.wg.Wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return m.err
	}
	if err := m.syncDir(filepath.Join(m.dir, "new")); err != nil {
		m.err = fmt.Errorf("maildir: fsync new/: %w", err)
	}
	return m.err
}

// SyncDirs fsyncs new/ and cur/: messages recognised by their digest may
// have been renamed by a run killed before it fsynced the directory.
func (m *maildirDest) SyncDirs() error {
	for _, sub := range []string{"new", "cur"} {
		if err := m.syncDir(filepath.Join(m.dir, sub)); err != nil {
			return fmt.Errorf("maildir: fsync %s/: %w", sub, err)
		}
	}
	return nil
}

func (m *maildirDest) Close() error {
	err := m.Sync()
	close(m.jobs)
	return err
}

// mbox appends in mboxrd format ("From " lines quoted by one more ">"),
// holding an fcntl and a flock lock from the first Deliver until Release,
// which the runner calls after the journal records the batch; Sync fsyncs the
// file. Before the first append under a lock, mark (if set) durably records
// the file's size, so that the next run can cut back an append a kill left
// unfinished or unrecorded (recoverMbox). A failed Deliver truncates the file
// back; a failed Sync is sticky. The first Sync of a run syncs the mbox's
// directory too, so that a file the run created keeps its name.
type mbox struct {
	path      string
	fsync     func(*os.File) error
	syncDir   func(dir string) error
	dirSynced bool
	f         *os.File
	err       error
	mark      func(size int64, path string) error
}

func (b *mbox) String() string { return "mbox:" + b.path }

func (b *mbox) setMark(mark func(size int64, path string) error) { b.mark = mark }

func lockMbox(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("mbox: %w", err)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLKW, &lk); err != nil {
		f.Close()
		return nil, fmt.Errorf("mbox: fcntl lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("mbox: flock: %w", err)
	}
	return f, nil
}

// recoverMbox cuts the mbox at path back to size, under its lock: what lies
// beyond was appended by a run that never recorded it as done.
func recoverMbox(path string, size int64, fsync func(*os.File) error) (cut int64, err error) {
	f, err := lockMbox(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("mbox: %w", err)
	}
	if st.Size() <= size {
		return 0, nil
	}
	if err := f.Truncate(size); err != nil {
		return 0, fmt.Errorf("mbox: %w", err)
	}
	if err := fsync(f); err != nil {
		return 0, fmt.Errorf("mbox: fsync: %w", err)
	}
	return st.Size() - size, nil
}

func (b *mbox) Deliver(msg Msg, body io.Reader) error {
	if b.err != nil {
		return b.err
	}
	if b.f == nil {
		f, err := lockMbox(b.path)
		if err != nil {
			return err
		}
		b.f = f
		if b.mark != nil {
			st, err := f.Stat()
			if err == nil {
				err = b.mark(st.Size(), b.path)
			}
			if err != nil {
				b.Release()
				return fmt.Errorf("mbox: %w", err)
			}
		}
	}
	st, err := b.f.Stat()
	if err != nil {
		return fmt.Errorf("mbox: %w", err)
	}
	start := st.Size()
	bw := bufio.NewWriterSize(b.f, 64<<10)
	if start > 0 {
		// Make sure the previous message ends with a blank line.
		last := make([]byte, 2)
		if n, _ := b.f.ReadAt(last, max(start-2, 0)); n == 2 && string(last) != "\n\n" {
			if last[1] == '\n' {
				bw.WriteString("\n")
			} else {
				bw.WriteString("\n\n")
			}
		}
	}
	fmt.Fprintf(bw, "From MAILER-DAEMON %s\n", time.Now().UTC().Format("Mon Jan _2 15:04:05 2006"))
	esc := &fromEscaper{w: bw, bol: true}
	err = copyLF(esc, body)
	if err == nil {
		err = bw.Flush()
		crashpoint.Hit("fetch.mbox.mid-append")
	}
	if err == nil {
		err = esc.finish()
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		b.f.Truncate(start)
		return err
	}
	return nil
}

// Sync fsyncs the file, keeping the lock.
func (b *mbox) Sync() error {
	if b.err != nil {
		return b.err
	}
	if b.f == nil {
		return nil
	}
	if err := b.fsync(b.f); err != nil {
		b.err = fmt.Errorf("mbox: fsync: %w", err)
		b.Release()
		return b.err
	}
	if !b.dirSynced {
		if err := b.syncDir(filepath.Dir(b.path)); err != nil {
			b.err = fmt.Errorf("mbox: fsync of its directory: %w", err)
			b.Release()
			return b.err
		}
		b.dirSynced = true
	}
	return nil
}

// Release drops both locks.
func (b *mbox) Release() {
	if b.f != nil {
		b.f.Close()
		b.f = nil
	}
}

func (b *mbox) Close() error {
	err := b.Sync()
	b.Release()
	return err
}

// fromEscaper quotes lines matching ^>*From with one more ">" (mboxrd), and
// ends the message with a newline and a blank line. Its state is constant:
// the number of '>' and of "From " octets seen at the start of the line.
type fromEscaper struct {
	w    *bufio.Writer
	bol  bool // at the start of a line, still undecided
	gts  int  // '>' seen at the start of the line
	from int  // octets of "From " seen after them
	last byte
}

func (e *fromEscaper) flushPending() {
	for range e.gts {
		e.w.WriteByte('>')
	}
	e.w.WriteString("From "[:e.from])
	e.gts, e.from = 0, 0
}

func (e *fromEscaper) Write(p []byte) (int, error) {
	for _, c := range p {
		e.last = c
		if !e.bol {
			e.w.WriteByte(c)
			if c == '\n' {
				e.bol = true
			}
			continue
		}
		switch {
		case e.from == 0 && c == '>':
			e.gts++
		case c == "From "[e.from]:
			e.from++
			if e.from == len("From ") {
				e.w.WriteByte('>')
				e.flushPending()
				e.bol = false
			}
		default:
			e.flushPending()
			e.w.WriteByte(c)
			e.bol = c == '\n'
		}
	}
	return len(p), nil
}

func (e *fromEscaper) finish() error {
	e.flushPending()
	if e.last != '\n' {
		e.w.WriteByte('\n')
	}
	_, err := e.w.WriteString("\n")
	return err
}

// mda pipes each message to "sh -c CMD"; exit status 0 means stored. The
// message is read completely (in memory, or in a temporary file past
// mdaMemMax) before the MDA starts: an MDA that writes as it reads (cat >
// FILE) would otherwise be left with part of a message when the connection
// breaks.
type mda struct {
	cmd      string
	deadline time.Time // the run's; zero: none
}

func (d *mda) setDeadline(t time.Time) { d.deadline = t }

const mdaMemMax = 4 << 20

func (d *mda) String() string { return "mda:" + d.cmd }

// spool reads the whole message with LF line ends.
func spool(body io.Reader) (r io.Reader, cleanup func(), err error) {
	var mem bytes.Buffer
	lw := &lfWriter{w: &mem}
	if _, err := io.CopyN(lw, body, mdaMemMax); err == io.EOF {
		if err := lw.Close(); err != nil {
			return nil, nil, err
		}
		return &mem, func() {}, nil
	} else if err != nil {
		return nil, nil, err
	}
	f, err := os.CreateTemp("", "pouch-fetch-mda-*")
	if err != nil {
		return nil, nil, fmt.Errorf("mda: %w", err)
	}
	os.Remove(f.Name())
	cleanup = func() { f.Close() }
	bw := bufio.NewWriterSize(f, 64<<10)
	if _, err := bw.Write(mem.Bytes()); err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("mda: %w", err)
	}
	lw.w = bw
	if _, err := io.Copy(lw, body); err != nil {
		cleanup()
		return nil, nil, err
	}
	err = lw.Close()
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("mda: %w", err)
	}
	return bufio.NewReaderSize(f, 64<<10), cleanup, nil
}

func (d *mda) Deliver(msg Msg, body io.Reader) error {
	msgr, cleanup, err := spool(body)
	if err != nil {
		return err
	}
	defer cleanup()
	ctx := context.Background()
	if !d.deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.deadline)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", d.cmd)
	cmd.Env = append(os.Environ(), "POUCH_UIDL="+msg.UID)
	// Its own process group: a Ctrl-C at the terminal must not reach it (the
	// run finishes the messages being stored), and an abort (or the run's
	// deadline) kills every process of a pipeline, not only the shell.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stderr bytes.Buffer
	cmd.Stderr = &limited{w: &stderr, n: 2048}
	in, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("mda: %w", err)
	}
	if _, werr := io.Copy(in, msgr); werr != nil {
		// An MDA that stopped reading early must never look as if it
		// stored the message: kill the whole group before it sees the
		// end of its input.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		in.Close()
		cmd.Wait()
		return fmt.Errorf("mda %q: %w", d.cmd, werr)
	}
	in.Close()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("mda %q: %v: %s", d.cmd, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func (d *mda) Sync() error  { return nil }
func (d *mda) Close() error { return nil }

type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}

// smtpDest hands each message to an LMTP or SMTP server; a 250 reply to
// the end of DATA means stored.
type smtpDest struct {
	lmtp     bool
	addr     string
	rcpt     string
	c        *smtp.Client
	deadline time.Time // the run's; zero: none
}

func (s *smtpDest) setDeadline(t time.Time) { s.deadline = t }

func (s *smtpDest) String() string {
	if s.lmtp {
		return "lmtp:" + s.addr
	}
	return "smtp:" + s.addr
}

func (s *smtpDest) connect() error {
	d := net.Dialer{Timeout: 30 * time.Second, Deadline: s.deadline}
	conn, err := d.Dial("tcp", s.addr)
	if err != nil {
		return err
	}
	if !s.deadline.IsZero() {
		// A server that stops answering cannot hold the run past its
		// deadline (the SMTP client sets and clears deadlines of its own).
		conn = cappedConn{conn, s.deadline}
		conn.SetDeadline(time.Time{})
	}
	if s.lmtp {
		s.c = smtp.NewClientLMTP(conn)
	} else {
		s.c = smtp.NewClient(conn)
	}
	if err := s.c.Hello("localhost"); err != nil {
		s.c.Close()
		s.c = nil
		return err
	}
	return nil
}

func (s *smtpDest) Deliver(msg Msg, body io.Reader) error {
	if s.c == nil {
		if err := s.connect(); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	err := s.send(body)
	if err != nil {
		s.c.Close()
		s.c = nil
		return fmt.Errorf("%s: %w", s, err)
	}
	return nil
}

func (s *smtpDest) send(body io.Reader) error {
	if err := s.c.Mail("", nil); err != nil {
		return err
	}
	if err := s.c.Rcpt(s.rcpt, nil); err != nil {
		return err
	}
	w, err := s.c.Data()
	if err != nil {
		return err
	}
	if err := copyLF(w, body); err != nil {
		// Never end DATA on a partial message: the caller drops the
		// connection, which aborts the transaction.
		return err
	}
	return w.Close()
}

func (s *smtpDest) Sync() error { return nil }

// cappedConn keeps every deadline set on it at or before limit; none is
// limit.
type cappedConn struct {
	net.Conn
	limit time.Time
}

func (c cappedConn) capped(t time.Time) time.Time {
	if t.IsZero() || t.After(c.limit) {
		return c.limit
	}
	return t
}

func (c cappedConn) SetDeadline(t time.Time) error      { return c.Conn.SetDeadline(c.capped(t)) }
func (c cappedConn) SetReadDeadline(t time.Time) error  { return c.Conn.SetReadDeadline(c.capped(t)) }
func (c cappedConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(c.capped(t)) }

func (s *smtpDest) Close() error {
	if s.c == nil {
		return nil
	}
	err := s.c.Quit()
	s.c = nil
	return err
}
