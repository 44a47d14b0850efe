// Package fetch is the job of pouch fetch: it downloads one POP3 account's
// mail to a local destination (Maildir, mbox, an MDA, LMTP or SMTP), keeps a
// durable journal of what it fetched, and deletes mail from the server only
// when the keep policy says so and only after the message is stored and
// journaled, so that no crash loses or (for Maildir) duplicates a message.
//
// The order for each message is RETR → size checked against LIST → store
// durably → journal (fsync); once the last message is stored, STAT → DELE →
// QUIT. A crash before the journal fsync means the message is fetched again;
// for Maildir the next run finds it by the digest in its file name instead.
// A crash after it means the DELE is sent by the next run. A server whose
// replies go out of step with the commands ends the session without DELE or
// QUIT; the message at fault goes to quarantine and is left on the server.
package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"

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
	// Tokens, if set, hands out the OAuth access tokens of a signed-in
	// account (fetch/oauth). A token the server refuses is handed back
	// with Invalidate, and one fresh token is tried.
	Tokens TokenSource `json:"-"`
	// OAuthForm is where the OAuth message goes: client.OAuthAuto sends it
	// on the AUTH line, or after a continuation to Microsoft's servers.
	// Either way a form refused as a protocol error is followed by the
	// other once.
	OAuthForm client.OAuthForm

	To   string // destination, see OpenDestination
	Rcpt string // envelope recipient for lmtp: and smtp:

	Keep        time.Duration // leave on the server this long after the first download; 0: delete at once
	KeepForever bool          // never delete

	MaxSize         int64 // skip larger messages (0: no limit)
	DeleteOversized bool  // and delete them from the server

	StateDir string
	DryRun   bool
	// RetryQuarantined downloads again the messages earlier runs found
	// damaged (their UIDLs are suspect in the journal).
	RetryQuarantined bool
	// MarkExisting records every message now on the server as fetched,
	// downloading and deleting nothing, so that later runs fetch only new
	// mail. Those messages are never deleted by a later run either: they
	// were not stored here.
	MarkExisting bool

	Window      int                                                               // RETRs in flight with PIPELINING (1024)
	Timeout     time.Duration                                                     // per server reply (2 min)
	DialTimeout time.Duration                                                     // connect, TLS, greeting (30 s)
	Deadline    time.Duration                                                     // the whole run (DefaultDeadline); negative: none
	Dialer      func(ctx context.Context, network, addr string) (net.Conn, error) `json:"-"`
}

