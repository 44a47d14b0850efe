// Package fetch is the job of pouch fetch: it downloads one POP3 account's
// mail to a local destination (Maildir, mbox, an MDA, LMTP or SMTP), keeps a
// durable journal of what it fetched, and deletes mail from the server only
// when the keep policy says so and only after the message is stored and
// journaled, so that no crash loses or (for Maildir) duplicates a message.
//
// The order for each message is RETR → store durably → journal (fsync) →
// DELE → QUIT. A crash before the journal fsync means the message is fetched
// again; for Maildir the next run finds it by the digest in its file name
// instead. A crash after it means the DELE is sent by the next run.
package fetch

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/pouchmail/pouch/client"
	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/pop3"
)

// Account is one mailbox to fetch and where to put its mail.
type Account struct {
	Name        string // shown in messages; default USER@SERVER
	Server      string // host:port
	TLS         client.TLSMode
	CAFile      string // PEM roots to trust instead of the system's
	Fingerprint string // SHA-256 of the server's certificate, hex: pin it
	User        string

	PasswordFile      string
	PasswordCommand   string
	OAuthTokenCommand string

	To   string // destination, see OpenDestination
	Rcpt string // envelope recipient for lmtp: and smtp:

	Keep        time.Duration // leave on the server this long after the first download; 0: delete at once
	KeepForever bool          // never delete

	MaxSize         int64 // skip larger messages (0: no limit)
	DeleteOversized bool  // and delete them from the server

	StateDir string
	DryRun   bool

	Window      int                                                               // RETRs in flight with PIPELINING (1024)
	Timeout     time.Duration                                                     // per server reply (2 min)
	DialTimeout time.Duration                                                     // connect, TLS, greeting (30 s)
	Dialer      func(ctx context.Context, network, addr string) (net.Conn, error) `json:"-"`
}

// Observer hears about a run's progress; Run accepts a nil Observer.
type Observer interface {
	// Plan is called once the messages to download are known.
	Plan(msgs int, bytes int64)
	// Fetched is called after each message is stored.
	Fetched(bytes int64)
	// Warn reports a problem that did not stop the run.
	Warn(msg string)
}

// Stats summarises a run. In a dry run the counts say what would happen.
type Stats struct {
	OnServer  int   // messages on the server at login
	Fetched   int   // downloaded and stored
	Bytes     int64 // octets downloaded
	Deleted   int   // deleted from the server (committed by QUIT)
	Kept      int   // left on the server by the keep policy
	Skipped   int   // oversized, duplicate or invalid UIDLs, or refused by RETR
	Recovered int   // found already stored (Maildir) after an interrupted run
	Mechanism string
	DryRun    bool
	Stopped   bool // a signal ended the run early
	Elapsed   time.Duration
}

// ParseKeep parses --keep: "forever", or a duration such as 14d, 36h, 90s,
// 1d12h, or 0.
func ParseKeep(s string) (d time.Duration, forever bool, err error) {
	s = strings.TrimSpace(strings.ToLower(s))
	switch s {
	case "forever", "always", "never-delete":
		return 0, true, nil
	case "", "0", "no", "none":
		return 0, false, nil
	}
	rest := s
	for rest != "" {
		i := 0
		for i < len(rest) && (rest[i] >= '0' && rest[i] <= '9' || rest[i] == '.') {
			i++
		}
		if i == 0 {
			return 0, false, fmt.Errorf("keep %q: use forever or a duration like 14d, 36h, 90s", s)
		}
		j := i
		for j < len(rest) && rest[j] >= 'a' && rest[j] <= 'z' {
			j++
		}
		num, unit := rest[:i], rest[i:j]
		rest = rest[j:]
		var mult time.Duration
		switch unit {
		case "w":
			mult = 7 * 24 * time.Hour
		case "d":
			mult = 24 * time.Hour
		case "h":
			mult = time.Hour
		case "m":
			mult = time.Minute
		case "s":
			mult = time.Second
		default:
			return 0, false, fmt.Errorf("keep %q: unknown unit %q (use w, d, h, m, s)", s, unit)
		}
		f, err := strconv.ParseFloat(num, 64)
		if err != nil {
			return 0, false, fmt.Errorf("keep %q: %v", s, err)
		}
		d += time.Duration(f * float64(mult))
	}
	return d, false, nil
}

// DisplayName is the account's name for messages.
func (a *Account) DisplayName() string {
	if a.Name != "" {
		return a.Name
	}
	return a.User + "@" + a.Server
}

