package auth

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Every setting of the users file, read into the Account.
func TestAccountSettings(t *testing.T) {
	t.Parallel()
	u := openUsers(t, writeFile(t, "alice:{PLAIN}x::::::nologin login_delay=300 password_max_age=90d "+
		"password_changed=1700000000 allow_nets=192.0.2.0/24,2001:db8::1 deny_nets=192.0.2.66 "+
		"allow_countries=de,AT deny_countries= quota_storage=2G quota_messages=0 expire=30d "+
		"expire_from=retrieval deletion_window=0 home_dir=/x"))
	a, err := u.Account("alice")
	if err != nil {
		t.Fatal(err)
	}
	want := Account{
		Name:            "alice",
		Credentials:     a.Credentials,
		Disabled:        true,
		LoginDelay:      Own(300 * time.Second),
		PasswordMaxAge:  Own(90 * 24 * time.Hour),
		PasswordChanged: time.Unix(1700000000, 0),
		Access: Access{
			AllowNets:      []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::1/128")},
			DenyNets:       []netip.Prefix{netip.MustParsePrefix("192.0.2.66/32")},
			AllowCountries: []string{"DE", "AT"},
		},
		Quota: Quota{Storage: Own(int64(2 << 30)), Messages: Own(0)},
		Retention: Retention{
			Expire:        Own(Expiry{After: 30 * 24 * time.Hour}),
			FromRetrieval: Own(true),
			Window:        Own(time.Duration(0)),
		},
	}
	if !reflect.DeepEqual(a, want) {
		t.Errorf("Account(alice) =\n%+v\nwant\n%+v", a, want)
	}
	if got := a.Retention.Lines(); !reflect.DeepEqual(got, []string{"deletion_window = 0", "expire = 30d", "expire_from = retrieval"}) {
		t.Errorf("Retention.Lines() = %q", got)
	}
	if s := fmt.Sprintf("%+v %#v", a, a); strings.Contains(s, "{PLAIN}") || !strings.Contains(s, "Credentials:password") {
		t.Errorf("an account prints its credentials: %s", s)
	}
	for in, want := range map[string]string{"never": "never", "0d": "0", "720h": "30d", "36h": "36h0m0s"} {
		if e, err := ParseExpire(in); err != nil || e.String() != want {
			t.Errorf("ParseExpire(%q) = %v, %v; want %s", in, e, err, want)
		}
	}
}