// TokenSource hands out OAuth access tokens; *oauth.Source is one.
type TokenSource interface {
	// TokenContext returns an access token good for a while yet.
	TokenContext(ctx context.Context) (*oauth2.Token, error)
	// Invalidate says that a server refused tok.
	Invalidate(tok *oauth2.Token)
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
	Marked    int   // recorded as fetched by MarkExisting
	Mechanism string
	// LoggedIn is when the server accepted the login, and LoginDelay its
	// LOGIN-DELAY (RFC 2449 §6.5), 0 if it announced none: the next login
	// is due no sooner than LoggedIn plus LoginDelay.
	LoggedIn   time.Time
	LoginDelay time.Duration
	DryRun     bool
	Stopped    bool // a signal ended the run early
	Elapsed    time.Duration
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
		// A time.Duration holds about 292 years; past that it would wrap
		// round to a negative or zero keep, which deletes at once.
		v := f * float64(mult)
		if v >= float64(math.MaxInt64) || time.Duration(v) > math.MaxInt64-d {
			return 0, false, fmt.Errorf("keep %q is too long: at most %dd, or forever", s, int64(math.MaxInt64/(24*time.Hour)))
		}
		d += time.Duration(v)
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

// messageKey is the digest of server, user, UIDL and size (as LIST
// announced it) written into Maildir file names, so that a message under a
// reused UIDL is not taken for the earlier one. A negative size is left
// out: the digest of a message stored before sizes were recorded.
func (a *Account) messageKey(uid string, size int64) string {
	s := a.Server + "\x00" + a.User + "\x00" + uid
	if size >= 0 {
		s += "\x00" + strconv.FormatInt(size, 10)
	}
	sum := sha256.Sum256([]byte(s))
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

// credentials reads the secret afresh (tokens expire between polls); tok
// is the token from a.Tokens, if that is where the secret came from.
func (a *Account) credentials(ctx context.Context) (cr client.Credentials, tok *oauth2.Token, err error) {
	cr = client.Credentials{User: a.User, OAuthForm: a.OAuthForm}
	host, port, _ := net.SplitHostPort(a.Server)
	cr.Host = host
	cr.Port, _ = strconv.Atoi(port)
	switch {
	case a.Tokens != nil:
		tok, err := a.Tokens.TokenContext(ctx)
		if err != nil {
			return cr, nil, err
		}
		cr.OAuthToken = tok.AccessToken
		return cr, tok, nil
	case a.OAuthTokenCommand != "":
		tok, err := runSecretCommand(ctx, a.OAuthTokenCommand)
		if err != nil {
			return cr, nil, fmt.Errorf("oauth-token-command: %w", err)
		}
		cr.OAuthToken = tok
	case a.PasswordCommand != "":
		pw, err := runSecretCommand(ctx, a.PasswordCommand)
		if err != nil {
			return cr, nil, fmt.Errorf("password-command: %w", err)
		}
		cr.Password = pw
	case a.PasswordFile != "":
		data, err := os.ReadFile(ExpandHome(a.PasswordFile))
		if err != nil {
			return cr, nil, fmt.Errorf("password-file: %w", err)
		}
		cr.Password = firstLine(string(data))
		if cr.Password == "" {
			// Sent, it would be refused as a wrong password, and count
			// against the account in the server's defences.
			return cr, nil, fmt.Errorf("password-file %s: its first line is empty", a.PasswordFile)
		}
	default:
		return cr, nil, errors.New("no secret: give --password-file, --password-command, --oauth-token-command or provider")
	}
	return cr, nil, nil
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
		pem, err := os.ReadFile(ExpandHome(a.CAFile))
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
func validUID[S string | []byte](uid S) bool {
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

// DefaultDeadline bounds a whole run of an account whose Deadline is 0.
const DefaultDeadline = 30 * time.Minute

// ErrBrokenServer is wrapped by the error of a run that stopped because the
// server's replies went out of step with the commands: a reply that is
// neither +OK nor -ERR where one is due, data that answers no command, an
// empty message, or a message whose size disagrees with LIST (a body line
// "." that the server did not dot-stuff ends the body early).
var ErrBrokenServer = errors.New("the server broke the POP3 protocol")

// ErrDeadline is wrapped by the error of a run cut off at its deadline.
var ErrDeadline = errors.New("the account's deadline passed")

// Run fetches the account once. Cancelling ctx stops it gently: the message
// being stored is finished (with those already in flight), deletions due are
// sent, and the session ends with QUIT. The account's deadline stops it at
// once: the connection is closed without QUIT, so the server deletes nothing
// (RFC 1939 §6), and what was stored is journaled. Run returns an error when
// anything failed; Stats are valid either way.
func Run(ctx context.Context, a *Account, obs Observer) (Stats, error) {
	return runWith(ctx, a, obs, osCalls)
}

// runWith is Run with the file system calls sys.
func runWith(ctx context.Context, a *Account, obs Observer, sys fsCalls) (st Stats, err error) {
	start := time.Now()
	defer func() { st.Elapsed = time.Since(start) }()
	if obs == nil {
		obs = nopObserver{}
	}
	st.DryRun = a.DryRun
	if a.Server == "" || a.User == "" {
		return st, errors.New("server and user are required")
	}
	limit := a.Deadline
	if limit == 0 {
		limit = DefaultDeadline
	}
	// dctx ends at the deadline or with ctx: it bounds the steps that have
	// nothing to finish (the secret command, connecting, logging in).
	dctx := ctx
	var deadline time.Time
	var cutOff atomic.Bool
	if limit > 0 {
		deadline = start.Add(limit)
		var cancel context.CancelFunc
		dctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
		defer func() {
			if err != nil && (cutOff.Load() || ctx.Err() == nil && dctx.Err() != nil) {
				err = fmt.Errorf("%w: the run was cut off after %v, so nothing was deleted this time (what was stored is recorded and is not fetched again)", ErrDeadline, limit)
			}
		}()
	}
	stateDir := ExpandHome(a.StateDir)
	if stateDir == "" {
		stateDir = DefaultStateDir()
	}
	j, err := openJournal(stateDir, a.StateName(), a.DryRun, sys)
	if err != nil {
		return st, err
	}
	defer j.Close()
	if !a.DryRun {
		if size, path, ok := j.OutstandingMark(); ok {
			// A run was killed in the middle of (or just after) an mbox
			// append it never recorded: cut it off; it is fetched again.
			cut, err := recoverMbox(path, size, sys.fsync)
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
	if !a.DryRun && (a.To != "" || !a.MarkExisting) {
		if a.To == "" {
			return st, errors.New("no destination: give --to")
		}
		dest, err = openDestination(a.To, a.Rcpt, a.tag(), sys)
		if err != nil {
			return st, err
		}
		defer dest.Close()
	}
	caps := capsOf(dest)
	if caps.deadline != nil {
		caps.deadline.setDeadline(deadline)
	}
	if caps.mark != nil {
		caps.mark.setMark(j.Mark)
	}
	ld := loginDelayState{path: filepath.Join(stateDir, a.StateName()+".login")}
	if err := ld.check(time.Now()); err != nil {
		return st, err
	}
	tcfg, err := a.tlsConfig()
	if err != nil {
		return st, err
	}
	// cur is the connection the deadline aborts.
	var cur atomic.Pointer[client.Client]
	if !deadline.IsZero() {
		t := time.AfterFunc(time.Until(deadline), func() {
			cutOff.Store(true)
			if c := cur.Load(); c != nil {
				c.Abort()
			}
		})
		defer t.Stop()
	}
	c, err := a.login(dctx, tcfg, &cur, &st, &ld)
	if err != nil {
		return st, err
	}
	defer c.Close()
	// Capabilities may change at login (RFC 2449 §5); ask again only when
	// the ones before login lack what the run uses, or said that the
	// user's LOGIN-DELAY is told after login (§6.5's USER tag).
	_, perUser, _ := c.Caps().LoginDelay()
	if !c.Pipelining() || !c.Caps().Has("UIDL") || perUser {
		_, err := c.Capa()
		if err != nil && !isERR(err) {
			return st, err
		}
		if err == nil {
			// After login the value is the user's own; none means none.
			if d, _, ok := c.Caps().LoginDelay(); ok || perUser {
				st.LoginDelay = d
			}
		}
	}
	ld.loggedIn(st.LoggedIn, st.LoginDelay)
	r := &runner{a: a, c: c, j: j, dest: dest, caps: caps, sys: sys, obs: obs, st: &st, stateDir: stateDir, window: 1}
	if c.Pipelining() {
		r.window = a.Window
		if r.window <= 0 {
			r.window = 1024
		}
	}
	defer r.tee.close()
	if err := r.run(ctx); err != nil {
		return st, err
	}
	return st, nil
}

func isERR(err error) bool {
	var pe *pop3.Error
	return errors.As(err, &pe)
}

// formMemo remembers, per server, the OAuth form that worked, so that a
// server that refused one form is not asked in it at every poll.
var formMemo sync.Map // server address → client.OAuthForm

// login connects and logs in. An OAuth login the server refuses as a
// protocol error, on a connection it then closed, is tried again on a new
// connection in the other form; a token it refuses is handed back to its
// source and one fresh token is tried (the token command runs again, and
// a token it prints unchanged is not tried twice). A refusal for
// LOGIN-DELAY (RFC 2449 §8.1.1) becomes a *LoginDelayError.
func (a *Account) login(ctx context.Context, tcfg *tls.Config, cur *atomic.Pointer[client.Client], st *Stats, ld *loginDelayState) (*client.Client, error) {
	form := a.OAuthForm
	if f, ok := formMemo.Load(a.Server); ok && form == client.OAuthAuto {
		form = f.(client.OAuthForm)
	}
	reformed, refreshed := false, false
	var refusedToken string
	var firstErr error
	for {
		cr, tok, err := a.credentials(ctx)
		if err != nil {
			return nil, err
		}
		if cr.OAuthToken != "" {
			cr.OAuthForm = form
			if refreshed && cr.OAuthToken == refusedToken {
				// The source has nothing newer: the first refusal stands.
				return nil, authError(firstErr)
			}
		}
		c, err := client.Dial(ctx, a.Server, client.Options{
			TLS: a.TLS, TLSConfig: tcfg, Timeout: a.Timeout, DialTimeout: a.DialTimeout, Dialer: a.Dialer})
		if err != nil {
			return nil, err
		}
		cur.Store(c)
		st.Mechanism, err = c.Login(cr)
		if err == nil {
			st.LoggedIn = time.Now()
			if d, _, ok := c.Caps().LoginDelay(); ok {
				st.LoginDelay = d
			}
			if cr.OAuthToken != "" {
				formMemo.Store(a.Server, c.OAuthFormUsed())
			}
			return c, nil
		}
		c.Close()
		var pe *pop3.Error
		if errors.As(err, &pe) && pe.Code == pop3.CodeLoginDelay {
			d, _, _ := c.Caps().LoginDelay()
			return nil, ld.refused(time.Now(), d)
		}
		var oe *client.OAuthError
		if !errors.As(err, &oe) {
			return nil, authError(err)
		}
		switch {
		case oe.FormRefused() && !oe.BothForms && !reformed:
			reformed = true
			form = client.OAuthTwoStep
			if oe.Form == client.OAuthTwoStep {
				form = client.OAuthInitialResponse
			}
			continue
		case oe.TokenRefused() && !refreshed:
			refreshed, refusedToken, firstErr = true, cr.OAuthToken, err
			if a.Tokens != nil {
				a.Tokens.Invalidate(tok)
			}
			continue
		case oe.TokenRefused() && a.Tokens != nil:
			err = fmt.Errorf("%w; a freshly refreshed token was refused too, so the sign-in may have been revoked or be for another address than %s", err, a.User)
		}
		return nil, authError(err)
	}
}

// AuthError is a login the server refused for its credentials: a wrong
// password, or a token it does not take. Trying again does not help; the
// user must act.
type AuthError struct{ Err error }

func (e *AuthError) Error() string { return e.Err.Error() }
func (e *AuthError) Unwrap() error { return e.Err }

// authError wraps err in an *AuthError when it is the server's refusal of
// the credentials: -ERR [AUTH] (RFC 3206 §5), or a bare -ERR that does not
// speak of a lock or of trying later, or an OAuth refusal that is not about
// the form of the exchange.
func authError(err error) error {
	var oe *client.OAuthError
	if errors.As(err, &oe) && oe.FormRefused() {
		return err
	}
	var pe *pop3.Error
	if !errors.As(err, &pe) {
		return err
	}
	switch pe.Code {
	case pop3.CodeAuth:
		return &AuthError{err}
	case "":
		low := strings.ToLower(pe.Text)
		for _, s := range []string{"lock", "in use", "busy", "later", "temporar"} {
			if strings.Contains(low, s) {
				return err
			}
		}
		return &AuthError{err}
	}
	return err
}

// LoginDelayError says that the server's LOGIN-DELAY (RFC 2449 §6.5) does
// not allow a login yet, so nothing was fetched.
type LoginDelayError struct {
	Delay   time.Duration // the server's LOGIN-DELAY; 0 if it did not say
	Until   time.Time     // when a login is allowed again; zero if unknown
	Refused bool          // the server refused the login (-ERR [LOGIN-DELAY]), rather than Pouch waiting
}

func (e *LoginDelayError) Error() string {
	switch {
	case !e.Refused:
		return fmt.Sprintf("the server allows one login every %s (LOGIN-DELAY): not logging in before %s", ShortDuration(e.Delay), e.Until.Format("15:04:05"))
	case e.Delay > 0:
		return fmt.Sprintf("the server refused the login as too soon after the last one (LOGIN-DELAY %s): not trying again before %s", ShortDuration(e.Delay), e.Until.Format("15:04:05"))
	}
	return "the server refused the login as too soon after the last one (LOGIN-DELAY), without saying how long to wait"
}

// ShortDuration writes a duration in whole seconds, as 15m rather than
// 15m0s and 1h rather than 1h0m0s.
func ShortDuration(d time.Duration) string {
	s := d.Round(time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// loginDelayState keeps, beside the journal, when the account last logged
// in and the server's LOGIN-DELAY, so that runs from cron honour it too
// (RFC 2449 §6.5: clients use it as the least interval between checks).
// The file is advice, not a record of mail: it is written without fsync,
// and one that cannot be read is ignored.
type loginDelayState struct {
	path string
}

// check returns a *LoginDelayError while the last login's delay runs.
func (l *loginDelayState) check(now time.Time) error {
	data, err := os.ReadFile(l.path)
	if err != nil {
		return nil
	}
	var at, delay int64
	var refused string
	if n, _ := fmt.Sscanf(string(data), "%d %d %s", &at, &delay, &refused); n < 2 || delay <= 0 || delay > 86400 {
		return nil
	}
	until := time.Unix(at, 0).Add(time.Duration(delay) * time.Second)
	if !now.Before(until) || until.Sub(now) > time.Duration(delay)*time.Second {
		return nil // over, or a clock that went back
	}
	return &LoginDelayError{Delay: time.Duration(delay) * time.Second, Until: until, Refused: refused == "refused"}
}

// loggedIn records a login the server accepted at t.
func (l *loginDelayState) loggedIn(t time.Time, delay time.Duration) {
	if delay <= 0 {
		os.Remove(l.path)
		return
	}
	l.write(fmt.Sprintf("%d %d\n", t.Unix(), int64(delay/time.Second)))
}

// refused records a -ERR [LOGIN-DELAY] at t; delay is what the server
// announced before login (0: nothing).
func (l *loginDelayState) refused(t time.Time, delay time.Duration) error {
	e := &LoginDelayError{Delay: delay, Refused: true}
	if delay > 0 {
		// The server's last login was at most now: waiting the whole delay
		// from now is always enough.
		e.Until = t.Add(delay)
		l.write(fmt.Sprintf("%d %d refused\n", t.Unix(), int64(delay/time.Second)))
	}
	return e
}

func (l *loginDelayState) write(content string) {
	tmp := l.path + ".tmp"
	if os.WriteFile(tmp, []byte(content), 0o600) == nil {
		os.Rename(tmp, l.path)
	}
}

// desync reports whether err shows that the server's replies are out of
// step with the commands.
func desync(err error) bool {
	return errors.Is(err, pop3.ErrProtocol) || errors.Is(err, pop3.ErrBadLine) || errors.Is(err, pop3.ErrLineTooLong)
}

type runner struct {
	a        *Account
	c        *client.Client
	j        *Journal
	dest     Destination
	caps     destCaps // dest's capabilities
	sys      fsCalls
	obs      Observer
	st       *Stats
	stateDir string

	noUIDL  bool
	l       listing
	todo    chunks[uint32] // indexes into l: to download
	dele    chunks[uint32] // message numbers to delete before QUIT
	dels    int            // DELEs acknowledged with +OK
	delFail int
	batch   []uint32 // indexes into l: stored, not yet journaled

	// The RETR window: at most window RETRs unanswered (1 without
	// PIPELINING); messages of todo sent, their octets not yet read.
	window   int
	sent     int
	inflight int64

	tee teeSpool // a copy of the message being received, for quarantine
}

// list reads LIST and UIDL as they stream in, into r.l; every valid UIDL
// is entered in the journal's table.
func (r *runner) list() (uidlErr error, err error) {
	return r.c.ListUidlFunc(r.l.add, func(n int, uid []byte) error {
		i, ok := r.l.find(n)
		if !ok {
			return nil // not in LIST: never touched
		}
		if r.l.id(i) != 0 {
			return fmt.Errorf("%w: UIDL names message %d twice", pop3.ErrProtocol, n)
		}
		if !validUID(uid) {
			r.obs.Warn(fmt.Sprintf("message %d: invalid UIDL %q: skipped", n, uid))
			r.l.setID(i, badID)
			return nil
		}
		id, _, err := r.j.Listed(uid)
		r.l.setID(i, id)
		return err
	})
}

// uid returns the UIDL of message i, or "".
func (r *runner) uid(i int) string {
	if id := r.l.id(i); id != 0 && id != badID {
		return r.j.ids.UID(id)
	}
	return ""
}

// run lists the messages, plans what to do with each (makePlan) and
// carries the plan out (execute).
func (r *runner) run(ctx context.Context) error {
	a := r.a
	uerr, err := r.list()
	if err != nil {
		if desync(err) {
			return fmt.Errorf("%w in its message listing: %s, so the session was ended without deleting anything", ErrBrokenServer, describe(err))
		}
		return err
	}
	r.st.OnServer = r.l.len()
	if uerr != nil && a.MarkExisting {
		return fmt.Errorf("the server does not support UIDL, so --mark-existing cannot record its messages (nothing was changed): %v", uerr)
	}
	if uerr != nil {
		r.noUIDL = true
		if a.KeepForever || a.Keep > 0 {
			return fmt.Errorf("the server does not support UIDL, so pouch fetch cannot tell old mail from new: only download-and-delete works here (remove --keep); %v", uerr)
		}
		// A journal that expects messages on the server learnt them from
		// this server's UIDL: a refusal now is more likely passing than
		// the end of UIDL, and downloading and deleting every message
		// would delete those --mark-existing or quarantine keeps.
		if n := r.j.expected(func(t time.Time) bool { return a.due(t, time.Now()) }); n > 0 {
			return fmt.Errorf("the server refused UIDL (%v), but the journal expects %d messages there that must not be deleted (on the server before --mark-existing, quarantined, or not yet downloaded): nothing was downloaded or deleted; if the server no longer offers UIDL, move %s away", uerr, n, r.j.path())
		}
		// A journal that expects messages on the server learnt them from
		// this server's UIDL: a refusal now is more likely passing than
		// the end of UIDL, and downloading and deleting every message
		// would delete those --mark-existing or quarantine keeps.
		if n := r.j.expected(func(t time.Time) bool { return a.due(t, time.Now()) }); n > 0 {
			return fmt.Errorf("the server refused UIDL (%v), but the journal expects %d messages there that must not be deleted (on the server before --mark-existing, quarantined, or not yet downloaded): nothing was downloaded or deleted; if the server no longer offers UIDL, move %s away", uerr, n, r.j.path())
		}
		r.obs.Warn("the server does not support UIDL: downloading and deleting every message; a crash between storing and QUIT can duplicate a message")
	}
	var stored func(uid string, size int64) bool
	var storedErr error // the destination could not tell: nothing is done
	if dd := r.caps.dedup; dd != nil {
		stored = func(uid string, size int64) bool {
			has, err := dd.Has(a.messageKey(uid, size))
			if storedErr == nil {
				storedErr = err
			}
			return has
		}
	}
	p := makePlan(planInput{a: a, l: &r.l, ids: r.j.ids, noUIDL: r.noUIDL, stored: stored, now: time.Now()})
	if storedErr != nil {
		return storedErr
	}
	return r.execute(ctx, p)
}

// execute carries out a plan: it records the messages a killed run stored
// (once the destination made their names durable) and those --mark-existing
// marks, then, unless the run only marks or is dry, downloads, stores and
// journals the messages to fetch, and deletes what is due (finish).
func (r *runner) execute(ctx context.Context, p *plan) error {
	a, c := r.a, r.c
	for _, w := range p.warnings {
		r.obs.Warn(w)
	}
	r.st.Kept += p.kept
	r.st.Skipped += p.skipped
	if p.recovered.len() > 0 {
		// The killed run may have renamed the files without fsyncing the
		// directories: before any journal record of them is written.
		if r.caps.dirs != nil {
			if err := r.caps.dirs.SyncDirs(); err != nil {
				return err
			}
		}
		p.recovered.each(func(i uint32) { r.j.addRef(r.l.id(int(i)), p.now, r.l.size(int(i))) })
		r.st.Recovered += p.recovered.len()
	}
	p.mark.each(func(i uint32) { r.j.addExistingRef(r.l.id(int(i)), p.now, r.l.size(int(i))) })
	r.st.Marked += p.mark.len()
	r.todo, r.dele = p.fetch, p.dele
	if !r.noUIDL {
		if err := r.j.Prune(func(t time.Time) bool { return a.due(t, p.now) }); err != nil {
			return err
		}
	}
	for _, w := range r.j.Warnings() {
		r.obs.Warn(w)
	}
	if a.MarkExisting {
		if err := r.j.Sync(); err != nil {
			return err
		}
		crashpoint.Hit("fetch.marked")
		return r.finish()
	}
	if a.DryRun {
		r.st.Fetched = r.todo.len()
		r.st.Bytes = p.fetchBytes
		r.st.Deleted = r.dele.len()
		if !a.KeepForever && a.Keep == 0 {
			r.st.Deleted += r.todo.len()
		} else {
			r.st.Kept += r.todo.len()
		}
		return c.Quit()
	}
	r.obs.Plan(r.todo.len(), p.fetchBytes)
	// The first RETRs go out before the pending records are fsynced, so
	// that the fsync overlaps the round trip; nothing is stored before it.
	if err := r.sendRetrs(ctx, 0); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return err
	}
	// Pending records first: recovery trusts a Maildir digest only for them.
	r.todo.each(func(i uint32) {
		if id := r.l.id(int(i)); id != 0 {
			r.j.addPendingRef(id, r.l.size(int(i)))
		}
	})
	if err := r.j.Sync(); err != nil {
		return err
	}
	if err := r.download(ctx); err != nil {
		return err
	}
	return r.finish()
}

// finish deletes what is due and ends the session with QUIT (RFC 1939 §6:
// only QUIT commits deletions). Before the first DELE a STAT must count the
// messages LIST listed, with nothing after its reply: what is left of a
// body the server cut short, or a reply it sent twice, would answer it
// instead, and the session then ends without deleting anything. So does a
// -ERR, which STAT never answers (RFC 1939 §5): it may be such a line.
func (r *runner) finish() error {
	c := r.c
	if r.dele.len() > 0 {
		count, _, err := c.Stat()
		switch {
		case desync(err):
			return r.broken("STAT", err)
		case isERR(err):
			return r.broken("STAT", fmt.Errorf("%w: STAT answered %q, where only +OK is defined", pop3.ErrProtocol, strings.TrimPrefix(err.Error(), "pop3: ")))
		case err != nil:
			return err
		case count != r.l.len():
			return r.broken("STAT", fmt.Errorf("%w: STAT counts %d messages where LIST listed %d", pop3.ErrProtocol, count, r.l.len()))
		}
		for k := range r.dele.len() {
			if err := r.sendDele(int(*r.dele.at(k))); err != nil {
				return err
			}
			if c.Pending() >= r.window {
				if err := c.Wait(); err != nil {
					return r.broken("DELE", err)
				}
			}
		}
		if err := c.Wait(); err != nil {
			return r.broken("DELE", err)
		}
	}
	crashpoint.Hit("fetch.before-quit")
	if err := c.Quit(); err != nil {
		if r.dels > 0 {
			return fmt.Errorf("QUIT failed, so the server did not delete %d messages (they will be deleted next time): %w", r.dels, err)
		}
		return err
	}
	r.st.Deleted = r.dels
	if r.a.KeepForever || r.a.Keep > 0 {
		r.st.Kept += r.st.Fetched
	}
	if r.delFail > 0 {
		return fmt.Errorf("the server refused to delete %d messages; they stay and are retried next time", r.delFail)
	}
	return nil
}

// broken words a sign of a desynchronised stream found after the downloads;
// any other error passes unchanged.
func (r *runner) broken(what string, err error) error {
	if !desync(err) {
		return err
	}
	return fmt.Errorf("%w answering %s before QUIT: %s, so the session was ended without deleting anything", ErrBrokenServer, what, describe(err))
}

func (r *runner) sendDele(n int) error {
	return r.c.SendDele(n, func(err error) {
		if err != nil {
			r.delFail++
			r.obs.Warn(fmt.Sprintf("DELE %d: %v", n, err))
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

// download runs the RETR window over r.todo: up to Window RETRs (and
// maxInflight octets) are on the wire at once when the server offers
// PIPELINING, one otherwise. Messages are stored as they arrive and
// committed in batches: destination sync, then journal fsync. The first
// RETRs may already have been sent by sendRetrs.
func (r *runner) download(ctx context.Context) error {
	var batchBytes int64
	recvd := 0
	for recvd < r.todo.len() {
		if err := r.sendRetrs(ctx, recvd); err != nil {
			return r.fail(err)
		}
		if r.sent == recvd {
			r.st.Stopped = true
			break // stopped by a signal
		}
		i := int(*r.todo.at(recvd))
		recvd++
		r.inflight -= r.l.size(i)
		n, err := r.fetchOne(i)
		if err != nil {
			if isERR(err) {
				r.obs.Warn(fmt.Sprintf("RETR %d: %v: skipped", r.l.num(i), err))
				r.st.Skipped++
				continue
			}
			return r.fail(err)
		}
		r.st.Fetched++
		r.st.Bytes += n
		r.obs.Fetched(n)
		r.batch = append(r.batch, uint32(i))
		batchBytes += n
		crashpoint.Hit("fetch.delivered")
		if len(r.batch) >= batchMax || batchBytes >= batchMaxBytes || recvd == r.sent {
			if err := r.commit(); err != nil {
				return r.fail(err)
			}
			batchBytes = 0
		}
	}
	return r.commit()
}

// sendRetrs queues RETRs for r.todo from r.sent on while the window has
// room; recvd replies have been read. It waits until half of the window is
// free, so that commands go out (and the server reads them) in groups
// rather than one per message. Nothing is queued once ctx is cancelled.
func (r *runner) sendRetrs(ctx context.Context, recvd int) error {
	if r.sent > recvd && (r.sent-recvd > r.window/2 || r.inflight > maxInflight/2) {
		return nil
	}
	for r.sent < r.todo.len() && ctx.Err() == nil {
		i := int(*r.todo.at(r.sent))
		size := r.l.size(i)
		if r.sent != recvd && (r.sent-recvd >= r.window || r.inflight+size > maxInflight) {
			break
		}
		if err := r.c.SendRetr(int(r.l.num(i))); err != nil {
			return err
		}
		r.inflight += size
		r.sent++
	}
	return nil
}

var errStore = errors.New("storing failed")

// fetchOne reads the next RETR reply and stores message i. The message
// counts as received only if its size agrees with LIST (checkReader): the
// destination sees a read error instead of its end otherwise, and keeps
// nothing.
func (r *runner) fetchOne(i int) (int64, error) {
	num, size := r.l.num(i), r.l.size(i)
	rc, err := r.c.ReadRetr()
	if err != nil {
		if desync(err) {
			return 0, r.suspect(i, nil, err)
		}
		return 0, err
	}
	r.tee.reset()
	chk := &checkReader{r: rc, want: size, tee: &r.tee}
	uid := r.uid(i)
	var key string
	if uid != "" {
		key = r.a.messageKey(uid, size)
	}
	err = r.dest.Deliver(Msg{UID: uid, Key: key, Size: size}, chk)
	if err != nil {
		rc.Close()
		switch {
		case chk.bad != nil:
			return chk.n, r.suspect(i, chk, chk.bad)
		case chk.err != nil && desync(chk.err):
			return chk.n, r.suspect(i, chk, chk.err)
		case chk.err != nil:
			return chk.n, fmt.Errorf("message %d: connection failed mid-message, nothing stored: %w", num, chk.err)
		}
		return chk.n, fmt.Errorf("%w: message %d to %s: %v", errStore, num, r.dest, err)
	}
	if err := rc.Close(); err != nil {
		return chk.n, err
	}
	return chk.n, nil
}

// suspect handles a sign, while message i was due, that the server's
// replies are out of step with the commands. What arrived of it goes to
// quarantine, the journal records its UIDL as suspect (no later run stores
// or deletes it), and the session ends without QUIT, so the server deletes
// nothing: the messages stored earlier in the session are journaled by fail,
// each having passed its own size check, and are deleted by a later run.
func (r *runner) suspect(i int, chk *checkReader, cause error) error {
	num := r.l.num(i)
	where := ""
	if chk != nil && chk.n > 0 {
		dir, err := r.quarantine()
		if err != nil {
			r.obs.Warn(fmt.Sprintf("could not keep what arrived of message %d: %v", num, err))
		} else {
			where = ", and what arrived of it is in " + dir
		}
	}
	crashpoint.Hit("fetch.quarantined")
	uid := r.uid(i)
	what := fmt.Sprintf("message %d", num)
	stays := "the message stays on the server"
	if uid != "" {
		what = fmt.Sprintf("message %d (UIDL %s)", num, uid)
		stays = "the message stays on the server and is not downloaded again"
		r.j.addSuspectRef(r.l.id(i))
		if err := r.j.Sync(); err != nil {
			return errors.Join(fmt.Errorf("%w at %s: %s", ErrBrokenServer, what, describe(cause)), err)
		}
		crashpoint.Hit("fetch.suspect-journaled")
	}
	return fmt.Errorf("%w at %s: %s, so the session was ended without deleting anything; %s%s", ErrBrokenServer, what, describe(cause), stays, where)
}

// describe words a sign of a broken stream for a sentence.
func describe(err error) string {
	s := err.Error()
	for _, p := range []string{"pop3: protocol error: ", "pop3: "} {
		s = strings.TrimPrefix(s, p)
	}
	return s
}

// quarantine stores the message just received (r.tee) in the Maildir
// quarantine/NAME/ under the state directory, apart from the user's mail.
func (r *runner) quarantine() (string, error) {
	dir := filepath.Join(r.stateDir, "quarantine", r.a.StateName())
	if err := mkdirSynced(dir, r.sys.syncDir); err != nil {
		return "", err
	}
	body, err := r.tee.reader()
	if err != nil {
		return "", err
	}
	q, err := openMaildir(dir, "", r.sys)
	if err != nil {
		return "", err
	}
	err = q.Deliver(Msg{}, body)
	if cerr := q.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "new"), nil
}

// commit makes the batch durable: destination sync, then journal. The
// messages join the deletions sent before QUIT if the policy deletes at
// once.
func (r *runner) commit() error {
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
	for _, i := range r.batch {
		if id := r.l.id(int(i)); id != 0 {
			r.j.addRef(id, now, r.l.size(int(i)))
		}
	}
	if err := r.j.Sync(); err != nil {
		return err
	}
	crashpoint.Hit("fetch.journaled")
	if r.caps.release != nil {
		r.caps.release.Release()
	}
	if !r.a.KeepForever && r.a.Keep == 0 {
		for _, i := range r.batch {
			r.dele.add(r.l.num(int(i)))
		}
	}
	r.batch = r.batch[:0]
	return nil
}

// fail commits what was stored before the failure and returns err; the
// session then ends without QUIT.
func (r *runner) fail(err error) error {
	if cerr := r.commit(); cerr != nil {
		return errors.Join(err, cerr)
	}
	return err
}

// sizeError is a message whose size disagrees with LIST, or an empty one.
type sizeError struct {
	got, want int64
}

func (e *sizeError) Error() string {
	if e.got == 0 {
		return "it arrived empty"
	}
	return fmt.Sprintf("it arrived as %d octets where LIST announced %d (a body line \".\" that is not dot-stuffed ends a message early)", e.got, e.want)
}

// checkReader passes a message body through, counting its octets and CRLF
// line ends and keeping a copy in tee. At its end it checks the size against
// LIST: the octets received (CRLF line ends, dots unstuffed) as RFC 1939
// §11 counts them, or those octets less one per CRLF, as servers that count
// their stored LF line ends report. A body of another size, or an empty
// one, ends with an error instead of io.EOF.
type checkReader struct {
	r    io.Reader
	want int64
	tee  *teeSpool
	n    int64 // octets
	crlf int64 // CRLF pairs
	cr   bool  // the last octet was CR
	bad  error // the size check failed
	err  error // reading failed
}

func (c *checkReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		b := p[:n]
		if c.cr && b[0] == '\n' {
			c.crlf++
		}
		c.crlf += int64(bytes.Count(b, crlf))
		c.cr = b[n-1] == '\r'
		c.n += int64(n)
		c.tee.write(b)
	}
	// A protocol error here came at the body's end (data followed it that
	// answers no command): the size is worth judging too.
	if err == io.EOF || err != nil && desync(err) {
		if c.n == 0 || c.n != c.want && c.n-c.crlf != c.want {
			c.bad = &sizeError{got: c.n, want: c.want}
			return n, c.bad
		}
	}
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

var crlf = []byte("\r\n")

// teeMem is how much of a message teeSpool keeps in memory.
const teeMem = 1 << 20

// teeSpool keeps a copy of the message being received, the first teeMem
// octets in memory and the rest in an unlinked temporary file, so that a
// message found damaged at its end can be put in quarantine. A failure to
// keep the copy is remembered, not returned: it must not fail a good
// message.
type teeSpool struct {
	mem []byte
	f   *os.File
	off int64 // octets in f
	err error
}

func (t *teeSpool) reset() {
	t.mem, t.off, t.err = t.mem[:0], 0, nil
}

func (t *teeSpool) write(p []byte) {
	if t.err != nil {
		return
	}
	if k := min(len(p), teeMem-len(t.mem)); k > 0 {
		t.mem = append(t.mem, p[:k]...)
		p = p[k:]
	}
	if len(p) == 0 {
		return
	}
	if t.f == nil {
		f, err := os.CreateTemp("", "pouch-fetch-tee-*")
		if err != nil {
			t.err = err
			return
		}
		os.Remove(f.Name())
		t.f = f
	}
	n, err := t.f.WriteAt(p, t.off)
	t.off += int64(n)
	t.err = err
}

// reader returns the copy.
func (t *teeSpool) reader() (io.Reader, error) {
	if t.err != nil {
		return nil, fmt.Errorf("keeping a copy: %w", t.err)
	}
	if t.off == 0 {
		return bytes.NewReader(t.mem), nil
	}
	return io.MultiReader(bytes.NewReader(t.mem), io.NewSectionReader(t.f, 0, t.off)), nil
}

func (t *teeSpool) close() {
	if t.f != nil {
		t.f.Close()
	}
}
