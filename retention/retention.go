// Package retention decides how long mail stays on the server and carries it
// out: each user's policy (a server-wide default, overridden per user by
// fields of the users file) and the sweeper that expires messages and purges
// the holding area of deleted ones (RFC 2449 §6.7).
//
// The per-user fields, as Dovecot passwd-file extra fields:
//
//	expire=30d              remove messages 30 days after ... (never, 0, or a duration)
//	expire_from=retrieval   ... their first retrieval instead of their delivery
//	deletion_window=30d     keep deleted and expired messages restorable this long
//
// Legal hold is kept by the storage backend, beside the mail it protects, so
// that it outlives the user's entry in the users file.
package retention

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/pouchmail/pouch/internal/units"
	"github.com/pouchmail/pouch/store"
)

// Names of the users file fields that override the default policy.
const (
	FieldExpire     = "expire"
	FieldExpireFrom = "expire_from"
	FieldWindow     = "deletion_window"
)

// ParseExpire reads an expiry setting: "never" (keep messages until a client
// deletes them), "0" (RFC 2449's EXPIRE 0: messages retrieved with RETR are
// deleted at QUIT), or a duration ("30d", "12h").
func ParseExpire(v string) (expire time.Duration, deleteRetrieved bool, err error) {
	switch v {
	case "never", "":
		return 0, false, nil
	case "0", "0d", "0s":
		return 0, true, nil
	}
	d, err := units.ParseDuration(v)
	if err != nil || d == 0 {
		return 0, false, fmt.Errorf("%q is not \"never\", \"0\" or a duration such as 30d", v)
	}
	return d, false, nil
}

// ParseFrom reads what an expiry counts from: "delivery" or "retrieval".
func ParseFrom(v string) (fromRetrieval bool, err error) {
	switch v {
	case "delivery", "":
		return false, nil
	case "retrieval":
		return true, nil
	}
	return false, fmt.Errorf("%q is not \"delivery\" or \"retrieval\"", v)
}

// ParseWindow reads a deletion window: a duration, 0 for none.
func ParseWindow(v string) (time.Duration, error) {
	if v == "0" {
		return 0, nil
	}
	d, err := units.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration such as 30d (or 0)", v)
	}
	return d, nil
}

// Apply returns p overridden by the retention fields among fields. A field
// that does not parse leaves p as it is and is reported.
func Apply(p store.Policy, fields map[string]string) (store.Policy, error) {
	var errs []string
	if v, ok := fields[FieldExpire]; ok {
		if d, del, err := ParseExpire(v); err != nil {
			errs = append(errs, FieldExpire+": "+err.Error())
		} else {
			p.Expire, p.DeleteRetrieved = d, del
		}
	}
	if v, ok := fields[FieldExpireFrom]; ok {
		if from, err := ParseFrom(v); err != nil {
			errs = append(errs, FieldExpireFrom+": "+err.Error())
		} else {
			p.FromRetrieval = from
		}
	}
	if v, ok := fields[FieldWindow]; ok {
		if d, err := ParseWindow(v); err != nil {
			errs = append(errs, FieldWindow+": "+err.Error())
		} else {
			p.Window = d
		}
	}
	if errs != nil {
		return p, fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return p, nil
}

// Describe says p in words, for operators.
func Describe(p store.Policy) string {
	var b strings.Builder
	switch {
	case p.DeleteRetrieved:
		b.WriteString("messages retrieved with RETR are deleted at QUIT (EXPIRE 0)")
	case p.Expire == 0:
		b.WriteString("messages are kept until a client deletes them (EXPIRE NEVER)")
	case p.FromRetrieval:
		fmt.Fprintf(&b, "messages are removed %s after their first retrieval", units.FormatDuration(p.Expire))
	default:
		fmt.Fprintf(&b, "messages are removed %s after delivery", units.FormatDuration(p.Expire))
	}
	if p.Window > 0 {
		fmt.Fprintf(&b, "; deleted and expired messages can be restored for %s", units.FormatDuration(p.Window))
	} else {
		b.WriteString("; deleted messages are removed at once")
	}
	return b.String()
}

// UserFields gives the users file's extra fields (auth.Users does).
type UserFields interface {
	Fields(user string) map[string]string
	AllFields() map[string]map[string]string
}

// Policies gives each user's policy: the default, overridden by the user's
// fields. It implements the server's Retention; it is safe for concurrent
// use, and the default can change under a running server (SetDefault).
type Policies struct {
	users UserFields // nil: the default for everyone

	mu        sync.Mutex
	def       store.Policy
	floorOf   uintptr // identity of the fields map the floor was computed from
	floor     store.Policy
	perUser   bool
	floorDone bool
}

// NewPolicies returns the policies for def and the users' fields (nil: none).
func NewPolicies(def store.Policy, users UserFields) *Policies {
	return &Policies{def: def, users: users}
}

// Default returns the server-wide policy.
func (p *Policies) Default() store.Policy {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.def
}

// SetDefault replaces the server-wide policy (a reloaded configuration).
func (p *Policies) SetDefault(def store.Policy) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.def, p.floorDone = def, false
}

// Policy returns user's policy. Fields that do not parse are ignored (pouch
// check-config reports them).
func (p *Policies) Policy(user string) store.Policy {
	def := p.Default()
	if p.users == nil {
		return def
	}
	pol, _ := Apply(def, p.users.Fields(user))
	return pol
}

// Floor returns the policy to announce before login (RFC 2449 §6.7): the
// shortest expiry of any user, and whether some users have their own.
func (p *Policies) Floor() (store.Policy, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.users == nil {
		return p.def, false
	}
	all := p.users.AllFields()
	id := reflect.ValueOf(all).Pointer()
	if p.floorDone && p.floorOf == id {
		return p.floor, p.perUser
	}
	floor, perUser := p.def, false
	for _, f := range all {
		_, e := f[FieldExpire]
		_, from := f[FieldExpireFrom]
		if !e && !from {
			continue
		}
		perUser = true
		if u, _ := Apply(p.def, f); shorter(u, floor) {
			floor = u
		}
	}
	p.floor, p.perUser, p.floorOf, p.floorDone = floor, perUser, id, true
	return floor, perUser
}

// shorter reports whether a may remove messages sooner than b.
func shorter(a, b store.Policy) bool {
	switch {
	case b.DeleteRetrieved:
		return false
	case a.DeleteRetrieved:
		return true
	case a.Expire == 0:
		return false
	case b.Expire == 0:
		return true
	}
	return a.Expire < b.Expire
}
