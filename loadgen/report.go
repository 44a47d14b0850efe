package loadgen

import (
	"fmt"
	"io"
	"sort"
	"time"
)

// SessionsPerSecond is the rate of completed sessions.
func (r *Report) SessionsPerSecond() float64 { return perSecond(float64(r.Sessions), r.Elapsed) }

// MessagesPerSecond is the rate of retrieved or scanned messages.
func (r *Report) MessagesPerSecond() float64 { return perSecond(float64(r.Messages), r.Elapsed) }

// MBPerSecond is the rate of message octets received, in 10^6 octets per second.
func (r *Report) MBPerSecond() float64 { return perSecond(float64(r.Bytes)/1e6, r.Elapsed) }

func perSecond(v float64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return v / d.Seconds()
}

// commandOrder is the order of the latency table.
var commandOrder = []string{"CONNECT", "STLS", "USER", "PASS", PASSWrong, "STAT", "LIST", "UIDL", "RETR", "TOP", "NOOP", "QUIT"}

// Write prints the report as text: totals, rates, then one line per command
// with its count and latency percentiles.
func (r *Report) Write(w io.Writer) {
	fmt.Fprintf(w, "elapsed %.2fs  sessions %d  failed %d  peak open %d\n", r.Elapsed.Seconds(), r.Sessions, r.Failed, r.Peak)
	fmt.Fprintf(w, "sessions/s %.1f  messages/s %.1f  MB/s %.1f  (messages %d, octets %d)\n",
		r.SessionsPerSecond(), r.MessagesPerSecond(), r.MBPerSecond(), r.Messages, r.Bytes)
	if r.WrongRefused+r.WrongAccepted+r.CorrectRefused > 0 {
		fmt.Fprintf(w, "correct logins refused %d  mistyped passwords refused %d, accepted %d\n",
			r.CorrectRefused, r.WrongRefused, r.WrongAccepted)
	}
	fmt.Fprintf(w, "%-10s %9s %10s %10s %10s %10s\n", "command", "count", "mean", "p50", "p99", "max")
	line := func(name string, h *Histogram) {
		fmt.Fprintf(w, "%-10s %9d %10s %10s %10s %10s\n", name, h.Count(), round(h.Mean()), round(h.Quantile(0.5)), round(h.Quantile(0.99)), round(h.Max()))
	}
	seen := map[string]bool{}
	for _, name := range commandOrder {
		if h := r.Commands[name]; h != nil && h.Count() > 0 {
			line(name, h)
			seen[name] = true
		}
	}
	var rest []string
	for name := range r.Commands {
		if !seen[name] {
			rest = append(rest, name)
		}
	}
	sort.Strings(rest)
	for _, name := range rest {
		line(name, r.Commands[name])
	}
	if r.Session != nil && r.Session.Count() > 0 {
		line("session", r.Session)
	}
	if r.Probe != nil {
		line("probe", r.Probe)
	}
	if len(r.Errors) > 0 {
		fmt.Fprintln(w, "errors:")
		var keys []string
		for k := range r.Errors {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "  %6d  %s\n", r.Errors[k], k)
		}
	}
}

// round shortens a duration for the table.
func round(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}