// StateName is the base name of the account's journal and lock files: a
// readable part and a digest of server and user.
func (a *Account) StateName() string {
	safe := []byte(a.User + "@" + a.Server)
	for i, c := range safe {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '@' || c == '_') {
			safe[i] = '_'
		}
	}
	if len(safe) > 100 {
		safe = safe[:100]
	}
	return string(safe) + "-" + a.tag()
}

// tag is a short digest of server and user.
func (a *Account) tag() string {
	sum := sha256.Sum256([]byte(a.Server + "\x00" + a.User))
	return hex.EncodeToString(sum[:4])
}

// messageKey is the digest of server, user and UIDL written into Maildir
// file names.
func (a *Account) messageKey(uid string) string {
	sum := sha256.Sum256([]byte(a.Server + "\x00" + a.User + "\x00" + uid))
	return hex.EncodeToString(sum[:16])
}

// DefaultStateDir is $XDG_STATE_HOME/pouch, or ~/.local/state/pouch.
func DefaultStateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return d + "/pouch"
	}
	if h, err := os.UserHomeDir(); err == nil {
		return h + "/.local/state/pouch"
	}
	return ".pouch-state"
}

// credentials reads the secret afresh (tokens expire between polls).
func (a *Account) credentials(ctx context.Context) (client.Credentials, error) {
	cr := client.Credentials{User: a.User}
	host, port, _ := net.SplitHostPort(a.Server)
	cr.Host = host
	cr.Port, _ = strconv.Atoi(port)
	switch {
	case a.OAuthTokenCommand != "":
		tok, err := runSecretCommand(ctx, a.OAuthTokenCommand)
		if err != nil {
			return cr, fmt.Errorf("oauth-token-command: %w", err)
		}
		cr.OAuthToken = tok
	case a.PasswordCommand != "":
		pw, err := runSecretCommand(ctx, a.PasswordCommand)
		if err != nil {
			return cr, fmt.Errorf("password-command: %w", err)
		}
		cr.Password = pw
	case a.PasswordFile != "":
		data, err := os.ReadFile(expandHome(a.PasswordFile))
		if err != nil {
			return cr, fmt.Errorf("password-file: %w", err)
		}
		cr.Password = firstLine(string(data))
	default:
		return cr, errors.New("no secret: give --password-file, --password-command or --oauth-token-command")
	}
	return cr, nil
}

func runSecretCommand(ctx context.Context, cmdline string) (string, error) {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", cmdline)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", err
	}
	s := firstLine(string(out))
	if s == "" {
		return "", errors.New("printed nothing")
	}
	return s, nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return strings.TrimSuffix(s, "\r")
}

// tlsConfig builds the TLS settings: the system roots or --ca-file, or a
// pinned certificate fingerprint.
func (a *Account) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.CAFile != "" {
		pem, err := os.ReadFile(expandHome(a.CAFile))
		if err != nil {
			return nil, fmt.Errorf("ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca-file %s: no PEM certificate found", a.CAFile)
		}
		cfg.RootCAs = pool
	}
	if a.Fingerprint != "" {
		want := client.NormalizeFingerprint(a.Fingerprint)
		if len(want) != 64 {
			return nil, fmt.Errorf("tls-fingerprint %q: want 64 hex digits (SHA-256)", a.Fingerprint)
		}
		// The pin replaces chain and name verification.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			if got := client.Fingerprint(cs.PeerCertificates[0].Raw); got != want {
				return fmt.Errorf("certificate fingerprint %s does not match --tls-fingerprint %s", got, want)
			}
			return nil
		}
	}
	return cfg, nil
}

// validUID reports whether uid is a UIDL as RFC 1939 §7 defines it.
func validUID(uid string) bool {
	if len(uid) == 0 || len(uid) > 70 {
		return false
	}
	for i := 0; i < len(uid); i++ {
		if uid[i] < 0x21 || uid[i] > 0x7e {
			return false
		}
	}
	return true
}

type nopObserver struct{}

func (nopObserver) Plan(int, int64) {}
func (nopObserver) Fetched(int64)   {}
func (nopObserver) Warn(string)     {}

// item is a message to download or delete.
type item struct {
	num  int
	uid  string
	size int64
}

