package auth

import (
	"context"
	"errors"
	"iter"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeBackend is a Backend in memory that counts its look-ups and can be
// made to fail or hang.
type fakeBackend struct {
	mu      sync.Mutex
	records map[string]Record
	down    error         // Lookup and Ping fail with it
	listErr error         // Names fails with it
	hang    chan struct{} // Lookup waits for it or its context
	lookups atomic.Int64
	binds   atomic.Int64
}

func newFake(records map[string]Record) *fakeBackend { return &fakeBackend{records: records} }

func (f *fakeBackend) set(name string, r Record) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records[name] = r
}

func (f *fakeBackend) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = err
}

func (f *fakeBackend) Lookup(ctx context.Context, name string) (Record, error) {
	f.lookups.Add(1)
	f.mu.Lock()
	hang, down, r, ok := f.hang, f.down, f.records[name], false
	_, ok = f.records[name]
	f.mu.Unlock()
	if hang != nil {
		select {
		case <-hang:
		case <-ctx.Done():
			return Record{}, ctx.Err()
		}
	}
	switch {
	case down != nil:
		return Record{}, down
	case !ok:
		return Record{}, ErrNoSuchUser
	}
	return r, nil
}

func (f *fakeBackend) Names(context.Context) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		f.mu.Lock()
		if err := f.listErr; err != nil {
			f.mu.Unlock()
			yield("", err)
			return
		}
		var names []string
		for n := range f.records {
			names = append(names, n)
		}
		f.mu.Unlock()
		for _, n := range names {
			if !yield(n, nil) {
				return
			}
		}
	}
}

func (f *fakeBackend) Ping(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.down
}

func (f *fakeBackend) String() string { return "fake" }

// fakeBinder checks passwords itself: the record's Bind is the password.
type fakeBinder struct{ *fakeBackend }

func (f fakeBinder) CheckPassword(_ context.Context, r Record, pw string) (bool, error) {
	f.binds.Add(1)
	f.mu.Lock()
	down := f.down
	f.mu.Unlock()
	if down != nil {
		return false, down
	}
	return r.Bind != "" && r.Bind == pw, nil
}

var errDown = errors.New("connection refused")

func TestRemoteCache(t *testing.T) {
	t.Parallel()
	f := newFake(map[string]Record{"alice@example.org": {Password: "{PLAIN}old"}})
	r := NewRemote(f, RemoteOptions{CacheTTL: time.Hour, NegativeTTL: time.Hour})
	for range 3 {
		if ok, err := r.Check("alice@example.org", "old"); !ok || err != nil {
			t.Fatalf("Check = %v, %v", ok, err)
		}
		if _, err := r.Account("nobody@example.org"); !errors.Is(err, ErrNoSuchUser) {
			t.Fatalf("Account(nobody) = %v", err)
		}
	}
	if n := f.lookups.Load(); n != 2 {
		t.Errorf("%d look-ups for 3 logins and 3 unknown names, want 2 (one each, then cached)", n)
	}
	if !r.VerifyCached("alice@example.org", "old") || r.VerifyCached("alice@example.org", "other") {
		t.Error("VerifyCached does not say what was verified")
	}

	// A new password works at once: the cached account last matched, so
	// a mismatch asks again; the old password then fails.
	f.set("alice@example.org", Record{Password: "{PLAIN}new"})
	if ok, _ := r.Check("alice@example.org", "new"); !ok {
		t.Error("the new password is refused within the TTL")
	}
	if ok, _ := r.Check("alice@example.org", "old"); ok {
		t.Error("the old password still works after the new one was seen")
	}
	// Wrong passwords after a mismatch do not ask again each time.
	before := f.lookups.Load()
	for range 5 {
		r.Check("alice@example.org", "guess")
	}
	if n := f.lookups.Load() - before; n > 1 {
		t.Errorf("%d look-ups for 5 wrong passwords in a row, want at most 1", n)
	}

	r.Flush()
	r.Account("alice@example.org")
	if n := f.lookups.Load() - before; n > 2 {
		t.Errorf("Flush did not forget the cache")
	}
}

// A TTL of zero caches nothing.
func TestRemoteNoCache(t *testing.T) {
	t.Parallel()
	f := newFake(map[string]Record{"bob": {Password: "{PLAIN}pw"}})
	r := NewRemote(f, RemoteOptions{})
	for range 3 {
		r.Account("bob")
		r.Account("nobody")
	}
	if n := f.lookups.Load(); n != 6 {
		t.Errorf("%d look-ups, want 6", n)
	}
}

