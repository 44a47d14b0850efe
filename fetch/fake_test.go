package fetch

import (
	"testing"

	"github.com/pouchmail/pouch/internal/popscript"
)

// fakeServer is a scripted POP3 server (see package popscript).
type fakeServer = popscript.Server

func newFake(t *testing.T, script string) *fakeServer { return popscript.New(t, script) }
