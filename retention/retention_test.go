package retention

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/audit"
	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/maildir"
)

func TestParseExpire(t *testing.T) {
	for _, tc := range []struct {
		in  string
		d   time.Duration
		del bool
		ok  bool
	}{
		{"never", 0, false, true},
		{"0", 0, true, true},
		{"30d", 30 * 24 * time.Hour, false, true},
		{"90s", 90 * time.Second, false, true},
		{"-1d", 0, false, false},
		{"soon", 0, false, false},
	} {
		d, del, err := ParseExpire(tc.in)
		if (err == nil) != tc.ok || d != tc.d || del != tc.del {
			t.Errorf("ParseExpire(%q) = %v, %v, %v", tc.in, d, del, err)
		}
	}
}

func TestApply(t *testing.T) {
	def := store.Policy{Expire: 90 * 24 * time.Hour, Window: time.Hour}
	p, err := Apply(def, map[string]string{"expire": "10d", "expire_from": "retrieval", "deletion_window": "0"})
	if err != nil || p != (store.Policy{Expire: 10 * 24 * time.Hour, FromRetrieval: true}) {
		t.Fatalf("Apply = %+v, %v", p, err)
	}
	p, err = Apply(def, map[string]string{"expire": "tomorrow", "deletion_window": "2d"})
	if err == nil || !strings.Contains(err.Error(), "tomorrow") || p.Expire != def.Expire || p.Window != 48*time.Hour {
		t.Fatalf("Apply with a bad field = %+v, %v", p, err)
	}
}

type fields map[string]map[string]string

func (f fields) Fields(u string) map[string]string       { return f[u] }
func (f fields) AllFields() map[string]map[string]string { return f }

func TestFloor(t *testing.T) {
	month := 30 * 24 * time.Hour
	p := NewPolicies(store.Policy{Expire: month}, nil)
	if f, per := p.Floor(); f.Expire != month || per {
		t.Fatalf("floor without users = %+v %v", f, per)
	}
	p = NewPolicies(store.Policy{}, fields{
		"a": {"expire": "never"},
		"b": {"expire": "7d"},
		"c": {"login_delay": "60"},
		"d": {"expire": "40d"},
	})
	if f, per := p.Floor(); f.Expire != 7*24*time.Hour || !per {
		t.Fatalf("floor = %+v %v", f, per)
	}
	if got := p.Policy("b").Expire; got != 7*24*time.Hour {
		t.Fatalf("b's expire = %v", got)
	}
	if got := p.Policy("nobody"); got != (store.Policy{}) {
		t.Fatalf("default = %+v", got)
	}
	p = NewPolicies(store.Policy{Expire: month}, fields{"x": {"expire": "0"}})
	if f, per := p.Floor(); !f.DeleteRetrieved || !per {
		t.Fatalf("floor with EXPIRE 0 = %+v %v", f, per)
	}
	// A new default is seen at once, by the floor too.
	p = NewPolicies(store.Policy{Expire: month}, fields{"x": {"expire": "40d"}})
	if f, _ := p.Floor(); f.Expire != month {
		t.Fatalf("floor = %+v", f)
	}
	p.SetDefault(store.Policy{Expire: 24 * time.Hour})
	if f, _ := p.Floor(); f.Expire != 24*time.Hour || p.Policy("y").Expire != 24*time.Hour {
		t.Fatalf("after SetDefault: floor %+v, policy %+v", f, p.Policy("y"))
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
		fields{"held": {}, "keeper": {"expire": "never"}})
	st.SetPolicy(pol.Policy)
	for _, u := range []string{"alice", "held", "keeper", "busy"} {
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
	sw := &Sweeper{Store: st, Policy: pol.Policy, Now: clock, Audit: al,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}

	now = now.Add(10 * time.Second)
	sum, err := sw.Sweep(ctx)
	if err != nil || sum.Expired != 2 || sum.Purged != 0 || sum.Busy != 1 || sum.Users != 3 {
		t.Fatalf("first sweep: %+v, %v", sum, err)
	}
	busy.Close()
	now = now.Add(20 * time.Second)
	sum, err = sw.Sweep(ctx)
	// alice's two are purged from the holding area; busy's expire into it.
	if err != nil || sum.Expired != 2 || sum.Purged != 2 || sum.Busy != 0 {
		t.Fatalf("second sweep: %+v, %v", sum, err)
	}
	for _, u := range []string{"held", "keeper"} {
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
	sw := &Sweeper{Store: st, Policy: func(string) store.Policy { return store.Policy{} },
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { sw.Run(ctx, time.Hour); close(done) }()
	cancel()
	<-done
}
