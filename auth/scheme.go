package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/GehirnInc/crypt/sha512_crypt"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/text/secure/precis"
)

// Parameters of new password hashes: Argon2id at the OWASP minimum
// (m=19 MiB, t=2, p=1), a 16-byte random salt and a 32-byte key.
const (
	argon2Memory  = 19456 // KiB
	argon2Time    = 2
	argon2Threads = 1
	argon2SaltLen = 16
	argon2KeyLen  = 32
)

// Bounds on stored Argon2id parameters. The lower ones are libargon2's; the
// memory cap keeps a corrupt or hostile users file from making one login
// allocate more than 4 GiB.
const (
	argon2MaxMemory  = 4 << 20 // KiB
	argon2MinSaltLen = 8
	argon2MinKeyLen  = 4
)

// Bounds of SHA512-CRYPT (Drepper's spec). A stored hash outside them can
// never match: crypt(3) clamps or refuses such a setting.
const (
	sha512MinRounds  = 1000
	sha512MaxRounds  = 999999999
	sha512MaxSaltLen = 16
	sha512HashLen    = 86
)

const argon2Prefix = "$argon2id$"

var errEmptyPassword = errors.New("auth: the password is empty")

// HashPassword returns the stored form of a new password:
// "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$<salt>$<key>", with a fresh random
// salt and both parts in unpadded standard base64 (the PHC string format, as
// written by Dovecot's doveadm pw). It refuses an empty password.
func HashPassword(password string) (string, error) {
	if password == "" {
		return "", errEmptyPassword
	}
	password = normalizePassword(password)
	salt := make([]byte, argon2SaltLen)
	rand.Read(salt) // never fails: crypto/rand crashes the program instead
	s := &argon2Secret{
		memory:  argon2Memory,
		time:    argon2Time,
		threads: argon2Threads,
		salt:    salt,
	}
	s.key = s.derive(password, argon2KeyLen)
	return "{ARGON2ID}" + s.String(), nil
}

// normalizePassword applies the PRECIS OpaqueString profile (RFC 8265 §4.2,
// as RFC 6856 §4 asks of POP3 servers) to a password, so that the same
// password typed on systems that compose characters differently matches. A
// password the profile refuses (one with control characters) is used as it
// is. ASCII passwords without control characters are unchanged.
func normalizePassword(password string) string {
	if n, err := precis.OpaqueString.String(password); err == nil {
		return n
	}
	return password
}

// secret is a usable stored password.
type secret interface {
	// verify reports whether password matches, in time independent of how
	// much of it matches.
	verify(password string) bool
}

// parseSecret parses the password field of a users file line. It returns an
// error, and no secret, when the field cannot be used to log in.
func parseSecret(field string) (secret, error) {
	if field == "" {
		return nil, errors.New("empty password field")
	}
	scheme, value := "CRYPT", field
	if strings.HasPrefix(field, "{") {
		end := strings.IndexByte(field, '}')
		if end < 0 {
			return nil, errors.New("unterminated {SCHEME} prefix")
		}
		// Dovecot matches scheme names case-insensitively.
		scheme, value = strings.ToUpper(field[1:end]), field[end+1:]
	}
	switch scheme {
	case "PLAIN", "CLEARTEXT", "CLEAR":
		if value == "" {
			return nil, errors.New("empty cleartext password")
		}
		return plainSecret(value), nil
	case "CRYPT":
		return parseCrypt(value)
	case "ARGON2ID":
		return parseArgon2id(value)
	case "ARGON2":
		// OpenLDAP's argon2 module; only its Argon2id hashes are read.
		return parseArgon2id(value)
	case "BLF-CRYPT":
		return parseBcrypt(value)
	case "SHA512-CRYPT":
		return parseSHA512Crypt(value)
	case "SCRAM-SHA-256":
		return parseSCRAM(value)
	}
	return nil, fmt.Errorf("unsupported password scheme {%s}", scheme)
}

// parseCrypt parses a crypt(3) string by its prefix.
func parseCrypt(value string) (secret, error) {
	switch {
	case strings.HasPrefix(value, "$6$"):
		return parseSHA512Crypt(value)
	case isBcrypt(value):
		return parseBcrypt(value)
	case strings.HasPrefix(value, argon2Prefix):
		return parseArgon2id(value)
	}
	return nil, errors.New("unsupported crypt format (want $6$, $2a$, $2b$, $2y$ or $argon2id$)")
}

// plainSecret is a cleartext password ({PLAIN}, {CLEARTEXT}); it alone can
// serve APOP.
type plainSecret string

func (s plainSecret) verify(password string) bool {
	// Comparing digests keeps the length of the secret out of the timing.
	want, got := sha256.Sum256([]byte(s)), sha256.Sum256([]byte(password))
	return subtle.ConstantTimeCompare(want[:], got[:]) == 1
}

// argon2Secret is an Argon2id (version 19) hash.
type argon2Secret struct {
	memory    uint32 // KiB
	time      uint32
	threads   uint8
	salt, key []byte
}

