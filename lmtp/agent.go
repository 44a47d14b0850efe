// Package lmtp delivers mail into Pouch's maildrops: the LMTP listener of
// pouch serve (RFC 2033, on github.com/emersion/go-smtp), and the Agent that
// it shares with pouch deliver, which finds the user a recipient names,
// enforces quotas and the message size limit, and adds the header lines of
// final delivery (Return-Path, Delivered-To) while streaming the message into
// the store.
//
// Nothing is acknowledged before the store reports the message durable (file
// and directory synced); a refused or failed delivery leaves nothing visible.
package lmtp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"strings"
	"sync"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/units"
	"github.com/pouchmail/pouch/store"
)

// Mailboxes is where an Agent delivers. maildir.Store implements it.
type Mailboxes interface {
	store.Deliverer
	// Usage reports the number of messages and the stored octets of user's
	// maildrop, without reading the messages or taking the maildrop lock.
	Usage(user string) (messages int, bytes int64, err error)
}

// Users is where the recipients' accounts come from (auth.Source; auth.Users
// implements it).
type Users interface {
	// Account returns the account of name: auth.ErrNoSuchUser when there
	// is none; an error that is auth.ErrInvalidAccount when it is refused
	// for its settings, or another one when the accounts cannot be looked
	// up now, the recipient being then neither accepted nor refused for
	// good, but deferred.
	Account(name string) (auth.Account, error)
}

// Quota limits what one maildrop may hold. A zero field means no limit.
type Quota struct {
	Storage  int64 // octets, as stored
	Messages int
}

// Agent delivers messages into maildrops. Its fields must not change once it
// is in use; it is safe for concurrent use.
type Agent struct {
	Store Mailboxes
	Users Users
	// Quota is every user's quota unless the user's account says otherwise
	// (auth.Quota).
	Quota Quota
	// QuotaTemporary makes a refusal for quota a temporary failure (LMTP
	// 452 4.2.2, exit status 75), so that the sender keeps the message and
	// retries, instead of a permanent one (552 5.2.2, exit status 73). It is
	// Dovecot's quota_full_tempfail.
	QuotaTemporary bool
	// MaxMessageSize refuses messages of more octets than this, counted as
	// received (without the added header lines). Zero means no limit.
	MaxMessageSize int64
	// RecipientDelimiter holds the characters that separate a user name
	// from an address extension, as Postfix's recipient_delimiter does:
	// with "+", alice+news names alice unless a user alice+news exists. The
	// first of them in the local part counts. Empty turns extensions off.
	RecipientDelimiter string
	// DefaultDomain is the domain of recipients given without one (pouch
	// deliver's USER): alice is looked up as alice@DefaultDomain first.
	DefaultDomain string

	// usage caches Store.Usage for usageTTL, counting the Agent's own
	// deliveries meanwhile, so that a burst of mail for one user measures
	// the maildrop once a second rather than twice a message.
	usageMu sync.Mutex
	usage   map[string]usageEntry
}

// usageTTL is how long a measured usage is trusted. Quotas are soft: mail
// delivered by others (another process, or several deliveries at once)
// within that time can take a maildrop a little over its quota, and space
// freed within it is seen up to that much later.
const usageTTL = time.Second

type usageEntry struct {
	messages int
	bytes    int64
	at       time.Time
}

// Errors of a delivery besides *QuotaError and *InputError, and an
// *auth.AccountError for an account refused for its settings (a temporary
// failure: LMTP 451 4.3.0, exit status 75, so that the mail waits for the
// settings to be fixed).
var (
	// ErrUnknownUser means that the recipient names no user.
	ErrUnknownUser = errors.New("lmtp: no such user")
	// ErrUnconfirmed means that the users database cannot tell now whether
	// the recipient names a user: a temporary failure (LMTP 451 4.3.0, exit
	// status 75), so that the sender keeps the message and tries again.
	ErrUnconfirmed = errors.New("lmtp: the recipient cannot be confirmed now")
	// ErrTooBig means that the message is larger than MaxMessageSize.
	ErrTooBig = errors.New("lmtp: message larger than the size limit")
)

// QuotaError means that the message does not fit in the user's quota.
type QuotaError struct {
	User      string
	Temporary bool  // the Agent's QuotaTemporary
	Messages  bool  // the limit on the number of messages, not on storage
	Limit     int64 // that limit
}

func (e *QuotaError) Error() string {
	if e.Messages {
		return fmt.Sprintf("the mailbox of %s is full (limit of %d messages)", e.User, e.Limit)
	}
	return fmt.Sprintf("the mailbox of %s is full (storage limit of %s)", e.User, units.FormatSize(e.Limit))
}

