package store

import (
	"context"
	"io"
	"strings"
	"testing"
)

func TestContextReader(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := ContextReader(ctx, strings.NewReader("abcdef"))
	b := make([]byte, 3)
	if n, err := r.Read(b); n != 3 || err != nil {
		t.Fatalf("%d %v", n, err)
	}
	cancel()
	if _, err := io.ReadAll(r); err != context.Canceled {
		t.Fatalf("after cancel: %v", err)
	}
}
