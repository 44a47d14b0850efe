package client

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/xdg-go/scram"

	"github.com/pouchmail/pouch/internal/oauthsasl"
	"github.com/pouchmail/pouch/pop3"
)

// maxSASLLine bounds a SASL challenge line (RFC 5034 §4 lets it exceed 255).
const maxSASLLine = 64 << 10

// Auth runs a SASL exchange (RFC 5034) with the given mechanism client. An
// initial response is sent on the AUTH line, "=" standing for an empty one.
func (c *Client) Auth(mech sasl.Client) error {
	if err := c.Wait(); err != nil {
		return err
	}
	name, ir, err := mech.Start()
	if err != nil {
		return err
	}
	args := []string{name}
	if ir != nil {
		if len(ir) == 0 {
			args = append(args, "=")
		} else {
			args = append(args, base64.StdEncoding.EncodeToString(ir))
		}
	}
	if err := pop3.WriteCommand(c.w, "AUTH", args...); err != nil {
		return err
	}
	for {
		if err := c.Flush(); err != nil {
			return err
		}
		rep, err := c.readReplyMax(maxSASLLine)
		if err != nil {
			return err
		}
		if !rep.Continuation {
			if err := rep.Err(); err != nil {
				return err
			}
			if v, ok := mech.(interface{ verified() error }); ok {
				// The server's +OK proves nothing by itself: a mechanism
				// that authenticates the server must have finished.
				if err := v.verified(); err != nil {
					return c.fail(fmt.Errorf("pop3 client: SASL %s: %w", name, err))
				}
			}
			return nil
		}
		chal, err := base64.StdEncoding.DecodeString(rep.Text)
		var resp []byte
		if err == nil {
			resp, err = mech.Next(chal)
		}
		if err != nil {
			// RFC 5034 §4: "*" cancels the exchange.
			pop3.WriteCommand(c.w, "*")
			if ferr := c.Flush(); ferr != nil {
				return ferr
			}
			if _, rerr := c.readReply(); rerr != nil {
				return rerr
			}
			return fmt.Errorf("pop3 client: SASL %s: %w", name, err)
		}
		if err := c.w.Line(base64.StdEncoding.EncodeToString(resp)); err != nil {
			return err
		}
	}
}

// Credentials are what Login may use.
type Credentials struct {
	User       string
	Password   string // for USER/PASS, APOP, PLAIN, LOGIN, SCRAM
	OAuthToken string // for OAUTHBEARER and XOAUTH2
	// OAuthForm says where the OAuth message goes: on the AUTH line, or
	// after a "+" continuation.
	OAuthForm OAuthForm
	// Host and Port go into OAUTHBEARER's message (RFC 7628 §3.1); Host
	// also tells Microsoft's servers, which want the two-step form.
	Host string
	Port int
}

// Login authenticates with the strongest method both sides support and
// returns its name. It asks CAPA first if that was not done. With a token:
// OAUTHBEARER, then XOAUTH2, in the form cr.OAuthForm says; a refusal is an
// *OAuthError. With a password: SCRAM-SHA-256-PLUS (over TLS),
// SCRAM-SHA-256, then over TLS PLAIN, LOGIN, USER/PASS, APOP, and without TLS
// APOP first, since it does not reveal the password.
func (c *Client) Login(cr Credentials) (string, error) {
	if c.caps == nil {
		if _, err := c.Capa(); err != nil {
			var perr *pop3.Error
			if !errors.As(err, &perr) {
				return "", err
			}
			// No CAPA (RFC 1939-only server): USER/PASS and APOP remain.
		}
	}
	offered := map[string]bool{}
	for _, m := range c.caps.SASL() {
		offered[m] = true
	}
	var methods []string
	if cr.OAuthToken != "" {
		methods = []string{"OAUTHBEARER", "XOAUTH2"}
	} else {
		methods = []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}
		if c.tls {
			methods = append(methods, "PLAIN", "LOGIN", "USER", "APOP")
		} else {
			methods = append(methods, "APOP", "PLAIN", "LOGIN", "USER")
		}
	}
	for _, m := range methods {
		var err error
		switch m {
		case "USER":
			// RFC 2449 §6.8: a CAPA without USER means USER/PASS is refused.
			if c.caps != nil && !c.caps.Has("USER") {
				continue
			}
			if err = c.User(cr.User); err == nil {
				err = c.Pass(cr.Password)
			}
		case "APOP":
			if !c.HasAPOP() {
				continue
			}
			err = c.APOP(cr.User, cr.Password)
		case "SCRAM-SHA-256-PLUS":
			if !offered[m] || !c.tls {
				continue
			}
			var mech sasl.Client
			if mech, err = c.scramClient(cr, true); err == nil {
				err = c.Auth(mech)
			}
		default:
			if !offered[m] {
				continue
			}
			var mech sasl.Client
			switch m {
			case "SCRAM-SHA-256":
				mech, err = c.scramClient(cr, false)
			case "PLAIN":
				mech = sasl.NewPlainClient("", cr.User, cr.Password)
			case "LOGIN":
				mech = sasl.NewLoginClient(cr.User, cr.Password)
			case "OAUTHBEARER", "XOAUTH2":
				err = c.oauthLogin(m, cr)
			}
			if err == nil && mech != nil {
				err = c.Auth(mech)
			}
		}
		if err != nil {
			return m, fmt.Errorf("login with %s failed: %w", m, err)
		}
		return m, nil
	}
	if cr.OAuthToken != "" {
		return "", errors.New("the server offers neither OAUTHBEARER nor XOAUTH2")
	}
	return "", errors.New("the server offers no login method this client can use")
}

