package pop3_test

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pouchmail/pouch/pop3"
)

// readLines reads lines with limit max until io.EOF, recording each line or
// error.
func readLines(r *pop3.Reader, max int) []string {
	var out []string
	for {
		line, err := r.ReadLine(max)
		switch {
		case err == io.EOF:
			return out
		case err != nil:
			out = append(out, "error: "+err.Error())
			if err == io.ErrUnexpectedEOF {
				return out
			}
		default:
			out = append(out, string(line))
		}
	}
}

func TestReadLine(t *testing.T) {
	long := strings.Repeat("a", 5000)
	tests := []struct {
		name, in string
		max      int
		want     []string
	}{
		{"CRLF", "USER mrose\r\nPASS secret\r\n", 512, []string{"USER mrose", "PASS secret"}},
		{"LF only", "STAT\nQUIT\n", 512, []string{"STAT", "QUIT"}},
		{"empty lines", "\r\n\n", 512, []string{"", ""}},
		{"exactly max", "abc\r\nd\r\n", 5, []string{"abc", "d"}},
		{"max plus one", "abcd\r\nd\r\n", 5, []string{"error: pop3: line too long", "d"}},
		{"exactly max LF", "abcd\nd\n", 5, []string{"abcd", "d"}},
		{"long line within max", long + "\r\nx\r\n", 5002, []string{long, "x"}},
		{"long line over max", long + "\r\nx\r\n", 5001, []string{"error: pop3: line too long", "x"}},
		{"CR at buffer boundary", strings.Repeat("b", 4095) + "\r\nx\r\n", 5000, []string{strings.Repeat("b", 4095), "x"}},
		{"NUL", "a\x00b\r\nx\r\n", 512, []string{"error: pop3: bad line", "x"}},
		{"bare CR", "a\rb\r\nx\r\n", 512, []string{"error: pop3: bad line", "x"}},
		{"CR CR LF", "a\r\r\nx\r\n", 512, []string{"error: pop3: bad line", "x"}},
		{"trailing CR", "a\r", 512, []string{"error: unexpected EOF"}},
		{"partial line", "a\r\nb", 512, []string{"a", "error: unexpected EOF"}},
		{"long partial line", "a\r\n" + long, 10, []string{"a", "error: unexpected EOF"}},
		{"nothing", "", 512, nil},
	}
	for _, tt := range tests {
		for _, oneByte := range []bool{false, true} {
			var src io.Reader = strings.NewReader(tt.in)
			if oneByte {
				src = iotest.OneByteReader(src)
			}
			got := readLines(pop3.NewReader(src), tt.max)
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("%s (1-byte source %v): got %q, want %q", tt.name, oneByte, got, tt.want)
			}
		}
	}
}

// repeatReader returns c forever.
type repeatReader byte

func (c repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(c)
	}
	return len(p), nil
}

