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

// retentionConfig are pouch serve's settings of the retention policy.
type retentionConfig struct {
	Expire     textSetting     `toml:"expire"`
	ExpireFrom textSetting     `toml:"expire-from"`
	Window     textSetting     `toml:"deletion-window"`
	SweepEvery durationSetting `toml:"sweep-interval"`
}

func (r *retentionConfig) register(fs *flag.FlagSet) {
	textVar(fs, &r.Expire, "expire", "never", "remove messages this `long` after delivery, like 30d; \"never\"; or 0: messages retrieved with RETR are deleted at QUIT (RFC 2449 EXPIRE; the expire user field overrides)")
	textVar(fs, &r.ExpireFrom, "expire-from", "delivery", "what --expire counts from: `delivery` or retrieval (the first RETR or TOP; the expire_from user field overrides)")
	textVar(fs, &r.Window, "deletion-window", "0", "keep deleted and expired messages restorable this `long`, like 30d (pouch mailbox restore); 0 removes them at once (the deletion_window user field overrides)")
	durationVar(fs, &r.SweepEvery, "sweep-interval", time.Hour, "how `often` expired messages are removed and the deletion window purged")
}

// retentionSettings are the server-wide retention policy and how often it
// is applied.
type retentionSettings struct {
	policy     store.Policy
	sweepEvery time.Duration
}

// validate checks the settings, adding what is wrong to bad.
func (r *retentionConfig) validate(src configSource, bad *problems) retentionSettings {
	s := retentionSettings{sweepEvery: time.Duration(r.SweepEvery)}
	var err error
	if s.policy.Expire, s.policy.DeleteRetrieved, err = retention.ParseExpire(r.Expire.String()); err != nil {
		bad.add(src.problem("expire", "%v", err))
	}
	if s.policy.FromRetrieval, err = retention.ParseFrom(r.ExpireFrom.String()); err != nil {
		bad.add(src.problem("expire-from", "%v", err))
	}
	if s.policy.Window, err = retention.ParseWindow(r.Window.String()); err != nil {
		bad.add(src.problem("deletion-window", "%v", err))
	}
	if s.sweepEvery < time.Second {
		bad.add(src.problem("sweep-interval", "%v is shorter than a second", s.sweepEvery))
	}
	return s
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
