package pop3_test

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/pop3"
)

func TestCheckArgsName(t *testing.T) {
	name := "firstname.lastname.department@example-company.org"
	for line, ok := range map[string]bool{
		"USER " + name:                                       true,
		"USER " + strings.Repeat("u", 255):                   true,
		"USER " + strings.Repeat("u", 256):                   false,
		"APOP " + name + " c4c9334bac560ecc979e58001b3e22fb": true,
		"APOP " + name + " " + strings.Repeat("0", 41):       false,
	} {
		c, err := pop3.ParseCommand([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.CheckArgsName(0, 255); (err == nil) != ok {
			t.Errorf("CheckArgsName(%.30q...) = %v, want ok %v", line, err, ok)
		}
	}
}

func TestReadCommandLine(t *testing.T) {
	long := strings.Repeat("A", 2000)
	in := "AUTH XOAUTH2 " + long + "\r\n" +
		"auth oauthbearer " + long + "\n" +
		"NOOP " + long + "\r\n" +
		"AUTHX " + long + "\r\n" +
		"AUTH PLAIN " + strings.Repeat("B", 5000) + "\r\n" +
		"A\r\n" +
		"QUIT\r\n" +
		"AU"
	r := pop3.NewReaderSize(strings.NewReader(in), 64)
	for _, want := range []struct {
		line string
		err  error
	}{
		{"AUTH XOAUTH2 " + long, nil},
		{"auth oauthbearer " + long, nil},
		{"", pop3.ErrLineTooLong},
		{"", pop3.ErrLineTooLong},
		{"", pop3.ErrLineTooLong}, // longer than authMax
		{"A", nil},
		{"QUIT", nil},
		{"", io.ErrUnexpectedEOF},
	} {
		line, err := r.ReadCommandLine(255, 4096)
		if string(line) != want.line || !errors.Is(err, want.err) {
			t.Fatalf("ReadCommandLine = %.40q, %v; want %.40q, %v", line, err, want.line, want.err)
		}
	}
	if _, err := r.ReadCommandLine(255, 4096); err != io.EOF {
		t.Errorf("at the end: %v, want io.EOF", err)
	}
	// Without a larger AUTH limit, AUTH lines get the common one.
	r = pop3.NewReader(strings.NewReader("AUTH PLAIN " + long + "\r\n"))
	if _, err := r.ReadCommandLine(255, 255); !errors.Is(err, pop3.ErrLineTooLong) {
		t.Errorf("AUTH line with authMax = max: %v", err)
	}
}

// Choosing the limit never waits for octets past the end of a short line.
func TestReadCommandLineShortLine(t *testing.T) {
	for _, line := range []string{"NOO\n", "AU\r\n", "AUTH\r\n"} {
		pr, pw := io.Pipe()
		go pw.Write([]byte(line)) // and nothing more: the connection stays open
		got := make(chan string, 1)
		go func() {
			l, err := pop3.NewReader(pr).ReadCommandLine(255, 4096)
			got <- string(l) + " " + errString(err)
		}()
		select {
		case g := <-got:
			if want := strings.TrimRight(line, "\r\n") + " <nil>"; g != want {
				t.Errorf("ReadCommandLine(%q) = %q, want %q", line, g, want)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("ReadCommandLine(%q) waits for more input", line)
		}
		pr.Close()
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
