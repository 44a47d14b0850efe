package guard

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// writeGeoDB builds a tiny GeoLite2-Country-style database.
func writeGeoDB(t *testing.T, networks map[string]string) string {
	t.Helper()
	tree, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: "GeoLite2-Country", RecordSize: 24})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, code := range networks {
		_, n, _ := net.ParseCIDR(cidr)
		if err := tree.Insert(n, mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(code)}}); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "geo.mmdb")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := tree.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestNetworkRules(t *testing.T) {
	allow, _ := ParseNets("198.51.100.0/24, 2001:db8::/32")
	deny, _ := ParseNets("198.51.100.66")
	r, err := NewRules(allow, deny, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	for ip, ok := range map[string]bool{
		"198.51.100.1":        true,
		"198.51.100.66":       false,
		"203.0.113.1":         false,
		"2001:db8::1":         true,
		"::ffff:198.51.100.2": true,
	} {
		if err := r.Check(netip.MustParseAddr(ip)); (err == nil) != ok {
			t.Errorf("Check(%s) = %v, want allowed %v", ip, err, ok)
		}
	}
	if _, err := ParseNets("10.0.0.0/8,nonsense"); err == nil {
		t.Error("ParseNets accepted nonsense")
	}
}

func TestCountryRules(t *testing.T) {
	db := writeGeoDB(t, map[string]string{"81.0.0.0/8": "DE", "2.0.0.0/8": "FR", "5.0.0.0/8": "RU"})
	r, err := NewRules(nil, nil, nil, []string{"ru"}, db)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if c := r.Country(netip.MustParseAddr("81.2.3.4")); c != "DE" {
		t.Fatalf("Country = %q", c)
	}
	if r.Check(netip.MustParseAddr("5.6.7.8")) == nil {
		t.Error("a denied country is allowed")
	}
	if r.Check(netip.MustParseAddr("81.2.3.4")) != nil || r.Check(netip.MustParseAddr("127.0.0.1")) != nil {
		t.Error("an allowed or unknown country is denied")
	}
	r2, _ := NewRules(nil, nil, []string{"DE"}, nil, db)
	if r2.Check(netip.MustParseAddr("2.3.4.5")) == nil || r2.Check(netip.MustParseAddr("81.2.3.4")) != nil {
		t.Error("allow-country does not admit only Germany")
	}
	// Per user.
	fields := map[string]string{"allow_countries": "FR", "deny_nets": "2.9.0.0/16"}
	if r.CheckUser(netip.MustParseAddr("2.3.4.5"), fields) != nil {
		t.Error("user rule refuses France")
	}
	if r.CheckUser(netip.MustParseAddr("81.2.3.4"), fields) == nil || r.CheckUser(netip.MustParseAddr("2.9.1.1"), fields) == nil {
		t.Error("user rules admit what they should not")
	}
	if r.CheckUser(netip.MustParseAddr("81.2.3.4"), map[string]string{"allow_nets": "bad"}) == nil {
		t.Error("a broken user rule admits")
	}
	noGeo, _ := NewRules(nil, nil, nil, []string{"RU"}, "")
	if noGeo.Check(netip.MustParseAddr("81.2.3.4")) == nil {
		t.Error("country rules without a database must refuse, not ignore")
	}
}
