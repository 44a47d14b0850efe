// Package retention decides how long mail stays on the server and carries it
// out: each user's policy (a server-wide default, overridden per user by the
// account's own: auth.Retention) and the sweeper that expires messages and
// purges the holding area of deleted ones (RFC 2449 §6.7).
//
// Legal hold is kept by the storage backend, beside the mail it protects, so
// that it outlives the user's account.
package retention

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/units"
	"github.com/pouchmail/pouch/store"
)

// Apply returns p overridden by an account's own retention settings.
func Apply(p store.Policy, r auth.Retention) store.Policy {
	if r.Expire.Set {
		p.Expire, p.DeleteRetrieved = r.Expire.Value.After, r.Expire.Value.DeleteRetrieved
	}
	p.FromRetrieval = r.FromRetrieval.Or(p.FromRetrieval)
	p.Window = r.Window.Or(p.Window)
	return p
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

// Accounts are where the users' own policies come from (auth.Source).
type Accounts interface {
	Account(name string) (auth.Account, error)
	Summary() auth.Summary
}

// Policies gives each user's policy: the default, overridden by the user's
// account. It implements the server's Retention; it is safe for concurrent
// use, and the default can change under a running server (SetDefault).
type Policies struct {
	accounts Accounts // nil: the default for everyone

	mu  sync.Mutex
	def store.Policy
}

// NewPolicies returns the policies for def and the users' accounts (nil:
// none).
func NewPolicies(def store.Policy, accounts Accounts) *Policies {
	return &Policies{def: def, accounts: accounts}
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
	p.def = def
}

// Lookup returns user's policy: the default, overridden by the user's
// account; the default alone for a name with no account (the maildrop of a
// user deleted since). When the user's own policy cannot be known now (an
// account refused for its settings, or accounts that cannot be looked up),
// the error says why, and the policy is the one that removes least: nothing
// expires, and nothing retrieved is deleted that the client did not delete
// itself.
func (p *Policies) Lookup(user string) (store.Policy, error) {
	def := p.Default()
	if p.accounts == nil {
		return def, nil
	}
	a, err := p.accounts.Account(user)
	switch {
	case err == nil:
		return Apply(def, a.Retention), nil
	case errors.Is(err, auth.ErrNoSuchUser):
		return def, nil
	}
	return store.Policy{Window: def.Window}, err
}

// Policy returns user's policy, as Lookup does, whether or not it is known.
func (p *Policies) Policy(user string) store.Policy {
	pol, _ := p.Lookup(user)
	return pol
}

// Floor returns the policy to announce before login (RFC 2449 §6.7): the
// shortest expiry of any user, and whether some users have their own.
func (p *Policies) Floor() (store.Policy, bool) {
	def := p.Default()
	if p.accounts == nil {
		return def, false
	}
	own := p.accounts.Summary().Retention
	floor := def
	for _, r := range own {
		if u := Apply(def, r); shorter(u, floor) {
			floor = u
		}
	}
	return floor, len(own) > 0
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