// Run fetches the account once. Cancelling ctx stops it gently: the message
// being stored is finished (with those already in flight), deletions due are
// sent, and the session ends with QUIT. Run returns an error when anything
// failed; Stats are valid either way.
func Run(ctx context.Context, a *Account, obs Observer) (st Stats, err error) {
	start := time.Now()
	defer func() { st.Elapsed = time.Since(start) }()
	if obs == nil {
		obs = nopObserver{}
	}
	st.DryRun = a.DryRun
	if a.Server == "" || a.User == "" {
		return st, errors.New("server and user are required")
	}
	stateDir := expandHome(a.StateDir)
	if stateDir == "" {
		stateDir = DefaultStateDir()
	}
	j, err := OpenJournal(stateDir, a.StateName(), a.DryRun)
	if err != nil {
		return st, err
	}
	defer j.Close()
	if !a.DryRun {
		if size, path, ok := j.OutstandingMark(); ok {
			// A run was killed in the middle of (or just after) an mbox
			// append it never recorded: cut it off; it is fetched again.
			cut, err := recoverMbox(path, size)
			if err != nil {
				return st, err
			}
			if cut > 0 {
				obs.Warn(fmt.Sprintf("mbox %s: removed %d octets an interrupted run appended without recording them; they are fetched again", path, cut))
			}
			if err := j.ClearMark(); err != nil {
				return st, err
			}
		}
	}
	var dest Destination
	if !a.DryRun {
		if a.To == "" {
			return st, errors.New("no destination: give --to")
		}
		dest, err = OpenDestination(a.To, a.Rcpt, a.tag())
		if err != nil {
			return st, err
		}
		defer dest.Close()
	}
	cr, err := a.credentials(ctx)
	if err != nil {
		return st, err
	}
	tcfg, err := a.tlsConfig()
	if err != nil {
		return st, err
	}
	c, err := client.Dial(ctx, a.Server, client.Options{
		TLS: a.TLS, TLSConfig: tcfg, Timeout: a.Timeout, DialTimeout: a.DialTimeout, Dialer: a.Dialer})
	if err != nil {
		return st, err
	}
	defer c.Close()
	if st.Mechanism, err = c.Login(cr); err != nil {
		return st, err
	}
	// Capabilities may change at login (RFC 2449 §5); ask again only when
	// the ones before login lack what the run uses.
	if !c.Pipelining() || !c.Caps().Has("UIDL") {
		if _, err := c.Capa(); err != nil && !isERR(err) {
			return st, err
		}
	}
	r := &runner{a: a, c: c, j: j, dest: dest, obs: obs, st: &st, window: 1}
	if c.Pipelining() {
		r.window = a.Window
		if r.window <= 0 {
			r.window = 1024
		}
	}
	if mb, ok := dest.(*mbox); ok {
		mb.mark = j.Mark
	}
	if err := r.run(ctx); err != nil {
		return st, err
	}
	return st, nil
}

func isERR(err error) bool {
	var pe *pop3.Error
	return errors.As(err, &pe)
}

type runner struct {
	a    *Account
	c    *client.Client
	j    *Journal
	dest Destination
	obs  Observer
	st   *Stats

	noUIDL  bool
	dels    int // DELEs acknowledged with +OK
	delFail int
	batch   []item

	// The RETR window: at most window RETRs unanswered (1 without
	// PIPELINING); messages of todo sent, their octets not yet read.
	window   int
	sent     int
	inflight int64
}

// due reports whether a message first downloaded at t is due for
// deletion now.
func (r *runner) due(t time.Time) bool {
	return !r.a.KeepForever && time.Since(t) >= r.a.Keep
}

