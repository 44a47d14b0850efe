package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pouchmail/pouch/guard"
	"github.com/pouchmail/pouch/guard/pgbans"
	"github.com/pouchmail/pouch/internal/units"
)

const banUsage = `Usage: pouch ban list|add|del [--data DIR | --store URL] [NETWORK] [--for DURATION] [--reason TEXT]

Shows and changes the bans of failed-login sources, kept in DATA/bans.json,
or with --store in the database that pouch serve nodes share. A running
server sees changes within a second; with --store, every node does. NETWORK is an address or a
network in CIDR form. del with an address lifts every ban that holds it
(automatic bans of IPv6 sources cover the whole /64); del with a network in
CIDR form lifts the ban of exactly that network.

Examples:
  pouch ban list
  pouch ban add 203.0.113.0/24 --for 24h --reason "scanner"
  pouch ban del 198.51.100.7

Flags:
`

func runBan(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pouch ban", flag.ContinueOnError)
	data := fs.String("data", "./pouch-data", "data `directory`")
	var length durationSetting
	durationVar(fs, &length, "for", 0, "how `long` the ban lasts, at most 3650d (default: until removed)")
	reason := fs.String("reason", "banned by hand", "why, for the list and the audit log")
	sf := storeFlag(fs, nil, data)
	pos, err := parseCommand(fs, banUsage, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return usageError("ban: say list, add or del")
	}
	storeURL, err := sf.url(fs, false)
	if err != nil {
		return fmt.Errorf("ban: %v", err)
	}
	gc := guard.Config{StatePath: filepath.Join(*data, "bans.json")}
	if fi, err := os.Stat(*data); storeURL == "" && (err != nil || !fi.IsDir()) {
		return fmt.Errorf("ban: there is no data directory %s: give pouch serve's with --data", *data)
	}
	if storeURL != "" {
		ctx, cancel := context.WithTimeout(context.Background(), storeConnectTimeout)
		mail, err := openMailStore(ctx, storeSettings{url: storeURL}, "") // checks the schema
		cancel()
		if err != nil {
			return fmt.Errorf("ban: %v", err)
		}
		mail.(io.Closer).Close()
		bans, err := pgbans.Open(context.Background(), storeURL, nil)
		if err != nil {
			return fmt.Errorf("ban: %v", storeError(err, storeURL))
		}
		defer bans.Close()
		gc.Bans = bans
	}
	g, err := guard.New(gc)
	if err != nil {
		return fmt.Errorf("ban: %v", err)
	}
	action := pos[0]
	if action == "list" {
		if len(pos) != 1 {
			return usageError("ban list takes no network")
		}
		for _, b := range g.Bans() {
			fmt.Fprintf(stdout, "%-20s until %s  %s\n", b.Net, banEnd(b), b.Reason)
		}
		return nil
	}
	if action != "add" && action != "del" {
		return usageError("ban: unknown action %q (use list, add or del)", action)
	}
	if len(pos) != 2 {
		return usageError("ban %s takes one network", action)
	}
	nets, err := guard.ParseNets(pos[1])
	if err != nil || len(nets) != 1 {
		return usageError("ban %s: %q is not an address or a network", action, pos[1])
	}
	net := nets[0]
	if action == "add" {
		d := time.Duration(length)
		if d > maxBanFor {
			return usageError("ban add: --for %s is too long: a ban lasts at most %s; leave out --for to ban until removed",
				length.String(), units.FormatDuration(maxBanFor))
		}
		if err := g.Ban(net, d, *reason); err != nil {
			return fmt.Errorf("ban add: %v", err)
		}
		lasts := d.String()
		if d == 0 {
			lasts = "forever" // until pouch ban del
		}
		if err := auditEvent(*data, "ban", "net", net.String(), "reason", *reason, "for", lasts); err != nil {
			fmt.Fprintf(stderr, "pouch: warning: %v\n", err)
		}
		fmt.Fprintf(stderr, "banned %s\n", net)
		return nil
	}
	// An address lifts every ban that holds it (the automatic ones are of
	// a whole IPv6 /64); a network in CIDR form, that exact ban.
	var removed []guard.Ban
	if strings.Contains(pos[1], "/") {
		removed, err = g.Unban(net)
	} else {
		removed, err = g.UnbanAddr(net.Addr())
	}
	if err != nil {
		return fmt.Errorf("ban del: %v", err)
	}
	if len(removed) == 0 {
		if strings.Contains(pos[1], "/") {
			return fmt.Errorf("ban del: there is no ban of %s (pouch ban list shows them)", net)
		}
		return fmt.Errorf("ban del: %s is not banned (pouch ban list shows the bans)", net.Addr())
	}
	now := time.Now()
	for _, b := range removed {
		if err := auditEvent(*data, "unban", "net", b.Net.String()); err != nil {
			fmt.Fprintf(stderr, "pouch: warning: %v\n", err)
		}
		if b.Until.After(now) {
			fmt.Fprintf(stderr, "lifted the ban of %s (until %s, %s)\n", b.Net, banEnd(b), b.Reason)
		} else {
			fmt.Fprintf(stderr, "removed the ended ban of %s from the list (%s)\n", b.Net, b.Reason)
		}
	}
	return nil
}

// maxBanFor is the longest ban by hand with an end. guard.Guard.Ban keeps a
// ban without one as a ban of 100 years, which banEnd tells apart by that.
const maxBanFor = 3650 * units.Day

// banEnd is when a ban ends, as pouch ban list shows it: RFC 3339 in local
// time, or "removed" for a ban by hand without an end (it lasts until
// pouch ban del).
func banEnd(b guard.Ban) string {
	if !b.Automatic() && b.Until.Sub(b.Since) > 99*365*units.Day {
		return "removed"
	}
	return b.Until.Local().Format(time.RFC3339)
}
