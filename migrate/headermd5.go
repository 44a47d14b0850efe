package migrate

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"io"
)

// HeaderMD5 is Dovecot's %m UIDL of a message: the MD5, in lower-case hex,
// of the header values that its mbox storage hashes with mbox_md5 = apop3d
// (the default; lib-storage/index/mbox/mbox-md5-apop3d.c of Dovecot 2.3),
// read as its header parser (lib-mail/message-header-parser.c) gives them:
//
//   - the header ends at the first empty line (LF or CRLF);
//   - a line starting with a space or tab continues the header above it,
//     and its value is the whole line; otherwise the name is what comes
//     before the first ":" (white space before the ":" dropped; a line
//     without ":" has no name) and the value what follows it, less one
//     space or tab;
//   - a value never holds its line end (LF, or CR LF);
//   - each line of these headers is hashed, by case-insensitive name:
//     Delivered-To and X-Delivery-ID always, the first Received header
//     (every line of it), and Date and Message-ID only before any Received
//     line has ended.
//
// Dovecot computes %m only for mbox (its Maildir storage has no header MD5
// and refuses pop3_uidl_format = %m); a Maildir made from such an mbox,
// one message a file with its headers as they were, gives the UIDLs that
// mbox did. It reads r up to the end of the header, holding no more than
// 64 KiB of it.
func HeaderMD5(r io.Reader) (string, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	h := md5.New()
	var (
		name         []byte // of the header the current line belongs to
		inHeader     bool   // a header line was read (a continuation may follow)
		seenReceived bool
	)
	for {
		// The first piece of a line: at most the reader's buffer.
		piece, err := br.ReadSlice('\n')
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
			return "", err
		}
		if len(piece) == 0 {
			break // the end of the message
		}
		whole := err == nil // the piece ends the line
		if whole && (len(piece) == 1 || len(piece) == 2 && piece[0] == '\r') {
			break // the empty line ends the header
		}
		value := piece
		if inHeader && (piece[0] == ' ' || piece[0] == '\t') {
			// A continuation line: the name stays, the value is all of it.
		} else if colon := bytes.IndexByte(piece, ':'); colon < 0 || colon > 1000 {
			name = nil
		} else {
			name = append(name[:0], bytes.TrimRight(piece[:colon], " \t")...)
			value = piece[colon+1:]
			if len(value) > 0 && (value[0] == ' ' || value[0] == '\t') {
				value = value[1:]
			}
		}
		inHeader = true
		hash := false
		received := equalFold(name, "Received")
		switch {
		case equalFold(name, "Delivered-To"), equalFold(name, "X-Delivery-ID"):
			hash = true
		case received, equalFold(name, "Date"), equalFold(name, "Message-ID"):
			hash = !seenReceived
		}
		// The rest of a long line comes in further pieces. A CR at the
		// end of a piece is held back until the next shows whether it
		// is the line end's.
		cr := false
		for {
			if whole {
				value = bytes.TrimSuffix(value, []byte("\n"))
				if len(value) > 0 && value[len(value)-1] == '\r' {
					value = value[:len(value)-1]
				} else if cr && len(value) == 0 {
					cr = false // the held CR was the line end's
				}
			}
			if hash {
				if cr {
					h.Write([]byte("\r"))
				}
				cr = !whole && len(value) > 0 && value[len(value)-1] == '\r'
				if cr {
					value = value[:len(value)-1]
				}
				h.Write(value)
			}
			if whole || errors.Is(err, io.EOF) {
				break
			}
			value, err = br.ReadSlice('\n')
			if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
				return "", err
			}
			whole = err == nil
		}
		if hash && cr {
			h.Write([]byte("\r")) // a CR at the very end of the message
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if received && !seenReceived {
			// The first Received header ends with the line that the
			// next does not continue.
			next, perr := br.Peek(1)
			seenReceived = perr != nil || next[0] != ' ' && next[0] != '\t'
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func equalFold(b []byte, s string) bool { return len(b) == len(s) && bytes.EqualFold(b, []byte(s)) }
