package server

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/xdg-go/scram"

	"github.com/pouchmail/pouch/auth"
)

// scram returns the source of SCRAM-SHA-256 keys (RFC 5802, RFC 7677)
// while some account has them, or nil.
func (s *session) scram() auth.SCRAMSource {
	if s.srv.scramKeys != nil && s.srv.cfg.Auth.Summary().SCRAM {
		return s.srv.scramKeys
	}
	return nil
}

// scramServer is SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677).
// Unknown users get made-up credentials, stable per name, so that the
// exchange fails only at the proof, as a wrong password does.
type scramServer struct {
	x       *exchange
	plus    bool
	conv    *scram.ServerConversation
	success bool // the server-final message was sent; the empty response is next
}

// scramProof reports whether out, the server's answer to a client-final
// message, says that its proof was checked and found wrong (RFC 5802 §7:
// server-error "invalid-proof"); any other error is about a message that
// could not be checked.
func scramProof(out string) bool { return out == scram.ErrInvalidProof }

func startSCRAM(x *exchange) sasl.Server { return &scramServer{x: x} }

func startSCRAMPlus(x *exchange) sasl.Server { return &scramServer{x: x, plus: true} }

func (m *scramServer) Next(response []byte) ([]byte, bool, error) {
	if response == nil {
		return []byte{}, false, nil // the client-first message comes next
	}
	if m.success {
		// RFC 5034 §4: the client answers the server-final challenge with
		// an empty response.
		if len(response) != 0 {
			return nil, true, errors.New("non-empty response after server-final")
		}
		return nil, true, nil
	}
	final := m.conv != nil // the client-final message, with the proof
	if !final {
		conv, err := m.conversation(string(response))
		if err != nil {
			return nil, true, err
		}
		m.conv = conv
	} else if !m.x.beginCheck() {
		return nil, true, errRefused
	}
	out, err := m.conv.Step(string(response))
	if m.conv.Username() != "" {
		m.x.user = m.x.s.accountName(m.conv.Username())
	}
	switch {
	case err != nil && final && scramProof(out):
		return nil, true, errBadCredentials
	case err != nil && final:
		// Malformed, or a channel binding or nonce that does not match:
		// the proof was not checked.
		m.x.unchecked()
		return nil, true, err
	case err != nil:
		return nil, true, err
	}
	if m.conv.Done() {
		if !m.conv.Valid() {
			return nil, true, errBadCredentials
		}
		if err := m.x.s.checkAuthz(m.conv.AuthzID(), m.x.user); err != nil {
			return nil, true, err
		}
		m.success = true
	}
	return []byte(out), false, nil
}

// conversation sets up the SCRAM conversation for the channel binding that
// the client-first message asks for (RFC 5802 §6: its GS2 header).
func (m *scramServer) conversation(clientFirst string) (*scram.ServerConversation, error) {
	server, err := scram.SHA256.NewServer(m.x.s.scramLookup)
	if err != nil {
		return nil, err
	}
	flag, _, _ := strings.Cut(clientFirst, ",")
	if m.plus != strings.HasPrefix(flag, "p=") {
		return nil, errors.New("channel binding flag does not fit the mechanism")
	}
	if m.x.s.tls == nil {
		return server.NewConversation(), nil
	}
	var cb scram.ChannelBinding
	switch t := scram.ChannelBindingType(strings.TrimPrefix(flag, "p=")); {
	case !m.plus:
		// Only to recognise a downgraded client ("y"): any binding the
		// connection has will do.
		if cb, err = scram.NewTLSExporterBinding(m.x.s.tls); err != nil {
			cb, err = m.endpointBinding()
		}
	case t == scram.ChannelBindingTLSExporter:
		cb, err = scram.NewTLSExporterBinding(m.x.s.tls)
	case t == scram.ChannelBindingTLSServerEndpoint:
		cb, err = m.endpointBinding()
	default:
		return nil, fmt.Errorf("unsupported channel binding type %q", t)
	}
	if err != nil {
		return nil, err
	}
	if m.plus {
		return server.NewConversationWithChannelBindingRequired(cb), nil
	}
	// PLUS is advertised on TLS: a client saying "y" was downgraded.
	return server.NewConversationWithChannelBinding(cb), nil
}

// endpointBinding is tls-server-end-point: a hash of the server's own
// certificate (RFC 5929 §4.1).
func (m *scramServer) endpointBinding() (scram.ChannelBinding, error) {
	if m.x.s.localLeaf == nil {
		return scram.ChannelBinding{}, errors.New("server certificate unknown")
	}
	return scram.NewTLSServerEndpointBinding(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{m.x.s.localLeaf}})
}

// scramLookup returns the credentials of user, or made-up ones. The name
// from the client-first message is normalized as every user name is
// (RFC 6856 §4).
func (s *session) scramLookup(user string) (scram.StoredCredentials, error) {
	user = s.accountName(user)
	if a := s.scram(); a != nil {
		if creds, ok := a.SCRAMCredentials(user); ok {
			return creds, nil
		}
	}
	mac := hmac.New(sha256.New, s.srv.fakeKey)
	mac.Write([]byte(user))
	salt := mac.Sum(nil)[:16]
	keys := make([]byte, 64)
	rand.Read(keys)
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: 4096},
		StoredKey:  keys[:32],
		ServerKey:  keys[32:],
	}, nil
}
