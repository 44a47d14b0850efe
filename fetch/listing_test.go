package fetch

import (
	"errors"
	"testing"

	"github.com/pouchmail/pouch/pop3"
)

// Message numbers are implicit while they run 1, 2, 3; gaps and sizes of
// 4 GiB and more are kept; numbers that do not ascend are a protocol error.
func TestListing(t *testing.T) {
	var l listing
	for n := 1; n <= 70000; n++ {
		if err := l.add(n, int64(n)); err != nil {
			t.Fatal(err)
		}
	}
	if l.nums.len() != 0 {
		t.Fatal("numbers 1..n stored")
	}
	if err := l.add(70005, 5<<30); err != nil {
		t.Fatal(err)
	}
	if l.len() != 70001 || l.num(69999) != 70000 || l.num(70000) != 70005 || l.size(70000) != 5<<30 || l.size(12) != 13 {
		t.Fatalf("len %d, num %d %d, size %d", l.len(), l.num(69999), l.num(70000), l.size(70000))
	}
	for _, n := range []int{1, 65537, 70000, 70005} {
		if i, ok := l.find(n); !ok || l.num(i) != uint32(n) {
			t.Fatalf("find %d: %d %v", n, i, ok)
		}
	}
	for _, n := range []int{0, 70001, 70006} {
		if _, ok := l.find(n); ok {
			t.Fatalf("found %d", n)
		}
	}
	l.setID(70000, 7)
	if l.id(70000) != 7 || l.id(0) != 0 {
		t.Fatal("ids")
	}
	if err := l.add(70005, 1); !errors.Is(err, pop3.ErrProtocol) {
		t.Fatalf("repeated number: %v", err)
	}
	var g listing
	if g.add(2, 1) != nil || g.num(0) != 2 {
		t.Fatal("a first number other than 1")
	}
}