// parseArgon2id parses a PHC string "$argon2id$v=19$m=M,t=T,p=P$salt$key".
func parseArgon2id(value string) (secret, error) {
	fail := func(why string) (secret, error) {
		return nil, fmt.Errorf("malformed argon2id hash: %s", why)
	}
	parts := strings.Split(value, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return fail("want $argon2id$v=19$m=M,t=T,p=P$salt$hash")
	}
	if parts[2] != "v=19" {
		return fail("only version v=19 is supported")
	}
	params := strings.Split(parts[3], ",")
	if len(params) != 3 {
		return fail("want parameters m=M,t=T,p=P")
	}
	var vals [3]uint64
	for i, name := range []string{"m=", "t=", "p="} {
		v, ok := strings.CutPrefix(params[i], name)
		n, err := strconv.ParseUint(v, 10, 32)
		if !ok || err != nil {
			return fail("want parameters m=M,t=T,p=P")
		}
		vals[i] = n
	}
	m, t, p := vals[0], vals[1], vals[2]
	switch {
	case p < 1 || p > 255:
		return fail("p must be 1 to 255")
	case t < 1:
		return fail("t must be at least 1")
	case m < 8*p || m > argon2MaxMemory:
		return fail(fmt.Sprintf("m must be 8*p to %d KiB", argon2MaxMemory))
	}
	salt, err1 := decodePHC(parts[4])
	key, err2 := decodePHC(parts[5])
	switch {
	case err1 != nil || err2 != nil:
		return fail("bad base64 in salt or hash")
	case len(salt) < argon2MinSaltLen:
		return fail("salt shorter than 8 bytes")
	case len(key) < argon2MinKeyLen:
		return fail("hash shorter than 4 bytes")
	}
	return &argon2Secret{memory: uint32(m), time: uint32(t), threads: uint8(p), salt: salt, key: key}, nil
}

// decodePHC decodes PHC base64: the standard alphabet without padding (some
// tools pad anyway, which is tolerated).
func decodePHC(s string) ([]byte, error) {
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

// derive returns the Argon2id key of password with the parameters and salt of s.
func (s *argon2Secret) derive(password string, keyLen uint32) []byte {
	return argon2.IDKey([]byte(password), s.salt, s.time, s.memory, s.threads, keyLen)
}

func (s *argon2Secret) verify(password string) bool {
	return subtle.ConstantTimeCompare(s.derive(password, uint32(len(s.key))), s.key) == 1
}

// String returns the PHC string of s.
func (s *argon2Secret) String() string {
	return fmt.Sprintf("%sv=19$m=%d,t=%d,p=%d$%s$%s", argon2Prefix, s.memory, s.time, s.threads,
		base64.RawStdEncoding.EncodeToString(s.salt), base64.RawStdEncoding.EncodeToString(s.key))
}

// dummySecret is the Argon2id hash, with the parameters of new hashes, that
// Verify checks passwords against when there is no usable stored secret, so
// that failing costs as much time as with a real user. Nobody knows its password.
var dummySecret = sync.OnceValue(func() *argon2Secret {
	s := &argon2Secret{
		memory:  argon2Memory,
		time:    argon2Time,
		threads: argon2Threads,
		salt:    make([]byte, argon2SaltLen),
		key:     make([]byte, argon2KeyLen),
	}
	rand.Read(s.salt)
	rand.Read(s.key)
	return s
})

// bcryptSecret is a bcrypt hash ({BLF-CRYPT}): $2a$, $2b$ or $2y$. The three
// differ only by bugs of some old C implementations; x/crypto/bcrypt computes
// the correct algorithm for each and keeps the version letter as stored.
type bcryptSecret []byte

func isBcrypt(value string) bool {
	return strings.HasPrefix(value, "$2a$") || strings.HasPrefix(value, "$2b$") ||
		strings.HasPrefix(value, "$2y$")
}

func parseBcrypt(value string) (secret, error) {
	if !isBcrypt(value) {
		return nil, errors.New("malformed bcrypt hash: want $2a$, $2b$ or $2y$")
	}
	// A bcrypt string is always 60 characters; bcrypt.Cost checks the rest.
	if _, err := bcrypt.Cost([]byte(value)); err != nil || len(value) != 60 {
		return nil, errors.New("malformed bcrypt hash")
	}
	return bcryptSecret(value), nil
}

func (s bcryptSecret) verify(password string) bool {
	return bcrypt.CompareHashAndPassword(s, []byte(password)) == nil
}

// sha512Secret is a SHA512-CRYPT hash: "$6$[rounds=N$]salt$hash".
type sha512Secret struct {
	setting string // "$6$[rounds=N$]salt": the input to crypt(3)
	full    string // setting + "$" + hash
}

func parseSHA512Crypt(value string) (secret, error) {
	rest, ok := strings.CutPrefix(value, "$6$")
	if !ok {
		return nil, errors.New("malformed SHA512-CRYPT hash: want $6$")
	}
	if r, ok := strings.CutPrefix(rest, "rounds="); ok {
		num, after, found := strings.Cut(r, "$")
		n, err := strconv.Atoi(num)
		if !found || err != nil || n < sha512MinRounds || n > sha512MaxRounds ||
			strconv.Itoa(n) != num {
			return nil, errors.New("malformed SHA512-CRYPT hash: bad rounds=")
		}
		rest = after
	}
	salt, hash, found := strings.Cut(rest, "$")
	if !found || len(salt) > sha512MaxSaltLen || len(hash) != sha512HashLen {
		return nil, errors.New("malformed SHA512-CRYPT hash")
	}
	return &sha512Secret{setting: value[:len(value)-1-len(hash)], full: value}, nil
}

func (s *sha512Secret) verify(password string) bool {
	// Only the setting is passed: given the whole hash, GehirnInc/crypt reads
	// a salt shorter than 16 characters after rounds= with part of the hash.
	got, err := sha512_crypt.New().Generate([]byte(password), []byte(s.setting))
	return err == nil && subtle.ConstantTimeCompare([]byte(got), []byte(s.full)) == 1
}
