package main

import (
	"flag"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/store"
)

// retentionSettings are pouch serve's flags for the retention policy.
type retentionSettings struct {
	expire     string
	expireFrom string
	window     string
	sweepEvery time.Duration
}

func (r *retentionSettings) register(fs *flag.FlagSet) {
	fs.StringVar(&r.expire, "expire", "never", "remove messages this `long` after delivery, like 30d; \"never\"; or 0: messages retrieved with RETR are deleted at QUIT (RFC 2449 EXPIRE; the expire user field overrides)")
	fs.StringVar(&r.expireFrom, "expire-from", "delivery", "what --expire counts from: `delivery` or retrieval (the first RETR or TOP; the expire_from user field overrides)")
	fs.StringVar(&r.window, "deletion-window", "0", "keep deleted and expired messages restorable this `long`, like 30d (pouch mailbox restore); 0 removes them at once (the deletion_window user field overrides)")
	fs.DurationVar(&r.sweepEvery, "sweep-interval", time.Hour, "how `often` expired messages are removed and the deletion window purged")
}

// policy checks the flags and returns the server-wide default policy; errors
// name the flag.
func (r *retentionSettings) policy() (store.Policy, error) {
	var p store.Policy
	e, err := auth.ParseExpire(r.expire)
	if err != nil {
		return p, usageError("--expire: %v", err)
	}
	p.Expire, p.DeleteRetrieved = e.After, e.DeleteRetrieved
	if p.FromRetrieval, err = auth.ParseExpireFrom(r.expireFrom); err != nil {
		return p, usageError("--expire-from: %v", err)
	}
	if p.Window, err = auth.ParseWindow(r.window); err != nil {
		return p, usageError("--deletion-window: %v", err)
	}
	if r.sweepEvery < time.Second {
		return p, usageError("--sweep-interval: %v is shorter than a second", r.sweepEvery)
	}
	return p, nil
}
