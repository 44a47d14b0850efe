package main

import (
	"flag"
	"fmt"
	"sort"
	"time"

	"github.com/pouchmail/pouch/retention"
	"github.com/pouchmail/pouch/server"
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
	var err error
	if p.Expire, p.DeleteRetrieved, err = retention.ParseExpire(r.expire); err != nil {
		return p, usageError("--expire: %v", err)
	}
	if p.FromRetrieval, err = retention.ParseFrom(r.expireFrom); err != nil {
		return p, usageError("--expire-from: %v", err)
	}
	if p.Window, err = retention.ParseWindow(r.window); err != nil {
		return p, usageError("--deletion-window: %v", err)
	}
	if r.sweepEvery < time.Second {
		return p, usageError("--sweep-interval: %v is shorter than a second", r.sweepEvery)
	}
	return p, nil
}

// checkUserFields reports, user by user in name order, the fields that do
// not parse: retention fields (the server-wide policy applies instead), and
// the login settings and access rules (server.CheckUserFields: the user
// cannot log in until they are fixed).
func checkUserFields(all map[string]map[string]string) []string {
	names := make([]string, 0, len(all))
	for name := range all {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []string
	for _, name := range names {
		f := all[name]
		if _, err := retention.Apply(store.Policy{}, f); err != nil {
			out = append(out, fmt.Sprintf("user %s: %v; the server-wide policy applies", name, err))
		}
		for _, err := range server.CheckUserFields(f) {
			out = append(out, fmt.Sprintf("user %s: %v; the user cannot log in until it is fixed", name, err))
		}
	}
	return out
}
