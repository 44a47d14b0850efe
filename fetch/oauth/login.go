package oauth

import (
	"bufio"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"

	"github.com/pouchmail/pouch/internal/random"
)

// Mode is how Login signs in.
type Mode string

const (
	// Auto takes the browser flow when a browser can be opened here or
	// the provider has no device flow, and the device flow otherwise.
	Auto Mode = ""
	// Browser is the authorization-code flow with PKCE through a
	// loopback redirect (RFC 8252 §7.3, RFC 7636).
	Browser Mode = "browser"
	// Device is the device authorization grant (RFC 8628): a code typed
	// in on any other device.
	Device Mode = "device"
)

// LoginOptions say how Login talks to the user.
type LoginOptions struct {
	Mode Mode
	// Out receives the instructions: the address to open, the code to
	// enter. nil means standard error. Nothing secret is written to it.
	Out io.Writer
	// In, if set, is read for the address the browser ended up on, pasted
	// by a user whose browser runs on another machine (the browser flow).
	// Login returns without waiting for In to end.
	In io.Reader
	// OpenBrowser, if set, is called with the sign-in address
	// (SystemBrowser opens the desktop's browser).
	OpenBrowser func(url string) error

	clock clock // nil: the real one
}

// Login signs cfg's account in and stores its tokens, replacing any it had.
// It returns when the user has signed in, declined, or ctx ends.
func Login(ctx context.Context, cfg Config, store *Store, o LoginOptions) error {
	p, err := cfg.resolve(ctx)
	if err != nil {
		return err
	}
	if o.Out == nil {
		o.Out = os.Stderr
	}
	o.Out = &lockedWriter{w: o.Out}
	if o.clock == nil {
		o.clock = realClock{}
	}
	mode, err := chooseMode(p, o, haveDisplay())
	if err != nil {
		return err
	}
	finish := func(t *oauth2.Token) error { return store.saveLogin(p, t, o.Out) }
	secret := p.oauth.ClientSecret
	if mode == Device {
		t, err := deviceLogin(ctx, p, o)
		if err == nil {
			err = finish(t)
		}
		return redact(err, secret)
	}
	return redact(browserLogin(ctx, p, o, finish), secret)
}

// chooseMode picks the flow; display says whether a browser can be opened
// on this machine.
func chooseMode(p *provider, o LoginOptions, display bool) (Mode, error) {
	hasAuth, hasDevice := p.oauth.Endpoint.AuthURL != "", p.deviceURL != ""
	switch o.Mode {
	case Browser:
		if !hasAuth {
			return "", fmt.Errorf("account %s: the provider has no authorization endpoint for the browser flow; use the device flow", p.cfg.Account)
		}
		return Browser, nil
	case Device:
		if hasDevice {
			return Device, nil
		}
		if p.cfg.Provider == Gmail {
			return "", fmt.Errorf("account %s: Google's device sign-in does not grant mail access; use the browser flow (with no browser here, open its address on another machine and paste back the address that browser ends up on)", p.cfg.Account)
		}
		return "", fmt.Errorf("account %s: the provider has no device authorization endpoint; set device-url or use the browser flow", p.cfg.Account)
	case Auto:
		if !hasAuth || (hasDevice && !(display && o.OpenBrowser != nil)) {
			return Device, nil
		}
		return Browser, nil
	}
	return "", fmt.Errorf("unknown sign-in mode %q: use browser or device", o.Mode)
}

// saveLogin stores a new sign-in and makes it the account's token in this
// process too.
func (s *Store) saveLogin(p *provider, t *oauth2.Token, out io.Writer) error {
	st := s.account(p.cfg.Account)
	st.mu.Lock()
	defer st.mu.Unlock()
	unlock, err := s.lock(p.cfg.Account)
	if err != nil {
		return err
	}
	defer unlock()
	rec := &record{Account: p.cfg.Account, Provider: p.cfg.Provider, ClientID: p.oauth.ClientID,
		Scopes: slices.Clone(p.oauth.Scopes)}
	now := s.now()
	rec.update(t, now)
	if err := s.save(rec); err != nil {
		return fmt.Errorf("account %s: signed in, but the token could not be stored: %w", p.cfg.Account, err)
	}
	st.tok, st.obtained, st.clientID, st.rejected, st.prov = rec.token(), now, rec.ClientID, "", p
	fmt.Fprintf(out, "Account %s is signed in; its token is kept in %s.\n", p.cfg.Account, s.Path(p.cfg.Account))
	if rec.RefreshToken == "" {
		fmt.Fprintf(out, "Warning: the provider gave no refresh token, so the sign-in lasts only as long as this access token (until %s). Ask for offline access (the offline_access scope) to stay signed in.\n",
			rec.Expiry.Local().Format(time.DateTime))
	}
	if rec.Granted != "" {
		granted := strings.Fields(rec.Granted)
		for _, want := range rec.Scopes {
			// Providers leave offline_access and the OIDC scopes out
			// of their answer.
			if !grantedHas(granted, want) && !slices.Contains([]string{"offline_access", "openid", "email", "profile"}, want) {
				fmt.Fprintf(out, "Warning: the provider did not grant the scope %s; the mail server may refuse the token.\n", want)
			}
		}
	}
	return nil
}

