package pop3_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/pouchmail/pouch/pop3"
)

// TestWriterSession writes the server side of the RFC 1939 §10 example.
func TestWriterSession(t *testing.T) {
	var wire bytes.Buffer
	w := pop3.NewWriter(&wire)
	steps := []func() error{
		func() error { return w.OK("POP3 server ready <1896.697170952@dbc.mtview.ca.us>") },
		func() error { return w.OK("mrose's maildrop has 2 messages (320 octets)") },
		func() error { return w.OK("2 320") },
		func() error { return w.OK("2 messages (320 octets)") },
		func() error { return w.Line("1 120") },
		func() error { return w.Line("2 200") },
		func() error { return w.Line(".") },
		func() error { return w.OK("120 octets") },
		func() error {
			dw := w.DotWriter()
			io.WriteString(dw, "Subject: hi\n\n.signature\n")
			return dw.Close()
		},
		func() error { return w.OK("message 1 deleted") },
		func() error { return w.Err("", "no such message") },
		func() error { return w.Err(pop3.CodeInUse, "Do you have another POP session running?") },
		func() error { return w.Err(pop3.CodeSysTemp, "") },
		func() error { return w.Continue("") },
		func() error { return w.Continue("PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+") },
		func() error { return w.OK("") },
		func() error { return w.Err("", "") },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if wire.Len() != 0 {
		t.Errorf("%d octets written before Flush", wire.Len())
	}
	if w.Buffered() == 0 {
		t.Errorf("Buffered = 0 before Flush")
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	want := "+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n" +
		"+OK mrose's maildrop has 2 messages (320 octets)\r\n" +
		"+OK 2 320\r\n" +
		"+OK 2 messages (320 octets)\r\n1 120\r\n2 200\r\n.\r\n" +
		"+OK 120 octets\r\nSubject: hi\r\n\r\n..signature\r\n.\r\n" +
		"+OK message 1 deleted\r\n" +
		"-ERR no such message\r\n" +
		"-ERR [IN-USE] Do you have another POP session running?\r\n" +
		"-ERR [SYS/TEMP]\r\n" +
		"+ \r\n" +
		"+ PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n" +
		"+OK\r\n" +
		"-ERR\r\n"
	if got := wire.String(); got != want {
		t.Errorf("wire:\n%s\nwant:\n%s", got, want)
	}
}

func TestWriteCommand(t *testing.T) {
	var wire bytes.Buffer
	w := pop3.NewWriter(&wire)
	for _, c := range [][]string{{"APOP", "mrose", "c4c9334bac560ecc979e58001b3e22fb"}, {"STAT"}, {"TOP", "1", "10"}} {
		if err := pop3.WriteCommand(w, c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	w.Flush()
	if got, want := wire.String(), "APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\nSTAT\r\nTOP 1 10\r\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestWriterInjection checks that no text can end a line early.
func TestWriterInjection(t *testing.T) {
	var wire bytes.Buffer
	w := pop3.NewWriter(&wire)
	for _, s := range []string{"a\r\n+OK forged", "a\n", "a\r", "a\x00"} {
		for name, write := range map[string]func() error{
			"OK":           func() error { return w.OK(s) },
			"Err text":     func() error { return w.Err("", s) },
			"Err code":     func() error { return w.Err(pop3.Code(s), "x") },
			"Continue":     func() error { return w.Continue(s) },
			"Line":         func() error { return w.Line(s) },
			"Command name": func() error { return pop3.WriteCommand(w, s) },
			"Command arg":  func() error { return pop3.WriteCommand(w, "USER", "a", s) },
		} {
			if err := write(); err != pop3.ErrBadLine {
				t.Errorf("%s(%q) = %v, want ErrBadLine", name, s, err)
			}
		}
	}
	if w.Buffered() != 0 {
		t.Errorf("rejected lines left %d octets buffered", w.Buffered())
	}
}
