package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"log/syslog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/units"
	"github.com/pouchmail/pouch/lmtp"
	"github.com/pouchmail/pouch/store/maildir"
)

var _ lmtp.Users = (*auth.Users)(nil)
var _ lmtp.Mailboxes = (*maildir.Store)(nil)

const deliverUsage = `Usage: pouch deliver [--data DIR] [-f SENDER] [flags] USER < message

Delivers the message on standard input into USER's maildrop, as the LMTP
listener of pouch serve does: Return-Path (with -f) and Delivered-To header
lines are added at the top, nothing else is changed (8-bit data and LF or CRLF
line endings are stored as received), and the command exits 0 only once the
message is on disk, synced. USER is a user name or user@domain, whose local
part names the user (alice+news names alice, see --lmtp-recipient-delimiter);
Delivered-To gets the argument as given.

As Dovecot's LDA does, a leading mbox "From " line is dropped, and a message
whose header already starts with Return-Path or Delivered-To (as Postfix's
local delivery writes them) does not get a second one.

For Postfix's local delivery (main.cf):
  mailbox_command = /usr/local/bin/pouch deliver --data /var/lib/pouch -f "$SENDER" "$USER"

Exit status (sysexits.h, as Postfix, procmail and fetchmail read it):
  0   delivered
  67  no such user: not in a usable users file (EX_NOUSER)
  73  refused for good: the mailbox is full or the message too big (EX_CANTCREAT)
  75  temporary failure, try again later (EX_TEMPFAIL); also while the users
      file is missing, empty, unreadable or damaged (a line names no user),
      and for a bad command line or configuration, so that the MTA keeps the
      message queued

Flags:
`

// Exit statuses of pouch deliver, from sysexits.h.
const (
	exNoUser    = 67
	exCantCreat = 73
	exTempFail  = 75
)

// lmtpSettings are the flags of mail delivery: all of them for pouch serve,
// the limits for pouch deliver.
type lmtpSettings struct {
	addr           string
	domains        string
	rcptCheckQuota bool
	// maxConnections is the most LMTP connections open at once (0: no
	// limit); each holds one file descriptor.
	maxConnections int
	idleTimeout    time.Duration
	delimiter      string
	quotaStorage   sizeValue
	quotaMessages  int
	quotaTemporary bool
	maxMessageSize sizeValue
}

// register defines the flags on fs; listener adds those of the listener
// (--lmtp, --lmtp-domains, --lmtp-rcpt-check-quota and its limits).
func (s *lmtpSettings) register(fs *flag.FlagSet, listener bool) {
	if listener {
		fs.StringVar(&s.addr, "lmtp", "", "LMTP listen `address` (host:port, or unix:/path for a socket); empty disables it")
		fs.StringVar(&s.domains, "lmtp-domains", "", "comma-separated `domains` whose recipients LMTP accepts (default: any domain)")
		fs.BoolVar(&s.rcptCheckQuota, "lmtp-rcpt-check-quota", false, "refuse a recipient over quota at RCPT already, not only after DATA (MTAs that verify recipients cache such a refusal)")
		fs.IntVar(&s.maxConnections, "lmtp-max-connections", lmtp.DefaultMaxConnections, "most LMTP connections at once; more get 421 4.3.2 (0: no limit)")
		fs.DurationVar(&s.idleTimeout, "lmtp-idle-timeout", time.Minute, "close an LMTP connection that sends no command for this `long` outside a transaction")
	}
	fs.StringVar(&s.delimiter, "lmtp-recipient-delimiter", "+", "`characters` that separate a user name from an address extension (alice+news is alice); empty turns extensions off")
	s.maxMessageSize = 50 << 20
	fs.Var(&s.quotaStorage, "quota-storage", "default storage quota of each user, a `size` such as 500M or 2G; 0 means none")
	fs.IntVar(&s.quotaMessages, "quota-messages", 0, "default quota of each user in `messages`; 0 means none")
	fs.BoolVar(&s.quotaTemporary, "quota-temporary", false, "refuse mail over quota temporarily (452 4.2.2, exit 75) rather than for good (552 5.2.2, exit 73)")
	fs.Var(&s.maxMessageSize, "max-message-size", "refuse messages larger than this `size`; 0 means no limit")
}

// agent returns the delivery agent for the data directory.
func (s *lmtpSettings) agent(data string, users lmtp.Users) (*lmtp.Agent, error) {
	if s.quotaMessages < 0 {
		return nil, errors.New("--quota-messages must not be negative")
	}
	return &lmtp.Agent{
		Store:              maildir.New(filepath.Join(data, "mail")),
		Users:              users,
		Quota:              lmtp.Quota{Storage: int64(s.quotaStorage), Messages: s.quotaMessages},
		QuotaTemporary:     s.quotaTemporary,
		MaxMessageSize:     int64(s.maxMessageSize),
		RecipientDelimiter: s.delimiter,
	}, nil
}

