// Package metrics holds Pouch's Prometheus metrics and serves them over HTTP
// (--metrics ADDR). A nil *Metrics records nothing, so callers need not check
// whether metrics are on.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the server's counters, gauges and histograms.
type Metrics struct {
	registry    *prometheus.Registry
	sessions    *prometheus.GaugeVec
	connections *prometheus.CounterVec
	refused     *prometheus.CounterVec
	logins      *prometheus.CounterVec
	bans        prometheus.Counter
	bytesSent   prometheus.Counter
	commands    *prometheus.HistogramVec
}

// New makes the metrics in a registry of their own, with Go runtime and
// process metrics beside them.
func New() *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pouch_sessions",
			Help: `Open POP3 sessions, by whether they use TLS now: tls="yes" on the POP3S port and after STLS, tls="no" otherwise.`,
		}, []string{"tls"}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pouch_connections_total",
			Help: `Accepted POP3 connections, by how they arrived: tls="yes" on the POP3S (implicit TLS) port, tls="no" on the POP3 port, even when they go on with STLS.`,
		}, []string{"tls"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pouch_connections_refused_total", Help: `Connections refused at connect, by reason: "banned", "denied" (access rules), "limit", "proxy" (a missing, malformed or unwanted PROXY protocol header), or closed to make room for new ones before they logged in ("shed").`,
		}, []string{"reason"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pouch_logins_total",
			Help: `Authentication attempts, by result ("success"; "failure"; "refused": right credentials but the login was refused, as for a disabled account, LOGIN-DELAY or a maildrop in use), mechanism, and whether the session used TLS at the time (tls="yes" or "no").`,
		}, []string{"result", "mechanism", "tls"}),
		bans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pouch_bans_total", Help: "Sources banned for failed logins.",
		}),
		bytesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pouch_message_bytes_sent_total", Help: "Octets of messages sent by RETR and TOP.",
		}),
		commands: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pouch_command_duration_seconds",
			Help:    "Time to answer a command, by command.",
			Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 5},
		}, []string{"command"}),
	}
	m.registry.MustRegister(m.sessions, m.connections, m.refused, m.logins, m.bans, m.bytesSent, m.commands,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// SessionStarted counts a new connection; tls is whether it arrived on the
// implicit-TLS port.
func (m *Metrics) SessionStarted(tls bool) {
	if m == nil {
		return
	}
	m.connections.WithLabelValues(yesNo(tls)).Inc()
	m.sessions.WithLabelValues(yesNo(tls)).Inc()
}

// SessionUpgraded moves a session that began without TLS to the TLS
// sessions, after STLS (RFC 2595 §4). Its connection stays counted as it
// arrived.
func (m *Metrics) SessionUpgraded() {
	if m == nil {
		return
	}
	m.sessions.WithLabelValues("no").Dec()
	m.sessions.WithLabelValues("yes").Inc()
}

// SessionEnded counts a session's end; tls is whether it used TLS at the
// end (after SessionUpgraded, true).
func (m *Metrics) SessionEnded(tls bool) {
	if m == nil {
		return
	}
	m.sessions.WithLabelValues(yesNo(tls)).Dec()
}

// Refused counts a connection refused at connect ("banned", "denied",
// "limit", "proxy"), or closed before login to make room ("shed").
func (m *Metrics) Refused(reason string) {
	if m == nil {
		return
	}
	m.refused.WithLabelValues(reason).Inc()
}

// Login counts an authentication attempt; tls is whether the session used
// TLS when it was made.
func (m *Metrics) Login(ok bool, mechanism string, tls bool) {
	if m == nil {
		return
	}
	result := "failure"
	if ok {
		result = "success"
	}
	m.logins.WithLabelValues(result, mechanism, yesNo(tls)).Inc()
}

// LoginRefused counts a login refused after the credentials were found
// good (result "refused").
func (m *Metrics) LoginRefused(mechanism string, tls bool) {
	if m == nil {
		return
	}
	m.logins.WithLabelValues("refused", mechanism, yesNo(tls)).Inc()
}

// Banned counts a ban.
func (m *Metrics) Banned() {
	if m == nil {
		return
	}
	m.bans.Inc()
}

// Sent counts message octets sent.
func (m *Metrics) Sent(n int64) {
	if m == nil {
		return
	}
	m.bytesSent.Add(float64(n))
}

// Command records how long a command took.
func (m *Metrics) Command(name string, d time.Duration) {
	if m == nil {
		return
	}
	m.commands.WithLabelValues(name).Observe(d.Seconds())
}