// grantedHas reports whether the granted scopes hold want; a provider
// may name a resource's scope without the resource
// ("POP.AccessAsUser.All" for "https://outlook.office.com/POP.AccessAsUser.All").
func grantedHas(granted []string, want string) bool {
	short := want[strings.LastIndexByte(want, '/')+1:]
	for _, g := range granted {
		if strings.EqualFold(g, want) || (short != "" && strings.EqualFold(g, short)) {
			return true
		}
	}
	return false
}

// arrival is the browser's return to the redirect URI (or its address,
// pasted), and where to send the page to show.
type arrival struct {
	query url.Values
	reply chan string // nil for a pasted address
}

// browserLogin runs the authorization-code flow with PKCE through a
// loopback redirect (RFC 8252 §7.3, §8.1): a listener on 127.0.0.1 (and
// [::1] when the redirect says localhost), one redirect accepted, its state
// checked, then the listener closed.
func browserLogin(ctx context.Context, p *provider, o LoginOptions, finish func(*oauth2.Token) error) error {
	acct := p.cfg.Account
	lns, port, err := listenLoopback(p.redirectHost, p.cfg.RedirectPort)
	if err != nil {
		return fmt.Errorf("account %s: %w", acct, err)
	}
	conf := p.oauth
	conf.RedirectURL = "http://" + net.JoinHostPort(p.redirectHost, strconv.Itoa(port)) + "/"
	verifier := oauth2.GenerateVerifier()
	state := random.Hex(16)
	authURL := conf.AuthCodeURL(state, append([]oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}, p.authParams...)...)

	arrivals := make(chan arrival, 1)
	var taken atomic.Bool
	finished := make(chan struct{}) // closed when the flow ends, answered or not
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if r.URL.Path != "/" || !(q.Has("code") || q.Has("error") || q.Has("state")) {
			http.NotFound(w, r) // a favicon, a probe: not the redirect
			return
		}
		if !taken.CompareAndSwap(false, true) {
			writePage(w, http.StatusConflict, "Already answered", "This sign-in was already answered. You can close this tab.")
			return
		}
		reply := make(chan string, 1)
		arrivals <- arrival{query: q, reply: reply}
		answer := func(msg string) {
			if msg == "" {
				writePage(w, http.StatusOK, "Signed in", "Pouch is signed in to account "+acct+". You can close this tab and go back to the terminal.")
			} else {
				writePage(w, http.StatusBadRequest, "Sign-in failed", msg+" The terminal says what to do next.")
			}
		}
		select {
		case msg := <-reply:
			answer(msg)
		case <-finished:
			// The flow may have answered just before it ended.
			select {
			case msg := <-reply:
				answer(msg)
			default:
				writePage(w, http.StatusServiceUnavailable, "Sign-in abandoned", "Pouch stopped waiting for this sign-in.")
			}
		case <-r.Context().Done():
		}
	})}
	for _, ln := range lns {
		go srv.Serve(ln)
	}
	defer func() {
		// Shutdown lets the page out, then closes the listeners.
		close(finished)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		// Shutdown closes only the listeners Serve has taken so far; one
		// whose goroutine has not started yet is closed here, so that no
		// port stays open once the sign-in returns.
		for _, ln := range lns {
			ln.Close()
		}
	}()

	fmt.Fprintf(o.Out, "To sign in account %s, open this address in a web browser:\n\n    %s\n\n", acct, authURL)
	if o.OpenBrowser != nil {
		if err := o.OpenBrowser(authURL); err != nil {
			fmt.Fprintf(o.Out, "(No browser could be started here: %v. Open the address yourself.)\n", err)
		}
	}
	if o.In != nil {
		fmt.Fprintf(o.Out, "If that browser runs on another machine, sign in there, then paste here the address it ends up on (it starts with %s).\n", conf.RedirectURL)
		go readPasted(o.In, o.Out, &taken, arrivals)
	}
	fmt.Fprintln(o.Out, "Waiting for the sign-in…")

	var a arrival
	select {
	case a = <-arrivals:
	case <-ctx.Done():
		return fmt.Errorf("account %s: sign-in abandoned: %w", acct, ctx.Err())
	}
	code := a.query.Get("code")
	t, err := redeem(ctx, p, &conf, a.query, state, verifier)
	if err == nil {
		err = finish(t)
	}
	err = redact(err, code, verifier)
	if a.reply != nil {
		msg := ""
		if err != nil {
			msg = pageReason(err)
		}
		a.reply <- msg
	}
	return err
}