// "Cannot tell now" is never cached, and never taken for an unknown user;
// accounts seen before are still used; Fault says why until the backend
// answers again.
func TestRemoteUnavailable(t *testing.T) {
	t.Parallel()
	f := newFake(map[string]Record{"alice": {Password: "{PLAIN}a"}, "bob": {Password: "{PLAIN}b"}})
	log, buf := testLogger()
	r := NewRemote(f, RemoteOptions{CacheTTL: time.Nanosecond, NegativeTTL: time.Nanosecond, Logger: log})
	if ok, _ := r.Check("alice", "a"); !ok {
		t.Fatal("alice refused")
	}
	f.fail(errDown)
	_, err := r.Account("bob")
	var ue *UnavailableError
	if !errors.As(err, &ue) || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Account(bob) while down = %v, want an UnavailableError", err)
	}
	if ok, err := r.Check("bob", "b"); ok || !errors.Is(err, ErrUnavailable) {
		t.Errorf("Check(bob) while down = %v, %v", ok, err)
	}
	if r.Fault() == nil {
		t.Error("no Fault while down")
	}
	// alice was looked up before: her account is used, stale as it is.
	if ok, err := r.Check("alice", "a"); !ok || err != nil {
		t.Errorf("Check(alice) while down = %v, %v; want the account looked up before", ok, err)
	}
	if ok, err := r.Check("alice", "wrong"); ok || err != nil {
		t.Errorf("a wrong password of alice while down = %v, %v; want a plain failure", ok, err)
	}
	// Within a second of the last try, look-ups fail without asking.
	n := f.lookups.Load()
	for range 10 {
		r.Account("carol")
	}
	if got := f.lookups.Load() - n; got > 1 {
		t.Errorf("%d look-ups while down within a second, want at most 1", got)
	}
	if c := count(buf, "ERROR", "account source unavailable"); c != 1 {
		t.Errorf("%d ERROR lines for one outage, want 1:\n%s", c, buf)
	}

	f.fail(nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Watch(ctx, time.Hour); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for r.Fault() != nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if r.Fault() != nil {
		t.Fatal("Watch did not clear the fault once the backend answered")
	}
	if c := count(buf, "INFO", "account source usable again"); c != 1 {
		t.Errorf("%d INFO lines for the end of the outage, want 1", c)
	}
	if _, err := r.Account("bob"); err != nil {
		t.Errorf("Account(bob) after the outage = %v", err)
	}
}