// One setting that cannot be read refuses the account whole: its other
// settings are not used either, it cannot log in (its password is still
// checked), it is still a user (mail for it is deferred, not bounced), and
// each load says so in the log, naming the line and every bad field.
func TestBadSettingRefusesAccount(t *testing.T) {
	t.Parallel()
	path := writeFile(t,
		"alice:{PLAIN}secret::::::login_delay=600 expire=30d",
		"bob:{PLAIN}pw::::::login_delay=abc allow_nets=10.0.0.0/33 expire=7d password_max_age=ninety "+
			"password_changed=x deny_countries=France quota_storage=lots quota_messages=-1 expire_from=soon "+
			"deletion_window=forever scram_sha_256=nonsense",
		"carol:{PLAIN}pw::::::login_delay=9999999999999999",
	)
	var logs bytes.Buffer
	u := OpenUsersWith(path, UsersOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	fields := []string{"scram_sha_256", "login_delay", "password_max_age", "password_changed", "allow_nets",
		"deny_countries", "quota_storage", "quota_messages", "expire_from", "deletion_window"}
	a, err := u.Account("bob")
	var ae *AccountError
	if !errors.As(err, &ae) || !errors.Is(err, ErrInvalidAccount) || errors.Is(err, ErrNoSuchUser) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Account(bob) = %+v, %v; want an AccountError", a, err)
	}
	if ae.Name != "bob" || ae.Where != path+":2" || len(ae.Errs) != len(fields) || !reflect.DeepEqual(a, Account{Name: "bob"}) {
		t.Fatalf("AccountError %+v, account %+v", ae, a)
	}
	for i, f := range fields {
		if !strings.HasPrefix(ae.Errs[i].Error(), f+": ") {
			t.Errorf("error %d is %q, want one about %s", i, ae.Errs[i], f)
		}
	}
	if _, err := u.Account("carol"); !errors.Is(err, ErrInvalidAccount) {
		t.Errorf("a login_delay that overflows: %v", err)
	}
	if !u.Verify("bob", "pw") || u.Verify("bob", "wrong") || !u.Exists("bob") {
		t.Error("a refused account's password is not checked as any other")
	}
	if known, err := u.Known("bob"); !known || err != nil {
		t.Errorf("Known(bob) = %v, %v", known, err)
	}
	if s := u.Summary(); s.MaxLoginDelay != 600*time.Second || len(s.Retention) != 1 || !s.APOP {
		t.Errorf("Summary() = %+v, want alice's settings and not bob's", s)
	}
	var listed []string
	for a, err := range u.Accounts() {
		listed = append(listed, fmt.Sprintf("%s %v", a.Name, errors.Is(err, ErrInvalidAccount)))
	}
	if strings.Join(listed, ",") != "alice false,bob true,carol true" {
		t.Errorf("Accounts() = %q", listed)
	}
	text := logs.String()
	if n := strings.Count(text, "level=ERROR msg=\"account refused"); n != 2 {
		t.Errorf("%d ERROR lines at load, want one for bob and one for carol:\n%s", n, text)
	}
	for _, want := range append(fields, "user=bob", "where="+path+":2") {
		if !strings.Contains(text, want) {
			t.Errorf("the log lacks %q:\n%s", want, text)
		}
	}
	// A reload says it again; a fixed line is in use at once.
	logs.Reset()
	if err := u.Reload(); err != nil {
		t.Fatal(err)
	}
	if strings.Count(logs.String(), "account refused") != 2 {
		t.Errorf("reload did not log the refused accounts again:\n%s", logs.String())
	}
	os.WriteFile(path, []byte("bob:{PLAIN}pw::::::login_delay=60\n"), 0o600)
	if a, err := u.Account("bob"); err != nil || a.LoginDelay != Own(time.Minute) {
		t.Errorf("after the fix: %+v, %v", a, err)
	}
}

// The users file's fault is the source's: Account cannot confirm a name it
// does not keep, Accounts ends with the fault.
func TestAccountsWhileTheFileIsUnusable(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "alice:{PLAIN}x")
	u := openUsers(t, path)
	os.WriteFile(path, []byte("alice:{PLAIN}x\n:no name\n"), 0o600)
	if _, err := u.Account("alice"); err != nil {
		t.Errorf("Account(alice) from the last good list: %v", err)
	}
	var se *SourceError
	if _, err := u.Account("bob"); !errors.As(err, &se) || !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNoSuchUser) {
		t.Errorf("Account(bob) = %v, want the fault", err)
	}
	var errs []error
	for a, err := range u.Accounts() {
		if a.Name == "" {
			errs = append(errs, err)
		}
	}
	if len(errs) != 1 || !errors.As(errs[0], &se) {
		t.Errorf("Accounts() ended with %v, want the fault", errs)
	}
}

// The summary lists each retention policy once, and only those that
// change what expires.
func TestSummaryRetention(t *testing.T) {
	t.Parallel()
	u := openUsers(t, writeFile(t,
		"a:{PLAIN}x::::::expire=7d", "b:{PLAIN}x::::::expire=7d", "c:{PLAIN}x::::::deletion_window=3d",
		"d:{PLAIN}x::::::expire_from=retrieval", "e:"+vecArgon2Pouch))
	got := u.Summary().Retention
	want := []Retention{{Expire: Own(Expiry{After: 7 * 24 * time.Hour})}, {FromRetrieval: Own(true)}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Summary().Retention = %+v", got)
	}
}

