package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/pouchmail/pouch/retention"
)

// liveSettings are the configuration keys that a reload applies to the
// running server; a change to any other key takes effect at the next start.
var liveSettings = []string{"expire", "expire-from", "deletion-window", "log-level"}

// configReloader reads pouch serve's configuration file again on reload.
type configReloader struct {
	args     []string      // the command line, whose flags still win
	running  *flag.FlagSet // the settings in force
	file     string
	level    *slog.LevelVar
	policies *retention.Policies
	log      *slog.Logger
}

// reload re-reads the file and applies the live settings. A file that no
// longer parses, or a bad value, changes nothing and is reported in one
// sentence naming the file and key.
func (r *configReloader) reload() error {
	if r.file == "" {
		return nil
	}
	fs, c := serveFlags(io.Discard)
	if _, err := parseInterleaved(fs, r.args); err != nil {
		return fmt.Errorf("kept the old configuration (%v)", err)
	}
	if err := applyConfigFile(fs, r.file); err != nil {
		return fmt.Errorf("kept the old configuration (%v)", err)
	}
	policy, err := c.retention.policy()
	if err != nil {
		return fmt.Errorf("kept the old configuration (%s: %v)", r.file, err)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return fmt.Errorf("kept the old configuration (%s: key \"log-level\": %q is not debug, info, warn or error)", r.file, c.logLevel)
	}
	var applied, restart []string
	fs.VisitAll(func(f *flag.Flag) {
		old := r.running.Lookup(f.Name)
		if old == nil || old.Value.String() == f.Value.String() {
			return
		}
		if slices.Contains(liveSettings, f.Name) {
			applied = append(applied, f.Name)
			r.running.Set(f.Name, f.Value.String())
		} else {
			restart = append(restart, f.Name)
		}
	})
	r.policies.SetDefault(policy)
	r.level.Set(level)
	if len(applied) > 0 {
		r.log.Info("reload: configuration", "changed", strings.Join(applied, ","), "retention", retention.Describe(policy))
	}
	if len(restart) > 0 {
		r.log.Warn("reload: these settings changed in the configuration file and take effect at the next start",
			"keys", strings.Join(restart, ","))
	}
	return nil
}
