package store

import (
	"context"
	"time"
)

// Policy is the retention policy in force for one maildrop. Its zero value
// keeps every message until a client deletes it, and removes deleted messages
// at once.
type Policy struct {
	// Expire removes a message this long after it was delivered, or after it
	// was first retrieved when FromRetrieval is set. Zero never expires
	// anything (RFC 2449 §6.7 "EXPIRE NEVER").
	Expire time.Duration
	// FromRetrieval counts Expire from a message's first retrieval (RETR or
	// TOP in a session that ended with QUIT); messages never retrieved stay.
	FromRetrieval bool
	// DeleteRetrieved is RFC 2449's "EXPIRE 0": every message retrieved with
	// RETR in a session is deleted when the session ends with QUIT.
	DeleteRetrieved bool
	// Window keeps messages deleted by a client, or expired, in a holding
	// area this long before they are purged, so that an operator can
	// restore them. Zero removes them at once.
	Window time.Duration
}

// Hold is a legal hold on a maildrop: while it is set nothing is purged,
// whatever the policy says; deleted messages stay in the holding area.
type Hold struct {
	Set    bool
	Since  time.Time
	Reason string
}

// Removed describes a message that a sweep expired or purged, or that a
// restore brought back.
type Removed struct {
	UID       string
	Size      int64
	Delivered time.Time
	Deleted   time.Time // when it entered the holding area (zero if it never did)
}

// SweepResult lists what one sweep of a maildrop did.
type SweepResult struct {
	// Expired are messages that the policy took out of the maildrop: into
	// the holding area when the policy has a Window, otherwise removed.
	Expired []Removed
	// Purged are messages removed for good from the holding area.
	Purged []Removed
}

// Stats describes a maildrop for an operator.
type Stats struct {
	Messages  int
	Octets    int64 // wire size of all messages
	Oldest    time.Time
	Newest    time.Time
	Retrieved int // messages with a recorded first retrieval
	// Held counts the messages in the holding area (deleted or expired,
	// not yet purged) and their wire size.
	Held          int
	HeldOctets    int64
	OldestDeleted time.Time
	Hold          Hold
}

// Retainer is implemented by backends that carry out retention policies:
// expiry, the holding area for deleted messages, and legal hold.
type Retainer interface {
	// Users lists the maildrops that exist.
	Users(ctx context.Context) ([]string, error)
	// Sweep applies p to user's maildrop as of now: it expires messages and
	// purges the holding area. It takes the maildrop lock and returns
	// ErrLocked, having done nothing, while a session has it open. Under a
	// legal hold it removes nothing.
	Sweep(ctx context.Context, user string, p Policy, now time.Time) (SweepResult, error)
	// Restore puts the messages that entered the holding area at or after
	// since back into the maildrop, with their original UIDs, or with new
	// ones when asNew is set. It returns ErrLocked while a session is open.
	Restore(ctx context.Context, user string, since time.Time, asNew bool) ([]Removed, error)
	// SetHold sets or clears the legal hold on user's maildrop.
	SetHold(ctx context.Context, user string, h Hold) error
	// Hold reports the legal hold on user's maildrop.
	Hold(ctx context.Context, user string) (Hold, error)
	// Stats describes user's maildrop without locking it.
	Stats(ctx context.Context, user string) (Stats, error)
}

// RetrievalRecorder is implemented by Maildrops that remember when each
// message was first retrieved, for policies with FromRetrieval.
type RetrievalRecorder interface {
	// Retrieved records that the messages at the given indexes were
	// retrieved at t, unless an earlier retrieval is already on record.
	Retrieved(indexes []int, t time.Time) error
}
