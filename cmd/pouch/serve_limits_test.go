package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The budget names every number when the caps exceed the limit, and fits
// silently otherwise; a cap of 0 is no bound at all.
func TestFDBudgetWarning(t *testing.T) {
	caps := []fdCap{{"--max-connections", 1000, 3}, {"--lmtp-max-connections", 100, 2}}
	if w := fdBudgetWarning(4000, caps); w != "" {
		t.Errorf("3264 descriptors fit in 4000, yet: %s", w)
	}
	w := fdBudgetWarning(1024, caps)
	for _, want := range []string{"need 3264", "64 reserved", "--max-connections 1000 × 3", "--lmtp-max-connections 100 × 2", "only 1024"} {
		if !strings.Contains(w, want) {
			t.Errorf("warning %q lacks %q", w, want)
		}
	}
	w = fdBudgetWarning(1024, []fdCap{{"--max-connections", 0, 3}})
	if !strings.Contains(w, "--max-connections 0 puts no bound") || !strings.Contains(w, "1024") {
		t.Errorf("no bound, warning %q", w)
	}
}

// The LMTP cap joins the budget when LMTP listens, at its default.
func TestFDCapsCountLMTP(t *testing.T) {
	_, s := checkedSettings(t)
	if caps := fdCaps(s); len(caps) != 1 {
		t.Errorf("without --lmtp: %v", caps)
	}
	_, s = checkedSettings(t, "--lmtp", "127.0.0.1:2424")
	caps := fdCaps(s)
	if len(caps) != 2 || caps[1].flag != "--lmtp-max-connections" || caps[1].conns != 100 {
		t.Errorf("with --lmtp: %v", caps)
	}
}

// pouch serve raises the soft limit on open files to the hard one.
func TestRaiseFDLimit(t *testing.T) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Max < 256 {
		t.Skipf("hard limit %d", rl.Max)
	}
	low := syscall.Rlimit{Cur: 256, Max: rl.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl) })
	got, err := raiseFDLimit()
	if err != nil {
		t.Fatal(err)
	}
	var now syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &now)
	if got != rl.Max || now.Cur != rl.Max {
		t.Errorf("soft limit %d (reported %d), want the hard limit %d", now.Cur, got, rl.Max)
	}
}

// --proxy-networks is read from the command line and the TOML file alike,
// and a bad network is refused naming the key.
func TestProxyNetworksSetting(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pouch.toml")
	os.WriteFile(cfg, []byte("data = \""+dir+"\"\nproxy-networks = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n"), 0o600)
	out, e, code := pouch(t, "", "check-config", "--config", cfg)
	if code != 0 || !strings.Contains(out, `proxy-networks = "10.0.0.0/8,2001:db8::/32"`) ||
		!strings.Contains(out, "max-prelogin-connections = 250") || !strings.Contains(out, "max-connections-per-ip = 100") {
		t.Fatalf("check-config: exit %d\n%s\n%s", code, out, e)
	}
	os.WriteFile(cfg, []byte("data = \""+dir+"\"\nproxy-networks = \"10.0.0.0/33\"\n"), 0o600)
	if _, e, code := pouch(t, "", "check-config", "--config", cfg); code == 0 || !strings.Contains(e, cfg+`: key "proxy-networks"`) {
		t.Errorf("check-config of a bad network: exit %d, %s", code, e)
	}
	_, e, code = pouch(t, "", "serve", "--data", dir, "--pop3", "127.0.0.1:0", "--pop3s", "", "--proxy-networks", "10.0.0.0/33")
	if code != 2 || !strings.Contains(e, "--proxy-networks") {
		t.Errorf("serve with a bad network: exit %d, %s", code, e)
	}
}
