package server

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/xdg-go/scram"

	"github.com/pouchmail/pouch/auth"
	"github.com/pouchmail/pouch/pop3"
)

// TokenVerifier checks OAuth 2.0 bearer tokens (OAUTHBEARER, RFC 7628, and
// XOAUTH2).
type TokenVerifier interface {
	// VerifyToken checks token (signature, issuer, audience, expiry) and
	// returns the user name it was issued for.
	VerifyToken(token string) (user string, err error)
}

// saslMechanism is a SASL mechanism the server offers (RFC 5034).
type saslMechanism struct {
	name string
	// available reports whether the mechanism can succeed on this session;
	// only then is it advertised and accepted.
	available func(s *session) bool
	// start begins an exchange; the server's Next reports success by
	// returning done with a nil error, after setting res.user.
	start func(s *session, res *saslResult) sasl.Server
}

// saslResult is what an exchange found out.
type saslResult struct {
	method string // "AUTH " and the mechanism's name
	user   string // the user authenticated, or who tried
	// attempted: a message bearing credentials arrived and the guard's
	// attempt began (beginCheck); an exchange that fails without it was
	// malformed and checked nothing.
	attempted bool
	refused   bool // the guard refused the attempt, and the client was answered
	checked   bool // credentials were checked and found wrong
}

// beginCheck starts the guard's attempt (throttle) for res.user, the name
// the client gave, when a message bearing credentials has arrived, just
// before they are checked, and reports whether they may be checked. When
// not, the client was answered and the mechanism ends the exchange with
// errRefused.
func (s *session) beginCheck(res *saslResult) bool {
	if !s.throttle(res.user, res.method) {
		res.refused = true
		return false
	}
	res.attempted = true
	return true
}

// errRefused ends an exchange whose attempt the guard refused.
var errRefused = errors.New("attempt refused by the guard")

// errMalformed is what a mechanism returns for a message that bears no
// credential to check (RFC 4422 §3.6: the exchange fails).
var errMalformed = errors.New("malformed SASL message")

// mechanismList is in order of preference, strongest first.
var mechanismList []saslMechanism

func init() {
	mechanismList = []saslMechanism{
		{"SCRAM-SHA-256-PLUS", func(s *session) bool { return s.tls != nil && s.scram() != nil }, startSCRAMPlus},
		{"SCRAM-SHA-256", func(s *session) bool { return s.scram() != nil }, startSCRAM},
		{"EXTERNAL", func(s *session) bool { return s.clientCertName() != "" }, startExternal},
		{"OAUTHBEARER", (*session).tokensUsable, startOAuthBearer},
		{"XOAUTH2", (*session).tokensUsable, startXOAuth2},
		{"PLAIN", (*session).cleartextAllowed, startPlain},
		{"LOGIN", (*session).cleartextAllowed, startLogin},
	}
}

// mechanisms lists the names of the mechanisms that can succeed now.
func (s *session) mechanisms() []string {
	var names []string
	for _, m := range mechanismList {
		if m.available(s) {
			names = append(names, m.name)
		}
	}
	return names
}

// scram returns the source of SCRAM-SHA-256 keys (RFC 5802, RFC 7677)
// while some account has them, or nil.
func (s *session) scram() auth.SCRAMSource {
	if s.srv.scramKeys != nil && s.srv.cfg.Auth.Summary().SCRAM {
		return s.srv.scramKeys
	}
	return nil
}

// tokensUsable reports whether bearer tokens can be checked here: a
// verifier, and a connection where a bearer secret may be sent.
func (s *session) tokensUsable() bool {
	return s.srv.cfg.Tokens != nil && s.cleartextAllowed()
}

// clientCertName is the common name of a client certificate verified against
// the configured client CAs, or "".
func (s *session) clientCertName() string {
	if s.tls == nil || len(s.tls.VerifiedChains) == 0 {
		return ""
	}
	return s.tls.VerifiedChains[0][0].Subject.CommonName
}

