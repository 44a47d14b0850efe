package server

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/pouchmail/pouch/auth"
)

// TokenVerifier checks OAuth 2.0 bearer tokens (OAUTHBEARER, RFC 7628, and
// XOAUTH2).
type TokenVerifier interface {
	// VerifyToken checks token (signature, issuer, audience, expiry) and
	// returns the user name it was issued for.
	VerifyToken(token string) (user string, err error)
}

// tokensUsable reports whether bearer tokens can be checked here: a
// verifier, and a connection where a bearer secret may be sent.
func (s *session) tokensUsable() bool {
	return s.srv.cfg.Tokens != nil && s.cleartextAllowed()
}

// tokenAccount checks a bearer token and returns the user it logs in as.
// name is the login name the client gave (OAUTHBEARER's a=, XOAUTH2's
// user=), normalized, or "" for none: RFC 7628 §3.1 makes a= optional, and
// the user is then the token's. A name or a token's user N stands for the
// user N, or for LOCAL when N is LOCAL@DOMAIN and DOMAIN is one of
// OAuthDomains (any domain when those are not set); the name and the token
// must stand for the same user, who must be in the users file. On error,
// user is who tried, for the log; when the source could not look the user
// up, s.unchecked says why.
func (s *session) tokenAccount(name, token string) (user string, err error) {
	issued, err := s.srv.cfg.Tokens.VerifyToken(token)
	if errors.Is(err, auth.ErrUnavailable) {
		s.unchecked = err // the issuer's key set is down: the token may be good
		return name, err
	}
	if err != nil {
		return name, err
	}
	tokenNames := s.oauthNames(s.accountName(issued))
	names := tokenNames
	if name != "" {
		names = s.oauthNames(name)
	} else {
		name = tokenNames[0]
	}
	matched := false
	for _, n := range names {
		if slices.Contains(tokenNames, n) {
			matched = true
			ok, err := s.srv.known(n)
			if err != nil {
				s.unchecked = err
				return n, err
			}
			if ok {
				return n, nil
			}
		}
	}
	if !matched {
		return name, errors.New("token issued for another user")
	}
	return name, errors.New("token for a user who is not in the users file")
}

// oauthNames lists the users that an OAuth name may stand for: the name
// itself, then LOCAL if the name is LOCAL@DOMAIN with DOMAIN one of
// OAuthDomains, or any domain when those are not set.
func (s *session) oauthNames(name string) []string {
	names := []string{name}
	i := strings.LastIndexByte(name, '@')
	if i <= 0 || i == len(name)-1 {
		return names
	}
	ok := len(s.srv.cfg.OAuthDomains) == 0
	for _, d := range s.srv.cfg.OAuthDomains {
		ok = ok || strings.EqualFold(d, name[i+1:])
	}
	if ok {
		names = append(names, s.accountName(name[:i]))
	}
	return names
}

// startOAuthBearer is OAUTHBEARER (RFC 7628).
func startOAuthBearer(x *exchange) sasl.Server {
	return &oauthBearerServer{x: x, inner: sasl.NewOAuthBearerServer(func(opts sasl.OAuthBearerOptions) *sasl.OAuthBearerError {
		name := ""
		if opts.Username != "" {
			name = x.s.accountName(opts.Username)
		}
		x.user = name
		if !x.beginCheck() {
			return &sasl.OAuthBearerError{Status: "invalid_request"} // not sent: the guard's refusal is the reply
		}
		if !x.checkToken(name, opts.Token) {
			return &sasl.OAuthBearerError{Status: "invalid_token", Schemes: "bearer"}
		}
		return nil
	})}
}

// checkToken checks a bearer token for the login name, and reports whether
// it logs in x.user. A refused token is told in an error challenge: the
// credentials were found wrong. A token whose user could not be looked up
// gets none, since the token may be good: the login is deferred at once.
func (x *exchange) checkToken(name, token string) bool {
	user, err := x.s.tokenAccount(name, token)
	x.user = user
	if x.s.unchecked != nil {
		x.refusal = x.s.login(user, x.method, false)
		return false
	}
	if err != nil {
		x.s.log.Debug("bearer token refused", "user", user, "err", err)
		x.stage = foundWrong
		return false
	}
	return true
}

// oauthBearerServer guards go-sasl's OAUTHBEARER server: after its error
// challenge, for a refused token or a malformed message, the only valid
// answer is a single 0x01 (RFC 7628 §3.2.3), and anything else ends the
// exchange as a failure here (go-sasl would index an empty answer).
type oauthBearerServer struct {
	x         *exchange
	inner     sasl.Server
	errorSent bool
}

func (o *oauthBearerServer) Next(response []byte) ([]byte, bool, error) {
	if o.errorSent && (len(response) != 1 || response[0] != 0x01) {
		if o.x.stage == foundWrong {
			return nil, true, errBadCredentials
		}
		return nil, true, errors.New("invalid answer to the error challenge")
	}
	challenge, done, err := o.inner.Next(response)
	// The only challenge after the client's message is the error one.
	o.errorSent = o.errorSent || (response != nil && !done && err == nil)
	return challenge, done, err
}

// xoauth2Server is Google's XOAUTH2: "user=U^Aauth=Bearer T^A^A". A failure
// is told in a JSON challenge that the client answers with an empty response.
type xoauth2Server struct {
	x *exchange
}

func startXOAuth2(x *exchange) sasl.Server { return &xoauth2Server{x: x} }

func (m *xoauth2Server) Next(response []byte) ([]byte, bool, error) {
	switch {
	case response == nil:
		return []byte{}, false, nil
	case m.x.stage == foundWrong:
		return nil, true, errBadCredentials
	}
	user, token := parseXOAuth2(string(response))
	m.x.user = m.x.s.accountName(user)
	if user == "" || token == "" {
		return nil, true, fmt.Errorf("%w: XOAUTH2 without user or token", errMalformed)
	}
	if !m.x.beginCheck() {
		return nil, true, errRefused
	}
	if !m.x.checkToken(m.x.user, token) {
		return []byte(`{"status":"401","schemes":"bearer"}`), false, nil
	}
	return nil, true, nil
}

// parseXOAuth2 returns the user and the bearer token of an XOAUTH2
// message, "" for what it lacks.
func parseXOAuth2(msg string) (user, token string) {
	for _, part := range strings.Split(msg, "\x01") {
		if v, ok := strings.CutPrefix(part, "user="); ok {
			user = v
		} else if v, ok := strings.CutPrefix(part, "auth="); ok {
			scheme, t, _ := strings.Cut(v, " ")
			if strings.EqualFold(scheme, "Bearer") {
				token = t
			}
		}
	}
	return user, token
}
