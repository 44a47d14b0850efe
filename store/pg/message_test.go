package pg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/store"
)

func TestImport(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	t0 := time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)
	live := Imported{UID: "1709294400.M1P2Q3.old-host,S=6,W=7", Delivered: t0, Retrieved: t0.Add(time.Hour)}
	if err := s.Import(ctx, "u", live, stringReader("kept\n")); err != nil {
		t.Fatal(err)
	}
	held := Imported{UID: "H00ff", Delivered: t0, Deleted: t0.Add(2 * time.Hour)}
	if err := s.Import(ctx, "u", held, stringReader("deleted\r\n")); err != nil {
		t.Fatal(err)
	}
	for _, m := range []Imported{live, held} {
		if err := s.Import(ctx, "u", m, stringReader("again\r\n")); !errors.Is(err, ErrExists) {
			t.Fatalf("import of %s again: %v, want ErrExists", m.UID, err)
		}
	}
	for _, uid := range []string{"", "with space", strings.Repeat("x", 71), "nul\x00"} {
		if err := s.Import(ctx, "u", Imported{UID: uid}, stringReader("x\r\n")); err == nil {
			t.Errorf("import with UIDL %q succeeded", uid)
		}
	}
	if err := s.Deliver(ctx, "u", stringReader("new\r\n")); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats(ctx, "u")
	if err != nil || st.Messages != 2 || st.Held != 1 || st.Retrieved != 1 || !st.Oldest.Equal(t0) ||
		!st.OldestDeleted.Equal(held.Deleted) || st.Octets != 6+5 {
		t.Fatalf("stats = %+v, %v", st, err)
	}
	m, err := s.Open(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	msgs := m.Messages()
	if len(msgs) != 2 || msgs[0].UID != live.UID || msgs[0].Size != 6 || string(readAll(t, m, 0)) != "kept\r\n" || msgs[1].UID == held.UID {
		t.Fatalf("after the import: %+v", msgs)
	}
	m.Close()
	if r, err := s.Restore(ctx, "u", time.Time{}, false); err != nil || len(r) != 1 || r[0].UID != held.UID {
		t.Fatalf("restore of the imported deletion: %+v, %v", r, err)
	}
	checkConsistent(t, s)
}

