package main

import (
	"fmt"
	"io"
	"runtime/debug"
)

// runVersion prints the module version and the build's VCS revision.
func runVersion(args []string, stdout io.Writer) error {
	switch {
	case len(args) == 1 && (args[0] == "--help" || args[0] == "-help" || args[0] == "-h"):
		fmt.Fprintln(stdout, "Usage: pouch version\n\nPrints the version of Pouch, the Go version it was built with and the\nsource revision.")
		return nil
	case len(args) > 0:
		return usageError("version takes no arguments")
	}
	fmt.Fprintln(stdout, versionString())
	return nil
}

func versionString() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "pouch (no build information)"
	}
	version := info.Main.Version
	if version == "" || version == "(devel)" {
		version = "devel"
	}
	s := fmt.Sprintf("pouch %s, built with %s", version, info.GoVersion)
	var rev, when, dirty string
	for _, kv := range info.Settings {
		switch kv.Key {
		case "vcs.revision":
			rev = kv.Value
		case "vcs.time":
			when = kv.Value
		case "vcs.modified":
			if kv.Value == "true" {
				dirty = " (modified)"
			}
		}
	}
	if rev != "" {
		s += fmt.Sprintf(", revision %.12s%s of %s", rev, dirty, when)
	}
	return s
}
