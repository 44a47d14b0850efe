package server

import (
	"io"
	"strings"
	"testing"
)

func TestTopReader(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		n    int
		want string
	}{
		{"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n", 0, "A: 1\r\nB: 2\r\n\r\n"},
		{"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n", 2, "A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"},
		{"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n", 9, "A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n"},
		{"A: 1\r\n\r\n\r\n\r\nx\r\n", 2, "A: 1\r\n\r\n\r\n\r\n"},
		{"only: header\r\n", 0, "only: header\r\n"},
		{"\r\nbody first\r\nb2\r\n", 1, "\r\nbody first\r\n"},
		{"A: \r\r\n\r\nx\r\n", 0, "A: \r\r\n\r\n"},
		{"", 5, ""},
	} {
		for _, size := range []int{1, 2, 3, 7, 4096} {
			got, err := io.ReadAll(&chunkReader{r: newTopReader(strings.NewReader(tc.msg), tc.n), size: size})
			if err != nil || string(got) != tc.want {
				t.Errorf("TOP %d of %q (reads of %d) = %q, %v; want %q", tc.n, tc.msg, size, got, err, tc.want)
			}
		}
	}
}

// chunkReader reads at most size octets at a time.
type chunkReader struct {
	r    io.Reader
	size int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(p) > c.size {
		p = p[:c.size]
	}
	return c.r.Read(p)
}
