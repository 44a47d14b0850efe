package guard

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/oschwald/maxminddb-golang/v2"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/internal/netlist"
)

// Rules decide which addresses may use the server: network allow and deny
// lists, and country allow and deny lists looked up in a MaxMind-format
// database (GeoLite2-Country or compatible). They are checked at connect,
// before any byte of the protocol, and again per user after login with the
// user's own rules.
//
// Deny wins over allow. A non-empty allow list admits only what it lists.
// An address's country is the one the database gives for it, or else the
// country where its network is registered. A country allow list refuses
// public addresses of no known country; loopback, private and link-local
// addresses are not subject to country rules.
type Rules struct {
	allow, deny                   []netip.Prefix
	allowCountries, denyCountries map[string]bool
	geo                           *maxminddb.Reader

	notices notices // refused connections logged, per source
}

// NewRules builds rules; geoipDB is the database file, needed only for
// country rules.
func NewRules(allow, deny []netip.Prefix, allowCountries, denyCountries []string, geoipDB string) (*Rules, error) {
	r := &Rules{allow: allow, deny: deny, allowCountries: countrySet(allowCountries), denyCountries: countrySet(denyCountries)}
	if geoipDB != "" {
		db, err := maxminddb.Open(geoipDB)
		if err != nil {
			return nil, fmt.Errorf("guard: GeoIP database: %w", err)
		}
		r.geo = db
	}
	return r, nil
}

// Close releases the country database.
func (r *Rules) Close() error {
	if r.geo != nil {
		return r.geo.Close()
	}
	return nil
}

func countrySet(codes []string) map[string]bool {
	if len(codes) == 0 {
		return nil
	}
	set := make(map[string]bool, len(codes))
	for _, c := range codes {
		set[strings.ToUpper(strings.TrimSpace(c))] = true
	}
	return set
}

// Country returns the ISO 3166 code of ip's country, or else of the country
// where its network is registered (registered_country), or "".
func (r *Rules) Country(ip netip.Addr) string {
	if r.geo == nil {
		return ""
	}
	var rec struct {
		Country struct {
			ISOCode string `maxminddb:"iso_code"`
		} `maxminddb:"country"`
		Registered struct {
			ISOCode string `maxminddb:"iso_code"`
		} `maxminddb:"registered_country"`
	}
	if err := r.geo.Lookup(ip.Unmap()).Decode(&rec); err != nil {
		return ""
	}
	if rec.Country.ISOCode != "" {
		return rec.Country.ISOCode
	}
	return rec.Registered.ISOCode
}

// Notice reports whether a connection from ip refused by the rules is to be
// logged: the first refusal of its source in a minute. unlogged is how many
// refusals of the source went unlogged before this one.
func (r *Rules) Notice(ip netip.Addr) (log bool, unlogged int) {
	return r.notices.ok(ip, time.Now())
}

// errDenied is wrapped by every refusal.
var errDenied = errors.New("access denied")

// Check applies the server-wide rules to ip.
func (r *Rules) Check(ip netip.Addr) error {
	if r.geo == nil && (r.allowCountries != nil || r.denyCountries != nil) {
		return fmt.Errorf("%w: country rules without a GeoIP database", errDenied)
	}
	return check(ip.Unmap(), r.allow, r.deny, r.allowCountries, r.denyCountries, r.Country)
}

// CheckUser applies a user's own rules (auth.Access, from the account).
func (r *Rules) CheckUser(ip netip.Addr, a auth.Access) error {
	allowC, denyC := countrySet(a.AllowCountries), countrySet(a.DenyCountries)
	if r.geo == nil && (allowC != nil || denyC != nil) {
		return fmt.Errorf("%w: country rules without a GeoIP database", errDenied)
	}
	return check(ip.Unmap(), a.AllowNets, a.DenyNets, allowC, denyC, r.Country)
}

// local reports whether ip belongs to no country: loopback, private and
// link-local addresses.
func local(ip netip.Addr) bool {
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsUnspecified()
}

func check(ip netip.Addr, allow, deny []netip.Prefix, allowC, denyC map[string]bool, country func(netip.Addr) string) error {
	for _, p := range deny {
		if p.Contains(ip) {
			return fmt.Errorf("%w: %s is in denied network %s", errDenied, ip, p)
		}
	}
	if len(allow) > 0 {
		ok := false
		for _, p := range allow {
			ok = ok || p.Contains(ip)
		}
		if !ok {
			return fmt.Errorf("%w: %s is in no allowed network", errDenied, ip)
		}
	}
	if allowC == nil && denyC == nil {
		return nil
	}
	if local(ip) {
		return nil
	}
	c := country(ip)
	if c == "" {
		if allowC != nil {
			return fmt.Errorf("%w: %s is in no known country", errDenied, ip)
		}
		return nil
	}
	if denyC[c] {
		return fmt.Errorf("%w: %s is in denied country %s", errDenied, ip, c)
	}
	if allowC != nil && !allowC[c] {
		return fmt.Errorf("%w: %s is in country %s, not allowed", errDenied, ip, c)
	}
	return nil
}

// ParseNets parses comma-separated networks in CIDR form; a bare address
// means that address alone.
func ParseNets(s string) ([]netip.Prefix, error) { return netlist.Parse(s) }
