package retention

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/audit"
	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/maildir"
)

const day = 24 * time.Hour

func expire(d time.Duration) auth.Retention {
	return auth.Retention{Expire: auth.Own(auth.Expiry{After: d})}
}

func TestApply(t *testing.T) {
	def := store.Policy{Expire: 90 * day, Window: time.Hour}
	r := auth.Retention{Expire: auth.Own(auth.Expiry{After: 10 * day}), FromRetrieval: auth.Own(true), Window: auth.Own(time.Duration(0))}
	if p := Apply(def, r); p != (store.Policy{Expire: 10 * day, FromRetrieval: true}) {
		t.Fatalf("Apply = %+v", p)
	}
	if p := Apply(def, auth.Retention{Expire: auth.Own(auth.Expiry{DeleteRetrieved: true})}); p != (store.Policy{DeleteRetrieved: true, Window: time.Hour}) {
		t.Fatalf("Apply of EXPIRE 0 = %+v", p)
	}
	if p := Apply(def, auth.Retention{}); p != def {
		t.Fatalf("Apply of nothing = %+v", p)
	}
}

// accounts are users with their own retention settings; refused names an
// account refused for its settings, down makes every other name unknown
// for now.
type accounts struct {
	users   map[string]auth.Retention
	refused string
	down    bool
}

func (a accounts) Account(name string) (auth.Account, error) {
	r, ok := a.users[name]
	switch {
	case name == a.refused:
		return auth.Account{Name: name}, &auth.AccountError{Name: name, Errs: []error{errors.New("expire: bad")}}
	case ok:
		return auth.Account{Name: name, Retention: r}, nil
	case a.down:
		return auth.Account{}, &auth.SourceError{Path: "users", Reason: "is missing"}
	}
	return auth.Account{}, auth.ErrNoSuchUser
}

func (a accounts) Summary() auth.Summary {
	var s auth.Summary
	for _, r := range a.users {
		if r.Expire.Set || r.FromRetrieval.Set {
			s.Retention = append(s.Retention, r)
		}
	}
	return s
}

func TestFloor(t *testing.T) {
	month := 30 * day
	p := NewPolicies(store.Policy{Expire: month}, nil)
	if f, per := p.Floor(); f.Expire != month || per {
		t.Fatalf("floor without users = %+v %v", f, per)
	}
	p = NewPolicies(store.Policy{}, accounts{users: map[string]auth.Retention{
		"a": {Expire: auth.Own(auth.Expiry{})},
		"b": expire(7 * day),
		"c": {},
		"d": expire(40 * day),
	}})
	if f, per := p.Floor(); f.Expire != 7*day || !per {
		t.Fatalf("floor = %+v %v", f, per)
	}
	if got := p.Policy("b").Expire; got != 7*day {
		t.Fatalf("b's expire = %v", got)
	}
	if got := p.Policy("nobody"); got != (store.Policy{}) {
		t.Fatalf("default = %+v", got)
	}
	p = NewPolicies(store.Policy{Expire: month}, accounts{users: map[string]auth.Retention{"x": {Expire: auth.Own(auth.Expiry{DeleteRetrieved: true})}}})
	if f, per := p.Floor(); !f.DeleteRetrieved || !per {
		t.Fatalf("floor with EXPIRE 0 = %+v %v", f, per)
	}
	// A new default is seen at once, by the floor too.
	p = NewPolicies(store.Policy{Expire: month}, accounts{users: map[string]auth.Retention{"x": expire(40 * day)}})
	if f, _ := p.Floor(); f.Expire != month {
		t.Fatalf("floor = %+v", f)
	}
	p.SetDefault(store.Policy{Expire: 24 * time.Hour})
	if f, _ := p.Floor(); f.Expire != 24*time.Hour || p.Policy("y").Expire != 24*time.Hour {
		t.Fatalf("after SetDefault: floor %+v, policy %+v", f, p.Policy("y"))
	}
}

