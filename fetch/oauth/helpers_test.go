package oauth

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pouchmail/pouch/internal/oauthtest"
	"github.com/pouchmail/pouch/internal/testkit"
)

// customConfig is an account signed in with the test server, found by
// discovery.
func customConfig(srv *oauthtest.Server, secret string) Config {
	return Config{Account: "work", Provider: Custom, ClientID: srv.ClientID(), ClientSecret: secret,
		Issuer: srv.URL, Scopes: []string{"pop", "offline_access"}}
}

// visit is what the fake browser saw.
type visit struct {
	status   int
	page     string
	location string // the loopback address it was sent to
	err      error
}

// browser plays the user's browser: it follows the sign-in address to the
// provider, which approves at once and redirects to the loopback URI, and
// then loads that page. tamper may change the redirect before it is
// followed; stop keeps it from being followed (the user copies it instead).
type browser struct {
	tamper func(*url.URL)
	stop   bool
	visits chan visit
}

func newBrowser() *browser { return &browser{visits: make(chan visit, 1)} }

func (b *browser) open(authURL string) error {
	go func() {
		var v visit
		client := &http.Client{Timeout: 20 * time.Second, CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if req.URL.Hostname() == "127.0.0.1" || req.URL.Hostname() == "localhost" {
				if req.URL.Port() == via[0].URL.Port() {
					return nil // still at the provider
				}
				if b.tamper != nil {
					b.tamper(req.URL)
				}
				v.location = req.URL.String()
				if b.stop {
					return http.ErrUseLastResponse
				}
			}
			return nil
		}}
		resp, err := client.Get(authURL)
		if err != nil {
			v.err = err
			b.visits <- v
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		v.status, v.page = resp.StatusCode, string(body)
		b.visits <- v
	}()
	return nil
}

// fakeClock is the device flow's clock: Sleep returns at once having moved
// the time on, and calls onSleep with the number of the sleep.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	sleeps  []time.Duration
	onSleep func(n int)
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.sleeps = append(c.sleeps, d)
	n := len(c.sleeps)
	f := c.onSleep
	c.mu.Unlock()
	if f != nil {
		f(n)
	}
	return ctx.Err()
}

func (c *fakeClock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

// logCapture is a Store logger whose lines the test can read.
func logCapture() (*slog.Logger, *testkit.SyncBuffer) {
	buf := &testkit.SyncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// loginBrowser signs cfg in through the fake browser and returns what the
// browser saw.
func loginBrowser(t *testing.T, cfg Config, store *Store, b *browser, out io.Writer) (visit, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Login(ctx, cfg, store, LoginOptions{Mode: Browser, Out: out, OpenBrowser: b.open})
	select {
	case v := <-b.visits:
		return v, err
	case <-ctx.Done():
		t.Fatal("the browser never finished")
	}
	return visit{}, err
}

func isLoginRequired(err error) bool {
	var lr *LoginRequiredError
	return errors.As(err, &lr)
}

func contains(haystack, needle string) bool { return strings.Contains(haystack, needle) }
