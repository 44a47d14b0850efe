package loadgen

import (
	"encoding/json"
	"io"
)

// Latency is one command's latency summary in microseconds.
type Latency struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean_us"`
	P50   float64 `json:"p50_us"`
	P99   float64 `json:"p99_us"`
	Max   float64 `json:"max_us"`
}

func latencyOf(h *Histogram) Latency {
	us := func(d interface{ Microseconds() int64 }) float64 { return float64(d.Microseconds()) }
	return Latency{Count: h.Count(), Mean: us(h.Mean()), P50: us(h.Quantile(0.5)), P99: us(h.Quantile(0.99)), Max: us(h.Max())}
}

// WriteJSON prints the report as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	out := struct {
		ElapsedS   float64            `json:"elapsed_s"`
		Sessions   int64              `json:"sessions"`
		Failed     int64              `json:"failed"`
		Messages   int64              `json:"messages"`
		Bytes      int64              `json:"bytes"`
		Peak       int64              `json:"peak_open"`
		SessionsPS float64            `json:"sessions_per_s"`
		MessagesPS float64            `json:"messages_per_s"`
		MBPS       float64            `json:"mb_per_s"`
		Commands   map[string]Latency `json:"commands"`
		// Sessions with the right password that did not get in, and
		// sessions with a mistyped one that were refused or let in.
		CorrectRefused int64            `json:"correct_refused"`
		WrongRefused   int64            `json:"wrong_refused"`
		WrongAccepted  int64            `json:"wrong_accepted"`
		Probe          *Latency         `json:"probe_noop,omitempty"`
		Errors         map[string]int64 `json:"errors,omitempty"`
	}{
		ElapsedS: r.Elapsed.Seconds(), Sessions: r.Sessions, Failed: r.Failed, Messages: r.Messages, Bytes: r.Bytes,
		Peak: r.Peak, SessionsPS: r.SessionsPerSecond(), MessagesPS: r.MessagesPerSecond(), MBPS: r.MBPerSecond(),
		Commands: map[string]Latency{}, Errors: r.Errors,
		CorrectRefused: r.CorrectRefused, WrongRefused: r.WrongRefused, WrongAccepted: r.WrongAccepted,
	}
	for k, h := range r.Commands {
		out.Commands[k] = latencyOf(h)
	}
	if r.Probe != nil {
		l := latencyOf(r.Probe)
		out.Probe = &l
	}
	return json.NewEncoder(w).Encode(out)
}
