package fetch

import (
	"fmt"
	"math"
	"sort"

	"github.com/pouchmail/pouch/pop3"
)

const chunkBits = 16

// chunks is an append-only list kept in blocks of 64 Ki entries, so that it
// grows without copying what it holds (a slice grown by append briefly holds
// its old and new arrays at once).
type chunks[T any] struct {
	b [][]T
	n int
}

func (c *chunks[T]) add(v T) {
	if c.n>>chunkBits == len(c.b) {
		c.b = append(c.b, make([]T, 0, 1<<chunkBits))
	}
	k := len(c.b) - 1
	c.b[k] = append(c.b[k], v)
	c.n++
}

func (c *chunks[T]) at(i int) *T { return &c.b[i>>chunkBits][i&(1<<chunkBits-1)] }

func (c *chunks[T]) len() int { return c.n }

// each calls fn for every entry in order.
func (c *chunks[T]) each(fn func(v T)) {
	for _, b := range c.b {
		for _, v := range b {
			fn(v)
		}
	}
}

// listing is a session's LIST and UIDL: per message, 4 octets of size,
// 4 of journal entry, and 4 of message number only when the numbers are not
// 1, 2, 3 and so on. Messages are indexed from 0 in the order LIST gave
// them, which must be ascending.
type listing struct {
	sizes chunks[uint32]
	big   map[int]int64 // sizes of 4 GiB and more, by index
	ids   chunks[ref]   // 0: no UIDL; badID: an invalid one
	nums  chunks[uint32]
	last  uint32
}

const badID = ^ref(0)

// add appends LIST's line for message num.
func (l *listing) add(num int, size int64) error {
	n := uint32(num)
	if n <= l.last {
		return fmt.Errorf("%w: LIST names message %d after %d (numbers must ascend)", pop3.ErrProtocol, n, l.last)
	}
	i := l.sizes.len()
	if n != uint32(i+1) && l.nums.len() == 0 {
		for k := range i {
			l.nums.add(uint32(k + 1))
		}
	}
	if l.nums.len() > 0 || n != uint32(i+1) {
		l.nums.add(n)
	}
	if size >= math.MaxUint32 {
		if l.big == nil {
			l.big = map[int]int64{}
		}
		l.big[i] = size
		size = math.MaxUint32
	}
	l.sizes.add(uint32(size))
	l.ids.add(0)
	l.last = n
	return nil
}

func (l *listing) len() int { return l.sizes.len() }

func (l *listing) num(i int) uint32 {
	if l.nums.len() == 0 {
		return uint32(i + 1)
	}
	return *l.nums.at(i)
}

func (l *listing) size(i int) int64 {
	s := *l.sizes.at(i)
	if s == math.MaxUint32 {
		return l.big[i]
	}
	return int64(s)
}

func (l *listing) id(i int) ref { return *l.ids.at(i) }

func (l *listing) setID(i int, r ref) { *l.ids.at(i) = r }

// find returns the index of message num.
func (l *listing) find(num int) (int, bool) {
	n := l.len()
	if l.nums.len() == 0 {
		return num - 1, num >= 1 && num <= n
	}
	i := sort.Search(n, func(i int) bool { return l.num(i) >= uint32(num) })
	return i, i < n && l.num(i) == uint32(num)
}
