package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/pouchmail/pouch/internal/filelock"
	"github.com/pouchmail/pouch/internal/fsx"
)

// RefreshBefore is how long before its expiry an access token is replaced,
// so that one handed out is still good when the POP3 server checks it. For
// short-lived tokens it is at most half the token's lifetime.
const RefreshBefore = 5 * time.Minute

// Store keeps each account's tokens in one JSON file,
// STATE/oauth/ACCOUNT.json, mode 0600, replaced atomically (temporary file,
// fsync, rename, fsync of the directory). A flock on ACCOUNT.lock beside it
// lets one process at a time refresh, so that two never spend one rotating
// refresh token. A Store is safe for concurrent use; make one per process.
type Store struct {
	dir string
	log *slog.Logger
	now func() time.Time

	mu       sync.Mutex
	accounts map[string]*accountState
}

// NewStore returns the store under stateDir (the state directory of pouch
// fetch). log receives a line for each refresh, never a token; nil
// discards.
func NewStore(stateDir string, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{dir: filepath.Join(stateDir, "oauth"), log: log, now: time.Now,
		accounts: map[string]*accountState{}}
}

// Path is the token file of account.
func (s *Store) Path(account string) string {
	return filepath.Join(s.dir, fileName(account)+".json")
}

// fileName escapes an account name into a file name: letters, digits and
// "._@+-" stay, the rest (and a leading dot) become %XX.
func fileName(account string) string {
	var b strings.Builder
	for i := 0; i < len(account); i++ {
		c := account[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') ||
			(strings.IndexByte("._@+-", c) >= 0 && !(i == 0 && c == '.')) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// record is the token file.
type record struct {
	Version      int       `json:"version"`
	Account      string    `json:"account"`
	Provider     string    `json:"provider"`
	ClientID     string    `json:"client_id"`
	Scopes       []string  `json:"scopes"`            // asked for at sign-in
	Granted      string    `json:"granted,omitempty"` // the provider's "scope" answer
	TokenType    string    `json:"token_type,omitempty"`
	AccessToken  string    `json:"access_token"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	Expiry       time.Time `json:"expiry,omitzero"`
	Obtained     time.Time `json:"obtained"`
}

func (r *record) token() *oauth2.Token {
	return &oauth2.Token{AccessToken: r.AccessToken, TokenType: r.TokenType,
		RefreshToken: r.RefreshToken, Expiry: r.Expiry}
}

// update takes a token response in; a response without a refresh token
// keeps the old one (RFC 6749 §6: the server may keep it unchanged).
func (r *record) update(t *oauth2.Token, now time.Time) {
	r.AccessToken, r.TokenType, r.Expiry, r.Obtained = t.AccessToken, t.TokenType, t.Expiry, now
	if t.RefreshToken != "" {
		r.RefreshToken = t.RefreshToken
	}
	if g, ok := t.Extra("scope").(string); ok && g != "" {
		r.Granted = g
	}
}

// load reads account's token file. A missing file is fs.ErrNotExist.
func (s *Store) load(account string) (*record, error) {
	path := s.Path(account)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		// As ssh does with keys: a token others could read is not used.
		return nil, fmt.Errorf("token file %s can be read by other users (mode %04o): run chmod 600 on it", path, perm)
	}
	var r record
	if err := json.NewDecoder(f).Decode(&r); err != nil {
		return nil, fmt.Errorf("token file %s is damaged (%v); log in again with: pouch fetch auth login %s",
			path, jsonErrorKind(err), shellWord(account))
	}
	return &r, nil
}

// jsonErrorKind describes a decoding error without quoting the file.
func jsonErrorKind(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("not JSON at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return "field " + te.Field + " has the wrong type"
	}
	return "cut short"
}

// save writes r atomically; the caller holds the account's file lock.
func (s *Store) save(r *record) error {
	r.Version = 1
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	path := filepath.Join(s.dir, fileName(r.Account)+".json")
	// Temporary files left by a crash are no one's now: we hold the lock.
	// (Earlier versions named them ".NAME.json.*.tmp".)
	fsx.RemoveTemps(path)
	if old, _ := filepath.Glob(filepath.Join(s.dir, "."+filepath.Base(path)+".*.tmp")); len(old) > 0 {
		for _, o := range old {
			os.Remove(o)
		}
	}
	err = fsx.WriteFile(path, append(data, '\n'), fsx.Options{Perm: 0o600,
		Synced: "oauth.token.written", Renamed: "oauth.token.renamed"})
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// lock takes account's file lock, across processes.
func (s *Store) lock(account string) (func(), error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, err
	}
	return filelock.Lock(filepath.Join(s.dir, fileName(account)+".lock"))
}

// Delete removes account's token file, and forgets its token.
func (s *Store) Delete(account string) error {
	st := s.account(account)
	st.mu.Lock()
	defer st.mu.Unlock()
	st.tok = nil
	unlock, err := s.lock(account)
	if err != nil {
		return err
	}
	defer unlock()
	if err := os.Remove(s.Path(account)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return fsx.SyncDir(s.dir)
}

// accountState is what the sources of one account share in a process.
type accountState struct {
	mu       sync.Mutex
	tok      *oauth2.Token // the access token last read or made
	obtained time.Time
	clientID string
	rejected string    // an access token a server refused: never handed out again
	prov     *provider // resolved on the first refresh
}

func (s *Store) account(name string) *accountState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.accounts[name]
	if st == nil {
		st = &accountState{}
		s.accounts[name] = st
	}
	return st
}

// fresh reports whether t can still be handed out.
func (s *Store) fresh(t *oauth2.Token, obtained time.Time) bool {
	if t == nil || t.AccessToken == "" {
		return false
	}
	if t.Expiry.IsZero() {
		return true
	}
	margin := RefreshBefore
	if !obtained.IsZero() {
		margin = min(margin, t.Expiry.Sub(obtained)/2)
	}
	return s.now().Before(t.Expiry.Add(-margin))
}

// Source hands out an account's access token, refreshing it before it
// expires and writing the refreshed token (and a rotated refresh token)
// back to the store. Sources of one account made from one Store share the
// token, so parallel fetches of an account refresh once.
type Source struct {
	store *Store
	cfg   Config
	st    *accountState
}

// TokenSource returns the token source of cfg's account. It reads nothing
// yet: a missing or revoked sign-in shows at the first Token.
func TokenSource(cfg Config, store *Store) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Source{store: store, cfg: cfg, st: store.account(cfg.Account)}, nil
}

// Token is TokenContext with a two-minute limit; it makes Source an
// oauth2.TokenSource.
func (s *Source) Token() (*oauth2.Token, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return s.TokenContext(ctx)
}

// TokenContext returns an access token that is good for at least
// RefreshBefore (or half its lifetime). The errors a user must act on are a
// *LoginRequiredError (sign in again) and a *ProviderError (the provider
// refused); no error text holds a token or the client secret.
func (s *Source) TokenContext(ctx context.Context) (*oauth2.Token, error) {
	st := s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	id := s.cfg.clientID()
	if st.clientID == id && s.store.fresh(st.tok, st.obtained) && st.tok.AccessToken != st.rejected {
		return copyToken(st.tok), nil
	}
	unlock, err := s.store.lock(s.cfg.Account)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Another process may have refreshed: the file is the truth.
	rec, err := s.store.load(s.cfg.Account)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &LoginRequiredError{Account: s.cfg.Account, First: true, Reason: "it has not signed in to its provider yet"}
	}
	if err != nil {
		return nil, err
	}
	if err := s.matches(rec); err != nil {
		return nil, err
	}
	if s.store.fresh(rec.token(), rec.Obtained) && rec.AccessToken != st.rejected {
		st.tok, st.obtained, st.clientID = rec.token(), rec.Obtained, id
		return copyToken(st.tok), nil
	}
	if rec.RefreshToken == "" {
		return nil, &LoginRequiredError{Account: s.cfg.Account,
			Reason: "its access token expired and the provider gave no refresh token"}
	}
	if st.prov == nil {
		if st.prov, err = s.cfg.resolve(ctx); err != nil {
			return nil, err
		}
	}
	p := st.prov
	t, err := p.oauth.TokenSource(p.ctx(ctx), &oauth2.Token{RefreshToken: rec.RefreshToken}).Token()
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.ErrorCode == "invalid_grant" {
			// RFC 6749 §5.2: the refresh token is "invalid, expired,
			// revoked" — only a new sign-in helps.
			s.store.log.Warn("oauth refresh token refused", "account", s.cfg.Account)
			return nil, &LoginRequiredError{Account: s.cfg.Account,
				Reason: "the provider no longer accepts its sign-in (the refresh token was revoked or has expired)"}
		}
		return nil, redact(providerError(s.cfg.Account, "token refresh", err),
			rec.RefreshToken, rec.AccessToken, p.oauth.ClientSecret)
	}
	now := s.store.now()
	rec.update(t, now)
	if err := s.store.save(rec); err != nil {
		// The provider may have rotated the refresh token: the new one
		// lives only in memory now. Say so; the token still works.
		s.store.log.Error("oauth token refreshed but not saved", "account", s.cfg.Account, "err", err)
	} else {
		s.store.log.Info("oauth token refreshed", "account", s.cfg.Account, "expires", rec.Expiry.Format(time.RFC3339))
	}
	st.tok, st.obtained, st.clientID = rec.token(), now, id
	return copyToken(st.tok), nil
}

// matches checks that the stored sign-in is one for the configuration.
func (s *Source) matches(rec *record) error {
	lr := &LoginRequiredError{Account: s.cfg.Account}
	switch {
	case rec.Provider != s.cfg.Provider:
		lr.Reason = fmt.Sprintf("it signed in with provider %q, and the configuration now says %q", rec.Provider, s.cfg.Provider)
	case rec.ClientID != s.cfg.clientID():
		lr.Reason = "its sign-in was made with another client-id than the configured one"
	case !sameScopes(rec.Scopes, s.cfg.scopes()):
		lr.Reason = "the configured scopes changed since it signed in"
	default:
		return nil
	}
	return lr
}

// Invalidate tells the source that a server refused tok: the next Token
// gets a new one even if tok has not expired (the sign-in may have been
// revoked, or the provider rotated its keys).
func (s *Source) Invalidate(tok *oauth2.Token) {
	if tok == nil {
		return
	}
	s.st.mu.Lock()
	s.st.rejected = tok.AccessToken
	s.st.mu.Unlock()
}

// copyToken hands out the access token only: the refresh token stays in
// the store.
func copyToken(t *oauth2.Token) *oauth2.Token {
	return &oauth2.Token{AccessToken: t.AccessToken, TokenType: t.TokenType, Expiry: t.Expiry}
}

// Status is what an account's token file says about its sign-in; it holds
// no token.
type Status struct {
	SignedIn    bool
	Provider    string
	ClientID    string
	Scopes      []string  // asked for at sign-in
	Granted     string    // the provider's answer, if it named the scopes
	Expiry      time.Time // of the access token; zero if the provider named none
	Obtained    time.Time // when the access token was made
	Refreshable bool      // a refresh token is kept
	// Mismatch says why the sign-in no longer fits the configuration
	// (another provider, client id or scopes); "" when it fits.
	Mismatch string
}

// Describe reads cfg's account's token file. An account that never signed
// in (or signed out) has SignedIn false and no error.
func Describe(cfg Config, store *Store) (Status, error) {
	if err := cfg.Validate(); err != nil {
		return Status{}, err
	}
	rec, err := store.load(cfg.Account)
	if errors.Is(err, fs.ErrNotExist) {
		return Status{}, nil
	}
	if err != nil {
		return Status{}, err
	}
	st := Status{SignedIn: true, Provider: rec.Provider, ClientID: rec.ClientID, Scopes: rec.Scopes,
		Granted: rec.Granted, Expiry: rec.Expiry, Obtained: rec.Obtained, Refreshable: rec.RefreshToken != ""}
	src := &Source{store: store, cfg: cfg}
	var lr *LoginRequiredError
	if err := src.matches(rec); errors.As(err, &lr) {
		st.Mismatch = lr.Reason
	}
	return st, nil
}
