package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestMetrics(t *testing.T) {
	m := New()
	m.SessionStarted(true)
	m.SessionStarted(false)
	m.SessionEnded(false)
	m.Login(true, "PASS", false)
	m.Login(false, "AUTH PLAIN", true)
	m.Banned()
	m.Sent(1234)
	m.Refused("banned")
	m.Command("RETR", 3*time.Millisecond)
	var nilM *Metrics
	nilM.Login(true, "PASS", true) // must not panic
	nilM.SessionUpgraded()

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`pouch_sessions{tls="yes"} 1`,
		`pouch_sessions{tls="no"} 0`,
		`pouch_connections_total{tls="no"} 1`,
		`pouch_logins_total{mechanism="AUTH PLAIN",result="failure",tls="yes"} 1`,
		`pouch_logins_total{mechanism="PASS",result="success",tls="no"} 1`,
		`pouch_bans_total 1`,
		`pouch_message_bytes_sent_total 1234`,
		`pouch_connections_refused_total{reason="banned"} 1`,
		`pouch_command_duration_seconds_count{command="RETR"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// A session upgraded with STLS counts as a TLS session from then on, and its
// connection still as one that arrived without TLS.
func TestSTLSUpgrade(t *testing.T) {
	m := New()
	m.SessionStarted(false)
	m.SessionStarted(false)
	m.SessionUpgraded()
	m.Login(true, "AUTH SCRAM-SHA-256", true)
	body := scrape(t, m)
	for _, want := range []string{
		`pouch_sessions{tls="yes"} 1`,
		`pouch_sessions{tls="no"} 1`,
		`pouch_connections_total{tls="no"} 2`,
		`pouch_logins_total{mechanism="AUTH SCRAM-SHA-256",result="success",tls="yes"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("after STLS, metrics lack %q", want)
		}
	}
	m.SessionEnded(true)
	if body = scrape(t, m); !strings.Contains(body, `pouch_sessions{tls="yes"} 0`) || !strings.Contains(body, `pouch_sessions{tls="no"} 1`) {
		t.Errorf("after the upgraded session ended:\n%s", body)
	}
	// The help text names the labels' values.
	for _, want := range []string{
		`# HELP pouch_connections_total Accepted POP3 connections, by how they arrived: tls="yes" on the POP3S`,
		`# HELP pouch_sessions Open POP3 sessions, by whether they use TLS now`,
		`# HELP pouch_logins_total Authentication attempts, by result ("success"; "failure"; "refused"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// A login refused after the right credentials counts as result "refused".
func TestLoginRefused(t *testing.T) {
	m := New()
	m.LoginRefused("PASS", true)
	if body := scrape(t, m); !strings.Contains(body, `pouch_logins_total{mechanism="PASS",result="refused",tls="yes"} 1`) {
		t.Errorf("refused login not counted:\n%s", body)
	}
}

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	return string(body)
}
