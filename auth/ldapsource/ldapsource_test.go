package ldapsource_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/auth/ldapsource"
	"github.com/pouchmail/pouch/internal/ldaptest"
)

// people are inetOrgPerson entries with userPassword, as the docs show
// them: two alices in two domains, a service account that may read
// passwords, and stored passwords in the schemes OpenLDAP sites use.
const people = `dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Org
mail: alice@example.org
userPassword: {CRYPT}$6$AODy/KxyPFD6MCGW$kIyhBNPh6J3ycw0np8DdFQMw50hCpnKYj4Hx3nVQM.yHH8zZ82RbEo1zhgePRyet/oukzMvcGfrar4Xhe1SnF0
employeeType: 2M

dn: uid=alice.net,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice.net
cn: Alice
sn: Net
mail: alice@example.net
userPassword: {PLAIN}net pass

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Org
mail: bob@example.org
userPassword: bob pass
employeeType: lots

dn: cn=pouch,ou=services,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: pouch
userPassword: service-secret
`

func start(t *testing.T) *ldaptest.Server {
	s := ldaptest.Start(t)
	s.Add(t, people)
	return s
}

func open(t *testing.T, cfg ldapsource.Config) *auth.Remote {
	t.Helper()
	b, err := ldapsource.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := auth.NewRemote(b, auth.RemoteOptions{CacheTTL: time.Minute, NegativeTTL: time.Minute,
		Timeout: 2 * time.Second, RetryEvery: time.Millisecond})
	t.Cleanup(func() { r.Close() })
	return r
}

func bindCfg(s *ldaptest.Server) ldapsource.Config {
	return ldapsource.Config{
		URL:    s.URL,
		Base:   "ou=people," + ldaptest.Base,
		Filter: "(&(objectClass=inetOrgPerson)(mail=%u))",
		Bind:   "user",
	}
}

func attrCfg(t *testing.T, s *ldaptest.Server) ldapsource.Config {
	pwFile := filepath.Join(t.TempDir(), "bind.pw")
	if err := os.WriteFile(pwFile, []byte("service-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return ldapsource.Config{
		URL:          s.URL,
		Base:         "ou=people," + ldaptest.Base,
		Filter:       "(&(objectClass=inetOrgPerson)(mail=%u))",
		BindDN:       "cn=pouch,ou=services," + ldaptest.Base,
		BindPassword: "service-secret",
		Attributes:   map[string]string{"quota_storage": "employeeType"},
	}
}

// Binding as the user: the directory checks the password, whatever scheme
// it keeps; neither SCRAM nor APOP is offered.
func TestBindMode(t *testing.T) {
	s := start(t)
	r := open(t, bindCfg(s))
	for _, tc := range []struct {
		name, pw string
		ok       bool
	}{
		{"alice@example.org", "sha pass", true},
		{"alice@example.net", "net pass", false}, // {PLAIN} is not a scheme slapd checks binds with
		{"bob@example.org", "bob pass", true},
		{"alice@example.org", "net pass", false},
		{"alice@example.org", "", false}, // never an unauthenticated bind
		{"nobody@example.org", "x", false},
	} {
		if ok, err := r.Check(tc.name, tc.pw); ok != tc.ok || err != nil {
			t.Errorf("Check(%s, %q) = %v, %v; want %v", tc.name, tc.pw, ok, err, tc.ok)
		}
	}
	src := r.Source()
	if _, ok := src.(auth.SCRAMSource); ok {
		t.Error("SCRAM offered in bind mode")
	}
	if _, ok := src.(auth.APOPSource); ok {
		t.Error("APOP offered in bind mode")
	}
	var names []string
	for a, err := range r.Accounts() {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, a.Name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"alice@example.net", "alice@example.org", "bob@example.org"}) {
		t.Errorf("Accounts = %q", names)
	}
}

