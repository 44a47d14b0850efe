package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/xdg-go/scram"
)

// SCRAM-SHA-256 credentials (RFC 5802, RFC 7677) are kept in Dovecot's
// {SCRAM-SHA-256} form, "ITERATIONS,SALT,STOREDKEY,SERVERKEY" with the three
// values in standard base64. A password set by AddUser or SetPassword stores
// them in the extra field scramField next to the Argon2id hash; a password
// field that is itself {SCRAM-SHA-256} (as Dovecot can store) serves both
// SCRAM and plain logins.

// scramField is the extra field holding a user's SCRAM-SHA-256 credentials.
const scramField = "scram_sha_256"

// scramIterations is the PBKDF2 iteration count of new SCRAM credentials: the
// RFC 7677 §4 minimum, as Dovecot uses.
const scramIterations = 4096

const scramSaltLen = 16

// scramCredentials derives the stored form of password's SCRAM-SHA-256
// credentials, with the SASLprep a client applies (RFC 5802 §2.2).
func scramCredentials(password string) (string, error) {
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		return "", fmt.Errorf("auth: password cannot be used with SCRAM: %w", err)
	}
	salt := make([]byte, scramSaltLen)
	rand.Read(salt)
	creds, err := client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: scramIterations})
	if err != nil {
		return "", fmt.Errorf("auth: %w", err)
	}
	return "{SCRAM-SHA-256}" + formatSCRAM(creds), nil
}

// SCRAMUsable returns nil if SCRAM-SHA-256 can work with password, or an
// error saying that it cannot. SCRAM prepares passwords with SASLprep
// (RFC 5802 §2.2, RFC 4013), which forbids characters that the PRECIS
// OpaqueString profile of other logins allows (RFC 8265 §4.2), such as
// emoji: AddUser and SetPassword store such a password without SCRAM keys,
// and only the mechanisms that send the password (USER/PASS, PLAIN, LOGIN)
// log that user in.
func SCRAMUsable(password string) error {
	if _, err := scram.SHA256.NewClient("", password, ""); err != nil {
		return errors.New("auth: SCRAM-SHA-256 will not work for this user: SCRAM's SASLprep forbids characters of the password (USER/PASS, PLAIN and LOGIN work)")
	}
	return nil
}

func formatSCRAM(c scram.StoredCredentials) string {
	enc := base64.StdEncoding.EncodeToString
	return strconv.Itoa(c.Iters) + "," + enc([]byte(c.Salt)) + "," + enc(c.StoredKey) + "," + enc(c.ServerKey)
}

// parseSCRAM parses "ITERATIONS,SALT,STOREDKEY,SERVERKEY".
func parseSCRAM(value string) (*scramSecret, error) {
	parts := strings.Split(value, ",")
	if len(parts) != 4 {
		return nil, errors.New("malformed SCRAM-SHA-256 credentials")
	}
	iters, err := strconv.Atoi(parts[0])
	if err != nil || iters < 1 || iters > 10_000_000 {
		return nil, errors.New("bad SCRAM-SHA-256 iteration count")
	}
	var fields [3][]byte
	for i, p := range parts[1:] {
		if fields[i], err = base64.StdEncoding.DecodeString(p); err != nil {
			return nil, errors.New("bad base64 in SCRAM-SHA-256 credentials")
		}
	}
	if len(fields[1]) != 32 || len(fields[2]) != 32 || len(fields[0]) == 0 {
		return nil, errors.New("bad SCRAM-SHA-256 key lengths")
	}
	return &scramSecret{scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(fields[0]), Iters: iters},
		StoredKey:  fields[1],
		ServerKey:  fields[2],
	}}, nil
}

// scramSecret is a password stored only as SCRAM-SHA-256 credentials.
type scramSecret struct {
	creds scram.StoredCredentials
}

func (s *scramSecret) verify(password string) bool {
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		return false
	}
	got, err := client.GetStoredCredentialsWithError(s.creds.KeyFactors)
	return err == nil && subtle.ConstantTimeCompare(got.StoredKey, s.creds.StoredKey) == 1
}

// parseSCRAMField reads the scram_sha_256 field: "{SCRAM-SHA-256}" and the
// credentials.
func parseSCRAMField(v string) (*scram.StoredCredentials, error) {
	v, ok := strings.CutPrefix(v, "{SCRAM-SHA-256}")
	if !ok {
		return nil, errors.New("not {SCRAM-SHA-256} credentials")
	}
	s, err := parseSCRAM(v)
	if err != nil {
		return nil, err
	}
	return &s.creds, nil
}

// SCRAMCredentials returns the SCRAM-SHA-256 credentials of name, if the
// users file has them (users whose password was set by Pouch, or stored as
// {SCRAM-SHA-256}). It makes Users a SCRAMSource.
func (u *Users) SCRAMCredentials(name string) (scram.StoredCredentials, bool) {
	return u.current().accounts[name].Credentials.scramKeys()
}

// delExtra removes key from the extra fields of a user line.
func (l *userLine) delExtra(key string) {
	if l.rest == "" {
		return
	}
	parts := strings.SplitN(strings.TrimPrefix(l.rest, ":"), ":", 6)
	if len(parts) < 6 {
		return
	}
	var extra []string
	for _, kv := range strings.Fields(parts[5]) {
		if k, _, _ := strings.Cut(kv, "="); k != key {
			extra = append(extra, kv)
		}
	}
	parts[5] = strings.Join(extra, " ")
	l.rest = ":" + strings.Join(parts, ":")
}

// setExtra sets key=value in the extra fields of a user line (field 8),
// keeping the other fields and the order of the extra fields.
func (l *userLine) setExtra(key, value string) {
	parts := strings.SplitN(strings.TrimPrefix(l.rest, ":"), ":", 6)
	for len(parts) < 6 {
		parts = append(parts, "")
	}
	var extra []string
	found := false
	for _, kv := range strings.Fields(parts[5]) {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			kv, found = key+"="+value, true
		}
		extra = append(extra, kv)
	}
	if !found {
		extra = append(extra, key+"="+value)
	}
	for i, kv := range extra {
		if kv == key+"=" {
			extra[i] = key // a flag, as Dovecot writes "nologin"
		}
	}
	parts[5] = strings.Join(extra, " ")
	l.rest = ":" + strings.Join(parts, ":")
}