// sizeValue is a flag holding a size in octets, as units.ParseSize reads it.
type sizeValue int64

func (v *sizeValue) String() string { return units.FormatSize(int64(*v)) }

func (v *sizeValue) Set(s string) error {
	n, err := units.ParseSize(s)
	if err != nil {
		return err
	}
	*v = sizeValue(n)
	return nil
}

// tempFail is a failure of pouch deliver after which the MTA should retry.
func tempFail(format string, args ...any) error {
	return &exitError{code: exTempFail, msg: fmt.Sprintf(format, args...)}
}

// deliverDetails returns where pouch deliver, run with stderr, logs the
// details of a failure: stderr when it is a terminal, otherwise the system
// log (mail facility), or nil when there is none.
var deliverDetails = func(stderr io.Writer) io.Writer {
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return stderr
	}
	w, err := syslog.New(syslog.LOG_MAIL|syslog.LOG_WARNING, "pouch")
	if err != nil {
		return nil
	}
	return w
}

// deliverFail is a failure of pouch deliver whose details are for the
// operator only. Postfix's local(8) and pipe(8) put the command's output into
// the bounce (or the delay notice) that the sender gets, so the output is a
// fixed sentence with an id, and the details (paths, system errors) are
// logged with the same id where deliverDetails says.
func deliverFail(stderr io.Writer, code int, text string, details ...any) error {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	id := "d" + hex.EncodeToString(b)
	if w := deliverDetails(stderr); w != nil {
		_, syslogged := w.(*syslog.Writer)
		h := slog.NewTextHandler(w, &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if syslogged && a.Key == slog.TimeKey {
				return slog.Attr{} // syslog has its own
			}
			return a
		}})
		slog.New(h).Warn("deliver: "+text, append([]any{"id", id}, details...)...)
	}
	return &exitError{code: code, msg: fmt.Sprintf("deliver: %s (details logged, id %s)", text, id)}
}

func runDeliver(args []string, stdin io.Reader, stderr io.Writer) error {
	fs := flag.NewFlagSet("pouch deliver", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // a failure is one sentence; only --help prints the usage
	var s lmtpSettings
	configFile := fs.String("config", "", "take --data and the limits from pouch serve's TOML `file` (flags win)")
	data := fs.String("data", "./pouch-data", "data `directory`: users file DIR/users, mail in DIR/mail/USER/")
	sender := fs.String("f", "", "envelope sender `address` for the Return-Path line (none without -f; \"\" is <>)")
	s.register(fs, false)
	fs.Usage = func() {}
	pos, err := parseInterleaved(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stderr, deliverUsage)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		return err
	}
	if err != nil {
		return tempFail("deliver: %v", err)
	}
	if len(pos) != 1 {
		return tempFail("deliver: give exactly one user name, got %d arguments", len(pos))
	}
	rcpt := pos[0]
	set := flagNames(fs)
	if *configFile != "" {
		if err := deliverConfig(*configFile, set, data, &s); err != nil {
			return deliverFail(stderr, exTempFail, "the configuration file is not usable", "err", err)
		}
	}
	// pouch deliver has no first start: a users file that is missing or
	// empty is a fault, as one that cannot be read or is damaged, and only a
	// name absent from a usable file is unknown (auth.SourceError).
	usersPath := filepath.Join(*data, "users")
	users := auth.OpenUsersWith(usersPath, auth.UsersOptions{Expected: true})
	agent, err := s.agent(*data, users)
	if err != nil {
		return tempFail("deliver: %v", err)
	}
	local := rcpt
	if at := strings.LastIndexByte(rcpt, '@'); at >= 0 {
		local = rcpt[:at]
	}
	user, err := agent.User(local)
	if errors.Is(err, lmtp.ErrUnknownUser) {
		return deliverFail(stderr, exNoUser, "no such user", "user", local, "users", usersPath)
	}
	if err != nil {
		return deliverFailure(stderr, err, local)
	}
	if err := agent.Check(user, 0); err != nil {
		return deliverFailure(stderr, err, user)
	}
	d := lmtp.Delivery{User: user, Recipient: rcpt, NoReturnPath: !set["f"], Piped: true}
	d.Sender = strings.TrimSuffix(strings.TrimPrefix(*sender, "<"), ">")
	if _, err := agent.Deliver(context.Background(), d, stdin); err != nil {
		return deliverFailure(stderr, err, user)
	}
	return nil
}

