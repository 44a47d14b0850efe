package guard

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"

	"github.com/pouchmail/pouch/auth"
)

// writeGeoDB builds a tiny GeoLite2-Country-style database giving each
// network a country.
func writeGeoDB(t *testing.T, networks map[string]string) string {
	t.Helper()
	records := make(map[string]mmdbtype.Map, len(networks))
	for cidr, code := range networks {
		records[cidr] = mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(code)}}
	}
	return writeGeoRecords(t, records)
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
	deny9, _ := ParseNets("2.9.0.0/16")
	user := auth.Access{AllowCountries: []string{"FR"}, DenyNets: deny9}
	if r.CheckUser(netip.MustParseAddr("2.3.4.5"), user) != nil {
		t.Error("user rule refuses France")
	}
	if r.CheckUser(netip.MustParseAddr("81.2.3.4"), user) == nil || r.CheckUser(netip.MustParseAddr("2.9.1.1"), user) == nil {
		t.Error("user rules admit what they should not")
	}
	if err := noGeoUser(t).CheckUser(netip.MustParseAddr("2.3.4.5"), user); err == nil {
		t.Error("a user's country rules without a database must refuse, not ignore")
	}
	noGeo, _ := NewRules(nil, nil, nil, []string{"RU"}, "")
	if noGeo.Check(netip.MustParseAddr("81.2.3.4")) == nil {
		t.Error("country rules without a database must refuse, not ignore")
	}
}

// writeGeoRecords builds a database from whole records.
func writeGeoRecords(t *testing.T, records map[string]mmdbtype.Map) string {
	t.Helper()
	tree, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: "GeoLite2-Country", RecordSize: 24})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, rec := range records {
		_, n, _ := net.ParseCIDR(cidr)
		if err := tree.Insert(n, rec); err != nil {
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

// An address known only by the country its network is registered in has
// that country; with a country allow list, a public address of no known
// country is refused, and loopback, private and link-local ones are not.
func TestCountryAllowListAndUnknownAddresses(t *testing.T) {
	code := func(c string) mmdbtype.Map { return mmdbtype.Map{"iso_code": mmdbtype.String(c)} }
	db := writeGeoRecords(t, map[string]mmdbtype.Map{
		"81.0.0.0/8": {"country": code("DE"), "registered_country": code("DE")},
		"2.0.0.0/8":  {"registered_country": code("FR")},
		"5.0.0.0/8":  {"registered_country": code("DE")},
	})
	r, err := NewRules(nil, nil, []string{"DE"}, nil, db)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if c := r.Country(netip.MustParseAddr("2.3.4.5")); c != "FR" {
		t.Fatalf("Country of an address with only a registered country = %q", c)
	}
	for ip, ok := range map[string]bool{
		"81.2.3.4":        true,
		"5.6.7.8":         true,  // registered in Germany
		"2.3.4.5":         false, // registered in France
		"198.51.100.7":    false, // not in the database
		"2001:db8::1":     false,
		"127.0.0.1":       true,
		"10.1.2.3":        true,
		"192.168.1.1":     true,
		"169.254.1.1":     true,
		"fe80::1":         true,
		"fd00::1":         true,
		"::1":             true,
		"::ffff:10.0.0.1": true,
	} {
		if err := r.Check(netip.MustParseAddr(ip)); (err == nil) != ok {
			t.Errorf("Check(%s) = %v, want allowed %v", ip, err, ok)
		}
	}
	if err := r.CheckUser(netip.MustParseAddr("198.51.100.7"), auth.Access{AllowCountries: []string{"DE"}}); err == nil {
		t.Error("a user's country allow list admits an address of no known country")
	}
	// A deny list alone refuses only what it names.
	deny, _ := NewRules(nil, nil, nil, []string{"FR"}, db)
	defer deny.Close()
	if deny.Check(netip.MustParseAddr("198.51.100.7")) != nil || deny.Check(netip.MustParseAddr("2.3.4.5")) == nil {
		t.Error("a country deny list refuses an unknown address or admits a denied country")
	}
}

// noGeoUser is rules without a country database.
func noGeoUser(t *testing.T) *Rules {
	t.Helper()
	r, err := NewRules(nil, nil, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A user's network rules refuse what they do not admit, and nothing else.
func TestCheckUserNets(t *testing.T) {
	r := noGeoUser(t)
	allow, _ := ParseNets("192.0.2.0/24, ::ffff:198.51.100.0/120")
	deny, _ := ParseNets("192.0.2.66")
	user := auth.Access{AllowNets: allow, DenyNets: deny}
	for ip, ok := range map[string]bool{
		"192.0.2.1": true, "192.0.2.66": false, "10.1.1.1": false, "::ffff:198.51.100.9": true, "2001:db8::1": false,
	} {
		if err := r.CheckUser(netip.MustParseAddr(ip), user); (err == nil) != ok || err != nil && !errors.Is(err, errDenied) {
			t.Errorf("CheckUser(%s) = %v, want allowed %v", ip, err, ok)
		}
	}
	if err := r.CheckUser(netip.MustParseAddr("10.1.1.1"), auth.Access{}); err != nil {
		t.Errorf("no rules refuse: %v", err)
	}
}