// Searching as a service account and reading userPassword: Pouch checks
// the stored password; attributes map settings, and a bad one refuses the
// account.
func TestAttributeMode(t *testing.T) {
	s := start(t)
	r := open(t, attrCfg(t, s))
	for _, tc := range []struct {
		name, pw string
		ok       bool
	}{
		{"alice@example.org", "sha pass", true},
		{"alice@example.net", "net pass", true},
		{"alice@example.org", "net pass", false},
		{"bob@example.org", "bob pass", false}, // cleartext without {PLAIN}: no scheme Pouch reads
		{"nobody@example.org", "x", false},
	} {
		if ok, err := r.Check(tc.name, tc.pw); ok != tc.ok || err != nil {
			t.Errorf("Check(%s, %q) = %v, %v; want %v", tc.name, tc.pw, ok, err, tc.ok)
		}
	}
	a, err := r.Account("alice@example.org")
	if err != nil || a.Quota.Storage != auth.Own[int64](2<<20) {
		t.Errorf("alice: %+v, %v", a, err)
	}
	if _, err := r.Account("bob@example.org"); !errors.Is(err, auth.ErrInvalidAccount) {
		t.Errorf("bob with quota %q: %v, want refused", "lots", err)
	}
	if _, ok := r.Source().(auth.APOPSource).APOPSecret("alice@example.net"); !ok {
		t.Error("no APOP secret for a {PLAIN} userPassword")
	}
}

// User input is escaped in the filter (RFC 4515): a name made of filter
// syntax finds nobody, in either mode.
func TestFilterInjection(t *testing.T) {
	s := start(t)
	for mode, cfg := range map[string]ldapsource.Config{"bind": bindCfg(s), "attribute": attrCfg(t, s)} {
		r := open(t, cfg)
		for _, name := range []string{"*)(uid=*", "*", "alice*", "*)(|(mail=*", `alice@example.org)(mail=*`, "' OR '1'='1", "\x00"} {
			if _, err := r.Account(name); !errors.Is(err, auth.ErrNoSuchUser) {
				t.Errorf("%s: Account(%q) = %v, want no such user", mode, name, err)
			}
			for _, pw := range []string{"sha pass", "net pass", "x"} {
				if ok, err := r.Check(name, pw); ok || err != nil {
					t.Errorf("%s: Check(%q) = %v, %v", mode, name, ok, err)
				}
			}
		}
	}
}

// StartTLS and LDAPS, with the CA given.
func TestTLS(t *testing.T) {
	s := start(t)
	for _, tc := range []struct {
		name string
		cfg  func(*ldapsource.Config)
	}{
		{"starttls", func(c *ldapsource.Config) { c.StartTLS = true }},
		{"ldaps", func(c *ldapsource.Config) { c.URL = s.LDAPS }},
	} {
		cfg := bindCfg(s)
		cfg.CAFile = s.CAFile
		tc.cfg(&cfg)
		r := open(t, cfg)
		if ok, err := r.Check("alice@example.org", "sha pass"); !ok || err != nil {
			t.Errorf("%s: %v, %v", tc.name, ok, err)
		}
	}
	// Without the CA, the certificate is not trusted: the directory cannot
	// be used, which is no wrong password.
	cfg := bindCfg(s)
	cfg.StartTLS = true
	r := open(t, cfg)
	if ok, err := r.Check("alice@example.org", "sha pass"); ok || !errors.Is(err, auth.ErrUnavailable) ||
		!strings.Contains(err.Error(), "certificate") {
		t.Errorf("an untrusted certificate: %v, %v", ok, err)
	}
}

// A service account whose password is wrong is the source's failure, not
// the user's.
func TestWrongServicePassword(t *testing.T) {
	s := start(t)
	cfg := attrCfg(t, s)
	cfg.BindPassword = "wrong"
	r := open(t, cfg)
	if _, err := r.Account("alice@example.org"); !errors.Is(err, auth.ErrUnavailable) || !strings.Contains(err.Error(), "bind_password_file") {
		t.Errorf("Account = %v", err)
	}
}

