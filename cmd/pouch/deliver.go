package main

import (
	"context"
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
	"github.com/pouchmail/pouch/internal/crashpoint"
	"github.com/pouchmail/pouch/internal/random"
	"github.com/pouchmail/pouch/lmtp"
	"github.com/pouchmail/pouch/store/maildir"
)

var _ lmtp.Users = (*auth.Users)(nil)
var _ lmtp.Mailboxes = (*maildir.Store)(nil)

const deliverUsage = `Usage: pouch deliver [--data DIR | --store URL] [-f SENDER] [flags] USER < message

Delivers the message on standard input into USER's maildrop, as the LMTP
listener of pouch serve does: Return-Path (with -f) and Delivered-To header
lines are added at the top, nothing else is changed (8-bit data and LF or CRLF
line endings are stored as received), and the command exits 0 only once the
message is on disk, synced. USER is an address or a user name, looked up as
LMTP looks a recipient up: alice@example.org names that user (alice+news@...
names alice@... unless there is such a user, see --lmtp-recipient-delimiter),
and else a user alice named without a domain; a name without a domain takes
--default-domain first. Delivered-To gets the argument as given. With
--config, the accounts are where pouch serve's [accounts] says.

As Dovecot's LDA does, a leading mbox "From " line is dropped, and a message
whose header already starts with Return-Path or Delivered-To (as Postfix's
local delivery writes them) does not get a second one.

For Postfix's local delivery (main.cf):
  mailbox_command = /usr/local/bin/pouch deliver --data /var/lib/pouch -f "$SENDER" "$USER"

Exit status (sysexits.h, as Postfix, procmail and fetchmail read it):
  0   delivered
  67  no such user: not in a usable users file, database or directory (EX_NOUSER)
  73  refused for good: the mailbox is full or the message too big (EX_CANTCREAT)
  75  temporary failure, try again later (EX_TEMPFAIL); also while the users
      file is missing, empty, unreadable or damaged (a line names no user),
      or the database or directory of accounts does not answer,
      for a user whose settings in it cannot be read, and for a bad command
      line or configuration, so that the MTA keeps the message queued

Flags:
`

// Exit statuses of pouch deliver, from sysexits.h.
const (
	exNoUser    = 67
	exCantCreat = 73
	exTempFail  = 75
)

// lmtpConfig are the settings of mail delivery: all of them for pouch serve,
// the delivery limits for pouch deliver.
type lmtpConfig struct {
	LMTP           textSetting     `toml:"lmtp"`
	LMTPDomains    textSetting     `toml:"lmtp-domains"`
	RcptCheckQuota boolSetting     `toml:"lmtp-rcpt-check-quota"`
	MaxConnections intSetting      `toml:"lmtp-max-connections"`
	LMTPIdle       durationSetting `toml:"lmtp-idle-timeout"`
	Delimiter      textSetting     `toml:"lmtp-recipient-delimiter"`
	QuotaStorage   sizeSetting     `toml:"quota-storage"`
	QuotaMessages  intSetting      `toml:"quota-messages"`
	QuotaTemporary boolSetting     `toml:"quota-temporary"`
	MaxMessageSize sizeSetting     `toml:"max-message-size"`
}

// register defines the flags on fs; listener adds those of the listener
// (--lmtp, --lmtp-domains, --lmtp-rcpt-check-quota and its limits).
func (c *lmtpConfig) register(fs *flag.FlagSet, listener bool) {
	if listener {
		textVar(fs, &c.LMTP, "lmtp", "", "LMTP listen `address` (host:port, or unix:/path for a socket); empty disables it")
		textVar(fs, &c.LMTPDomains, "lmtp-domains", "", "comma-separated `domains` whose recipients LMTP accepts (default: any domain)")
		boolVar(fs, &c.RcptCheckQuota, "lmtp-rcpt-check-quota", false, "refuse a recipient over quota at RCPT already, not only after DATA (MTAs that verify recipients cache such a refusal)")
		intVar(fs, &c.MaxConnections, "lmtp-max-connections", lmtp.DefaultMaxConnections, "most LMTP connections at once; more get 421 4.3.2 (0: no limit)")
		durationVar(fs, &c.LMTPIdle, "lmtp-idle-timeout", time.Minute, "close an LMTP connection that sends no command for this `long` outside a transaction")
	}
	textVar(fs, &c.Delimiter, "lmtp-recipient-delimiter", "+", "`characters` that separate a user name from an address extension (alice+news is alice); empty turns extensions off")
	sizeVar(fs, &c.QuotaStorage, "quota-storage", 0, "default storage quota of each user, a `size` such as 500M or 2G; 0 means none")
	intVar(fs, &c.QuotaMessages, "quota-messages", 0, "default quota of each user in `messages`; 0 means none")
	boolVar(fs, &c.QuotaTemporary, "quota-temporary", false, "refuse mail over quota temporarily (452 4.2.2, exit 75) rather than for good (552 5.2.2, exit 73)")
	sizeVar(fs, &c.MaxMessageSize, "max-message-size", 50<<20, "refuse messages larger than this `size`; 0 means no limit")
}