// cmdAUTH runs a SASL exchange (RFC 5034 §4).
func (s *session) cmdAUTH(cmd pop3.Command) {
	s.user = ""
	if len(cmd.Args) == 0 {
		// The mechanism list of RFC 1734 clients.
		s.w.OK("SASL mechanisms follow")
		for _, name := range s.mechanisms() {
			s.w.Line(name)
		}
		s.w.Line(".")
		return
	}
	if len(cmd.Args) > 2 {
		s.badCommand("AUTH takes a mechanism and an optional initial response")
		return
	}
	var mech *saslMechanism
	for i := range mechanismList {
		if strings.EqualFold(mechanismList[i].name, cmd.Args[0]) {
			mech = &mechanismList[i]
		}
	}
	if mech == nil {
		s.w.Err("", "unsupported SASL mechanism")
		return
	}
	if !mech.available(s) {
		if s.cleartextAllowed() {
			s.w.Err("", "SASL mechanism not available on this connection")
		} else {
			s.w.Err(pop3.CodeAuth, errCleartext)
		}
		return
	}
	// The guard's attempt begins only once credentials arrive (beginCheck):
	// a client that starts an exchange and falls silent holds no place of
	// its source. However the exchange ends without a failed check
	// (cancelled, cut off), the attempt ends with it.
	defer s.attemptDone()
	method := "AUTH " + mech.name
	res := saslResult{method: method}
	server := mech.start(s, &res)
	var response []byte // nil: no initial response
	if len(cmd.Args) == 2 {
		response = []byte{} // "=" is an empty initial response
		if cmd.Args[1] != "=" {
			var err error
			if response, err = base64.StdEncoding.DecodeString(cmd.Args[1]); err != nil {
				s.w.Err("", "invalid base64 in initial response")
				return
			}
		}
	}
	for {
		challenge, done, err := server.Next(response)
		if res.refused {
			return // throttle answered
		}
		if err != nil && !res.attempted {
			// Nothing was checked, so nothing was learnt: no failed login
			// (none for fail2ban, no failure delay), but a bad command.
			s.log.Debug("malformed SASL message", "mechanism", mech.name, "err", err)
			s.badCommand("malformed SASL message")
			return
		}
		if err != nil || done {
			if err != nil {
				s.log.Debug("SASL exchange failed", "mechanism", mech.name, "err", err)
			}
			s.login(res.user, method, err == nil)
			return
		}
		if res.checked {
			// An error challenge (RFC 7628 §3.2.2, and XOAUTH2's) tells
			// the client that its token was refused: it waits the delay of
			// a failed login, as -ERR [AUTH] does.
			s.failDelay()
		}
		// Waiting for the client again, the session may be shed for room
		// (shedOldest) like any other not logged in: a client that stalls
		// the exchange after its check holds no protected place.
		s.endCheck()
		if s.w.Continue(base64.StdEncoding.EncodeToString(challenge)) != nil || s.w.Flush() != nil {
			s.state = stateDone
			s.countFailure(&res, method)
			return
		}
		line, err := s.r.ReadLine(maxSASLLine)
		switch {
		case res.checked && (errors.Is(err, pop3.ErrLineTooLong) || errors.Is(err, pop3.ErrBadLine)):
			// Credentials were found wrong; however the exchange ends
			// after that, it is a failed login.
			s.login(res.user, method, false)
			return
		case errors.Is(err, pop3.ErrLineTooLong), errors.Is(err, pop3.ErrBadLine):
			s.badCommand("invalid SASL response")
			return
		case err != nil:
			s.readFailed(err)
			s.state = stateDone
			s.countFailure(&res, method)
			return
		case string(line) == "*":
			if res.checked {
				// Credentials were found wrong; cancelling does not hide it.
				s.login(res.user, method, false)
				return
			}
			// RFC 5034 §4: a cancelled exchange is rejected with -ERR.
			s.w.Err("", "authentication cancelled")
			return
		}
		if response, err = base64.StdEncoding.DecodeString(string(line)); err != nil {
			if res.checked {
				s.login(res.user, method, false)
				return
			}
			s.w.Err("", "invalid base64 in SASL response")
			return
		}
	}
}

