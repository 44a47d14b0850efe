package server

import (
	"strconv"
	"strings"
	"time"

	"github.com/pouchmail/pouch/pop3"
)

// Implementation is the IMPLEMENTATION capability's value (RFC 2449 §6.9).
const Implementation = "Pouch"

// capability is a tag of the CAPA response, named with the section that
// defines it.
type capability string

const (
	capTop            capability = "TOP"            // RFC 2449 §6.1
	capUser           capability = "USER"           // RFC 2449 §6.2
	capSASL           capability = "SASL"           // RFC 2449 §6.3, RFC 5034
	capRespCodes      capability = "RESP-CODES"     // RFC 2449 §6.4
	capLoginDelay     capability = "LOGIN-DELAY"    // RFC 2449 §6.5
	capPipelining     capability = "PIPELINING"     // RFC 2449 §6.6
	capExpire         capability = "EXPIRE"         // RFC 2449 §6.7
	capUIDL           capability = "UIDL"           // RFC 2449 §6.8
	capImplementation capability = "IMPLEMENTATION" // RFC 2449 §6.9
	capSTLS           capability = "STLS"           // RFC 2595 §4
	capAuthRespCode   capability = "AUTH-RESP-CODE" // RFC 3206 §6
	capUTF8           capability = "UTF8"           // RFC 6856 §2
	capLang           capability = "LANG"           // RFC 6856 §3
)

// line is the capability's line in the CAPA response, with its arguments.
func (c capability) line(args ...string) string {
	if len(args) == 0 {
		return string(c)
	}
	return string(c) + " " + strings.Join(args, " ")
}

// capabilities lists the CAPA response for the session's state and
// connection (RFC 2449 §5): before login it is computed anew after STLS, and
// what sends a password appears only where passwords may be sent; after
// login it is the user's own (LOGIN-DELAY, EXPIRE).
func (s *session) capabilities() []string {
	before := s.state == stateAuthorization
	caps := []string{capTop.line(), capUIDL.line()}
	if before {
		caps = append(caps, s.loginCapabilities()...)
	}
	if delay := s.loginDelayCapability(); delay != "" {
		caps = append(caps, delay)
	}
	caps = append(caps,
		capRespCodes.line(),
		capAuthRespCode.line(),
		capPipelining.line(),
		s.expireCapability(),
		s.utf8Capability(),
		capLang.line(),
	)
	if !before {
		caps = append(caps, capImplementation.line(Implementation))
	}
	return caps
}

// loginCapabilities are the ways to log in that this connection offers:
// USER only where passwords may be sent, the SASL mechanisms that can
// succeed here, and STLS until TLS is up (RFC 2595 §4).
func (s *session) loginCapabilities() []string {
	var caps []string
	if s.cleartextAllowed() {
		caps = append(caps, capUser.line())
	}
	if mechs := s.mechanisms(); len(mechs) > 0 {
		caps = append(caps, capSASL.line(mechs...))
	}
	if s.tls == nil && s.srv.cfg.TLS != nil {
		caps = append(caps, capSTLS.line())
	}
	return caps
}

// loginDelayCapability is LOGIN-DELAY (RFC 2449 §6.5), or "" for none:
// before login the largest delay any user has, tagged USER; after login
// the user's own.
func (s *session) loginDelayCapability() string {
	if s.state != stateAuthorization {
		return secondsCapability(capLoginDelay, s.loginDelay(s.account))
	}
	return secondsCapability(capLoginDelay, max(s.srv.cfg.LoginDelay, s.srv.cfg.Auth.Summary().MaxLoginDelay), "USER")
}

// secondsCapability is c with d in whole seconds and tags, or "" when d
// is none.
func secondsCapability(c capability, d time.Duration, tags ...string) string {
	if d <= 0 {
		return ""
	}
	return c.line(append([]string{strconv.Itoa(int(d / time.Second))}, tags...)...)
}

// utf8Capability is UTF8 (RFC 6856 §2), with the USER tag, which says that
// USER takes UTF-8 names, only where USER is offered.
func (s *session) utf8Capability() string {
	if s.cleartextAllowed() {
		return capUTF8.line("USER")
	}
	return capUTF8.line()
}

func (s *session) cmdCAPA() error {
	s.w.OK("Capability list follows")
	for _, c := range s.capabilities() {
		s.w.Line(c)
	}
	s.w.Line(".")
	return nil
}

// cmdUTF8 enables UTF-8 mode (RFC 6856 §2). Pouch sends messages as stored
// and takes UTF-8 user names and passwords in any mode, so it only answers.
func (s *session) cmdUTF8(pop3.Command) error {
	s.w.OK("UTF8 enabled")
	return nil
}

// cmdLANG lists or selects the language of responses (RFC 6856 §3); Pouch
// speaks English.
func (s *session) cmdLANG(cmd pop3.Command) error {
	switch {
	case len(cmd.Args) == 0:
		s.w.OK("language listing follows")
		s.w.Line("en English")
		s.w.Line(".")
	case len(cmd.Args) == 1 && (cmd.Args[0] == "*" || strings.EqualFold(cmd.Args[0], "en") || strings.HasPrefix(strings.ToLower(cmd.Args[0]), "en-")):
		s.w.OK("en language selected")
	case len(cmd.Args) == 1:
		return errReply("", "unsupported language")
	default:
		return badCommand("LANG takes at most one argument")
	}
	return nil
}