// lmtpSettings are the checked settings of pouch serve's LMTP listener.
type lmtpSettings struct {
	addr           string // "" when off
	domains        []string
	rcptCheckQuota bool
	maxConnections int // as lmtp.Config takes it: -1 for no limit
	idleTimeout    time.Duration
	delivery       deliverySettings
}

// deliverySettings are the checked delivery limits, which pouch deliver
// shares with the LMTP listener.
type deliverySettings struct {
	quota          lmtp.Quota
	quotaTemporary bool
	maxMessageSize int64
	delimiter      string
	defaultDomain  string
}

// validate checks the settings, adding what is wrong to bad. The listener's
// own settings are checked only when it listens.
func (c *lmtpConfig) validate(src configSource, bad *problems) lmtpSettings {
	s := lmtpSettings{
		addr:           c.LMTP.String(),
		domains:        c.LMTPDomains.list(),
		rcptCheckQuota: bool(c.RcptCheckQuota),
		maxConnections: int(c.MaxConnections),
		idleTimeout:    time.Duration(c.LMTPIdle),
		delivery:       c.validateDelivery(src, bad),
	}
	if s.addr == "" {
		return s
	}
	if s.maxConnections < 0 {
		bad.add(src.problem("lmtp-max-connections", "%d is negative (0 means no limit)", s.maxConnections))
	}
	if s.maxConnections == 0 {
		s.maxConnections = -1 // lmtp.Config: no limit
	}
	if s.idleTimeout <= 0 {
		bad.add(src.problem("lmtp-idle-timeout", "it must be more than 0"))
	}
	return s
}

// validateDelivery checks the delivery limits.
func (c *lmtpConfig) validateDelivery(src configSource, bad *problems) deliverySettings {
	if c.QuotaMessages < 0 {
		bad.add(src.problem("quota-messages", "%d is negative (0 means no quota)", c.QuotaMessages))
	}
	return deliverySettings{
		quota:          lmtp.Quota{Storage: int64(c.QuotaStorage), Messages: int(c.QuotaMessages)},
		quotaTemporary: bool(c.QuotaTemporary),
		maxMessageSize: int64(c.MaxMessageSize),
		delimiter:      c.Delimiter.String(),
	}
}

// agent returns the delivery agent into mail.
func (d deliverySettings) agent(mail lmtp.Mailboxes, users lmtp.Users) *lmtp.Agent {
	return &lmtp.Agent{
		Store:              mail,
		Users:              users,
		Quota:              d.quota,
		QuotaTemporary:     d.quotaTemporary,
		MaxMessageSize:     d.maxMessageSize,
		RecipientDelimiter: d.delimiter,
		DefaultDomain:      d.defaultDomain,
	}
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
	id := "d" + random.Hex(4)
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
	var c lmtpConfig
	var ac accountsConfig
	configFile := fs.String("config", "", "take --data, the accounts and the limits from pouch serve's TOML `file` (flags win)")
	data := fs.String("data", "./pouch-data", "data `directory`: users file DIR/users, mail in DIR/mail/DOMAIN/USER/ (or DIR/mail/USER/)")
	sender := fs.String("f", "", "envelope sender `address` for the Return-Path line (none without -f; \"\" is <>)")
	storeURL := fs.String("store", "", "deliver into the PostgreSQL database at this `URL` (pouch serve --store) instead of the Maildirs under --data")
	c.register(fs, false)
	ac.register(fs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), deliverUsage)
		printFlags(fs.Output(), fs)
	}
	pos, err := parseInterleaved(fs, args)
	var help *helpRequest
	if errors.As(err, &help) {
		return err
	}
	var ee *exitError
	if errors.As(err, &ee) {
		// An MTA retries, and puts the one sentence into the notice.
		ee.code, ee.hint = exTempFail, ""
		return ee
	}
	if len(pos) != 1 {
		return tempFail("deliver: give exactly one user name, got %d arguments", len(pos))
	}
	rcpt := pos[0]
	set := flagNames(fs)
	src := configSource{onCommandLine: set}
	if *configFile != "" {
		if src, err = deliverConfig(*configFile, fs, data, storeURL, &c, &ac); err != nil {
			return deliverFail(stderr, exTempFail, "the configuration file is not usable", "err", err)
		}
	}
	var bad problems
	limits := c.validateDelivery(src, &bad)
	if err := checkStoreURL(*storeURL); err != nil {
		bad.add(src.problem("store", "%v", err))
	}
	ac.store = *storeURL
	accts := ac.validate(src, &bad)
	limits.defaultDomain = accts.defaultDomain
	if err := bad.err(); err != nil {
		return tempFail("deliver: %v", err)
	}
	// pouch deliver has no first start: a users file that is missing or
	// empty is a fault, as one that cannot be read or is damaged, and only a
	// name absent from a usable file is unknown (auth.SourceError); so is a
	// database or directory that cannot be reached.
	usersPath := filepath.Join(*data, "users")
	users, err := openAccounts(accts, *data, true, nil)
	if err != nil {
		return deliverFail(stderr, exTempFail, "the accounts cannot be opened", "err", err)
	}
	defer users.close()
	if users.remote != nil {
		usersPath = users.describe()
	}
	ctx := context.Background()
	mail, err := openMailStore(ctx, storeSettings{url: *storeURL, data: *data}, "")
	if err != nil {
		return deliverFail(stderr, exTempFail, "the mail store cannot be used now, try again later", "err", err)
	}
	if c, ok := mail.(io.Closer); ok {
		defer c.Close()
	}
	agent := limits.agent(mail, users.source())
	user, err := agent.User(rcpt)
	if errors.Is(err, lmtp.ErrUnknownUser) {
		return deliverFail(stderr, exNoUser, "no such user", "user", rcpt, "users", usersPath)
	}
	if err != nil {
		return deliverFailure(stderr, err, rcpt)
	}
	if err := agent.Check(user, 0); err != nil {
		return deliverFailure(stderr, err, user)
	}
	d := lmtp.Delivery{User: user, Recipient: rcpt, NoReturnPath: !set["f"], Piped: true}
	d.Sender = strings.TrimSuffix(strings.TrimPrefix(*sender, "<"), ">")
	if _, err := agent.Deliver(ctx, d, stdin); err != nil {
		return deliverFailure(stderr, err, user)
	}
	crashpoint.Hit("deliver.stored") // stored, and the MTA not yet told
	return nil
}

