package guard

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/oschwald/maxminddb-golang/v2"
)

// Rules decide which addresses may use the server: network allow and deny
// lists, and country allow and deny lists looked up in a MaxMind-format
// database (GeoLite2-Country or compatible). They are checked at connect,
// before any byte of the protocol, and again per user after login with the
// user's own rules.
//
// Deny wins over allow. A non-empty allow list admits only what it lists.
// Addresses the country database does not know (loopback, private networks)
// are not subject to country rules.
type Rules struct {
	allow, deny                   []netip.Prefix
	allowCountries, denyCountries map[string]bool
	geo                           *maxminddb.Reader
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

// Country returns the ISO 3166 code of ip's country, or "".
func (r *Rules) Country(ip netip.Addr) string {
	if r.geo == nil {
		return ""
	}
	var code string
	if err := r.geo.Lookup(ip.Unmap()).DecodePath(&code, "country", "iso_code"); err != nil {
		return ""
	}
	return code
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

// CheckUser applies a user's own rules, from the extra fields of the users
// file: allow_nets and deny_nets (comma-separated networks, as Dovecot's
// allow_nets), allow_countries and deny_countries (comma-separated codes).
func (r *Rules) CheckUser(ip netip.Addr, fields map[string]string) error {
	if len(fields) == 0 {
		return nil
	}
	allow, err := parseNets(fields["allow_nets"])
	if err != nil {
		return fmt.Errorf("%w: allow_nets: %v", errDenied, err)
	}
	deny, err := parseNets(fields["deny_nets"])
	if err != nil {
		return fmt.Errorf("%w: deny_nets: %v", errDenied, err)
	}
	ac, dc := countrySet(splitComma(fields["allow_countries"])), countrySet(splitComma(fields["deny_countries"]))
	if r.geo == nil && (ac != nil || dc != nil) {
		return fmt.Errorf("%w: country rules without a GeoIP database", errDenied)
	}
	return check(ip.Unmap(), allow, deny, ac, dc, r.Country)
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
	c := country(ip)
	if c == "" {
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
func ParseNets(s string) ([]netip.Prefix, error) { return parseNets(s) }

func parseNets(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range splitComma(s) {
		if p, err := netip.ParsePrefix(item); err == nil {
			// Client addresses are compared unmapped, so ::ffff:a.b.c.d/N
			// becomes a.b.c.d/(N-96).
			if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
				p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(item)
		if err != nil {
			return nil, fmt.Errorf("%q is not a network (like 192.0.2.0/24) or an address", item)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

func splitComma(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
