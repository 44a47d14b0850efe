package migrate

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// uidList is Dovecot's dovecot-uidlist (lib-storage/index/maildir/
// maildir-uidlist.c of Dovecot 2.3): a header line, then a line for each
// message, oldest first:
//
//	3 V<uidvalidity> N<nextuid> G<mailbox guid> [more]
//	<uid> [<key><value>...] :<file name>
//
// (version 1: "1 <uidvalidity> <nextuid>", then "<uid> <file name>").
// The keys are upper-case letters: P the saved POP3 UIDL (empty: the base
// file name), O the POP3 order, G the message GUID, S and W the physical
// and virtual sizes. A file name is known by its base name (before ":");
// a later line for the same one wins, as in Dovecot.
type uidList struct {
	uidValidity uint32
	recs        map[string]*uidRec
}

type uidRec struct {
	uid uint32
	ext map[byte]string
}

// readUIDList reads the dovecot-uidlist at path; a missing one is nil.
func readUIDList(path string) (*uidList, error) {
	sc, done, err := openList(path)
	if sc == nil {
		return nil, err
	}
	defer done()
	damaged := func(n int, why string) error {
		return fmt.Errorf("%s is damaged at line %d: %s", path, n, why)
	}
	if !sc.Scan() {
		if sc.Err() != nil {
			return nil, sc.Err()
		}
		return nil, nil // empty: Dovecot makes a new one
	}
	l := &uidList{recs: map[string]*uidRec{}}
	head := sc.Text()
	var version int
	switch {
	case strings.HasPrefix(head, "1 "):
		version = 1
		var next uint32
		if _, err := fmt.Sscanf(head[2:], "%d %d", &l.uidValidity, &next); err != nil {
			return nil, damaged(1, "bad version 1 header")
		}
	case strings.HasPrefix(head, "3 "):
		version = 3
		for _, field := range strings.Fields(head[2:]) {
			if field[0] == 'V' {
				v, err := strconv.ParseUint(field[1:], 10, 32)
				if err != nil {
					return nil, damaged(1, "bad UIDVALIDITY")
				}
				l.uidValidity = uint32(v)
			}
		}
	default:
		return nil, damaged(1, "not version 1 or 3")
	}
	if l.uidValidity == 0 {
		return nil, damaged(1, "no UIDVALIDITY")
	}
	var prev uint32
	for n := 2; sc.Scan(); n++ {
		line := sc.Text()
		i := 0
		for i < len(line) && line[i] >= '0' && line[i] <= '9' {
			i++
		}
		uid, err := strconv.ParseUint(line[:i], 10, 32)
		if err != nil || uid == 0 || i == len(line) || line[i] != ' ' {
			return nil, damaged(n, "no UID")
		}
		if uint32(uid) < prev {
			return nil, damaged(n, "UIDs out of order")
		}
		prev = uint32(uid)
		rest := strings.TrimLeft(line[i:], " ")
		rec := &uidRec{uid: uint32(uid)}
		if version == 3 {
			for rest != "" && rest[0] != ':' {
				field, more, _ := strings.Cut(rest, " ")
				if field[0] >= 'A' && field[0] <= 'Z' {
					if rec.ext == nil {
						rec.ext = map[byte]string{}
					}
					rec.ext[field[0]] = field[1:]
				}
				rest = strings.TrimLeft(more, " ")
			}
			rest = strings.TrimPrefix(rest, ":")
		}
		if rest == "" || strings.Contains(rest, "/") {
			return nil, damaged(n, "no file name")
		}
		base, _, _ := strings.Cut(rest, ":")
		l.recs[base] = rec
	}
	return l, sc.Err()
}

// openList opens a list file to read by lines of up to 1 MiB; a missing
// one gives a nil scanner and no error. done closes it.
func openList(path string) (sc *bufio.Scanner, done func(), err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	sc = bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return sc, func() { f.Close() }, nil
}

// sizeList is Courier's courierpop3dsizelist (imap/pop3dserver.c of
// Courier): "/<version> <nextuid> <uidvalidity>", then for each message
// "<file name> <size> <uid>:<uidvalidity>" (version 2) or with ":<utf8>"
// after it (version 3), split at its last two spaces as the name may hold
// spaces. Courier lists a message as "UID<uid>-<uidvalidity>" ("UID<uid>"
// when the UIDVALIDITY is 0), or, for a line with UID 0, by its file name
// with octets outside 0x21–0x7E, "'", "\"" and "+" written "+XX"; and it
// lists the size it recorded.
type sizeList struct {
	recs map[string]courierRec // by base name
}

type courierRec struct {
	uid  string
	size int64
}

// readSizeList reads the courierpop3dsizelist at path; a missing one, or
// one of a version Courier ignores, is nil.
func readSizeList(path string) (*sizeList, error) {
	sc, done, err := openList(path)
	if sc == nil {
		return nil, err
	}
	defer done()
	if !sc.Scan() {
		return nil, sc.Err()
	}
	var version int
	var next, uidv uint64
	if n, _ := fmt.Sscanf(sc.Text(), "/%d %d %d", &version, &next, &uidv); n < 2 || version != 2 && version != 3 {
		return nil, sc.Err() // Courier starts afresh: no UIDL to keep
	}
	l := &sizeList{recs: map[string]courierRec{}}
	for sc.Scan() {
		line := sc.Text()
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		sp2 := strings.LastIndexByte(line[:sp], ' ')
		if sp2 <= 0 {
			continue
		}
		name, sizeText, ids := line[:sp2], line[sp2+1:sp], line[sp+1:]
		size, err1 := strconv.ParseInt(sizeText, 10, 64)
		parts := strings.Split(ids, ":")
		if err1 != nil || len(parts) < 2 {
			continue // Courier skips such lines too
		}
		uid, err2 := strconv.ParseUint(parts[0], 10, 64)
		v, err3 := strconv.ParseUint(parts[1], 10, 64)
		if err2 != nil || err3 != nil {
			continue
		}
		base, _, _ := strings.Cut(name, ":")
		rec := courierRec{size: size}
		switch {
		case uid == 0:
			rec.uid = courierNameUID(base)
		case v == 0:
			rec.uid = fmt.Sprintf("UID%d", uid)
		default:
			rec.uid = fmt.Sprintf("UID%d-%d", uid, v)
		}
		l.recs[base] = rec
	}
	return l, sc.Err()
}

// courierNameUID is Courier's UIDL of a message listed with UID 0.
func courierNameUID(base string) string {
	var b strings.Builder
	for i := 0; i < len(base); i++ {
		c := base[i]
		if c < 0x21 || c > 0x7e || c == '\'' || c == '"' || c == '+' {
			fmt.Fprintf(&b, "+%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}
