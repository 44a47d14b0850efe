package fetch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A UIDL that vanished from a (partial) LIST and comes back is not
// downloaded a second time, and not deleted.
func TestTombstonedUIDLNotFetchedAgain(t *testing.T) {
	a, dir := fakeAccount(t, `
		C: LIST
		S: +OK
		S: 1 5
		S: .
		C: UIDL
		S: +OK
		S: 1 x
		S: .
		C: QUIT
		S: +OK`)
	os.MkdirAll(a.StateDir, 0o700)
	os.WriteFile(filepath.Join(a.StateDir, a.StateName()+".journal"),
		fmt.Appendf(nil, "pouch-fetch-journal 2\nT %d x\n", time.Now().Unix()), 0o600)
	obs := &recObserver{}
	st, err := Run(context.Background(), a, obs)
	if err != nil || st.Fetched != 0 || st.Deleted != 0 || len(obs.warns) != 1 {
		t.Fatalf("%+v %v %q", st, err, obs.warns)
	}
	checkExactlyOnce(t, dir, nil)
}