// deliverConfig reads pouch serve's TOML file, decoded as pouch serve decodes
// it, and takes from it --data and the delivery limits that pouch deliver's
// command line (fs) did not give. It returns where each setting came from.
func deliverConfig(path string, fs *flag.FlagSet, data, storeURL *string, c *lmtpConfig, ac *accountsConfig) (configSource, error) {
	sc, err := readServeConfig(path)
	if err != nil {
		return configSource{}, err
	}
	src := configSource{file: path, inFile: map[string]bool{}, onCommandLine: flagNames(fs)}
	if !src.onCommandLine["data"] {
		*data = sc.Data.String()
	}
	if !src.onCommandLine["store"] {
		*storeURL = sc.Store.String()
		src.inFile["store"] = sc.src.inFile["store"]
	}
	if !src.onCommandLine["default-domain"] {
		ac.DefaultDomain = sc.DefaultDomain
		src.inFile["default-domain"] = sc.src.inFile["default-domain"]
	}
	ac.table = sc.table
	from := settingFields(&sc.lmtpConfig)
	for key, f := range settingFields(c) {
		if fs.Lookup(key) == nil || src.onCommandLine[key] {
			continue
		}
		if err := f.Set(from[key].String()); err != nil {
			return configSource{}, err
		}
		src.inFile[key] = sc.src.inFile[key]
	}
	return src, nil
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
	case errors.Is(err, auth.ErrInvalidAccount):
		return deliverFail(stderr, exTempFail, "the user's settings in the users file cannot be read; "+
			"the message waits until they are fixed", "user", user, "err", err)
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
func listenLMTP(s *serveSettings, mail lmtp.Mailboxes, users lmtp.Users, hostname string, log *slog.Logger) (*lmtpService, error) {
	l := s.lmtp
	if l.addr == "" {
		return nil, nil
	}
	spool := filepath.Join(s.data, "spool")
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return nil, fmt.Errorf("spool directory: %v", err)
	}
	srv := lmtp.New(lmtp.Config{Agent: l.delivery.agent(mail, users), Logger: log, Hostname: hostname, Domains: l.domains,
		SpoolDir: spool, RcptCheckQuota: l.rcptCheckQuota, MaxConnections: l.maxConnections, IdleTimeout: l.idleTimeout})
	ln, err := lmtp.Listen(l.addr)
	if err != nil {
		return nil, fmt.Errorf("listen lmtp on %s: %v", l.addr, err)
	}
	if w := lmtp.ExposedWarning(ln.Addr()); w != "" {
		log.Warn(w, "protocol", "lmtp")
	}
	return &lmtpService{srv: srv, l: ln, log: log}, nil
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
