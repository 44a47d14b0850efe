package auth

import (
	"errors"
	"iter"

	"github.com/xdg-go/scram"
)

// Source is where accounts come from: the users file (Users), and any
// other store of accounts, such as a database or a directory. Names given
// to it are normalized (NormalizeName). A Source is safe for concurrent use.
//
// A source tells three things apart, and its users rely on it: a name with
// no account (ErrNoSuchUser: refused for good), an account refused for its
// settings (ErrInvalidAccount: held up until they are fixed), and a source
// that cannot tell now (ErrUnavailable: a temporary failure, never taken
// for an unknown user).
type Source interface {
	// Account returns the account of name. The error is ErrNoSuchUser
	// when there is none, an *AccountError when its settings cannot be
	// read, or one that is ErrUnavailable when the source cannot tell now.
	Account(name string) (Account, error)
	// Verify reports whether password is name's password. It takes as long
	// for a name with no account, and says false when the source cannot
	// check now (Fault then says why). An account refused for its settings
	// is still verified, so that only the right password learns why it is
	// refused.
	Verify(name, password string) bool
	// Summary says what the accounts add up to.
	Summary() Summary
	// Fault is nil while the source can be used, and otherwise says why
	// not (an error that is ErrUnavailable). Accounts it still knows may
	// meanwhile be found; others cannot be confirmed.
	Fault() error
	// Accounts lists every account, in the source's order: an account
	// refused for its settings comes with its *AccountError (and only its
	// Name), and a listing cut short ends with the source's error and an
	// empty account.
	Accounts() iter.Seq2[Account, error]
}

// A Source may have capabilities beyond Source, each an interface of its
// own that its users check for once, when they start.
type (
	// SCRAMSource keeps SCRAM-SHA-256 keys (RFC 5802, RFC 7677), for the
	// SCRAM mechanisms; Summary.SCRAM says whether any account has some.
	SCRAMSource interface {
		SCRAMCredentials(name string) (scram.StoredCredentials, bool)
	}
	// APOPSource keeps cleartext passwords for APOP (RFC 1939 §7);
	// Summary.APOP says whether any account has one.
	APOPSource interface {
		APOPSecret(name string) (secret string, ok bool)
	}
	// CachedVerifier remembers credentials it verified recently:
	// VerifyCached computes no hash, and false means only "not known", for
	// which Verify is then called.
	CachedVerifier interface {
		VerifyCached(name, password string) bool
	}
	// Checker tells a wrong password from one that could not be checked,
	// which Verify does not: Check's error, with ok false, is one that is
	// ErrUnavailable when the source could not check now, and nil for a
	// wrong password or a name with no account. A source whose accounts
	// are elsewhere (a database, a directory) has it.
	Checker interface {
		Check(name, password string) (ok bool, err error)
	}
	// DomainSource knows which domains mail is taken for: HasDomain
	// reports whether some account can receive mail at domain (given in
	// lower case), and its error, one that is ErrUnavailable, means that
	// it cannot tell now.
	DomainSource interface {
		HasDomain(domain string) (bool, error)
	}
)

// ErrUnavailable is wrapped by the errors of a source that cannot be used
// now, such as a *SourceError.
var ErrUnavailable = errors.New("auth: the accounts cannot be looked up now")

var (
	_ Source         = (*Users)(nil)
	_ SCRAMSource    = (*Users)(nil)
	_ APOPSource     = (*Users)(nil)
	_ CachedVerifier = (*Users)(nil)
	_ DomainSource   = (*Users)(nil)
)
