// Package storetest is the conformance suite that every storage backend passes:
// the storage contract of package store, checked through its interfaces only.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/pouchmail/pouch/store"
)

// Backend is what a backend under test provides.
type Backend interface {
	store.Store
	store.Deliverer
}

// Run runs the suite. newBackend returns an empty backend for each subtest.
func Run(t *testing.T, newBackend func(t *testing.T) Backend) {
	tests := []struct {
		name string
		fn   func(*testing.T, Backend)
	}{
		{"EmptyMaildrop", testEmpty},
		{"DeliverAndRead", testDeliverAndRead},
		{"WireForm", testWireForm},
		{"UIDsValidUniqueStable", testUIDs},
		{"LockIsExclusive", testLock},
		{"Snapshot", testSnapshot},
		{"CommitDeletes", testCommit},
		{"CloseDeletesNothing", testCloseDeletesNothing},
		{"ConcurrentDelivery", testConcurrentDelivery},
		{"BadUserNames", testBadUsers},
		{"UsersAreSeparate", testSeparate},
		{"LargeMessageStreams", testLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newBackend(t)) })
	}
}

// Canonical is the reference wire form (store.NewCanonicalReader), written
// byte by byte so that the suite does not trust the code it checks.
func Canonical(msg []byte) []byte {
	var out []byte
	for i, c := range msg {
		if c == '\n' && (i == 0 || msg[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	if len(msg) > 0 && msg[len(msg)-1] != '\n' {
		out = append(out, '\r', '\n')
	}
	return out
}

func deliver(t *testing.T, b Backend, user string, msg []byte) {
	t.Helper()
	if err := b.Deliver(context.Background(), user, bytes.NewReader(msg)); err != nil {
		t.Fatalf("Deliver(%q): %v", user, err)
	}
}

func open(t *testing.T, b Backend, user string) store.Maildrop {
	t.Helper()
	m, err := b.Open(context.Background(), user)
	if err != nil {
		t.Fatalf("Open(%q): %v", user, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func read(t *testing.T, m store.Maildrop, i int) []byte {
	t.Helper()
	r, err := m.Open(i)
	if err != nil {
		t.Fatalf("Open message %d: %v", i, err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read message %d: %v", i, err)
	}
	return data
}

// checkContents asserts that m holds exactly msgs, in order, in wire form.
func checkContents(t *testing.T, m store.Maildrop, msgs [][]byte) {
	t.Helper()
	got := m.Messages()
	if len(got) != len(msgs) {
		t.Fatalf("maildrop has %d messages, want %d", len(got), len(msgs))
	}
	for i, want := range msgs {
		want = Canonical(want)
		if got[i].Size != int64(len(want)) {
			t.Errorf("message %d: Size %d, want %d", i+1, got[i].Size, len(want))
		}
		if data := read(t, m, i); !bytes.Equal(data, want) {
			t.Errorf("message %d: content %q, want %q", i+1, trim(data), trim(want))
		}
	}
}

func trim(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}

func testEmpty(t *testing.T, b Backend) {
	m := open(t, b, "nobody-yet")
	if n := len(m.Messages()); n != 0 {
		t.Fatalf("new maildrop has %d messages", n)
	}
	if err := m.Commit(nil); err != nil {
		t.Fatalf("empty Commit: %v", err)
	}
}

func testDeliverAndRead(t *testing.T, b Backend) {
	msgs := [][]byte{
		[]byte("Subject: one\r\n\r\nfirst\r\n"),
		[]byte("Subject: two\r\n\r\nsecond\r\n"),
		[]byte("Subject: three\r\n\r\nthird\r\n"),
	}
	for _, msg := range msgs {
		deliver(t, b, "alice", msg)
	}
	checkContents(t, open(t, b, "alice"), msgs)
}

func testWireForm(t *testing.T, b Backend) {
	msgs := [][]byte{
		[]byte("Subject: lf\n\nunix line ends\n"),
		[]byte("Subject: no final newline\r\n\r\nbody"),
		[]byte("Subject: mixed\r\n\nbare\rcr\n.leading dot\r\n..two\n.\n"),
		[]byte("x"),
		[]byte("\n"),
		[]byte("ends in cr\r"),
		[]byte("nul \x00 and 8bit \xff\xfe\r\n"),
	}
	for _, msg := range msgs {
		deliver(t, b, "wire", msg)
	}
	checkContents(t, open(t, b, "wire"), msgs)
}

func validUID(uid string) bool {
	if len(uid) < 1 || len(uid) > 70 {
		return false
	}
	for i := 0; i < len(uid); i++ {
		if uid[i] < 0x21 || uid[i] > 0x7e {
			return false
		}
	}
	return true
}

func testUIDs(t *testing.T, b Backend) {
	for i := range 20 {
		deliver(t, b, "bob", fmt.Appendf(nil, "Subject: %d\r\n\r\nsame body\r\n", i%2))
	}
	m := open(t, b, "bob")
	first := m.Messages()
	seen := map[string]bool{}
	for _, msg := range first {
		if !validUID(msg.UID) {
			t.Errorf("invalid UID %q", msg.UID)
		}
		if seen[msg.UID] {
			t.Errorf("duplicate UID %q", msg.UID)
		}
		seen[msg.UID] = true
	}
	m.Close()
	m = open(t, b, "bob")
	for i, msg := range m.Messages() {
		if msg.UID != first[i].UID {
			t.Errorf("message %d: UID %q after reopen, was %q", i+1, msg.UID, first[i].UID)
		}
	}
	// Deleting some keeps the others' UIDs and never reuses one.
	if err := m.Commit([]int{0, 5}); err != nil {
		t.Fatal(err)
	}
	m.Close()
	deliver(t, b, "bob", []byte("Subject: 0\r\n\r\nsame body\r\n"))
	m = open(t, b, "bob")
	msgs := m.Messages()
	if len(msgs) != 19 {
		t.Fatalf("%d messages, want 19", len(msgs))
	}
	want := append(append([]store.Message{}, first[1:5]...), first[6:]...)
	for i, w := range want {
		if msgs[i].UID != w.UID {
			t.Errorf("message %d: UID %q, want %q", i+1, msgs[i].UID, w.UID)
		}
	}
	if newest := msgs[18].UID; seen[newest] {
		t.Errorf("new message reuses UID %q", newest)
	}
}

func testLock(t *testing.T, b Backend) {
	m := open(t, b, "carol")
	if _, err := b.Open(context.Background(), "carol"); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	// Delivery goes on while the maildrop is locked.
	deliver(t, b, "carol", []byte("Subject: while locked\r\n\r\n"))
	m.Close()
	m2 := open(t, b, "carol")
	if n := len(m2.Messages()); n != 1 {
		t.Fatalf("%d messages after reopen, want 1", n)
	}
}

func testSnapshot(t *testing.T, b Backend) {
	deliver(t, b, "dave", []byte("one\r\n"))
	m := open(t, b, "dave")
	deliver(t, b, "dave", []byte("two\r\n"))
	checkContents(t, m, [][]byte{[]byte("one\r\n")})
	m.Close()
	checkContents(t, open(t, b, "dave"), [][]byte{[]byte("one\r\n"), []byte("two\r\n")})
}

func testCommit(t *testing.T, b Backend) {
	var msgs [][]byte
	for i := range 5 {
		msg := fmt.Appendf(nil, "Subject: %d\r\n\r\n", i)
		msgs = append(msgs, msg)
		deliver(t, b, "erin", msg)
	}
	m := open(t, b, "erin")
	if err := m.Commit([]int{1, 3}); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	m.Close()
	checkContents(t, open(t, b, "erin"), [][]byte{msgs[0], msgs[2], msgs[4]})
}

func testCloseDeletesNothing(t *testing.T, b Backend) {
	deliver(t, b, "frank", []byte("keep me\r\n"))
	m := open(t, b, "frank")
	m.Close()
	checkContents(t, open(t, b, "frank"), [][]byte{[]byte("keep me\r\n")})
}

func testConcurrentDelivery(t *testing.T, b Backend) {
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- b.Deliver(context.Background(), "gina", bytes.NewReader(fmt.Appendf(nil, "msg %d\r\n", i)))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	m := open(t, b, "gina")
	got := map[string]bool{}
	for i := range m.Messages() {
		got[string(read(t, m, i))] = true
	}
	for i := range n {
		if !got[fmt.Sprintf("msg %d\r\n", i)] {
			t.Errorf("message %d missing", i)
		}
	}
}

func testBadUsers(t *testing.T, b Backend) {
	for _, name := range []string{"", "..", ".", "../etc", "a/b", ".hidden", "nul\x00"} {
		if m, err := b.Open(context.Background(), name); !errors.Is(err, store.ErrBadUser) {
			if err == nil {
				m.Close()
			}
			t.Errorf("Open(%q): %v, want ErrBadUser", name, err)
		}
		if err := b.Deliver(context.Background(), name, bytes.NewReader([]byte("x\r\n"))); !errors.Is(err, store.ErrBadUser) {
			t.Errorf("Deliver(%q): %v, want ErrBadUser", name, err)
		}
	}
}

func testSeparate(t *testing.T, b Backend) {
	deliver(t, b, "hal", []byte("for hal\r\n"))
	deliver(t, b, "ivy", []byte("for ivy\r\n"))
	hal := open(t, b, "hal")
	ivy := open(t, b, "ivy") // a different user's lock does not conflict
	checkContents(t, hal, [][]byte{[]byte("for hal\r\n")})
	checkContents(t, ivy, [][]byte{[]byte("for ivy\r\n")})
}

func testLarge(t *testing.T, b Backend) {
	// 8 MiB of random lines, some of them very long, with LF line ends.
	rng := rand.New(rand.NewPCG(1, 2))
	var msg bytes.Buffer
	for msg.Len() < 8<<20 {
		n := rng.IntN(200)
		if rng.IntN(50) == 0 {
			n = 1 << 20
		}
		for range n {
			msg.WriteByte(byte(' ' + rng.IntN(95)))
		}
		msg.WriteByte('\n')
	}
	deliver(t, b, "jo", msg.Bytes())
	checkContents(t, open(t, b, "jo"), [][]byte{msg.Bytes()})
}
