package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"

	"github.com/pouchmail/pouch/pop3"
)

// startTLS runs the server side of a TLS handshake (implicit TLS, or after
// STLS), bounded by the pre-login timeout. It reports false, after logging,
// when the handshake fails; the session then ends.
func (s *session) startTLS() bool {
	tc := tls.Server(s.dc, s.tlsConfig())
	// Ended by the pre-login timeout, or at once by an abort or a shed.
	ctx, cancel := context.WithTimeout(s.ctx, s.srv.cfg.PreLoginTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		switch {
		case s.shed.Load():
			s.log.Debug("closed to make room during the TLS handshake: the oldest connection not logged in")
		case !s.untrustedHeader(err):
			s.log.Info("TLS handshake failed", "err", err)
		}
		return false
	}
	state := tc.ConnectionState()
	s.verifyClientCert(&state)
	s.tls = &state
	s.op.tls.Store(true)
	s.localLeaf = s.presentedLeaf(state.DidResume)
	s.tlsConn.Store(tc)
	if !s.implicitTLS {
		s.srv.cfg.Metrics.SessionUpgraded() // STLS (RFC 2595 §4)
	}
	s.setStream(tc)
	s.log.Debug("TLS established", "version", tls.VersionName(state.Version), "cipher", tls.CipherSuiteName(state.CipherSuite), "resumed", state.DidResume)
	return true
}

// verifyClientCert checks the certificate a client presented against the
// client CAs now in force, for client authentication, and records its
// chains in state.VerifiedChains, which EXTERNAL requires. The handshake
// only asked for it (RFC 8446 §4.3.2, RFC 5246 §7.4.4): one that does not
// verify leaves EXTERNAL out and the session goes on.
func (s *session) verifyClientCert(state *tls.ConnectionState) {
	if len(state.PeerCertificates) == 0 || len(state.VerifiedChains) > 0 || s.srv.cfg.ClientCAs == nil {
		return
	}
	roots := s.srv.cfg.ClientCAs()
	if roots == nil {
		return
	}
	opts := x509.VerifyOptions{
		Roots:         roots,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, c := range state.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	leaf := state.PeerCertificates[0]
	chains, err := leaf.Verify(opts)
	if err != nil {
		s.log.Info("client certificate not accepted; EXTERNAL is not offered", "subject", leaf.Subject.String(), "err", err)
		return
	}
	state.VerifiedChains = chains
}

// tlsConfig is the server's TLS configuration for this connection:
// certificate selection wrapped so that the session learns which
// certificate it presented, for tls-server-end-point channel binding
// (RFC 5929 §4), and the client CAs now in force. Session tickets
// (RFC 5077, RFC 8446 §4.6.1) are sealed and opened with the keys of the
// server's one configuration, which crypto/tls makes and rotates, so that
// any later connection, on either port, can resume the session. A resumed
// session sends no certificate, so each ticket carries the one of the first
// handshake: tls-server-end-point binds to what the client saw.
func (s *session) tlsConfig() *tls.Config {
	base := s.srv.cfg.TLS
	cfg := base.Clone()
	cfg.GetCertificate = s.recordCertificate(cfg.GetCertificate, cfg.Certificates)
	cfg.WrapSession = s.wrapTicket(base)
	cfg.UnwrapSession = s.unwrapTicket(base)
	if s.srv.cfg.ClientCAs != nil {
		if roots := s.srv.cfg.ClientCAs(); roots != nil {
			// Ask for a certificate, naming the CAs, but do not let the
			// handshake check it: verifyClientCert does.
			cfg.ClientCAs = roots
			if cfg.ClientAuth == tls.NoClientCert || cfg.ClientAuth == tls.VerifyClientCertIfGiven {
				cfg.ClientAuth = tls.RequestClientCert
			}
		}
	}
	return cfg
}

// recordCertificate picks the certificate for a handshake as crypto/tls
// would, with pick when set, else among certs, and records it as
// s.localCert.
func (s *session) recordCertificate(pick func(*tls.ClientHelloInfo) (*tls.Certificate, error), certs []tls.Certificate) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		var c *tls.Certificate
		var err error
		switch {
		case pick != nil:
			c, err = pick(hello)
		case len(certs) == 0:
			err = errors.New("no certificate configured")
		default:
			c = &certs[0]
			for i := range certs {
				if hello.SupportsCertificate(&certs[i]) == nil {
					c = &certs[i]
					break
				}
			}
		}
		s.localCert = c
		return c, err
	}
}

// wrapTicket seals a session ticket with base's keys, carrying the leaf
// certificate the client saw.
func (s *session) wrapTicket(base *tls.Config) func(tls.ConnectionState, *tls.SessionState) ([]byte, error) {
	return func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		ss.Extra = slices.DeleteFunc(ss.Extra, isLeafExtra)
		if leaf := s.presentedLeaf(cs.DidResume); leaf != nil {
			ss.Extra = append(ss.Extra, append([]byte(leafExtra), leaf.Raw...))
		}
		if base.WrapSession != nil {
			return base.WrapSession(cs, ss)
		}
		return base.EncryptTicket(cs, ss)
	}
}

// unwrapTicket opens a session ticket with base's keys, and records the
// leaf certificate it carries as s.resumedLeaf.
func (s *session) unwrapTicket(base *tls.Config) func([]byte, tls.ConnectionState) (*tls.SessionState, error) {
	return func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		var ss *tls.SessionState
		var err error
		if base.UnwrapSession != nil {
			ss, err = base.UnwrapSession(identity, cs)
		} else {
			ss, err = base.DecryptTicket(identity, cs)
		}
		if ss != nil {
			s.resumedLeaf = nil
			if i := slices.IndexFunc(ss.Extra, isLeafExtra); i >= 0 {
				s.resumedLeaf, _ = x509.ParseCertificate(ss.Extra[i][len(leafExtra):])
			}
		}
		return ss, err
	}
}

// leafExtra marks the session ticket entry holding the server's
// certificate (tls.SessionState.Extra).
const leafExtra = "pouch-leaf\x00"

func isLeafExtra(b []byte) bool { return bytes.HasPrefix(b, []byte(leafExtra)) }

// presentedLeaf is the leaf certificate the client saw: on a resumed
// session the one of the first handshake, else the one picked now.
func (s *session) presentedLeaf(resumed bool) *x509.Certificate {
	if resumed {
		return s.resumedLeaf
	}
	c := s.localCert
	if c == nil || len(c.Certificate) == 0 {
		return nil
	}
	if c.Leaf != nil {
		return c.Leaf
	}
	leaf, _ := x509.ParseCertificate(c.Certificate[0])
	return leaf
}

// cleartextAllowed reports whether passwords may be sent on this connection:
// over TLS, or from a network the operator trusts (RFC 8314 §3, RFC 2595 §2).
func (s *session) cleartextAllowed() bool {
	return s.tls != nil || s.trusted
}

// cmdSTLS starts TLS on the plaintext port (RFC 2595 §4). Anything the client
// sent after STLS before the handshake is discarded, never run.
func (s *session) cmdSTLS(pop3.Command) error {
	switch {
	case s.tls != nil:
		return badCommand("TLS is already active")
	case s.srv.cfg.TLS == nil:
		return badCommand("TLS is not available")
	}
	s.w.OK("Begin TLS negotiation")
	if s.w.Flush() != nil {
		return errEnd
	}
	if n := s.r.Buffered(); n > 0 {
		s.log.Warn("discarding commands pipelined after STLS", "octets", n)
	}
	s.r.Discard()
	s.user = ""
	if !s.startTLS() {
		return errEnd
	}
	return nil
}