// A user whose own policy is not known (an account refused for its
// settings, or accounts that cannot be looked up) gets the policy that
// removes least, never the default in its place.
func TestUnknownPolicyRemovesNothing(t *testing.T) {
	def := store.Policy{Expire: day, DeleteRetrieved: true, Window: 2 * day}
	p := NewPolicies(def, accounts{users: map[string]auth.Retention{"ok": {}}, refused: "bad", down: true})
	for _, user := range []string{"bad", "unlisted"} {
		pol, err := p.Lookup(user)
		if err == nil || pol != (store.Policy{Window: 2 * day}) || p.Policy(user) != pol {
			t.Errorf("Lookup(%s) = %+v, %v", user, pol, err)
		}
	}
	if pol, err := p.Lookup("ok"); err != nil || pol != def {
		t.Errorf("Lookup(ok) = %+v, %v", pol, err)
	}
	if pol, err := NewPolicies(def, accounts{}).Lookup("gone"); err != nil || pol != def {
		t.Errorf("a user with no account: %+v, %v; want the default", pol, err)
	}
}

func TestDescribe(t *testing.T) {
	got := Describe(store.Policy{Expire: 30 * 24 * time.Hour, FromRetrieval: true, Window: 7 * 24 * time.Hour})
	want := "messages are removed 30d after their first retrieval; deleted and expired messages can be restored for 7d"
	if got != want {
		t.Fatalf("Describe = %q", got)
	}
}

// auditLines reads the audit log's events by name.
func auditLines(t *testing.T, path string) map[string][]map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]map[string]any{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		out[m["event"].(string)] = append(out[m["event"].(string)], m)
	}
	return out
}

func TestSweeper(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	st := maildir.New(t.TempDir())
	st.SetClock(clock)
	pol := NewPolicies(store.Policy{Expire: 10 * time.Second, Window: 20 * time.Second},
		accounts{users: map[string]auth.Retention{"held": {}, "keeper": {Expire: auth.Own(auth.Expiry{})}}, refused: "refused"})
	st.SetPolicy(pol.Policy)
	for _, u := range []string{"alice", "held", "keeper", "busy", "refused"} {
		for i := range 2 {
			if err := st.Deliver(ctx, u, strings.NewReader(fmt.Sprintf("%s %d\r\n", u, i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := st.SetHold(ctx, "held", store.Hold{Set: true, Reason: "audit"}); err != nil {
		t.Fatal(err)
	}
	busy, err := st.Open(ctx, "busy")
	if err != nil {
		t.Fatal(err)
	}
	auditPath := filepath.Join(t.TempDir(), "audit.log")
	al, err := audit.Open(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	defer al.Close()
	sw := &Sweeper{Store: st, Policy: pol.Lookup, Now: clock, Audit: al,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}

	now = now.Add(10 * time.Second)
	sum, err := sw.Sweep(ctx)
	if err != nil || sum.Expired != 2 || sum.Purged != 0 || sum.Busy != 1 || sum.Users != 3 || sum.Unsure != 1 {
		t.Fatalf("first sweep: %+v, %v", sum, err)
	}
	busy.Close()
	now = now.Add(20 * time.Second)
	sum, err = sw.Sweep(ctx)
	// alice's two are purged from the holding area; busy's expire into it.
	if err != nil || sum.Expired != 2 || sum.Purged != 2 || sum.Busy != 0 {
		t.Fatalf("second sweep: %+v, %v", sum, err)
	}
	for _, u := range []string{"held", "keeper", "refused"} {
		if s, _ := st.Stats(ctx, u); s.Messages != 2 {
			t.Errorf("%s has %d messages after the sweeps, want 2", u, s.Messages)
		}
	}
	ev := auditLines(t, auditPath)
	if len(ev["expire"]) != 4 || len(ev["purge"]) != 2 {
		t.Fatalf("audit: %d expire, %d purge lines", len(ev["expire"]), len(ev["purge"]))
	}
	if e := ev["purge"][0]; e["user"] != "alice" || e["uid"] == "" || e["deleted"] == "" {
		t.Fatalf("purge line: %v", e)
	}
}

func TestSweeperRunStops(t *testing.T) {
	st := maildir.New(t.TempDir())
	sw := &Sweeper{Store: st, Policy: func(string) (store.Policy, error) { return store.Policy{}, nil },
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sw.Run(ctx, time.Hour); close(done) }()
	cancel()
	<-done
}