// deliverConfig reads pouch serve's TOML file, checked as pouch serve checks
// it, and takes from it the settings that pouch deliver shares and that its
// command line did not give.
func deliverConfig(path string, set map[string]bool, data *string, s *lmtpSettings) error {
	sfs, sc := serveFlags(io.Discard)
	if err := applyConfigFile(sfs, path); err != nil {
		return err
	}
	if !set["data"] {
		*data = sc.data
	}
	if !set["quota-storage"] {
		s.quotaStorage = sc.lmtp.quotaStorage
	}
	if !set["quota-messages"] {
		s.quotaMessages = sc.lmtp.quotaMessages
	}
	if !set["quota-temporary"] {
		s.quotaTemporary = sc.lmtp.quotaTemporary
	}
	if !set["max-message-size"] {
		s.maxMessageSize = sc.lmtp.maxMessageSize
	}
	if !set["lmtp-recipient-delimiter"] {
		s.delimiter = sc.lmtp.delimiter
	}
	return nil
}

// deliverFailure turns a failed delivery into its exit status and sentence.
func deliverFailure(stderr io.Writer, err error, user string) error {
	var (
		qe *lmtp.QuotaError
		ie *lmtp.InputError
	)
	switch {
	case errors.Is(err, lmtp.ErrUnknownUser):
		return deliverFail(stderr, exNoUser, "no such user", "user", user)
	case errors.Is(err, lmtp.ErrUnconfirmed) && errors.Is(err, fs.ErrNotExist):
		return deliverFail(stderr, exTempFail, "there is no users file in the data directory; check --data",
			"user", user, "err", err)
	case errors.Is(err, lmtp.ErrUnconfirmed):
		return deliverFail(stderr, exTempFail, "the users file cannot be used now, try again later",
			"user", user, "err", err)
	case errors.As(err, &qe):
		code := exCantCreat
		if qe.Temporary {
			code = exTempFail
		}
		return &exitError{code: code, msg: "deliver: " + qe.Error()}
	case errors.Is(err, lmtp.ErrTooBig):
		return &exitError{code: exCantCreat, msg: "deliver: the message is larger than the limit set by --max-message-size"}
	case errors.As(err, &ie):
		return deliverFail(stderr, exTempFail, "reading the message from standard input failed, try again later",
			"user", user, "err", ie.Err)
	}
	return deliverFail(stderr, exTempFail, "temporary failure, try again later", "user", user, "err", err)
}

// lmtpService is the LMTP listener of pouch serve.
type lmtpService struct {
	srv *lmtp.Server
	l   net.Listener
	log *slog.Logger
}

// listenLMTP makes pouch serve's LMTP server and opens its listener. It
// returns nil when --lmtp is empty.
func listenLMTP(c *serveConfig, users *auth.Users, hostname string, log *slog.Logger) (*lmtpService, error) {
	s := &c.lmtp
	if s.addr == "" {
		return nil, nil
	}
	agent, err := s.agent(c.data, users)
	if err != nil {
		return nil, usageError("%v", err)
	}
	spool := filepath.Join(c.data, "spool")
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return nil, fmt.Errorf("spool directory: %v", err)
	}
	var domains []string
	for _, d := range strings.Split(s.domains, ",") {
		if d = strings.TrimSpace(d); d != "" {
			domains = append(domains, d)
		}
	}
	if s.maxConnections < 0 {
		return nil, usageError("--lmtp-max-connections must not be negative (0 means no limit)")
	}
	if s.idleTimeout <= 0 {
		return nil, usageError("--lmtp-idle-timeout must be positive")
	}
	maxConns := s.maxConnections
	if maxConns == 0 {
		maxConns = -1 // lmtp.Config: no limit
	}
	srv := lmtp.New(lmtp.Config{Agent: agent, Logger: log, Hostname: hostname, Domains: domains, SpoolDir: spool,
		RcptCheckQuota: s.rcptCheckQuota, MaxConnections: maxConns, IdleTimeout: s.idleTimeout})
	l, err := lmtp.Listen(s.addr)
	if err != nil {
		return nil, fmt.Errorf("listen lmtp on %s: %v", s.addr, err)
	}
	if w := lmtp.ExposedWarning(l.Addr()); w != "" {
		log.Warn(w, "protocol", "lmtp")
	}
	return &lmtpService{srv: srv, l: l, log: log}, nil
}

// start serves LMTP in a goroutine counted by wg; a failure of the listener
// goes to errs unless another failure is already there.
func (s *lmtpService) start(wg *sync.WaitGroup, errs chan<- error) {
	if s == nil {
		return
	}
	s.log.Info("listening", "protocol", "lmtp", "addr", s.l.Addr().String())
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.srv.Serve(s.l); err != nil && !errors.Is(err, lmtp.ErrServerClosed) {
			select {
			case errs <- fmt.Errorf("lmtp on %s: %v", s.l.Addr(), err):
			default:
			}
		}
	}()
}

// shutdown stops the LMTP server in the background, beside the POP3 one; the
// channel is closed when it has stopped.
func (s *lmtpService) shutdown(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	if s == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		if err := s.srv.Shutdown(ctx); err != nil {
			s.log.Warn("LMTP deliveries still running after the grace period were stopped unacknowledged")
		}
	}()
	return done
}
