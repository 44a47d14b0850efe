package server

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/pouchmail/pouch/auth"
)

// greetingAPOP is the greeting with an APOP timestamp ({PLAIN} users).
const greetingAPOP = `\+OK Pouch ready\. <.*>`

const sysTempCredentials = `-ERR \[SYS/TEMP\] cannot check credentials now; try again later`

// While the users file cannot be used, the users it had still log in; a
// failed login gets [SYS/TEMP], whether the name is missing from the list or
// the password is wrong, and only a wrong password for a user the list has
// counts towards a ban. Once the file is good again, failures are [AUTH].
func TestLoginsWhileTheUsersFileIsUnusable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(path, []byte("alice:{PLAIN}secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	users := auth.OpenUsersWith(path, auth.UsersOptions{})
	ts, _ := newGuarded(t, func(c *Config) { c.Auth = users })
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}

	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(greetingAPOP)
	c.send("USER alice\r\nPASS secret\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(`\+OK maildrop has \d+ messages \(\d+ octets\)`)
	c.send("QUIT\r\n")
	c.expect(`\+OK .*`)
	c.closed()

	// More unknown names than the guard's limit of 3: none is counted, or
	// the source would be banned for guessing across names.
	c = ts.dialFrom(t, "127.0.0.3")
	c.expect(greetingAPOP)
	for i := range 5 {
		c.send(fmt.Sprintf("USER nobody%d\r\nPASS x\r\n", i))
		c.expect(`\+OK send PASS`)
		c.expect(sysTempCredentials)
	}
	c.send("USER alice\r\nPASS secret\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(`\+OK maildrop has \d+ messages \(\d+ octets\)`)

	// A wrong password for alice has the same reply, and counts: the third
	// locks the name for this source, so that even her right password is
	// refused from it.
	c = ts.dialFrom(t, "127.0.0.4")
	c.expect(greetingAPOP)
	for range 3 {
		c.send("USER alice\r\nPASS wrong\r\n")
		c.expect(`\+OK send PASS`)
		c.expect(sysTempCredentials)
	}
	c.send("USER alice\r\nPASS secret\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(authFailed)

	if err := os.WriteFile(path, []byte("alice:{PLAIN}secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c = ts.dialFrom(t, "127.0.0.5")
	c.expect(greetingAPOP)
	c.send("USER nobody\r\nPASS x\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(authFailed)
}