// A directory that stops answering (SIGSTOP) or goes away is unavailable,
// within the timeout; looked-up accounts still work where they can.
func TestDirectoryDown(t *testing.T) {
	s := start(t)
	r := open(t, attrCfg(t, s))
	if ok, _ := r.Check("alice@example.org", "sha pass"); !ok {
		t.Fatal("alice refused")
	}
	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := r.Account("bob@example.org")
	s.Resume()
	if !errors.Is(err, auth.ErrUnavailable) {
		t.Errorf("Account while the directory hangs = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a hanging directory held a look-up %v (timeout 2s)", d)
	}
	if ok, err := r.Check("alice@example.org", "sha pass"); !ok || err != nil {
		t.Errorf("alice, looked up before: %v, %v", ok, err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Account("nobody@example.org"); !errors.Is(err, auth.ErrUnavailable) {
		t.Errorf("Account while the directory is stopped = %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Account("bob@example.org"); !errors.Is(err, auth.ErrInvalidAccount) {
		t.Errorf("Account after the restart = %v", err)
	}
	if r.Fault() != nil {
		t.Errorf("Fault after the restart: %v", r.Fault())
	}
}

func TestNewRefuses(t *testing.T) {
	for _, tc := range []struct {
		cfg  ldapsource.Config
		want string
	}{
		{ldapsource.Config{URL: "http://x"}, "want ldap://"},
		{ldapsource.Config{URL: "ldaps://x", StartTLS: true}, "start_tls is for ldap://"},
		{ldapsource.Config{URL: "ldap://x", Filter: "(mail=%u)"}, "base is missing"},
		{ldapsource.Config{URL: "ldap://x", Base: "dc=x", Filter: "(mail=%u"}, "filter"},
		{ldapsource.Config{URL: "ldap://x", Base: "dc=x", Filter: "(mail=%q)"}, "unknown placeholder"},
		{ldapsource.Config{URL: "ldap://x", Base: "dc=x", Filter: "(mail=%u)", Bind: "yes"}, `bind "yes"`},
		{ldapsource.Config{URL: "ldap://x", Base: "dc=x", Filter: "(mail=%u)", Attributes: map[string]string{"quota": "q"}}, `"quota" is not a setting`},
	} {
		if _, err := ldapsource.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// domain_filter says which domains mail is taken for. A domain_base that
// is made of the domain and does not exist takes none; a fixed one that
// does not exist (a directory being restored, a typo) is the directory's
// fault, a temporary failure, never a refusal of every domain.
func TestDomainFilter(t *testing.T) {
	s := start(t)
	for _, tc := range []struct {
		base string
		want map[string]bool // nil: unavailable
	}{
		{"", map[string]bool{"example.org": true, "example.net": true, "example.com": false}},
		{"ou=people," + ldaptest.Base, map[string]bool{"example.org": true, "example.com": false}},
		{"ou=%d," + ldaptest.Base, map[string]bool{"example.org": false}},
		{"ou=nowhere," + ldaptest.Base, nil},
	} {
		cfg := attrCfg(t, s)
		cfg.DomainFilter = "(&(objectClass=inetOrgPerson)(mail=*@%d))"
		cfg.DomainBase = tc.base
		r := open(t, cfg)
		if tc.want == nil {
			if has, err := r.HasDomain("example.org"); !errors.Is(err, auth.ErrUnavailable) {
				t.Errorf("domain_base %q: HasDomain(example.org) = %v, %v; want unavailable", tc.base, has, err)
			}
			continue
		}
		for domain, want := range tc.want {
			if has, err := r.HasDomain(domain); has != want || err != nil {
				t.Errorf("domain_base %q: HasDomain(%s) = %v, %v; want %v", tc.base, domain, has, err, want)
			}
		}
	}
}
