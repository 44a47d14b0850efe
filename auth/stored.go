package auth

// Accounts kept elsewhere than in the users file, in the users file's
// terms: a stored password in one of its schemes, and the settings named
// as its extra fields. A store that keeps them (store/pg's accounts table)
// writes what NewStoredPassword makes and CheckField allows, and is read
// back through a Backend and a Remote like any database.

// FieldSCRAM is the setting that holds an account's SCRAM-SHA-256 keys; a
// store drops it when the password changes without new keys, since the
// old keys would let the old password in.
const FieldSCRAM = scramField

// FieldPasswordChanged is the setting that holds when the password was set.
const FieldPasswordChanged = fieldPasswordChanged

// NewStoredPassword returns what a store keeps for a new password, as
// AddUser and SetPassword write it into the users file: the password as
// {ARGON2ID}, and the settings that go with it, when it was set and, when
// SCRAM can use the password (SCRAMUsable), its SCRAM-SHA-256 keys.
func NewStoredPassword(password string) (stored string, fields map[string]string, err error) {
	l, err := newPasswordLine("x", password)
	if err != nil {
		return "", nil, err
	}
	return l.password, l.extraFields(), nil
}

// CheckField reports whether value can be stored in the setting named key
// without refusing the account: nil for a setting Pouch does not read.
func CheckField(key, value string) error { return checkSetting(key, value) }

// UserLine is a line of the users file split into what another store of
// accounts keeps.
type UserLine struct {
	// Name is the user's name as logins see it (NormalizeName).
	Name string
	// Password is the stored password, as the line has it.
	Password string
	// Fields are the line's extra fields (a key alone has the value "").
	Fields map[string]string
}

// ParseUserLine splits a line of the users file; ok is false for a blank
// or comment line, or one that names no user.
func ParseUserLine(line string) (u UserLine, ok bool) {
	l, _, ok, _ := parseLine(line)
	if !ok {
		return UserLine{}, false
	}
	return UserLine{Name: NormalizeName(l.name), Password: l.password, Fields: l.extraFields()}, true
}
