package server

import (
	"encoding/base64"
	"errors"
	"strings"

	"github.com/emersion/go-sasl"

	"github.com/pouchmail/pouch/pop3"
)

// saslMechanism is a SASL mechanism the server offers (RFC 5034).
type saslMechanism struct {
	name string
	// available reports whether the mechanism can succeed on this session;
	// only then is it advertised and accepted.
	available func(s *session) bool
	// start begins the mechanism's side of exchange x; its Next reports
	// success by returning done with a nil error, after setting x.user.
	start func(x *exchange) sasl.Server
}

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

// authLineMax is the longest command line the session reads now: an AUTH
// command before login may carry an initial response longer than the
// 255 octets of RFC 2449 §4 (RFC 5034 §4), up to a SASL response line.
func (s *session) authLineMax() int {
	if s.state == stateAuthorization {
		return max(maxSASLLine, s.srv.cfg.MaxLineLength)
	}
	return s.srv.cfg.MaxLineLength
}

// cmdAUTH runs a SASL exchange (RFC 5034 §4).
func (s *session) cmdAUTH(cmd pop3.Command) error {
	s.user = ""
	if len(cmd.Args) == 0 {
		// The mechanism list of RFC 1734 clients.
		s.w.OK("SASL mechanisms follow")
		for _, name := range s.mechanisms() {
			s.w.Line(name)
		}
		s.w.Line(".")
		return nil
	}
	if len(cmd.Args) > 2 {
		return badCommand("AUTH takes a mechanism and an optional initial response")
	}
	mech, err := s.mechanism(cmd.Args[0])
	if err != nil {
		return err
	}
	response, err := initialResponse(cmd.Args[1:])
	if err != nil {
		return err
	}
	// The guard's attempt begins only once credentials arrive (beginCheck):
	// a client that starts an exchange and falls silent holds no place of
	// its source. However the exchange ends without a failed check
	// (cancelled, cut off), the attempt ends with it.
	defer s.attemptDone()
	x := &exchange{s: s, mech: mech.name, method: "AUTH " + mech.name}
	return x.run(mech.start(x), response)
}

// mechanism returns the mechanism named name, if it can be used here.
func (s *session) mechanism(name string) (*saslMechanism, error) {
	var mech *saslMechanism
	for i := range mechanismList {
		if strings.EqualFold(mechanismList[i].name, name) {
			mech = &mechanismList[i]
		}
	}
	switch {
	case mech == nil:
		return nil, errReply("", "unsupported SASL mechanism")
	case mech.available(s):
		return mech, nil
	case s.cleartextAllowed():
		return nil, errReply("", "SASL mechanism not available on this connection")
	}
	return nil, errCleartext
}

// initialResponse decodes AUTH's optional initial response (RFC 5034 §4):
// nil when there is none, empty for "=".
func initialResponse(args []string) ([]byte, error) {
	switch {
	case len(args) == 0:
		return nil, nil
	case args[0] == "=":
		return []byte{}, nil
	}
	response, err := base64.StdEncoding.DecodeString(args[0])
	if err != nil {
		return nil, errReply("", "invalid base64 in initial response")
	}
	return response, nil
}

// exchange is one SASL exchange: the mechanism's progress as the session
// sees it, which decides what its end means.
type exchange struct {
	s      *session
	mech   string
	method string // "AUTH " and the mechanism's name
	user   string // the user authenticated, or who tried
	stage  stage
	// refusal ends the exchange at once, with no further challenge: the
	// guard's answer to the attempt, when it refused it (beginCheck; the
	// mechanism then returns errRefused), or a login deferred since the
	// user could not be looked up (checkToken).
	refusal error
}

// stage is how far an exchange got with the client's credentials.
type stage int

const (
	// noCredentials: nothing was checked. An exchange that ends now told
	// the client nothing and is no failed login (no failure delay, no
	// fail2ban line, nothing for the guard).
	noCredentials stage = iota
	// checking: a message bearing credentials arrived and the guard's
	// attempt began (beginCheck).
	checking
	// foundWrong: the credentials were checked and found wrong, and an
	// error challenge told the client so (RFC 7628 §3.2.2, XOAUTH2's);
	// however the exchange ends after that, it is a failed login.
	foundWrong
)

var (
	// errRefused ends an exchange whose attempt the guard refused.
	errRefused = errors.New("attempt refused by the guard")
	// errMalformed is what a mechanism returns for a message that bears no
	// credential to check (RFC 4422 §3.6: the exchange fails).
	errMalformed = errors.New("malformed SASL message")
	// errBadCredentials is what failed mechanisms return; the client sees
	// only the one -ERR [AUTH] reply of login.
	errBadCredentials = errors.New("invalid credentials")
)

// run steps server, the mechanism, from the client's first response
// (nil for none) to the end of the exchange, which it returns.
func (x *exchange) run(server sasl.Server, response []byte) error {
	for {
		challenge, done, err := server.Next(response)
		switch {
		case x.refusal != nil:
			return x.refusal
		case err != nil && x.stage == noCredentials:
			// Nothing was checked, so nothing was learnt: no failed login,
			// but a bad command.
			x.s.log.Debug("malformed SASL message", "mechanism", x.mech, "err", err)
			return badCommand("malformed SASL message")
		case err != nil:
			x.s.log.Debug("SASL exchange failed", "mechanism", x.mech, "err", err)
			return x.s.login(x.user, x.method, false)
		case done:
			return x.s.login(x.user, x.method, true)
		}
		if response, err = x.challenge(challenge); err != nil {
			return err
		}
	}
}