func TestUIDsNeverReused(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	seen := map[string]bool{}
	collect := func(user string, del bool) {
		m, err := s.Open(ctx, user)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		var all []int
		for i, msg := range m.Messages() {
			if seen[msg.UID] {
				t.Fatalf("UIDL %s given twice", msg.UID)
			}
			seen[msg.UID] = true
			all = append(all, i)
		}
		if del {
			if err := m.Commit(all); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Deleted, and a new user under an old one's name: new UIDLs each time.
	for range 3 {
		for _, u := range []string{"a", "b"} {
			fill(t, s, u, 4)
			collect(u, true)
		}
	}
	if len(seen) != 24 {
		t.Fatalf("%d UIDLs, want 24", len(seen))
	}
}

func TestChunkBoundaries(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	line := []byte(strings.Repeat("x", 1022) + "\r\n") // 1 KiB in wire form
	var want [][]byte
	for _, size := range []int{0, 1024, ChunkSize - 1024, ChunkSize, ChunkSize + 1024, 3 * ChunkSize} {
		msg := bytes.Repeat(line, size/1024)
		want = append(want, msg)
		if err := s.Deliver(ctx, "u", bytes.NewReader(msg)); err != nil {
			t.Fatal(err)
		}
	}
	m, err := s.Open(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i, w := range want {
		rows := m.(*maildrop).rows
		if wantChunks := (len(w) + ChunkSize - 1) / ChunkSize; rows[i].chunks != wantChunks {
			t.Errorf("message of %d octets in %d chunks, want %d", len(w), rows[i].chunks, wantChunks)
		}
		// One octet at a time through the first kilobytes, then the rest.
		r, err := m.Open(i)
		if err != nil {
			t.Fatal(err)
		}
		var got []byte
		one := make([]byte, 1)
		for len(got) < min(len(w), 3000) {
			n, err := r.Read(one)
			got = append(got, one[:n]...)
			if err != nil {
				t.Fatal(err)
			}
		}
		rest, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(append(got, rest...), w) || m.Messages()[i].Size != int64(len(w)) {
			t.Errorf("message of %d octets read back as %d, %v", len(w), len(got)+len(rest), err)
		}
	}
}

// TestDamagedBody: a message whose chunks are gone is ErrNotFound before
// anything is sent, and one whose later chunk is gone fails the read
// rather than ending short.
func TestDamagedBody(t *testing.T) {
	ctx := context.Background()
	u := newSchema(t)
	s := connect(t, u, Options{})
	msg := crashMessage(2 * ChunkSize)
	for range 2 {
		if err := s.Deliver(ctx, "u", bytes.NewReader(msg)); err != nil {
			t.Fatal(err)
		}
	}
	m, err := s.Open(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	rows := m.(*maildrop).rows
	sql(t, u, "DELETE FROM chunks WHERE body = $1", rows[0].body)
	sql(t, u, "DELETE FROM chunks WHERE body = $1 AND n = 2", rows[1].body)
	if _, err := m.Open(0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("message without chunks: %v, want ErrNotFound", err)
	}
	r, err := m.Open(1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadAll(r); !errors.Is(err, errDamaged) {
		t.Fatalf("message missing its last chunk: %v, want errDamaged", err)
	}
}

func TestUsage(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if n, o, err := s.Usage("nobody"); n != 0 || o != 0 || err != nil {
		t.Fatalf("usage of a user without a maildrop: %d, %d, %v", n, o, err)
	}
	if _, _, err := s.Usage("../x"); !errors.Is(err, store.ErrBadUser) {
		t.Fatalf("usage of a bad name: %v", err)
	}
	fill(t, s, "u", 3) // "mN\r\n": 4 octets each
	if err := s.Deliver(ctx, "u", stringReader("lf\n")); err != nil {
		t.Fatal(err)
	}
	if n, o, err := s.Usage("u"); n != 4 || o != 16 || err != nil {
		t.Fatalf("usage: %d, %d, %v; want 4, 16 (wire octets)", n, o, err)
	}
	m, err := s.Open(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Commit([]int{0, 3}); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if n, o, err := s.Usage("u"); n != 2 || o != 8 || err != nil {
		t.Fatalf("usage after deleting two: %d, %d, %v", n, o, err)
	}
	users, err := s.Users(ctx)
	if err != nil || !slices.Equal(users, []string{"u"}) {
		t.Fatalf("users = %v, %v", users, err)
	}
}

// TestDeliveryChecksChunks: the transaction that commits a delivery
// written in chunks finds out when the database lost one of them (a crash
// of the database after their commits, which do not wait for the disk) or
// a sweep took them for garbage, and commits nothing.
func TestDeliveryChecksChunks(t *testing.T) {
	for _, tc := range []struct{ name, lose string }{
		{"chunk lost", "DELETE FROM chunks WHERE n = 1"},
		{"upload taken", "DELETE FROM uploads"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newSchema(t)
			s := connect(t, u, Options{})
			msg := crashMessage(3 * ChunkSize)
			// Chunks 0 and 1 are written when the sender sends its last octets.
			r := &triggerReader{r: bytes.NewReader(msg), at: len(msg), fire: func() { sql(t, u, tc.lose) }}
			if err := s.Deliver(context.Background(), "u", r); err == nil {
				t.Fatal("a delivery that lost part of its body was committed")
			}
			if n, _, err := s.Usage("u"); n != 0 || err != nil {
				t.Fatalf("%d messages, %v; want none", n, err)
			}
			if len(bodies(t, s, "u")) != 0 {
				t.Fatal("the delivery is visible")
			}
			checkConsistent(t, s)
		})
	}
}

// Small messages are read ahead, many in one query; what is read ahead is
// what is stored, a message gone meanwhile is still ErrNotFound, large
// messages are read chunk by chunk as before, and closing the maildrop
// gives back the read-ahead budget.
func TestReadAhead(t *testing.T) {
	ctx := context.Background()
	u := newSchema(t)
	s := connect(t, u, Options{})
	var want []string
	for i := range 60 {
		msg := fmt.Sprintf("Subject: %d\r\n\r\n%s\r\n", i, strings.Repeat("y", i*200))
		if i == 30 {
			msg = "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", ChunkSize/18+10)
		}
		if err := s.Deliver(ctx, "u", strings.NewReader(msg)); err != nil {
			t.Fatal(err)
		}
		want = append(want, msg)
	}
	m, err := s.Open(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	md := m.(*maildrop)
	sql(t, u, "DELETE FROM chunks WHERE body = $1", md.rows[5].body)
	var queries int
	for i, w := range want {
		before := len(md.ahead)
		if i == 5 {
			if _, err := m.Open(i); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("message 5 without its body: %v, want ErrNotFound", err)
			}
			continue
		}
		if got := string(readAll(t, m, i)); got != w {
			t.Fatalf("message %d: %d octets, want %d", i, len(got), len(w))
		}
		if before == 0 && len(md.ahead) > 0 {
			queries++
		}
	}
	if queries < 2 || queries > 6 {
		t.Errorf("%d read-ahead queries for 59 small messages", queries)
	}
	// Out of order: the last messages again, then the first.
	for _, i := range []int{59, 58, 0} {
		if got := string(readAll(t, m, i)); got != want[i] {
			t.Fatalf("message %d again: %d octets", i, len(got))
		}
	}
	if s.aheadUsed.Load() == 0 {
		t.Fatal("nothing kept read ahead after reading message 0 again")
	}
	m.Close()
	if n := s.aheadUsed.Load(); n != 0 {
		t.Fatalf("%d octets of the read-ahead budget still taken after Close", n)
	}
}
