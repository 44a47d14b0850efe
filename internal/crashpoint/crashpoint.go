// Package crashpoint kills the process with SIGKILL at a named point when the
// environment variable POUCH_CRASHPOINT names that point. The crash tests use it
// to prove that a kill at the worst moment of a commit or a delivery loses no mail;
// when the variable is unset, Hit costs one string comparison.
package crashpoint

import (
	"os"
	"syscall"
)

// Env is the environment variable that names the point to crash at.
const Env = "POUCH_CRASHPOINT"

var point = os.Getenv(Env)

// Hit kills the process at once, without running deferred functions or flushing
// anything, if name is the configured crash point.
func Hit(name string) {
	if point != "" && name == point {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is delivered asynchronously; never return
	}
}