// InputError means that reading the message failed: the sender's side (a lost
// connection, a timeout, a malformed message), not the storage's.
type InputError struct{ Err error }

func (e *InputError) Error() string { return "reading the message: " + e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

// User returns the account that a recipient address names. For
// local@domain that is the account local@domain (accounts are keyed by
// full address), or else local in lower case at domain; failing both, the
// same for the part of local before the first RecipientDelimiter
// character. Then come the same local parts alone: an account named
// without a domain takes mail at every domain, as it did before there
// were domains. A recipient without a domain is taken at DefaultDomain
// first. An account refused for its settings is found with its
// *auth.AccountError, so that mail for it waits. When no account is found,
// the error is ErrUnknownUser, or ErrUnconfirmed (wrapping the source's
// error) when the source could not tell for one of the names.
func (a *Agent) User(addr string) (string, error) {
	local, domain, _ := auth.SplitAddress(addr)
	if domain == "" {
		domain = a.DefaultDomain
	}
	locals := []string{local}
	if a.RecipientDelimiter != "" {
		if i := strings.IndexAny(local, a.RecipientDelimiter); i > 0 {
			locals = append(locals, local[:i])
		}
	}
	var names []string
	if domain != "" {
		for _, l := range locals {
			names = append(names, l+"@"+domain)
		}
	}
	names = append(names, locals...)
	var unsure error
	for _, name := range names {
		if name == "" || name[0] == '@' {
			continue
		}
		// The form accounts are looked up in (PRECIS, RFC 8265; the
		// domain in lower case), then with the local part in lower case.
		name = auth.NormalizeName(name)
		l, d, hasDomain := auth.SplitAddress(name)
		lower := strings.ToLower(l)
		if hasDomain {
			lower += "@" + d
		}
		for i, n := range []string{name, lower} {
			if i == 1 && n == name {
				break
			}
			_, err := a.Users.Account(n)
			switch {
			case err == nil || errors.Is(err, auth.ErrInvalidAccount):
				return n, err
			case !errors.Is(err, auth.ErrNoSuchUser) && unsure == nil:
				unsure = err
			}
		}
	}
	if unsure != nil {
		return "", fmt.Errorf("%w: %w", ErrUnconfirmed, unsure)
	}
	return "", ErrUnknownUser
}

// account returns user's account, or ErrUnknownUser, ErrUnconfirmed or the
// *auth.AccountError of an account refused for its settings.
func (a *Agent) account(user string) (auth.Account, error) {
	acct, err := a.Users.Account(user)
	switch {
	case err == nil, errors.Is(err, auth.ErrInvalidAccount):
		return acct, err
	case errors.Is(err, auth.ErrNoSuchUser):
		return acct, ErrUnknownUser
	}
	return acct, fmt.Errorf("%w: %w", ErrUnconfirmed, err)
}

// QuotaOf returns the quota of a user whose account is acct: the default,
// with the account's own parts in place of its.
func (a *Agent) QuotaOf(acct auth.Account) Quota {
	return Quota{
		Storage:  acct.Quota.Storage.Or(a.Quota.Storage),
		Messages: acct.Quota.Messages.Or(a.Quota.Messages),
	}
}

// Check reports early whether user can take a message of size octets (0 when
// the size is not known yet): nil, ErrUnknownUser, ErrUnconfirmed, an
// *auth.AccountError, ErrTooBig, a *QuotaError, or another error when the
// storage fails. It answers RCPT, and pouch deliver before it reads the
// message; Deliver checks again.
func (a *Agent) Check(user string, size int64) error {
	acct, err := a.account(user)
	if err != nil {
		return err
	}
	if a.MaxMessageSize > 0 && size > a.MaxMessageSize {
		return ErrTooBig
	}
	_, _, err = a.room(user, a.QuotaOf(acct), max(size, 1))
	return err
}

// room returns the octets left under user's storage quota q and that quota
// (-1 and 0 for no limit), or a *QuotaError when a message of need octets does
// not fit. It measures the maildrop only when the user has a quota.
func (a *Agent) room(user string, q Quota, need int64) (left, limit int64, err error) {
	if q.Storage == 0 && q.Messages == 0 {
		return -1, 0, nil
	}
	msgs, used, err := a.usageOf(user)
	if err != nil {
		return 0, 0, fmt.Errorf("measuring the mailbox of %s: %w", user, err)
	}
	if q.Messages > 0 && msgs >= q.Messages {
		return 0, 0, &QuotaError{User: user, Temporary: a.QuotaTemporary, Messages: true, Limit: int64(q.Messages)}
	}
	if q.Storage == 0 {
		return -1, 0, nil
	}
	left = q.Storage - used
	if need > left {
		return 0, 0, &QuotaError{User: user, Temporary: a.QuotaTemporary, Limit: q.Storage}
	}
	return left, q.Storage, nil
}

// usageOf returns user's usage, measured at most usageTTL ago.
func (a *Agent) usageOf(user string) (int, int64, error) {
	a.usageMu.Lock()
	e, ok := a.usage[user]
	a.usageMu.Unlock()
	if ok && time.Since(e.at) < usageTTL {
		return e.messages, e.bytes, nil
	}
	at := time.Now()
	msgs, used, err := a.Store.Usage(user)
	if err != nil {
		return 0, 0, err
	}
	a.usageMu.Lock()
	defer a.usageMu.Unlock()
	if a.usage == nil || len(a.usage) > 4096 {
		a.usage = make(map[string]usageEntry) // forget old entries rather than grow
	}
	a.usage[user] = usageEntry{msgs, used, at}
	return msgs, used, nil
}

// delivered counts a delivery of size octets in the cached usage of user.
func (a *Agent) delivered(user string, size int64) {
	a.usageMu.Lock()
	defer a.usageMu.Unlock()
	if e, ok := a.usage[user]; ok {
		e.messages++
		e.bytes += size
		a.usage[user] = e
	}
}

// Delivery describes one message for one recipient.
type Delivery struct {
	// User names the maildrop.
	User string
	// Recipient is the value of the Delivered-To header line: the address
	// (user@domain) or the user name. Empty adds no Delivered-To.
	Recipient string
	// Sender is the envelope sender for the Return-Path header line; empty
	// is the null sender, written <>. NoReturnPath adds no Return-Path.
	Sender       string
	NoReturnPath bool
	// LineEnd ends the added header lines: "\r\n" or "\n". Empty means the
	// line ending of the message's first line.
	LineEnd string
	// Piped marks a message that a local MTA hands to a command (pouch
	// deliver), as Dovecot's LDA takes it: a leading mbox "From " line is
	// dropped, and Return-Path and Delivered-To are not added when the
	// header already starts with them (Postfix's local(8) writes "From ",
	// Return-Path, X-Original-To and Delivered-To for a mailbox_command).
	Piped bool
	// Size is the message's size in octets when it is known before reading
	// it (a spooled message), or 0.
	Size int64
}

// Deliver stores the message read from r in d.User's maildrop with the
// Return-Path and Delivered-To header lines at the top and nothing else
// changed: 8-bit octets and line endings stay as received. It reads r once,
// streaming, and stops at the first octet over the quota or the size limit.
//
// It returns the octets read from r, and nil only when the message is durable
// (see store.Deliverer). On error nothing is stored; the error is
// ErrUnknownUser, ErrUnconfirmed, an *auth.AccountError, ErrTooBig, a
// *QuotaError, an *InputError when reading r failed, or another error from
// the storage.
func (a *Agent) Deliver(ctx context.Context, d Delivery, r io.Reader) (int64, error) {
	acct, err := a.account(d.User)
	if err != nil {
		return 0, err
	}
	if a.MaxMessageSize > 0 && d.Size > a.MaxMessageSize {
		return 0, ErrTooBig
	}
	eol := d.LineEnd
	if eol == "" || d.Piped {
		br := bufio.NewReaderSize(r, 4096)
		if d.Piped {
			if err := dropFromLine(br); err != nil {
				return 0, &InputError{err}
			}
			returnPath, deliveredTo := deliveryFields(br)
			d.NoReturnPath = d.NoReturnPath || returnPath
			if deliveredTo {
				d.Recipient = ""
			}
		}
		if eol == "" {
			eol = lineEndOf(br)
		}
		r = br
	}
	header := headerLines(d, eol)
	left, limit, err := a.room(d.User, a.QuotaOf(acct), int64(len(header))+max(d.Size, 1))
	if err != nil {
		return 0, err
	}
	body := &bodyReader{r: r, maxSize: a.MaxMessageSize, room: -1}
	if left >= 0 {
		body.room = left - int64(len(header))
		body.quotaErr = &QuotaError{User: d.User, Temporary: a.QuotaTemporary, Limit: limit}
	}
	err = a.Store.Deliver(ctx, d.User, io.MultiReader(strings.NewReader(header), body))
	switch {
	case err == nil:
		a.delivered(d.User, int64(len(header))+body.n)
		return body.n, nil
	case body.refused != nil:
		return body.n, body.refused
	case body.readErr != nil:
		return body.n, &InputError{body.readErr}
	}
	return body.n, err
}

// headerLines returns the Return-Path and Delivered-To lines of d (RFC 5321
// §4.4; Delivered-To as Postfix, qmail and Dovecot write it).
func headerLines(d Delivery, eol string) string {
	var b strings.Builder
	if !d.NoReturnPath {
		b.WriteString("Return-Path: <" + mailbox(headerSafe(d.Sender)) + ">" + eol)
	}
	if d.Recipient != "" {
		b.WriteString("Delivered-To: " + mailbox(headerSafe(d.Recipient)) + eol)
	}
	return b.String()
}

// mailbox writes an envelope address in the syntax of RFC 5321 §4.1.2. The
// address comes as go-smtp and Postfix pass it on, with the quotes of a
// quoted local part taken off ("john doe@example.org"); a local part that is
// not a Dot-string is quoted again ("\"john doe\"@example.org"), as Postfix
// writes it. An address without "@" is a local part alone; one whose local
// part is already a Quoted-string is kept.
func mailbox(addr string) string {
	if addr == "" {
		return ""
	}
	local, domain := addr, ""
	if at := strings.LastIndexByte(addr, '@'); at >= 0 {
		local, domain = addr[:at], addr[at:]
	}
	if isDotString(local) || isQuotedString(local) {
		return addr
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(local); i++ {
		if c := local[i]; c == '"' || c == '\\' {
			b.WriteByte('\\') // quoted-pairSMTP
		}
		b.WriteByte(local[i])
	}
	b.WriteByte('"')
	b.WriteString(domain)
	return b.String()
}

// isDotString reports whether s is a Dot-string: atoms of atext joined by
// single dots (RFC 5321 §4.1.2; octets above 127 count as atext, as UTF-8
// does in RFC 6531 §3.3).
func isDotString(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.', c >= 0x80, 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// isQuotedString reports whether s is a Quoted-string of RFC 5321 §4.1.2.
func isQuotedString(s string) bool {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		switch c := s[i]; {
		case c == '\\':
			i++
			if i == len(s)-1 || s[i] < 32 || s[i] > 126 {
				return false
			}
		case c == '"', c < 32, c == 127:
			return false
		}
	}
	return true
}

// dropFromLine removes an mbox "From " line (the envelope line that Postfix's
// local(8) writes before a message it pipes to a command) from the start of
// br, whatever its length.
func dropFromLine(br *bufio.Reader) error {
	if b, _ := br.Peek(5); string(b) != "From " {
		return nil
	}
	for {
		_, err := br.ReadSlice('\n')
		switch err {
		case nil, io.EOF:
			return nil
		case bufio.ErrBufferFull:
			continue
		}
		return err
	}
}

// deliveryFields reports whether the header buffered in br starts with a
// Return-Path and a Delivered-To line: the block of header lines that an MTA
// writes at final delivery (Return-Path, X-Original-To, Delivered-To, in any
// order and case) read from the top, until another field.
func deliveryFields(br *bufio.Reader) (returnPath, deliveredTo bool) {
	buf, _ := br.Peek(br.Size()) // whatever there is; read errors come again later
	for {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			return
		}
		line := buf[:i]
		buf = buf[i+1:]
		if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
			continue // a folded continuation line (RFC 5322 §2.2.3)
		}
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return
		}
		switch strings.ToLower(string(name)) {
		case "return-path":
			returnPath = true
		case "delivered-to":
			deliveredTo = true
		case "x-original-to":
		default:
			return
		}
	}
}

// headerSafe drops control characters, so that a value cannot end the header
// line or start another.
func headerSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// lineEndOf returns the line ending of the first line buffered in br ("\n"
// when the first 4 KiB hold no complete line).
func lineEndOf(br *bufio.Reader) string {
	buf, _ := br.Peek(br.Size()) // whatever there is; read errors come again later
	if i := bytes.IndexByte(buf, '\n'); i > 0 && buf[i-1] == '\r' {
		return "\r\n"
	}
	return "\n"
}

// bodyReader counts the message as the store reads it and fails the read as
// soon as the message exceeds the size limit or the room under the quota.
type bodyReader struct {
	r        io.Reader
	n        int64
	maxSize  int64 // 0: none
	room     int64 // -1: none
	quotaErr error
	refused  error // why the message was refused
	readErr  error // the error reading r, other than EOF
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.refused != nil {
		return 0, b.refused
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	switch {
	case b.maxSize > 0 && b.n > b.maxSize:
		b.refused = ErrTooBig
	case b.room >= 0 && b.n > b.room:
		b.refused = b.quotaErr
	}
	if b.refused != nil {
		return 0, b.refused
	}
	if err != nil && err != io.EOF {
		b.readErr = err
	}
	return n, err
}
