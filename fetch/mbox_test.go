package fetch

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// mboxMessages splits an mboxrd file into message bodies.
func mboxMessages(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	var cur *strings.Builder
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "From ") {
			if cur != nil {
				out = append(out, strings.TrimSuffix(cur.String(), "\n"))
			}
			cur = &strings.Builder{}
			continue
		}
		if cur == nil {
			t.Fatalf("mbox does not start with From: %q", line)
		}
		if strings.HasPrefix(strings.TrimLeft(line, ">"), "From ") {
			line = line[1:]
		}
		cur.WriteString(line + "\n")
	}
	if cur != nil {
		out = append(out, strings.TrimSuffix(cur.String(), "\n"))
	}
	return out
}

// A kill in the middle of an mbox append leaves nothing visible after the
// next run: the mbox is cut back to its size before the append.
func TestCrashMidMboxAppend(t *testing.T) {
	crashMbox(t, "fetch.mbox.mid-append")
}

// TestCrashMboxAtEveryPoint kills the client at each point of the
// exactly-once order that an mbox destination passes (it stores messages
// by appending, then fsyncs the mbox before the journal records them).
func TestCrashMboxAtEveryPoint(t *testing.T) {
	for _, point := range crashPoints {
		if strings.HasPrefix(point, "maildir.") {
			continue
		}
		t.Run(point, func(t *testing.T) { crashMbox(t, point) })
	}
}

// crashMbox kills the client at point while it appends to an mbox, then
// lets a clean run finish: each message must be in the mbox exactly once,
// after what was there before, and, with the default policy, gone from the
// server.
func crashMbox(t *testing.T, point string) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprint("keep=", keep), func(t *testing.T) {
			p := newPouch(t)
			msgs := testMessages(6)
			p.deliver(t, msgs...)
			a := testAccount(t, p.addr)
			a.KeepForever = keep
			a.Window = 3
			box := filepath.Join(t.TempDir(), "mbox")
			os.WriteFile(box, []byte("From x Thu Jan  1 00:00:00 1970\nearlier\n\n"), 0o600)
			a.To = "mbox:" + box
			if err := child(t, a, point).Wait(); !killed(err) {
				t.Fatalf("child was not killed at %s: %v", point, err)
			}
			finish(t, a)
			got := mboxMessages(t, box)
			want := append([]string{"earlier\n"}, msgs...)
			if len(got) != len(want) {
				t.Fatalf("mbox has %d messages, want %d: %q", len(got), len(want), got)
			}
			seen := map[string]int{}
			for _, g := range got {
				seen[g]++
			}
			for _, w := range want {
				if seen[w] != 1 {
					t.Fatalf("message %q stored %d times", w, seen[w])
				}
			}
			if got[0] != want[0] {
				t.Fatalf("the mbox starts with %q", got[0])
			}
			n := 0
			if keep {
				n = len(msgs)
			}
			if c := p.count(t); c != n {
				t.Fatalf("%d messages on the server, want %d", c, n)
			}
		})
	}
}

func TestFromEscaperLinear(t *testing.T) {
	var b strings.Builder
	bw := bufio.NewWriter(&b)
	e := &fromEscaper{w: bw, bol: true}
	long := strings.Repeat(">", 100000)
	start := time.Now()
	e.Write([]byte(long + "From x\n>>From y\n>Fro\nFrom"))
	e.finish()
	bw.Flush()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %v", d)
	}
	if want := ">" + long + "From x\n>>>From y\n>Fro\nFrom\n\n"; b.String() != want {
		t.Fatalf("got %q", b.String()[len(long)-5:])
	}
	for in, want := range map[string]string{"From ": ">From \n\n", ">>F": ">>F\n\n", "a\nFrom b": "a\n>From b\n\n", ">": ">\n\n", ">From": ">From\n\n"} {
		var b strings.Builder
		bw := bufio.NewWriter(&b)
		e := &fromEscaper{w: bw, bol: true}
		for i := range in { // byte by byte
			e.Write([]byte{in[i]})
		}
		e.finish()
		bw.Flush()
		if b.String() != want {
			t.Errorf("%q: got %q want %q", in, b.String(), want)
		}
	}
}

// A failed fsync of an mbox is sticky: the next Sync fails too, and so
// does the next Deliver.
func TestMboxSyncErrorSticky(t *testing.T) {
	b := &mbox{path: filepath.Join(t.TempDir(), "mbox"), fsync: func(*os.File) error { return syscall.EIO }}
	defer b.Close()
	if err := b.Deliver(Msg{}, strings.NewReader("x\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(); err == nil {
		t.Fatal("mbox sync succeeded")
	}
	b.fsync = (*os.File).Sync
	if err := b.Sync(); err == nil {
		t.Fatal("mbox: second sync after a failure succeeded")
	}
	if err := b.Deliver(Msg{}, strings.NewReader("y\r\n")); err == nil {
		t.Fatal("mbox: deliver after a failed sync succeeded")
	}
}
