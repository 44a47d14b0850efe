package maildir

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/store"
)

// Export hands over every message with what another store must keep: the
// maildrop's messages in their order, with UIDL, wire size, delivery and
// first retrieval, then the holding area's with their deletion time; each
// file as stored. It holds the maildrop lock meanwhile.
func TestExport(t *testing.T) {
	ctx := context.Background()
	s, c := clocked(t, store.Policy{Window: time.Hour})
	fill(t, s, c, 4)
	if err := s.Deliver(ctx, "u", strings.NewReader("bare\nline ends\n")); err != nil {
		t.Fatal(err)
	}
	want := uids(t, s)
	m, _ := s.Open(ctx, "u")
	m.(store.RetrievalRecorder).Retrieved([]int{0}, c.now())
	retrievedAt := c.now().Truncate(time.Second)
	m.Close()
	c.advance(time.Minute)
	commit(t, s, 1) // m1 into the holding area
	deletedAt := c.now().Truncate(time.Second)

	type got struct {
		Exported
		body string
	}
	var all []got
	err := s.Export(ctx, "u", func(x Exported, open func() (io.ReadCloser, error)) error {
		if _, err := s.Open(ctx, "u"); !errors.Is(err, store.ErrLocked) {
			t.Errorf("a session during the export: %v, want ErrLocked", err)
		}
		r, err := open()
		if err != nil {
			return err
		}
		defer r.Close()
		b, err := io.ReadAll(r)
		all = append(all, got{x, string(b)})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	order := []int{0, 2, 3, 4, 1}
	if len(all) != len(order) {
		t.Fatalf("exported %d messages, want %d", len(all), len(order))
	}
	for k, i := range order {
		g := all[k]
		if g.UID != want[i] {
			t.Errorf("message %d: UID %q, want %q", k, g.UID, want[i])
		}
		if held := k == len(order)-1; held != !g.Deleted.IsZero() || held && !g.Deleted.Equal(deletedAt) {
			t.Errorf("message %d: deleted %v", k, g.Deleted)
		}
		if g.Delivered.IsZero() {
			t.Errorf("message %d: no delivery time", k)
		}
	}
	if !all[0].Retrieved.Equal(retrievedAt) || !all[1].Retrieved.IsZero() {
		t.Errorf("retrievals %v, %v", all[0].Retrieved, all[1].Retrieved)
	}
	// As stored, with its size in wire form.
	if last := all[3]; last.body != "bare\nline ends\n" || last.Size != int64(len("bare\r\nline ends\r\n")) {
		t.Errorf("the LF message: %q, size %d", last.body, last.Size)
	}
	if all[4].body != "m1\r\n" {
		t.Errorf("the held message: %q", all[4].body)
	}
	// The lock is released, and nothing changed.
	if got := uids(t, s); len(got) != 4 {
		t.Fatalf("after the export: %v", got)
	}
	// fn's error stops it.
	stop := errors.New("stop")
	n := 0
	if err := s.Export(ctx, "u", func(Exported, func() (io.ReadCloser, error)) error { n++; return stop }); err != stop || n != 1 {
		t.Fatalf("Export after an error: %v, %d calls", err, n)
	}
}