// scramClient returns a SCRAM-SHA-256 client; plus binds it to the TLS
// channel: tls-exporter on TLS 1.3 (RFC 9266), tls-server-end-point before.
func (c *Client) scramClient(cr Credentials, plus bool) (sasl.Client, error) {
	sc, err := scram.SHA256.NewClient(cr.User, cr.Password, "")
	if err != nil {
		return nil, err
	}
	name := "SCRAM-SHA-256"
	var conv *scram.ClientConversation
	if plus {
		name += "-PLUS"
		st, _ := c.TLSConnectionState()
		var cb scram.ChannelBinding
		if st.Version >= tls.VersionTLS13 {
			cb, err = scram.NewTLSExporterBinding(&st)
		} else {
			cb, err = scram.NewTLSServerEndpointBinding(&st)
		}
		if err != nil {
			return nil, err
		}
		conv = sc.NewConversationWithChannelBinding(cb)
	} else if c.tls {
		// We could bind but the server offers no -PLUS: say so (RFC 5802 §6).
		conv = sc.NewConversationAdvertisingChannelBinding()
	} else {
		conv = sc.NewConversation()
	}
	return &scramMech{name: name, conv: conv}, nil
}

type scramMech struct {
	name string
	conv *scram.ClientConversation
}

func (s *scramMech) Start() (string, []byte, error) {
	first, err := s.conv.Step("")
	return s.name, []byte(first), err
}

func (s *scramMech) Next(challenge []byte) ([]byte, error) {
	if s.conv.Done() {
		// The server-final message came as a challenge; answer empty.
		return []byte{}, nil
	}
	resp, err := s.conv.Step(string(challenge))
	if err != nil {
		return nil, err
	}
	if s.conv.Done() && !s.conv.Valid() {
		return nil, errors.New("server signature does not verify")
	}
	return []byte(resp), nil
}

// verified reports whether the exchange ended with a valid server-final:
// a server that says +OK without it has not proved it knows the password.
func (s *scramMech) verified() error {
	if !s.conv.Done() || !s.conv.Valid() {
		return errors.New("server signature not verified: the server accepted the login without sending its SCRAM final message")
	}
	return nil
}

// NewXOAuth2Client returns a client of Google's and Microsoft's XOAUTH2
// mechanism for Auth, which sends its message on the AUTH line; Login
// chooses the form a server needs instead.
func NewXOAuth2Client(user, token string) sasl.Client { return &xoauth2{user, token} }

type xoauth2 struct{ user, token string }

func (x *xoauth2) Start() (string, []byte, error) {
	return oauthsasl.XOAuth2, oauthsasl.XOAuth2Response(x.user, x.token), nil
}

// Next answers an error challenge (a JSON status) with an empty response so
// the server ends the exchange with -ERR.
func (x *xoauth2) Next([]byte) ([]byte, error) {
	return oauthsasl.ErrorChallengeReply(oauthsasl.XOAuth2), nil
}

// Fingerprint returns the SHA-256 of a DER certificate as lower-case hex,
// the form --tls-fingerprint takes.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return fmt.Sprintf("%x", sum[:])
}

// NormalizeFingerprint lower-cases a hex fingerprint and drops colons.
func NormalizeFingerprint(s string) string {
	return strings.ToLower(strings.ReplaceAll(s, ":", ""))
}