// challenge sends a challenge (RFC 5034 §4) and returns the client's
// response to it.
func (x *exchange) challenge(challenge []byte) ([]byte, error) {
	s := x.s
	if x.stage == foundWrong && s.failDelay() {
		// An error challenge waits the delay of a failed login, as
		// -ERR [AUTH] does; the session was aborted meanwhile.
		return nil, x.cutShort(errEnd)
	}
	// Waiting for the client again, the session may be shed for room
	// (shedOldest) like any other not logged in: a client that stalls
	// the exchange after its check holds no protected place.
	s.endCheck()
	if s.w.Continue(base64.StdEncoding.EncodeToString(challenge)) != nil || s.w.Flush() != nil {
		return nil, x.cutShort(errEnd)
	}
	line, err := s.r.ReadLine(maxSASLLine)
	if err != nil && !errors.Is(err, pop3.ErrLineTooLong) && !errors.Is(err, pop3.ErrBadLine) {
		return nil, x.cutShort(&readError{err})
	}
	response, err := saslResponse(line, err)
	if err != nil && x.stage == foundWrong {
		// Credentials were found wrong: cancelling, or a line that cannot
		// be read, does not hide it.
		return nil, s.login(x.user, x.method, false)
	}
	return response, err
}

// saslResponse decodes a line in answer to a challenge, which was read
// with error readErr (a line too long or with bad octets).
func saslResponse(line []byte, readErr error) ([]byte, error) {
	switch {
	case readErr != nil:
		return nil, badCommand("invalid SASL response")
	case string(line) == "*":
		// RFC 5034 §4: a cancelled exchange is rejected with -ERR.
		return nil, errReply("", "authentication cancelled")
	}
	response, err := base64.StdEncoding.DecodeString(string(line))
	if err != nil {
		return nil, errReply("", "invalid base64 in SASL response")
	}
	return response, nil
}

// cutShort ends with err an exchange that the connection cut short. When
// the credentials were found wrong, the client learnt it from the error
// challenge: that is a failed login, recorded, whose reply cannot be sent.
func (x *exchange) cutShort(err error) error {
	if x.stage == foundWrong {
		x.s.login(x.user, x.method, false)
	}
	return err
}

// beginCheck starts the guard's attempt (throttle) for x.user, the name
// the client gave, when a message bearing credentials has arrived, just
// before they are checked, and reports whether they may be checked. When
// not, the mechanism ends the exchange with errRefused, and the guard's
// answer is the reply.
func (x *exchange) beginCheck() bool {
	if err := x.s.throttle(x.user, x.method); err != nil {
		x.refusal = err
		return false
	}
	x.stage = checking
	return true
}

// unchecked ends the attempt of a message that turned out to bear nothing
// that could be checked: the exchange is a malformed one.
func (x *exchange) unchecked() {
	x.s.attemptDone()
	x.stage = noCredentials
}

// checkAuthz accepts an authorization identity that is empty or, once made
// an account name, the authenticated user: Pouch has no proxy
// authorization.
func (s *session) checkAuthz(authz, user string) error {
	if authz != "" && s.accountName(authz) != user {
		return errors.New("authorization identity differs from the user")
	}
	return nil
}

// startPlain is SASL PLAIN (RFC 4616). A message without a user name
// (authcid is 1*SAFE, RFC 4616 §2) bears no credential.
func startPlain(x *exchange) sasl.Server {
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if username == "" {
			return errMalformed
		}
		x.user = x.s.accountName(username)
		if !x.beginCheck() {
			return errRefused
		}
		ok := x.s.verify(x.user, password)
		if err := x.s.checkAuthz(identity, x.user); err != nil {
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
	x        *exchange
	username *string
}

func startLogin(x *exchange) sasl.Server { return &loginServer{x: x} }

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch {
	case l.username == nil && response == nil:
		return []byte("Username:"), false, nil
	case l.username == nil && len(response) == 0:
		return nil, true, errMalformed // no user name: no credential
	case l.username == nil:
		name := l.x.s.accountName(string(response))
		l.username, l.x.user = &name, name
		return []byte("Password:"), false, nil
	}
	if !l.x.beginCheck() {
		return nil, true, errRefused
	}
	if !l.x.s.verify(*l.username, string(response)) {
		return nil, true, errBadCredentials
	}
	return nil, true, nil
}

// clientCertName is the common name of a client certificate verified against
// the configured client CAs, or "".
func (s *session) clientCertName() string {
	if s.tls == nil || len(s.tls.VerifiedChains) == 0 {
		return ""
	}
	return s.tls.VerifiedChains[0][0].Subject.CommonName
}

// startExternal is SASL EXTERNAL (RFC 4422 Appendix A) with a client
// certificate: the user is the certificate's common name, normalized as
// every user name is (RFC 6856 §4).
func startExternal(x *exchange) sasl.Server {
	return sasl.NewExternalServer(func(identity string) error {
		name := x.s.accountName(x.s.clientCertName())
		x.user = name
		if !x.beginCheck() {
			return errRefused
		}
		if err := x.s.checkAuthz(identity, name); err != nil {
			return err
		}
		ok, err := x.s.srv.known(name)
		if err != nil {
			x.s.unchecked = err // the login is deferred, not failed
		}
		if !ok {
			return errBadCredentials
		}
		return nil
	})
}
