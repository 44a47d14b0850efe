// Package netlist parses the lists of networks of Pouch's settings:
// comma-separated networks in CIDR form or bare addresses, as the access
// rules (--allow-ip, an account's allow_nets) and the trusted networks take
// them.
package netlist

import (
	"fmt"
	"net/netip"
	"strings"
)

// Parse parses comma-separated networks in CIDR form; a bare address means
// that address alone. Blank items are skipped, so "" is no network.
func Parse(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range Split(s) {
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

// Split splits a comma-separated list into its items, trimmed of white
// space, leaving out blank ones. Every comma-separated setting, of networks
// or not, is split by it.
func Split(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
