package netlist

import (
	"net/netip"
	"slices"
	"testing"
)

func TestParse(t *testing.T) {
	for in, want := range map[string][]string{
		"":                                nil,
		" , ":                             nil,
		"198.51.100.0/24, 2001:db8::/32":  {"198.51.100.0/24", "2001:db8::/32"},
		"198.51.100.66":                   {"198.51.100.66/32"},
		"10.1.2.3/8":                      {"10.0.0.0/8"},
		"::ffff:198.51.100.0/120":         {"198.51.100.0/24"},
		"::ffff:198.51.100.7,2001:db8::1": {"198.51.100.7/32", "2001:db8::1/128"},
	} {
		got, err := Parse(in)
		var gs []string
		for _, p := range got {
			gs = append(gs, p.String())
		}
		if err != nil || !slices.Equal(gs, want) {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, gs, err, want)
		}
	}
	for _, in := range []string{"10.0.0.0/33", "nonsense", "10.0.0.0/8,nonsense", "192.0.2.1/"} {
		if got, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) = %v, want an error", in, got)
		}
	}
	if p, _ := Parse("192.0.2.9"); !p[0].Contains(netip.MustParseAddr("192.0.2.9")) {
		t.Error("a bare address does not contain itself")
	}
}