// redeem checks the redirect (RFC 6749 §4.1.2, §10.12) and exchanges its
// code with the PKCE verifier (RFC 7636 §4.5).
func redeem(ctx context.Context, p *provider, conf *oauth2.Config, q url.Values, state, verifier string) (*oauth2.Token, error) {
	acct := p.cfg.Account
	if e := q.Get("error"); e != "" {
		// §4.1.2.1: the user declined, or the request was refused.
		return nil, &ProviderError{Account: acct, Op: "sign-in", Code: cleanText(e, 64),
			Description: cleanText(q.Get("error_description"), 300)}
	}
	if subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(state)) != 1 {
		return nil, fmt.Errorf("account %s: the browser came back from another sign-in than this one (its state differs); open the address this run printed", acct)
	}
	code := q.Get("code")
	if code == "" {
		return nil, fmt.Errorf("account %s: the browser came back without an authorization code", acct)
	}
	t, err := conf.Exchange(p.ctx(ctx), code, oauth2.VerifierOption(verifier))
	if err != nil {
		return nil, providerError(acct, "sign-in", err)
	}
	return t, nil
}

// pageReason is the error told on the browser's page: without the account
// and command the terminal shows.
func pageReason(err error) string {
	var pe *ProviderError
	if errors.As(err, &pe) && pe.Code == "access_denied" {
		return "The sign-in was declined."
	}
	return "Pouch could not finish the sign-in."
}

func writePage(w http.ResponseWriter, status int, title, text string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer") // the address holds the code
	w.WriteHeader(status)
	fmt.Fprintf(w, "<!doctype html><html><head><meta charset=utf-8><title>Pouch: %[1]s</title></head><body style=\"font-family:sans-serif;max-width:36em;margin:4em auto\"><h1>%[1]s</h1><p>%[2]s</p></body></html>\n",
		html.EscapeString(title), html.EscapeString(text))
}

// listenLoopback listens on 127.0.0.1 (RFC 8252 §8.3: the loopback IP, not
// "localhost", so no other interface hears it) at port, or a free port;
// when the redirect names localhost it also listens on [::1] at the same
// port, for browsers that resolve localhost to ::1 first.
func listenLoopback(host string, port int) ([]net.Listener, int, error) {
	ln, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		if port != 0 {
			return nil, 0, fmt.Errorf("cannot listen on redirect-port %d: %w", port, err)
		}
		return nil, 0, err
	}
	lns := []net.Listener{ln}
	port = ln.Addr().(*net.TCPAddr).Port
	if host == "localhost" {
		if ln6, err := net.Listen("tcp6", net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
			lns = append(lns, ln6)
		}
	}
	return lns, port, nil
}

// readPasted takes the first pasted line that is a redirect address.
func readPasted(in io.Reader, out io.Writer, taken *atomic.Bool, arrivals chan<- arrival) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		u, err := url.Parse(line)
		if err != nil || !(u.Query().Has("code") || u.Query().Has("error")) {
			fmt.Fprintln(out, "That is not the address the browser ended up on: paste all of it, with its code= and state=.")
			continue
		}
		if taken.CompareAndSwap(false, true) {
			arrivals <- arrival{query: u.Query()}
		}
		return
	}
}

// lockedWriter serializes writes from the flow and the paste reader.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// Logout revokes the account's refresh token where the provider offers
// revocation (RFC 7009; Google does, Microsoft does not) and removes its
// token file. The file goes even if the provider cannot be reached; the
// error then says the revocation was not confirmed.
func Logout(ctx context.Context, cfg Config, store *Store) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	unlock, err := store.lock(cfg.Account)
	if err != nil {
		return err
	}
	rec, err := store.load(cfg.Account)
	unlock()
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var revokeErr error
	if err == nil && rec.RefreshToken != "" {
		p, perr := cfg.resolve(ctx)
		if perr != nil {
			revokeErr = perr
		} else if p.revokeURL != "" {
			revokeErr = redact(p.revoke(ctx, rec.RefreshToken), rec.RefreshToken, p.oauth.ClientSecret)
		}
	}
	if err := store.Delete(cfg.Account); err != nil {
		return err
	}
	if revokeErr != nil {
		return fmt.Errorf("account %s: the token file is removed, but the provider did not confirm the revocation: %w", cfg.Account, revokeErr)
	}
	return nil
}

// revoke is RFC 7009 §2.1 for a refresh token.
func (p *provider) revoke(ctx context.Context, token string) error {
	v := url.Values{"token": {token}, "token_type_hint": {"refresh_token"}}
	resp, err := p.postForm(ctx, p.revokeURL, v)
	if err != nil {
		return providerError(p.cfg.Account, "revocation", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return &ProviderError{Account: p.cfg.Account, Op: "revocation", Status: resp.StatusCode}
	}
	return nil
}

// postForm posts v to an endpoint with the client's authentication
// (RFC 6749 §2.3.1: in the body for a public client, else as configured).
func (p *provider) postForm(ctx context.Context, endpoint string, v url.Values) (*http.Response, error) {
	id, secret := p.oauth.ClientID, p.oauth.ClientSecret
	basic := p.oauth.Endpoint.AuthStyle == oauth2.AuthStyleInHeader && secret != ""
	if !basic {
		v.Set("client_id", id)
		if secret != "" {
			v.Set("client_secret", secret)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(v.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if basic {
		req.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	}
	return p.client.Do(req)
}
