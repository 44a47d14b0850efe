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
	m.Login(true, "PASS")
	m.Login(false, "AUTH PLAIN")
	m.Banned()
	m.Sent(1234)
	m.Refused("banned")
	m.Command("RETR", 3*time.Millisecond)
	var nilM *Metrics
	nilM.Login(true, "PASS") // must not panic

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`pouch_sessions{tls="yes"} 1`,
		`pouch_sessions{tls="no"} 0`,
		`pouch_connections_total{tls="no"} 1`,
		`pouch_logins_total{mechanism="AUTH PLAIN",result="failure"} 1`,
		`pouch_logins_total{mechanism="PASS",result="success"} 1`,
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