// Each setting alone: the values it takes, and those that refuse the
// account, with an error naming the field.
func TestSettingValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		field string
		good  []string
		bad   []string
	}{
		{"login_delay", []string{"0", "60", "+5"}, []string{"abc", "-1", "1.5", "", "9223372037"}},
		{"password_max_age", []string{"90d", "0", "36h"}, []string{"ninety", "-1d", ""}},
		{"password_changed", []string{"1700000000", "0", "-5"}, []string{"x", "", "1.5"}},
		{"allow_nets", []string{"10.0.0.0/8, ::1", "", "192.0.2.7"}, []string{"10.0.0.0/33", "10.0.0.0/8, x"}},
		{"deny_nets", []string{"2001:db8::/32"}, []string{"nonsense"}},
		{"allow_countries", []string{"de, FR", ""}, []string{"DE,GER", "1X", "France"}},
		{"deny_countries", []string{"ru"}, []string{"R"}},
		{"quota_storage", []string{"0", "2G", "10KiB"}, []string{"lots", "-1", "1.5G", ""}},
		{"quota_messages", []string{"0", "10000"}, []string{"-3", "many", ""}},
		{"expire", []string{"never", "0", "30d", "12h"}, []string{"tomorrow", "-1d"}},
		{"expire_from", []string{"delivery", "retrieval"}, []string{"arrival"}},
		{"deletion_window", []string{"0", "30d"}, []string{"forever", "-1h"}},
		{"nologin", []string{"", "yes", "anything"}, nil},
		{"home", []string{"/home/x", ""}, nil}, // not Pouch's: ignored
	} {
		for _, v := range tc.good {
			if err := checkSetting(tc.field, v); err != nil {
				t.Errorf("%s=%s refused: %v", tc.field, v, err)
			}
		}
		for _, v := range tc.bad {
			if err := checkSetting(tc.field, v); err == nil || !strings.HasPrefix(err.Error(), tc.field+": ") {
				t.Errorf("%s=%s: %v, want an error naming the field", tc.field, v, err)
			}
		}
	}
}

func TestParseExpire(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want Expiry
		ok   bool
	}{
		{"never", Expiry{}, true},
		{"0", Expiry{DeleteRetrieved: true}, true},
		{"30d", Expiry{After: 30 * 24 * time.Hour}, true},
		{"90s", Expiry{After: 90 * time.Second}, true},
		{"-1d", Expiry{}, false},
		{"soon", Expiry{}, false},
	} {
		e, err := ParseExpire(tc.in)
		if (err == nil) != tc.ok || e != tc.want {
			t.Errorf("ParseExpire(%q) = %+v, %v", tc.in, e, err)
		}
	}
	// A duration too long to hold says so, rather than "not a duration".
	for _, parse := range []func(string) error{
		func(v string) error { _, err := ParseExpire(v); return err },
		func(v string) error { _, err := ParseWindow(v); return err },
	} {
		if err := parse("99999999h"); err == nil || !strings.Contains(err.Error(), "too long") {
			t.Errorf("99999999h: %v; want it called too long", err)
		}
	}
}

// No field value panics the parser, a value it takes is read the same
// every time, and one it refuses leaves nothing set.
func FuzzSettings(f *testing.F) {
	for _, p := range settingParsers {
		f.Add(p.field, "")
		f.Add(p.field, "0")
		f.Add(p.field, "10.0.0.0/8, ::ffff:1.2.3.4/120")
		f.Add(p.field, "9223372036854775807G")
	}
	f.Add("expire", "0d")
	f.Add("allow_countries", "de,FR, ")
	f.Fuzz(func(t *testing.T, key, value string) {
		var a, b Account
		errs := parseSettings(&a, map[string]string{key: value})
		parseSettings(&b, map[string]string{key: value})
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%s=%q read two ways: %+v, %+v", key, value, a, b)
		}
		if len(errs) > 1 || len(errs) == 1 && (!strings.HasPrefix(errs[0].Error(), key+": ") || !reflect.DeepEqual(a, Account{})) {
			t.Fatalf("%s=%q: %v, with %+v", key, value, errs, a)
		}
		if a.LoginDelay.Value < 0 || a.PasswordMaxAge.Value < 0 || a.Quota.Storage.Value < 0 || a.Quota.Messages.Value < 0 ||
			a.Retention.Window.Value < 0 || a.Retention.Expire.Value.After < 0 {
			t.Fatalf("%s=%q gave a negative setting: %+v", key, value, a)
		}
	})
}
