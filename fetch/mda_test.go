package fetch

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An MDA pipeline is killed as a whole before it sees the end of a broken
// message, and runs in its own process group.
func TestMDAPipelineDroppedMidMessage(t *testing.T) {
	a, _ := fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: .
		C: UIDL
		S: +OK
		S: 1 a
		S: .
		C: RETR 1
		S: +OK
		`+strings.Repeat("S: start of a long message\n", 5000)+`
		S! half a li
		CLOSE`)
	out := filepath.Join(t.TempDir(), "out")
	a.To = "mda:cat | cat > " + out
	if _, err := Run(context.Background(), a, nil); err == nil || !strings.Contains(err.Error(), "mid-message") {
		t.Fatalf("got %v", err)
	}
	time.Sleep(100 * time.Millisecond)
	if b, _ := os.ReadFile(out); len(b) != 0 {
		t.Fatalf("partial message delivered: %d octets", len(b))
	}
}

func TestMDAOwnProcessGroup(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	d := &mda{cmd: "cat >/dev/null; cut -d' ' -f5 /proc/$$/stat > " + out}
	if err := d.Deliver(Msg{}, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	pg, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pg == syscall.Getpgrp() {
		t.Fatalf("MDA process group %q, ours %d", b, syscall.Getpgrp())
	}
}

// Messages larger than the in-memory limit go through a temporary file.
func TestMDALargeMessage(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	d := &mda{cmd: "cat > " + out}
	body := strings.Repeat("0123456789abcdef\r\n", (mdaMemMax/18)+1000)
	if err := d.Deliver(Msg{}, strings.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(out)
	if string(b) != strings.ReplaceAll(body, "\r\n", "\n") {
		t.Fatalf("got %d octets", len(b))
	}
	// An MDA that stops reading early has not stored the message.
	d = &mda{cmd: "head -c 10 >/dev/null"}
	if err := d.Deliver(Msg{}, strings.NewReader(body)); err == nil {
		t.Fatal("early exit accepted")
	}
}

// TestCrashMDAAtEveryPoint: see crashHandOver.
func TestCrashMDAAtEveryPoint(t *testing.T) {
	crashHandOver(t, func(t *testing.T, a *Account) func() []string {
		out := t.TempDir()
		a.To = `mda:f=$(mktemp '` + out + `/m.XXXXXX') && cat > "$f"`
		return func() []string {
			names, err := os.ReadDir(out)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, n := range names {
				b, err := os.ReadFile(filepath.Join(out, n.Name()))
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, string(b))
			}
			return got
		}
	})
}