// A backend that does not answer within the timeout is unavailable.
func TestRemoteTimeout(t *testing.T) {
	t.Parallel()
	f := newFake(map[string]Record{"alice": {Password: "{PLAIN}a"}})
	f.hang = make(chan struct{})
	defer close(f.hang)
	r := NewRemote(f, RemoteOptions{Timeout: 50 * time.Millisecond})
	start := time.Now()
	_, err := r.Account("alice")
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no answer within 50ms") {
		t.Fatalf("Account = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

// A setting that cannot be read refuses the account whole, as a users
// file line's does; its password is still verified; the settings read
// fill the Account; the summary counts what was looked up.
func TestRemoteSettings(t *testing.T) {
	t.Parallel()
	f := newFake(map[string]Record{
		"good": {Password: "{PLAIN}g", Fields: map[string]string{
			"quota_storage": "1M", "login_delay": "60", "disabled": "false", "expire": "30d"}},
		"off":     {Password: "{PLAIN}o", Fields: map[string]string{"nologin": "Y"}},
		"bad":     {Password: "{PLAIN}b", Where: "row", Fields: map[string]string{"quota_storage": "lots"}},
		"nopw":    {},
		"badhash": {Password: "{MD5}abc"},
	})
	log, buf := testLogger()
	r := NewRemote(f, RemoteOptions{CacheTTL: time.Hour, Logger: log})
	a, err := r.Account("good")
	if err != nil || a.Quota.Storage != Own[int64](1<<20) || a.LoginDelay != Own(time.Minute) || a.Disabled ||
		a.Retention.Expire != Own(Expiry{After: 30 * 24 * time.Hour}) {
		t.Errorf("Account(good) = %+v, %v", a, err)
	}
	if a, _ := r.Account("off"); !a.Disabled {
		t.Error("nologin=Y does not disable")
	}
	_, err = r.Account("bad")
	var ae *AccountError
	if !errors.As(err, &ae) || !strings.Contains(err.Error(), "fake: row") || !strings.Contains(err.Error(), "quota_storage") {
		t.Errorf("Account(bad) = %v", err)
	}
	if !r.Verify("bad", "b") || r.Verify("bad", "x") {
		t.Error("a refused account's password is not verified")
	}
	if count(buf, "ERROR", "account refused") == 0 {
		t.Errorf("the refused account is not logged:\n%s", buf)
	}
	for _, name := range []string{"nopw", "badhash"} {
		if r.Verify(name, "") || r.Verify(name, "abc") {
			t.Errorf("%s logs in", name)
		}
	}
	if s := r.Summary(); !s.APOP || s.MaxLoginDelay != time.Minute || len(s.Retention) != 1 {
		t.Errorf("Summary = %+v", s)
	}
	if sec, ok := r.Source().(APOPSource).APOPSecret("good"); !ok || sec != "g" {
		t.Error("no APOP secret for a {PLAIN} password")
	}
}

// A backend that binds has no SCRAM or APOP capability, and checks each
// password itself, caching only what matched.
func TestRemoteBinder(t *testing.T) {
	t.Parallel()
	f := newFake(map[string]Record{"alice": {Bind: "pw"}})
	r := NewRemote(fakeBinder{f}, RemoteOptions{CacheTTL: time.Hour, NegativeTTL: time.Hour})
	src := r.Source()
	if _, ok := src.(SCRAMSource); ok {
		t.Error("a binding source offers SCRAM")
	}
	if _, ok := src.(APOPSource); ok {
		t.Error("a binding source offers APOP")
	}
	for range 2 {
		if !r.Verify("alice", "pw") {
			t.Fatal("alice refused")
		}
	}
	if n := f.binds.Load(); n != 1 {
		t.Errorf("%d binds for two logins, want 1", n)
	}
	if r.Verify("alice", "wrong") || r.Verify("nobody", "pw") {
		t.Error("wrong credentials accepted")
	}
	if n := f.binds.Load(); n != 3 {
		t.Errorf("%d binds, want 3: an unknown name binds too, so that it takes as long", n)
	}
	f.fail(errDown)
	r.Flush()
	if ok, err := r.Check("alice", "pw"); ok || !errors.Is(err, ErrUnavailable) {
		t.Errorf("Check while down = %v, %v", ok, err)
	}
}

func TestRemoteAccountsAndDomains(t *testing.T) {
	t.Parallel()
	f := newFake(map[string]Record{"a@example.org": {Password: "{PLAIN}x"}, "b@example.net": {Password: "{PLAIN}y"}})
	r := NewRemote(f, RemoteOptions{CacheTTL: time.Hour})
	n := 0
	for a, err := range r.Accounts() {
		if err != nil || !strings.Contains(a.Name, "@") {
			t.Errorf("Accounts: %+v, %v", a, err)
		}
		n++
	}
	if n != 2 {
		t.Errorf("Accounts listed %d, want 2", n)
	}
	if has, err := r.HasDomain("anything.example"); !has || err != nil {
		t.Errorf("HasDomain of a backend that does not know its domains = %v, %v", has, err)
	}
}

// A backend that cannot list its accounts (no iterate_query) says so to
// whoever lists them, and that is no outage: logins and delivery, which
// look each name up, go on as before.
func TestRemoteListingFailureIsNoOutage(t *testing.T) {
	t.Parallel()
	f := newFake(map[string]Record{"a@example.org": {Password: "{PLAIN}x"}})
	f.listErr = errors.New("no iterate_query: the accounts cannot be listed")
	r := NewRemote(f, RemoteOptions{CacheTTL: time.Hour, RetryEvery: time.Hour})
	for _, err := range r.Names() {
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "cannot be listed") {
			t.Errorf("Names: %v", err)
		}
	}
	for _, err := range r.Accounts() {
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "cannot be listed") {
			t.Errorf("Accounts: %v", err)
		}
	}
	if err := r.Fault(); err != nil {
		t.Errorf("Fault after a failed listing: %v", err)
	}
	if a, err := r.Account("a@example.org"); err != nil || a.Name != "a@example.org" {
		t.Errorf("Account after a failed listing = %+v, %v", a, err)
	}
}

// fakeDomains is a backend that knows its domains: example.org.
type fakeDomains struct {
	*fakeBackend
	asked atomic.Int64
}

func (f *fakeDomains) HasDomain(_ context.Context, domain string) (bool, error) {
	f.asked.Add(1)
	f.mu.Lock()
	down := f.down
	f.mu.Unlock()
	if down != nil {
		return false, down
	}
	return domain == "example.org", nil
}

// While the backend is down, a domain not known before cannot be
// confirmed, and, as for names, only one look-up every RetryEvery asks it:
// the others fail at once, rather than each wait for the timeout.
func TestRemoteDomainsWhileDown(t *testing.T) {
	t.Parallel()
	f := &fakeDomains{fakeBackend: newFake(map[string]Record{})}
	r := NewRemote(f, RemoteOptions{CacheTTL: time.Hour, NegativeTTL: time.Hour, RetryEvery: time.Hour})
	if has, err := r.HasDomain("Example.ORG"); !has || err != nil {
		t.Fatalf("HasDomain(example.org) = %v, %v", has, err)
	}
	f.fail(errors.New("connection refused"))
	for _, d := range []string{"example.net", "example.com"} {
		if has, err := r.HasDomain(d); has || !errors.Is(err, ErrUnavailable) {
			t.Errorf("HasDomain(%s) while down = %v, %v", d, has, err)
		}
	}
	if n := f.asked.Load(); n != 2 {
		t.Errorf("the backend was asked %d times, want 2 (then held off for RetryEvery)", n)
	}
	if _, err := r.Account("alice@example.net"); !errors.Is(err, ErrUnavailable) || f.lookups.Load() != 0 {
		t.Errorf("Account while down = %v after %d look-ups", err, f.lookups.Load())
	}
	if has, err := r.HasDomain("example.org"); !has || err != nil {
		t.Errorf("HasDomain(example.org), known before, while down = %v, %v", has, err)
	}
}