func (r *runner) run(ctx context.Context) error {
	a, c := r.a, r.c
	list, ul, uerr, err := c.ListUidl()
	if err != nil {
		return err
	}
	r.st.OnServer = len(list)
	uids := map[int]string{}
	switch err = uerr; {
	case err == nil:
		for _, m := range ul {
			uids[m.Num] = m.UID
		}
	case isERR(err):
		r.noUIDL = true
		if a.KeepForever || a.Keep > 0 {
			return fmt.Errorf("the server does not support UIDL, so pouch fetch cannot tell old mail from new: only download-and-delete works here (remove --keep); %v", err)
		}
		r.obs.Warn("the server does not support UIDL: downloading and deleting every message; a crash between storing and QUIT can duplicate a message")
	default:
		return err
	}
	count := map[string]int{}
	for _, u := range uids {
		count[u]++
	}
	present := map[string]bool{}
	var todo, dele []item
	var todoBytes int64
	now := time.Now()
	recovered := false
	dd, _ := r.dest.(deduper)
	for _, m := range list {
		it := item{num: m.Num, size: m.Size}
		if !r.noUIDL {
			uid, ok := uids[m.Num]
			if !ok {
				r.obs.Warn(fmt.Sprintf("message %d has no UIDL: skipped", m.Num))
				r.st.Skipped++
				continue
			}
			it.uid = uid
			present[uid] = true
			if count[uid] > 1 {
				r.obs.Warn(fmt.Sprintf("message %d: UIDL %q is shared by %d messages: skipped and never deleted", m.Num, uid, count[uid]))
				r.st.Skipped++
				continue
			}
			if !validUID(uid) {
				r.obs.Warn(fmt.Sprintf("message %d: invalid UIDL %q: skipped", m.Num, uid))
				r.st.Skipped++
				continue
			}
			if t, ok := r.j.Seen(uid); ok {
				if r.due(t) {
					dele = append(dele, it)
				} else {
					r.st.Kept++
				}
				continue
			}
			if r.j.Tombstoned(uid) {
				// It vanished from an earlier LIST: either that LIST was
				// partial (it was downloaded then) or the server reuses
				// the UIDL for a new message. Neither download it twice
				// nor delete it unread.
				r.obs.Warn(fmt.Sprintf("message %d: UIDL %q left the server's list recently and came back: not downloaded again and not deleted", m.Num, uid))
				r.st.Skipped++
				continue
			}
			if dd != nil && r.j.Pending(uid) && dd.Has(a.messageKey(uid)) {
				// Stored by a run that was killed before its journal
				// entry (the pending record says this message, not an
				// earlier one with the same UIDL, was being stored).
				r.j.Add(uid, now)
				recovered = true
				r.st.Recovered++
				if r.due(now) {
					dele = append(dele, it)
				} else {
					r.st.Kept++
				}
				continue
			}
		}
		if a.MaxSize > 0 && m.Size > a.MaxSize {
			r.st.Skipped++
			if a.DeleteOversized {
				r.obs.Warn(fmt.Sprintf("message %d (%d octets) is larger than --max-size: deleted without downloading", m.Num, m.Size))
				dele = append(dele, it)
			} else {
				r.obs.Warn(fmt.Sprintf("message %d (%d octets) is larger than --max-size: left on the server", m.Num, m.Size))
			}
			continue
		}
		todo = append(todo, it)
		todoBytes += m.Size
	}
	if !r.noUIDL {
		if err := r.j.Prune(present); err != nil {
			return err
		}
	}
	for _, w := range r.j.Warnings() {
		r.obs.Warn(w)
	}
	if a.DryRun {
		r.st.Fetched = len(todo)
		r.st.Bytes = todoBytes
		r.st.Deleted = len(dele)
		if !a.KeepForever && a.Keep == 0 {
			r.st.Deleted += len(todo)
		} else {
			r.st.Kept += len(todo)
		}
		return c.Quit()
	}
	if recovered {
		// The killed run may have renamed the file without fsyncing the
		// directory.
		if sd, ok := r.dest.(interface{ SyncDirs() error }); ok {
			if err := sd.SyncDirs(); err != nil {
				return err
			}
		}
	}
	r.obs.Plan(len(todo), todoBytes)
	for _, it := range dele {
		if err := r.sendDele(it); err != nil {
			return err
		}
	}
	// The first RETRs go out before the pending records are fsynced, so
	// that the fsync overlaps the round trip; nothing is stored before it.
	if err := r.sendRetrs(ctx, todo, 0); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return err
	}
	// Pending records first: recovery trusts a Maildir digest only for them.
	for _, it := range todo {
		if it.uid != "" {
			r.j.AddPending(it.uid)
		}
	}
	if err := r.j.Sync(); err != nil {
		return err
	}
	ferr := r.download(ctx, todo)
	if ferr != nil {
		return ferr
	}
	if err := c.Wait(); err != nil {
		return err
	}
	crashpoint.Hit("fetch.before-quit")
	if err := c.Quit(); err != nil {
		if r.dels > 0 {
			return fmt.Errorf("QUIT failed, so the server did not delete %d messages (they will be deleted next time): %w", r.dels, err)
		}
		return err
	}
	r.st.Deleted = r.dels
	if a.KeepForever || a.Keep > 0 {
		r.st.Kept += r.st.Fetched
	}
	if r.delFail > 0 {
		return fmt.Errorf("the server refused to delete %d messages; they stay and are retried next time", r.delFail)
	}
	return nil
}

func (r *runner) sendDele(it item) error {
	return r.c.SendDele(it.num, func(err error) {
		if err != nil {
			r.delFail++
			r.obs.Warn(fmt.Sprintf("DELE %d: %v", it.num, err))
			return
		}
		r.dels++
	})
}

const (
	batchMax      = 256      // messages per durable commit
	batchMaxBytes = 32 << 20 // octets per durable commit
	maxInflight   = 8 << 20  // octets of RETRs in flight
)

