package server

import (
	"net/netip"
	"testing"
)

func TestCapa(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	want := `
		S: \+OK Capability list follows
		S: TOP
		S: UIDL
		S: USER
		S: SASL PLAIN LOGIN
		S: RESP-CODES
		S: AUTH-RESP-CODE
		S: PIPELINING
		S: EXPIRE NEVER
		S: UTF8 USER
		S: LANG`
	after := `
		S: \+OK Capability list follows
		S: TOP
		S: UIDL
		S: RESP-CODES
		S: AUTH-RESP-CODE
		S: PIPELINING
		S: EXPIRE NEVER
		S: UTF8 USER
		S: LANG`
	c.transcript(`S: \+OK Pouch ready\.
		C: CAPA` + want + `
		S: \.
		C: USER alice
		S: \+OK send PASS
		C: PASS secret
		S: \+OK maildrop has 0 messages \(0 octets\)
		C: capa` + after + `
		S: IMPLEMENTATION Pouch
		S: \.`)
}

// RFC 6856 §2: the USER tag of UTF8 only where USER is offered.
func TestCapaUTF8Tag(t *testing.T) {
	ts := newTLSServer(t, "127.0.0.2", func(c *Config) {
		c.InsecureAuthNetworks = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	c := ts.dialFrom(t, "127.0.0.2")
	c.expect(`\+OK Pouch ready\..*`)
	if caps := c.capa(); has(caps, "USER") || has(caps, "UTF8 USER") || !has(caps, "UTF8") {
		t.Fatalf("CAPA without TLS from an untrusted network: %v", caps)
	}
	c.starttls(ts.roots)
	if caps := c.capa(); !has(caps, "USER") || !has(caps, "UTF8 USER") {
		t.Fatalf("CAPA after STLS: %v", caps)
	}
}

func TestUTF8AndLANG(t *testing.T) {
	ts := newTestServer(t, func(c *Config) {
		c.Auth = fakeAuth{users: map[string]string{"j\u00f6rg": "secret"}}
	})
	c := ts.dial(t)
	c.transcript(`
		S: \+OK Pouch ready\.
		C: LANG
		S: \+OK language listing follows
		S: en English
		S: \.
		C: LANG fr
		S: -ERR unsupported language
		C: LANG en
		S: \+OK en language selected
		C: UTF8
		S: \+OK UTF8 enabled
		C: USER jo\x{0308}rg
		S: \+OK send PASS`)
	// The decomposed name (o + combining diaeresis) is normalized to NFC.
	c.send("USER jo\u0308rg\r\nPASS secret\r\n")
	c.expect(`\+OK send PASS`)
	c.expect(`\+OK maildrop has 0 messages .*`)
	c.transcript(`
		C: LANG
		S: \+OK language listing follows
		S: en English
		S: \.`)
}