// countFailure records a failed login, when credentials were checked and
// found wrong, for an exchange cut short by the connection: the client
// learnt the answer from the error challenge.
func (s *session) countFailure(res *saslResult, method string) {
	if res.checked {
		s.login(res.user, method, false) // its reply goes nowhere
	}
}

// authLineMax is the longest command line the session reads now: an AUTH
// command before login may carry an initial response longer than the
// 255 octets of RFC 2449 §4 (RFC 5034 §4), up to a SASL response line.
func (s *session) authLineMax() int {
	if s.state == stateAuthorization {
		return max(maxSASLLine, s.srv.cfg.MaxLineLength)
	}
	return s.srv.cfg.MaxLineLength
}

// errBadCredentials is what failed mechanisms return; the client sees only the
// one -ERR [AUTH] reply of login.
var errBadCredentials = errors.New("invalid credentials")

// checkAuthz accepts an authorization identity that is empty or, once
// made an account name, the authenticated user: Pouch has no proxy
// authorization.
func (s *session) checkAuthz(authz, user string) error {
	if authz != "" && s.accountName(authz) != user {
		return errors.New("authorization identity differs from the user")
	}
	return nil
}

// startPlain is SASL PLAIN (RFC 4616). A message without a user name
// (authcid is 1*SAFE, RFC 4616 §2) bears no credential.
func startPlain(s *session, res *saslResult) sasl.Server {
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if username == "" {
			return errMalformed
		}
		res.user = s.accountName(username)
		if !s.beginCheck(res) {
			return errRefused
		}
		ok := s.verify(res.user, password)
		if err := s.checkAuthz(identity, res.user); err != nil {
			return err
		}
		if !ok {
			return errBadCredentials
		}
		return nil
	})
}

// loginServer is the LOGIN mechanism (draft-murchison-sasl-login): the user
// name and the password in answer to two prompts.
type loginServer struct {
	s        *session
	res      *saslResult
	username *string
}

func startLogin(s *session, res *saslResult) sasl.Server { return &loginServer{s: s, res: res} }

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch {
	case l.username == nil && response == nil:
		return []byte("Username:"), false, nil
	case l.username == nil && len(response) == 0:
		return nil, true, errMalformed // no user name: no credential
	case l.username == nil:
		name := l.s.accountName(string(response))
		l.username, l.res.user = &name, name
		return []byte("Password:"), false, nil
	}
	if !l.s.beginCheck(l.res) {
		return nil, true, errRefused
	}
	if !l.s.verify(*l.username, string(response)) {
		return nil, true, errBadCredentials
	}
	return nil, true, nil
}

// scramServer is SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802, RFC 7677).
// Unknown users get made-up credentials, stable per name, so that the
// exchange fails only at the proof, as a wrong password does.
type scramServer struct {
	s       *session
	res     *saslResult
	plus    bool
	conv    *scram.ServerConversation
	success bool // the server-final message was sent; the empty response is next
}

// scramProof reports whether out, the server's answer to a client-final
// message, says that its proof was checked and found wrong (RFC 5802 §7:
// server-error "invalid-proof"); any other error is about a message that
// could not be checked.
func scramProof(out string) bool { return out == scram.ErrInvalidProof }

func startSCRAM(s *session, res *saslResult) sasl.Server {
	return &scramServer{s: s, res: res}
}

func startSCRAMPlus(s *session, res *saslResult) sasl.Server {
	return &scramServer{s: s, res: res, plus: true}
}

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
	} else if !m.s.beginCheck(m.res) {
		return nil, true, errRefused
	}
	out, err := m.conv.Step(string(response))
	if m.conv.Username() != "" {
		m.res.user = m.s.accountName(m.conv.Username())
	}
	switch {
	case err != nil && final && scramProof(out):
		return nil, true, errBadCredentials
	case err != nil && final:
		// Malformed, or a channel binding or nonce that does not match:
		// the proof was not checked.
		m.s.attemptDone()
		m.res.attempted = false
		return nil, true, err
	case err != nil:
		return nil, true, err
	}
	if m.conv.Done() {
		if !m.conv.Valid() {
			return nil, true, errBadCredentials
		}
		if err := m.s.checkAuthz(m.conv.AuthzID(), m.res.user); err != nil {
			return nil, true, err
		}
		m.success = true
	}
	return []byte(out), false, nil
}

