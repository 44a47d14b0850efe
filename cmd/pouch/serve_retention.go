package main

import (
	"flag"
	"time"

	"github.com/pouchmail/pouch/auth"
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
	if e, err := auth.ParseExpire(r.Expire.String()); err != nil {
		bad.add(src.problem("expire", "%v", err))
	} else {
		s.policy.Expire, s.policy.DeleteRetrieved = e.After, e.DeleteRetrieved
	}
	if s.policy.FromRetrieval, err = auth.ParseExpireFrom(r.ExpireFrom.String()); err != nil {
		bad.add(src.problem("expire-from", "%v", err))
	}
	if s.policy.Window, err = auth.ParseWindow(r.Window.String()); err != nil {
		bad.add(src.problem("deletion-window", "%v", err))
	}
	if s.sweepEvery < time.Second {
		bad.add(src.problem("sweep-interval", "%v is shorter than a second", s.sweepEvery))
	}
	return s
}
