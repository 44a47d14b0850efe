package store_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"

	"github.com/pouchmail/pouch/store"
	"github.com/pouchmail/pouch/store/storetest"
)

// readWith reads r with reads of random sizes (1 byte included).
func readWith(r io.Reader, rng *rand.Rand) ([]byte, error) {
	var out []byte
	for {
		p := make([]byte, 1+rng.IntN(64))
		n, err := r.Read(p)
		out = append(out, p[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

func checkCanonical(t *testing.T, msg []byte, rng *rand.Rand) {
	t.Helper()
	want := storetest.Canonical(msg)
	for _, r := range []io.Reader{
		store.NewCanonicalReader(bytes.NewReader(msg)),
		store.NewCanonicalReader(iotest.OneByteReader(bytes.NewReader(msg))),
		store.NewCanonicalReader(iotest.HalfReader(bytes.NewReader(msg))),
	} {
		got, err := readWith(r, rng)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("canonical(%q) = %q, %v; want %q", msg, got, err, want)
		}
	}
	got, err := io.ReadAll(store.NewCanonicalReader(bytes.NewReader(msg)))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("ReadAll canonical(%q) = %q, %v; want %q", msg, got, err, want)
	}
	raw, wire, err := store.CanonicalSize(iotest.HalfReader(bytes.NewReader(msg)))
	if err != nil || raw != int64(len(msg)) || wire != int64(len(want)) {
		t.Fatalf("CanonicalSize(%q) = %d, %d, %v; want %d, %d", msg, raw, wire, err, len(msg), len(want))
	}
}

func TestCanonicalEdges(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for _, s := range []string{"", "\n", "\r", "\r\n", "\n\n", "\r\r\n", "a", "a\nb", "a\r\nb\r\n", "\ra\n", ".\n", "x\r"} {
		checkCanonical(t, []byte(s), rng)
	}
}

func TestCanonicalRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	alphabet := []byte("ab.\r\n\x00")
	for range 2000 {
		msg := make([]byte, rng.IntN(300))
		for i := range msg {
			msg[i] = alphabet[rng.IntN(len(alphabet))]
		}
		checkCanonical(t, msg, rng)
	}
}

func FuzzCanonical(f *testing.F) {
	for _, s := range []string{"", "a\nb", "a\r\nb", "\r", "x\r\n.\r\n"} {
		f.Add([]byte(s), uint64(1))
	}
	f.Fuzz(func(t *testing.T, msg []byte, seed uint64) {
		checkCanonical(t, msg, rand.New(rand.NewPCG(seed, seed)))
	})
}