// conversation sets up the SCRAM conversation for the channel binding that
// the client-first message asks for (RFC 5802 §6: its GS2 header).
func (m *scramServer) conversation(clientFirst string) (*scram.ServerConversation, error) {
	server, err := scram.SHA256.NewServer(m.s.scramLookup)
	if err != nil {
		return nil, err
	}
	flag, _, _ := strings.Cut(clientFirst, ",")
	if m.plus != strings.HasPrefix(flag, "p=") {
		return nil, errors.New("channel binding flag does not fit the mechanism")
	}
	if m.s.tls == nil {
		return server.NewConversation(), nil
	}
	var cb scram.ChannelBinding
	switch t := scram.ChannelBindingType(strings.TrimPrefix(flag, "p=")); {
	case !m.plus:
		// Only to recognise a downgraded client ("y"): any binding the
		// connection has will do.
		if cb, err = scram.NewTLSExporterBinding(m.s.tls); err != nil {
			cb, err = m.endpointBinding()
		}
	case t == scram.ChannelBindingTLSExporter:
		cb, err = scram.NewTLSExporterBinding(m.s.tls)
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
	if m.s.localLeaf == nil {
		return scram.ChannelBinding{}, errors.New("server certificate unknown")
	}
	return scram.NewTLSServerEndpointBinding(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{m.s.localLeaf}})
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

// startExternal is SASL EXTERNAL (RFC 4422 Appendix A) with a client
// certificate: the user is the certificate's common name, normalized as
// every user name is (RFC 6856 §4).
func startExternal(s *session, res *saslResult) sasl.Server {
	return sasl.NewExternalServer(func(identity string) error {
		name := s.accountName(s.clientCertName())
		res.user = name
		if !s.beginCheck(res) {
			return errRefused
		}
		if err := s.checkAuthz(identity, name); err != nil {
			return err
		}
		if !s.srv.known(name) {
			return errBadCredentials
		}
		return nil
	})
}

// tokenAccount checks a bearer token and returns the user it logs in as.
// name is the login name the client gave (OAUTHBEARER's a=, XOAUTH2's
// user=), normalized, or "" for none: RFC 7628 §3.1 makes a= optional, and
// the user is then the token's. A name or a token's user N stands for the
// user N, or for LOCAL when N is LOCAL@DOMAIN and DOMAIN is one of
// OAuthDomains (any domain when those are not set); the name and the token
// must stand for the same user, who must be in the users file. On error,
// user is who tried, for the log.
func (s *session) tokenAccount(name, token string) (user string, err error) {
	issued, err := s.srv.cfg.Tokens.VerifyToken(token)
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
			if s.srv.known(n) {
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
func startOAuthBearer(s *session, res *saslResult) sasl.Server {
	return &oauthBearerServer{res: res, inner: sasl.NewOAuthBearerServer(func(opts sasl.OAuthBearerOptions) *sasl.OAuthBearerError {
		name := ""
		if opts.Username != "" {
			name = s.accountName(opts.Username)
		}
		res.user = name
		if !s.beginCheck(res) {
			return &sasl.OAuthBearerError{Status: "invalid_request"} // not sent: throttle answered
		}
		user, err := s.tokenAccount(name, opts.Token)
		res.user = user
		if err != nil {
			s.log.Debug("bearer token refused", "user", user, "err", err)
			res.checked = true
			return &sasl.OAuthBearerError{Status: "invalid_token", Schemes: "bearer"}
		}
		return nil
	})}
}

// oauthBearerServer guards go-sasl's OAUTHBEARER server: after its error
// challenge, for a refused token or a malformed message, the only valid
// answer is a single 0x01 (RFC 7628 §3.2.3), and anything else ends the
// exchange as a failure here (go-sasl would index an empty answer).
type oauthBearerServer struct {
	res       *saslResult
	inner     sasl.Server
	errorSent bool
}

func (o *oauthBearerServer) Next(response []byte) ([]byte, bool, error) {
	if o.errorSent && (len(response) != 1 || response[0] != 0x01) {
		if o.res.checked {
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
	s      *session
	res    *saslResult
	failed bool
}

func startXOAuth2(s *session, res *saslResult) sasl.Server { return &xoauth2Server{s: s, res: res} }

func (x *xoauth2Server) Next(response []byte) ([]byte, bool, error) {
	if response == nil {
		return []byte{}, false, nil
	}
	if x.failed {
		return nil, true, errBadCredentials
	}
	var user, token string
	for _, part := range strings.Split(string(response), "\x01") {
		if v, ok := strings.CutPrefix(part, "user="); ok {
			user = v
		} else if v, ok := strings.CutPrefix(part, "auth="); ok {
			scheme, t, _ := strings.Cut(v, " ")
			if strings.EqualFold(scheme, "Bearer") {
				token = t
			}
		}
	}
	x.res.user = x.s.accountName(user)
	if user == "" || token == "" {
		return nil, true, fmt.Errorf("%w: XOAUTH2 without user or token", errMalformed)
	}
	if !x.s.beginCheck(x.res) {
		return nil, true, errRefused
	}
	account, err := x.s.tokenAccount(x.res.user, token)
	x.res.user = account
	if err != nil {
		x.s.log.Debug("bearer token refused", "user", x.res.user, "err", err)
		x.failed, x.res.checked = true, true
		return []byte(`{"status":"401","schemes":"bearer"}`), false, nil
	}
	return nil, true, nil
}

// cmdSTLS starts TLS on the plaintext port (RFC 2595 §4). Anything the client
// sent after STLS before the handshake is discarded, never run.
func (s *session) cmdSTLS(cmd pop3.Command) {
	switch {
	case len(cmd.Args) != 0:
		s.badCommand("STLS takes no argument")
		return
	case s.tls != nil:
		s.badCommand("TLS is already active")
		return
	case s.srv.cfg.TLS == nil:
		s.badCommand("TLS is not available")
		return
	}
	s.w.OK("Begin TLS negotiation")
	if s.w.Flush() != nil {
		s.state = stateDone
		return
	}
	if n := s.r.Buffered(); n > 0 {
		s.log.Warn("discarding commands pipelined after STLS", "octets", n)
	}
	s.r.Discard()
	s.user = ""
	if !s.startTLS() {
		s.state = stateDone
	}
}

// cmdUTF8 enables UTF-8 mode (RFC 6856 §2). Pouch sends messages as stored
// and takes UTF-8 user names and passwords in any mode, so it only answers.
func (s *session) cmdUTF8(cmd pop3.Command) {
	if len(cmd.Args) != 0 {
		s.badCommand("UTF8 takes no argument")
		return
	}
	s.w.OK("UTF8 enabled")
}

// cmdLANG lists or selects the language of responses (RFC 6856 §3); Pouch
// speaks English.
func (s *session) cmdLANG(cmd pop3.Command) {
	switch {
	case len(cmd.Args) == 0:
		s.w.OK("language listing follows")
		s.w.Line("en English")
		s.w.Line(".")
	case len(cmd.Args) == 1 && (cmd.Args[0] == "*" || strings.EqualFold(cmd.Args[0], "en") || strings.HasPrefix(strings.ToLower(cmd.Args[0]), "en-")):
		s.w.OK("en language selected")
	case len(cmd.Args) == 1:
		s.w.Err("", "unsupported language")
	default:
		s.badCommand("LANG takes at most one argument")
	}
}

// accountName is the account a name given by the client stands for: the
// name normalized with the PRECIS UsernameCasePreserved profile (RFC 8265
// §3.4, as RFC 6856 §4 asks), its domain in lower case, and completed with
// the default domain when it has none (auth.AccountName).
func (s *session) accountName(name string) string {
	return auth.AccountName(name, s.srv.cfg.DefaultDomain)
}

// trusted reports whether addr is in a network where cleartext passwords
// are allowed.
func (s *Server) trusted(addr net.Addr) bool {
	var ip netip.Addr
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		return false
	}
	ip = ip.Unmap()
	for _, p := range s.cfg.InsecureAuthNetworks {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
