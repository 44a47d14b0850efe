package guard

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Reload takes in a ban another process wrote at once, without waiting for
// the once-a-second check; a damaged file is reported and the bans stay.
func TestReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bans.json")
	g, _ := newGuard(t, path)
	if _, banned := g.Banned(attacker); banned {
		t.Fatal("banned before anything happened")
	}
	other, _ := newGuard(t, path) // pouch ban add, in another process
	if err := other.Ban(netip.PrefixFrom(attacker, 32), time.Hour, "by hand"); err != nil {
		t.Fatal(err)
	}
	if err := g.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, banned := g.Banned(attacker); !banned {
		t.Fatal("not banned after Reload")
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.Reload(); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("Reload of a damaged file: %v", err)
	}
	if _, banned := g.Banned(attacker); !banned {
		t.Fatal("a failed Reload dropped the bans in use")
	}
}
