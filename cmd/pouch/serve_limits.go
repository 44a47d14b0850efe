package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"syscall"

	"github.com/pouchmail/pouch/internal/proxied"
)

// fdCap is a configured cap on connections, for the file-descriptor budget.
type fdCap struct {
	flag  string // the flag that sets it, as the warning names it
	conns int    // the cap; 0: no limit
	each  int    // descriptors one connection may hold at once
}

// fdReserve is what the process holds besides its connections: listeners,
// the admin and metrics sockets and their clients, the users file, the ban
// list, the audit log, the runtime's poller.
const fdReserve = 64

// fdCaps are the caps that use file descriptors. A POP3 session holds its
// socket, its maildrop's lock file once logged in, and the message file it
// is sending; an LMTP connection its socket, its spool file and the Maildir
// file being written.
func fdCaps(s *serveSettings) []fdCap {
	caps := []fdCap{
		{"--max-connections", s.server.MaxConnections, 3},
	}
	if s.lmtp.addr != "" {
		caps = append(caps, fdCap{"--lmtp-max-connections", max(s.lmtp.maxConnections, 0), 3})
	}
	return caps
}

// raiseFDLimit raises the soft RLIMIT_NOFILE to the hard limit, and
// returns the limit now in force.
func raiseFDLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		raised := syscall.Rlimit{Cur: rl.Max, Max: rl.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			return rl.Cur, err
		}
		rl = raised
	}
	return rl.Cur, nil
}

// hardFDLimit returns the hard RLIMIT_NOFILE: what pouch serve will raise
// its limit to.
func hardFDLimit() (uint64, error) {
	var rl syscall.Rlimit
	err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	return rl.Max, err
}

// fdBudgetWarning returns one sentence naming the numbers when the caps
// could need more file descriptors than limit, or when one of them has no
// limit at all; "" when they fit.
func fdBudgetWarning(limit uint64, caps []fdCap) string {
	need := uint64(fdReserve)
	var parts, unlimited []string
	for _, c := range caps {
		if c.conns <= 0 {
			unlimited = append(unlimited, c.flag+" 0")
			continue
		}
		n := uint64(c.conns) * uint64(c.each)
		need += n
		parts = append(parts, fmt.Sprintf("%s %d × %d", c.flag, c.conns, c.each))
	}
	if len(unlimited) > 0 {
		return fmt.Sprintf("file descriptors: %s puts no bound on connections, and the process may open only %d file descriptors; past that no connection is accepted until some close; set a cap",
			strings.Join(unlimited, " and "), limit)
	}
	if need <= limit {
		return ""
	}
	return fmt.Sprintf("file descriptors: the connection caps may need %d (%d reserved + %s) but the process may open only %d; past that no connection is accepted until some close; raise the hard limit (LimitNOFILE= in the service, ulimit -Hn) or lower the caps",
		need, fdReserve, strings.Join(parts, " + "), limit)
}

// checkFDBudget raises the file-descriptor limit and logs one warning
// when the caps exceed it.
func checkFDBudget(s *serveSettings, log *slog.Logger) {
	limit, err := raiseFDLimit()
	if err != nil {
		log.Warn("file descriptors: cannot raise the soft limit to the hard one", "err", err, "limit", limit)
	}
	if w := fdBudgetWarning(limit, fdCaps(s)); w != "" {
		log.Warn(w)
	}
}

// proxiedLMTP makes the LMTP listener read PROXY headers from the
// balancers' networks, as the POP3 listeners do.
func proxiedLMTP(s *lmtpService, set *serveSettings, log *slog.Logger) {
	nets := set.server.ProxyNetworks
	if s == nil || len(nets) == 0 {
		return
	}
	s.l = proxied.Listen(s.l, proxied.Config{Networks: nets, Timeout: set.server.PreLoginTimeout, Refused: func(from net.Addr, err error) {
		if errors.Is(err, proxied.ErrHungUp) {
			log.Debug("connection from a load balancer closed before its PROXY header", "protocol", "lmtp", "proxy", from.String())
			return
		}
		log.Info("connection refused: bad PROXY protocol header", "protocol", "lmtp", "proxy", from.String(), "err", err)
	}})
}