// download runs the RETR window: up to Window RETRs (and maxInflight
// octets) are on the wire at once when the server offers PIPELINING, one
// otherwise. Messages are stored as they arrive and committed in batches:
// destination sync, journal fsync, then DELE. The first RETRs may already
// have been sent by sendRetrs.
func (r *runner) download(ctx context.Context, todo []item) error {
	var batchBytes int64
	recvd := 0
	for recvd < len(todo) {
		if err := r.sendRetrs(ctx, todo, recvd); err != nil {
			return r.fail(err)
		}
		if r.sent == recvd {
			r.st.Stopped = true
			break // stopped by a signal
		}
		it := todo[recvd]
		recvd++
		r.inflight -= it.size
		n, err := r.fetchOne(it)
		if err != nil {
			if isERR(err) {
				r.obs.Warn(fmt.Sprintf("RETR %d: %v: skipped", it.num, err))
				r.st.Skipped++
				continue
			}
			return r.fail(err)
		}
		r.st.Fetched++
		r.st.Bytes += n
		r.obs.Fetched(n)
		r.batch = append(r.batch, it)
		batchBytes += n
		crashpoint.Hit("fetch.delivered")
		if len(r.batch) >= batchMax || batchBytes >= batchMaxBytes || recvd == r.sent {
			if err := r.commit(true); err != nil {
				return r.fail(err)
			}
			batchBytes = 0
		}
	}
	return r.commit(true)
}

// sendRetrs queues RETRs for todo[r.sent:] while the window has room; recvd
// replies have been read. It waits until half of the window is free,
// so that commands go out (and the server reads them) in groups rather than
// one per message. Nothing is queued once ctx is cancelled.
func (r *runner) sendRetrs(ctx context.Context, todo []item, recvd int) error {
	if r.sent > recvd && (r.sent-recvd > r.window/2 || r.inflight > maxInflight/2) {
		return nil
	}
	for r.sent < len(todo) && ctx.Err() == nil &&
		(r.sent == recvd || r.sent-recvd < r.window && r.inflight+todo[r.sent].size <= maxInflight) {
		if err := r.c.SendRetr(todo[r.sent].num); err != nil {
			return err
		}
		r.inflight += todo[r.sent].size
		r.sent++
	}
	return nil
}

var errStore = errors.New("storing failed")

// fetchOne reads the next RETR reply and stores the message.
func (r *runner) fetchOne(it item) (int64, error) {
	rc, err := r.c.ReadRetr()
	if err != nil {
		return 0, err
	}
	cnt := &countReader{r: rc}
	var key string
	if it.uid != "" {
		key = r.a.messageKey(it.uid)
	}
	err = r.dest.Deliver(Msg{UID: it.uid, Key: key, Size: it.size}, cnt)
	if err != nil {
		rc.Close()
		if cnt.err != nil {
			return cnt.n, fmt.Errorf("message %d: connection failed mid-message, nothing stored: %w", it.num, cnt.err)
		}
		return cnt.n, fmt.Errorf("%w: message %d to %s: %v", errStore, it.num, r.dest, err)
	}
	if err := rc.Close(); err != nil {
		return cnt.n, err
	}
	if cnt.n != it.size {
		r.obs.Warn(fmt.Sprintf("message %d: LIST said %d octets, RETR sent %d", it.num, it.size, cnt.n))
	}
	return cnt.n, nil
}

// commit makes the batch durable: destination sync, then journal, then
// (if the policy deletes at once and the connection still works) DELE.
func (r *runner) commit(dele bool) error {
	if len(r.batch) == 0 {
		return nil
	}
	if err := r.dest.Sync(); err != nil {
		// Drop the batch: none of it is journaled, so none of it is ever
		// deleted; the destination stays unusable (its errors are sticky).
		r.batch = r.batch[:0]
		return err
	}
	crashpoint.Hit("fetch.synced")
	now := time.Now()
	r.j.markDone()
	for _, it := range r.batch {
		if it.uid != "" {
			r.j.Add(it.uid, now)
		}
	}
	if err := r.j.Sync(); err != nil {
		return err
	}
	crashpoint.Hit("fetch.journaled")
	if rl, ok := r.dest.(interface{ Release() }); ok {
		rl.Release()
	}
	batch := r.batch
	r.batch = r.batch[:0]
	if dele && !r.a.KeepForever && r.a.Keep == 0 {
		for _, it := range batch {
			if err := r.sendDele(it); err != nil {
				return err
			}
		}
	}
	return nil
}

// fail commits what was stored before the failure (without DELE: the
// connection is suspect) and returns err.
func (r *runner) fail(err error) error {
	if cerr := r.commit(false); cerr != nil {
		return errors.Join(err, cerr)
	}
	return err
}

type countReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}
