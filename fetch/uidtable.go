package fetch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
)

// uidTable maps UIDLs to a few flags, a time and a size, compactly enough
// for maildrops of millions of messages: every entry is one record,
//
//	flags (1 octet) | length (1) | time (4, unix seconds) | size (4) | UIDL
//
// (little-endian; size is the octets plus one, 0 when unknown, and
// 0xFFFFFFFF for a size kept in big), in 1 MiB arena blocks that are filled
// in turn and never moved, and an open-addressing index of refs finds it.
// An entry costs its UIDL plus about 16 octets, where a Go map of strings
// costs about 100. A ref (block
// number and offset, plus one) names an entry for as long as the table
// lives; entries are never removed, only their flags cleared.
type uidTable struct {
	blocks [][]byte
	index  []uint32 // ref, or 0 for an empty slot; len is a power of two
	n      int
	seed   maphash.Seed
	big    map[ref]int64 // sizes of 4 GiB and more
}

// ref names an entry of a uidTable; 0 is none.
type ref uint32

const (
	recHead   = 10
	blockBits = 20
	blockSize = 1 << blockBits
	maxBlocks = 1<<(32-blockBits) - 1 // so that no ref is ^ref(0)
)

// errTableFull is returned when the arena would pass what a ref can name.
var errTableFull = errors.New("more UIDLs than pouch fetch can track (over 4 GiB of them)")

func newUIDTable() *uidTable {
	return &uidTable{index: make([]uint32, 1024), seed: maphash.MakeSeed()}
}

// Len returns the number of entries.
func (t *uidTable) Len() int { return t.n }

// rec returns the record of r, from its flags octet to the end of its block.
func (t *uidTable) rec(r ref) []byte {
	return t.blocks[(r-1)>>blockBits][(r-1)&(blockSize-1):]
}

// slot returns the index slot of uid and its entry, or an empty slot and 0.
func slot[S string | []byte](t *uidTable, uid S, h uint64) (int, ref) {
	mask := len(t.index) - 1
	i := int(h) & mask
	for {
		r := ref(t.index[i])
		if r == 0 || string(t.uidBytes(r)) == string(uid) {
			return i, r
		}
		i = (i + 1) & mask
	}
}

// Find returns the entry for uid, or 0.
func (t *uidTable) Find(uid []byte) ref {
	_, r := slot(t, uid, maphash.Bytes(t.seed, uid))
	return r
}

// FindString is Find for a string.
func (t *uidTable) FindString(uid string) ref {
	_, r := slot(t, uid, maphash.String(t.seed, uid))
	return r
}

// Insert returns the entry for uid, adding it with no flags if it is new.
// uid must be 1 to 255 octets (validUID allows 70).
func (t *uidTable) Insert(uid []byte) (ref, error) {
	return insert(t, uid, maphash.Bytes(t.seed, uid))
}

// InsertString is Insert for a string.
func (t *uidTable) InsertString(uid string) (ref, error) {
	return insert(t, uid, maphash.String(t.seed, uid))
}

func insert[S string | []byte](t *uidTable, uid S, h uint64) (ref, error) {
	if len(uid) == 0 || len(uid) > 255 {
		return 0, fmt.Errorf("UIDL of %d octets", len(uid))
	}
	i, r := slot(t, uid, h)
	if r != 0 {
		return r, nil
	}
	need := recHead + len(uid)
	if len(t.blocks) == 0 || len(t.blocks[len(t.blocks)-1])+need > blockSize {
		if len(t.blocks) == maxBlocks {
			return 0, errTableFull
		}
		t.blocks = append(t.blocks, make([]byte, 0, blockSize))
	}
	b := len(t.blocks) - 1
	blk := t.blocks[b]
	r = ref(b<<blockBits|len(blk)) + 1
	blk = append(blk, 0, byte(len(uid)), 0, 0, 0, 0, 0, 0, 0, 0)
	t.blocks[b] = append(blk, uid...)
	t.index[i] = uint32(r)
	t.n++
	if t.n*4 > len(t.index)*3 {
		t.grow()
	}
	return r, nil
}

func (t *uidTable) grow() {
	old := t.index
	t.index = make([]uint32, 2*len(old))
	mask := len(t.index) - 1
	for _, r := range old {
		if r == 0 {
			continue
		}
		i := int(maphash.Bytes(t.seed, t.uidBytes(ref(r)))) & mask
		for t.index[i] != 0 {
			i = (i + 1) & mask
		}
		t.index[i] = r
	}
}

func (t *uidTable) uidBytes(r ref) []byte {
	rec := t.rec(r)
	return rec[recHead : recHead+int(rec[1])]
}

// UID returns the entry's UIDL.
func (t *uidTable) UID(r ref) string { return string(t.uidBytes(r)) }

// Flags returns the entry's flags.
func (t *uidTable) Flags(r ref) uint8 { return t.rec(r)[0] }

// Has reports whether the entry has every flag in f.
func (t *uidTable) Has(r ref, f uint8) bool { return r != 0 && t.rec(r)[0]&f == f }

// Set sets the flags f of the entry.
func (t *uidTable) Set(r ref, f uint8) { t.rec(r)[0] |= f }

// Clear clears the flags f of the entry.
func (t *uidTable) Clear(r ref, f uint8) { t.rec(r)[0] &^= f }

// Time returns the entry's time (unix seconds).
func (t *uidTable) Time(r ref) int64 {
	return int64(binary.LittleEndian.Uint32(t.rec(r)[2:6]))
}

// SetTime sets the entry's time (unix seconds), clamped to 1970 to 2106.
func (t *uidTable) SetTime(r ref, sec int64) {
	binary.LittleEndian.PutUint32(t.rec(r)[2:6], uint32(min(max(sec, 0), math.MaxUint32)))
}

// Size returns the entry's size in octets, if it is known.
func (t *uidTable) Size(r ref) (int64, bool) {
	switch v := binary.LittleEndian.Uint32(t.rec(r)[6:10]); v {
	case 0:
		return 0, false
	case math.MaxUint32:
		return t.big[r], true
	default:
		return int64(v) - 1, true
	}
}

// SetSize sets the entry's size in octets; a negative size is unknown.
func (t *uidTable) SetSize(r ref, size int64) {
	v := uint32(0)
	switch {
	case size >= math.MaxUint32-1:
		if t.big == nil {
			t.big = map[ref]int64{}
		}
		t.big[r] = size
		v = math.MaxUint32
	case size >= 0:
		v = uint32(size) + 1
	}
	binary.LittleEndian.PutUint32(t.rec(r)[6:10], v)
}

// Each calls fn for every entry, in the order they were added.
func (t *uidTable) Each(fn func(r ref)) {
	for b, blk := range t.blocks {
		for off := 0; off < len(blk); off += recHead + int(blk[off+1]) {
			fn(ref(b<<blockBits|off) + 1)
		}
	}
}
