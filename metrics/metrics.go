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
			Name: "pouch_sessions", Help: "Open POP3 sessions.",
		}, []string{"tls"}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pouch_connections_total", Help: "Accepted POP3 connections, by whether they began with TLS.",
		}, []string{"tls"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pouch_connections_refused_total", Help: "Connections refused at connect, by reason.",
		}, []string{"reason"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pouch_logins_total", Help: "Authentication attempts, by result and mechanism.",
		}, []string{"result", "mechanism"}),
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

// SessionStarted counts a new connection.
func (m *Metrics) SessionStarted(tls bool) {
	if m == nil {
		return
	}
	m.connections.WithLabelValues(yesNo(tls)).Inc()
	m.sessions.WithLabelValues(yesNo(tls)).Inc()
}

// SessionEnded counts a session's end; tls is whether it began with TLS.
func (m *Metrics) SessionEnded(tls bool) {
	if m == nil {
		return
	}
	m.sessions.WithLabelValues(yesNo(tls)).Dec()
}

// Refused counts a connection refused at connect ("banned", "denied",
// "limit").
func (m *Metrics) Refused(reason string) {
	if m == nil {
		return
	}
	m.refused.WithLabelValues(reason).Inc()
}

// Login counts an authentication attempt.
func (m *Metrics) Login(ok bool, mechanism string) {
	if m == nil {
		return
	}
	result := "failure"
	if ok {
		result = "success"
	}
	m.logins.WithLabelValues(result, mechanism).Inc()
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
