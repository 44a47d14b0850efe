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
	sockets  int // listeners passed by systemd
	level    *slog.LevelVar
	policies *retention.Policies
	log      *slog.Logger
}

// reload re-reads the file, checks it as pouch serve checks it at start, and
// applies the live settings. A file that no longer parses, or any bad
// value, changes nothing and is reported in one sentence naming the file and
// key.
func (r *configReloader) reload() error {
	if r.file == "" {
		return nil
	}
	fs, c := serveFlags(io.Discard)
	if _, err := loadServeConfig(fs, c, r.args); err != nil {
		return fmt.Errorf("kept the old configuration (%v)", err)
	}
	s, err := c.validate(r.sockets)
	if err != nil {
		return fmt.Errorf("kept the old configuration (%v)", err)
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
	r.policies.SetDefault(s.retention.policy)
	r.level.Set(s.logLevel)
	if len(applied) > 0 {
		r.log.Info("reload: configuration", "changed", strings.Join(applied, ","), "retention", retention.Describe(s.retention.policy))
	}
	if len(restart) > 0 {
		r.log.Warn("reload: these settings changed in the configuration file and take effect at the next start",
			"keys", strings.Join(restart, ","))
	}
	return nil
}