func TestReadLineDiscardsBounded(t *testing.T) {
	const size = 10 << 20
	src := io.MultiReader(io.LimitReader(repeatReader('a'), size), strings.NewReader("\r\nNOOP\r\n"))
	r := pop3.NewReader(src)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := r.ReadLine(255)
	runtime.ReadMemStats(&after)
	if err != pop3.ErrLineTooLong {
		t.Fatalf("ReadLine = %v, want ErrLineTooLong", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<10 {
		t.Errorf("discarding a %d-octet line allocated %d octets", size, alloc)
	}
	if line, err := r.ReadLine(255); string(line) != "NOOP" || err != nil {
		t.Errorf("next line = %q, %v; want NOOP", line, err)
	}
}

func TestReadLineError(t *testing.T) {
	errBoom := errors.New("boom")
	r := pop3.NewReader(io.MultiReader(strings.NewReader("ab"), iotest.ErrReader(errBoom)))
	if _, err := r.ReadLine(512); err != errBoom {
		t.Errorf("ReadLine = %v, want %v", err, errBoom)
	}
}

func TestReadReply(t *testing.T) {
	tests := []struct {
		line string
		want pop3.Reply
	}{
		// RFC 1939 §10.
		{"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>",
			pop3.Reply{OK: true, Text: "POP3 server ready <1896.697170952@dbc.mtview.ca.us>"}},
		{"+OK 2 320", pop3.Reply{OK: true, Text: "2 320"}},
		{"+OK", pop3.Reply{OK: true}},
		{"+OK ", pop3.Reply{OK: true}},
		{"-ERR", pop3.Reply{}},
		{"-ERR no such message", pop3.Reply{Text: "no such message"}},
		// RFC 2449 §8.
		{"-ERR [IN-USE] Do you have another POP session running?",
			pop3.Reply{Code: pop3.CodeInUse, Text: "Do you have another POP session running?"}},
		{"-ERR [LOGIN-DELAY] wait", pop3.Reply{Code: pop3.CodeLoginDelay, Text: "wait"}},
		{"-ERR [SYS/TEMP] try later", pop3.Reply{Code: pop3.CodeSysTemp, Text: "try later"}},
		{"-ERR [sys/perm] gone", pop3.Reply{Code: pop3.CodeSysPerm, Text: "gone"}},
		{"-ERR [AUTH]", pop3.Reply{Code: pop3.CodeAuth}},
		{"-ERR [AUTH]bad", pop3.Reply{Code: pop3.CodeAuth, Text: "bad"}},
		{"+OK [UTF8] on", pop3.Reply{OK: true, Code: pop3.CodeUTF8, Text: "on"}},
		{"-ERR [SYS/TEMP/DISK/FULL] x", pop3.Reply{Code: "SYS/TEMP/DISK/FULL", Text: "x"}},
		// Malformed codes are text.
		{"-ERR [] x", pop3.Reply{Text: "[] x"}},
		{"-ERR [IN-USE x", pop3.Reply{Text: "[IN-USE x"}},
		{"-ERR [IN USE] x", pop3.Reply{Text: "[IN USE] x"}},
		{"-ERR [/SYS] x", pop3.Reply{Text: "[/SYS] x"}},
		{"-ERR [SYS/] x", pop3.Reply{Text: "[SYS/] x"}},
		{"-ERR [SYS//TEMP] x", pop3.Reply{Text: "[SYS//TEMP] x"}},
		{"-ERR  [IN-USE] x", pop3.Reply{Text: " [IN-USE] x"}},
		// RFC 5034 §4.
		{"+ PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+",
			pop3.Reply{Continuation: true, Text: "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"}},
		{"+ ", pop3.Reply{Continuation: true}},
		{"+", pop3.Reply{Continuation: true}},
	}
	for _, tt := range tests {
		r := pop3.NewReader(strings.NewReader(tt.line + "\r\n"))
		got, err := r.ReadReply(512)
		if err != nil || got != tt.want {
			t.Errorf("ReadReply(%q) = %+v, %v; want %+v", tt.line, got, err, tt.want)
		}
	}
	for _, line := range []string{"", "+OKAY", "-ERROR", "+ok", "* OK", "OK", "+\tx", "-", "+OK\tx"} {
		r := pop3.NewReader(strings.NewReader(line + "\r\n"))
		if got, err := r.ReadReply(512); !errors.Is(err, pop3.ErrProtocol) {
			t.Errorf("ReadReply(%q) = %+v, %v; want ErrProtocol", line, got, err)
		}
	}
	r := pop3.NewReader(strings.NewReader("+OK " + strings.Repeat("x", 600) + "\r\n"))
	if _, err := r.ReadReply(512); err != pop3.ErrLineTooLong {
		t.Errorf("ReadReply of a long line = %v, want ErrLineTooLong", err)
	}
}

func TestReplyErr(t *testing.T) {
	tests := []struct {
		reply pop3.Reply
		err   string
	}{
		{pop3.Reply{OK: true, Text: "x"}, ""},
		{pop3.Reply{Continuation: true}, ""},
		{pop3.Reply{}, "pop3: -ERR"},
		{pop3.Reply{Text: "no such message"}, "pop3: -ERR no such message"},
		{pop3.Reply{Code: pop3.CodeInUse}, "pop3: -ERR [IN-USE]"},
		{pop3.Reply{Code: pop3.CodeInUse, Text: "locked"}, "pop3: -ERR [IN-USE] locked"},
	}
	for _, tt := range tests {
		err := tt.reply.Err()
		if tt.err == "" {
			if err != nil {
				t.Errorf("%+v.Err() = %v, want nil", tt.reply, err)
			}
			continue
		}
		var perr *pop3.Error
		if !errors.As(err, &perr) || perr.Code != tt.reply.Code || perr.Text != tt.reply.Text || err.Error() != tt.err {
			t.Errorf("%+v.Err() = %v, want %q", tt.reply, err, tt.err)
		}
	}
}

// TestBufferedDiscard follows a pipelined STLS (RFC 2595 §4).
func TestBufferedDiscard(t *testing.T) {
	r := pop3.NewReader(strings.NewReader("STLS\r\nUSER evil\r\n"))
	if line, err := r.ReadLine(255); string(line) != "STLS" || err != nil {
		t.Fatalf("ReadLine = %q, %v", line, err)
	}
	if n := r.Buffered(); n != len("USER evil\r\n") {
		t.Errorf("Buffered = %d, want %d", n, len("USER evil\r\n"))
	}
	r.Discard()
	if n := r.Buffered(); n != 0 {
		t.Errorf("Buffered after Discard = %d", n)
	}
	if line, err := r.ReadLine(255); err != io.EOF {
		t.Errorf("ReadLine after Discard = %q, %v; want EOF", line, err)
	}
}

// TestPipelinedResponses reads a multi-line reply and the replies around it.
func TestPipelinedResponses(t *testing.T) {
	wire := "+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n+OK 120 octets\r\n..x\r\n.\r\n-ERR [SYS/TEMP] bye\r\n"
	r := pop3.NewReader(iotest.HalfReader(strings.NewReader(wire)))
	var got []string
	for range 2 {
		reply, err := r.ReadReply(512)
		if err != nil || !reply.OK {
			t.Fatalf("ReadReply = %+v, %v", reply, err)
		}
		body, err := io.ReadAll(r.DotReader())
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(body))
	}
	reply, err := r.ReadReply(512)
	if err != nil || reply.Code != pop3.CodeSysTemp {
		t.Fatalf("ReadReply = %+v, %v", reply, err)
	}
	if want := []string{"1 120\r\n2 200\r\n", ".x\r\n"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("bodies %q, want %q", got, want)
	}
}

func FuzzReadLine(f *testing.F) {
	f.Add([]byte("USER mrose\r\nPASS secret\r\n"), uint16(255))
	f.Add([]byte("APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n"), uint16(47))
	f.Add([]byte("a\x00\r\nb\rc\nd"), uint16(3))
	f.Fuzz(func(t *testing.T, in []byte, max uint16) {
		r := pop3.NewReader(bytes.NewReader(in))
		for range len(in) + 1 {
			line, err := r.ReadLine(int(max))
			switch err {
			case nil:
				if len(line)+1 > int(max) {
					t.Fatalf("line of %d octets with max %d", len(line), max)
				}
				if bytes.ContainsAny(line, "\r\x00") || bytes.IndexByte(line, '\n') >= 0 {
					t.Fatalf("bad line %q", line)
				}
			case pop3.ErrLineTooLong, pop3.ErrBadLine:
			case io.EOF, io.ErrUnexpectedEOF:
				if r.Buffered() != 0 {
					t.Fatalf("%v with %d octets buffered", err, r.Buffered())
				}
				return
			default:
				t.Fatalf("error %v", err)
			}
		}
		t.Fatalf("no EOF after %d lines", len(in)+1)
	})
}
