// Package store defines the contract between the POP3 server and a mail storage
// backend: a Store hands out exclusive, snapshot-based Maildrops (RFC 1939 §4, §8).
//
// Every backend must pass the conformance suite in store/storetest. The contract:
//
//   - Open takes the maildrop's exclusive lock or fails at once with ErrLocked.
//     A lock never outlives the process that holds it.
//   - A Maildrop is a snapshot: message numbers never change while it is open, and
//     mail delivered meanwhile appears only in the next one.
//   - Each message has a UID (the UIDL): 1–70 octets in 0x21–0x7E, stable for the
//     life of the message and never reused.
//   - Size is the exact number of octets of the message in wire form (see Canonical),
//     known without reading the body.
//   - Bodies stream; nothing holds a whole message in memory.
//   - Deletions are passed to Commit, which the server calls only for QUIT in the
//     TRANSACTION state; Commit removes them in one durable step, and removes
//     nothing else. Closing without Commit removes nothing.
//   - A commit that only removes mail does not need free space, so that a
//     full disk can be freed through POP3; Open does not need it either (what
//     it caches may go unwritten).
package store

import (
	"context"
	"errors"
	"io"
	"strings"
	"unicode/utf8"
)

// Errors a backend returns. The server maps them to response codes.
var (
	// ErrLocked means another session holds the maildrop (RFC 2449 [IN-USE]).
	ErrLocked = errors.New("store: maildrop is locked by another session")
	// ErrNotFound means a message of the snapshot is gone from storage.
	ErrNotFound = errors.New("store: message not found")
	// ErrBadUser means the user name cannot name a maildrop in this backend.
	ErrBadUser = errors.New("store: invalid user name")
)

// Store opens maildrops.
type Store interface {
	// Open locks the user's maildrop and takes a snapshot of it. A maildrop that
	// does not exist yet is opened empty. It fails with ErrLocked at once, without
	// waiting, while another Maildrop of the same user is open.
	Open(ctx context.Context, user string) (Maildrop, error)
}

// Message describes one message of a snapshot.
type Message struct {
	// UID is the unique-id listing of RFC 1939 §7: 1–70 octets in 0x21–0x7E.
	UID string
	// Size is the octet count of the message in wire form (Canonical), before
	// dot-stuffing.
	Size int64
}

// CheckUser refuses, with ErrBadUser, the names that no backend gives a
// maildrop, so that every maildrop can move between them: empty, longer
// than 255 octets, not valid UTF-8, starting with '.', or holding '/',
// '\' or NUL (a Maildir's directory is named by it).
func CheckUser(user string) error {
	if user == "" || len(user) > 255 || strings.HasPrefix(user, ".") || !utf8.ValidString(user) ||
		strings.ContainsAny(user, "/\\\x00") {
		return ErrBadUser
	}
	return nil
}

// ValidUID reports whether uid can be a unique-id listing (RFC 1939 §7):
// 1 to 70 octets in 0x21–0x7E.
func ValidUID(uid string) bool {
	if uid == "" || len(uid) > 70 {
		return false
	}
	for i := 0; i < len(uid); i++ {
		if uid[i] < 0x21 || uid[i] > 0x7e {
			return false
		}
	}
	return true
}

// Maildrop is one session's locked snapshot of a user's mail. It is used by one
// goroutine at a time.
type Maildrop interface {
	// Messages lists the snapshot, oldest first. Index i is message number i+1.
	// The slice must not be modified.
	Messages() []Message
	// Open returns the message at index i in wire form (Canonical). The caller
	// closes it.
	Open(i int) (io.ReadCloser, error)
	// Commit durably removes the messages at the given indexes, and no other
	// file or record, whatever else shares a message's name. It is called at
	// most once, for QUIT in the TRANSACTION state. After it returns nil the
	// removal survives a crash; if the process dies during Commit, the next
	// Open sees either all or none of the removals. A backend may split a
	// commit that its reserved space cannot hold on a full disk into parts,
	// each all or none.
	Commit(deleted []int) error
	// Close releases the lock. It removes nothing.
	Close() error
}

// Leased is implemented by Maildrops whose lock is a lease that can be lost
// while they are open: a node of several sharing one database that could
// not renew its heartbeat, or was paused until another node took the
// maildrop over (store/pg). The server then ends the session; a Commit
// would fail and remove nothing.
type Leased interface {
	// Lost is closed when the lock is lost.
	Lost() <-chan struct{}
}

// Deliverer adds messages to maildrops (the LMTP listener, `pouch deliver`).
type Deliverer interface {
	// Deliver stores the message read from r as the newest message of user's
	// maildrop. When it returns nil the message is durable (file and directory
	// synced); on error nothing of it is visible to any session.
	Deliver(ctx context.Context, user string, r io.Reader) error
}
