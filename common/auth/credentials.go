package auth

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Limits on credentials. They bound what a hostile client can make a super
// peer parse and hash, and keep user names safe to embed in SIP headers,
// log lines and TURN usernames.
const (
	// MaxUserLen is the longest user name Issue accepts.
	MaxUserLen = 64
	// MaxUsernameLen is the longest "EXPIRY:USER" string ParseUsername
	// looks at.
	MaxUsernameLen = 128
	// MaxTTL is the longest lifetime Issue grants (ten 365-day years).
	MaxTTL = 10 * 365 * 24 * time.Hour
	// maxCredentialsFile bounds LoadCredentials' read.
	maxCredentialsFile = 64 << 10
)

// Credentials is a TURN-REST credential (the scheme of coturn's
// use-auth-secret and Kamailio's auth_ephemeral): Username is
// "EXPIRY:USER" with EXPIRY in unix seconds, Password is
// base64.StdEncoding(HMAC-SHA1(secret, Username)). Anyone holding the
// overlay secret can check it without a user database.
//
// The JSON form is what `p2psip credentials issue --json` prints and what
// --credentials-file reads.
type Credentials struct {
	User     string    `json:"user"`
	Username string    `json:"username"`
	Password string    `json:"password"`
	Expires  time.Time `json:"expires"` // RFC3339 in JSON
}

// Issue makes a credential for user valid for ttl after now. The expiry is
// rounded up to the next whole second, because the username carries unix
// seconds. ttl must be in (0, MaxTTL].
func Issue(secret []byte, user string, ttl time.Duration, now time.Time) (Credentials, error) {
	if err := ValidUser(user); err != nil {
		return Credentials{}, fmt.Errorf("issue credentials: %w", err)
	}
	if ttl <= 0 || ttl > MaxTTL {
		return Credentials{}, fmt.Errorf("issue credentials for %q: %w: %v not in (0, %v]", user, errBadTTL, ttl, MaxTTL)
	}
	if len(secret) == 0 {
		return Credentials{}, fmt.Errorf("issue credentials for %q: %w: empty", user, ErrShortSecret)
	}
	end := now.Add(ttl)
	exp := end.Unix()
	if end.Nanosecond() != 0 {
		exp++
	}
	username := strconv.FormatInt(exp, 10) + ":" + user
	return Credentials{
		User:     user,
		Username: username,
		Password: Password(secret, username),
		Expires:  time.Unix(exp, 0).UTC(),
	}, nil
}

// ValidUser accepts 1..MaxUserLen characters of [A-Za-z0-9._+-]. The set
// leaves out ':' (the username separator), '@' and everything else with a
// meaning in SIP URIs, so a user name can become the user part of an AoR
// and a TURN username without escaping.
func ValidUser(user string) error {
	if user == "" || len(user) > MaxUserLen {
		return fmt.Errorf("%w: want 1 to %d characters, got %d", ErrBadUser, MaxUserLen, len(user))
	}
	for i := 0; i < len(user); i++ {
		if !userChar(user[i]) {
			return fmt.Errorf("%w: invalid character %q", ErrBadUser, user[i])
		}
	}
	return nil
}

func userChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case c == '.', c == '_', c == '+', c == '-':
		return true
	}
	return false
}

// Password computes the TURN-REST password of username:
// base64.StdEncoding(HMAC-SHA1(secret, username)). A super peer uses it as
// the cleartext password of SIP digest and TURN long-term credentials.
func Password(secret []byte, username string) string {
	m := hmac.New(sha1.New, secret)
	m.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// ParseUsername splits "EXPIRY:USER" on the first ':'. EXPIRY must be
// plain decimal digits (no sign, no spaces) and USER must pass ValidUser;
// anything else, or a username longer than MaxUsernameLen, is ErrMalformed.
// It says nothing about authenticity; use Verify for that.
func ParseUsername(username string) (expires time.Time, user string, err error) {
	if len(username) > MaxUsernameLen {
		return time.Time{}, "", fmt.Errorf("parse username: %w: longer than %d bytes", ErrMalformed, MaxUsernameLen)
	}
	expPart, user, ok := strings.Cut(username, ":")
	if !ok {
		return time.Time{}, "", fmt.Errorf("parse username %q: %w: want EXPIRY:USER", username, ErrMalformed)
	}
	if expPart == "" || strings.Trim(expPart, "0123456789") != "" {
		return time.Time{}, "", fmt.Errorf("parse username %q: %w: expiry is not unix seconds", username, ErrMalformed)
	}
	sec, perr := strconv.ParseInt(expPart, 10, 64)
	if perr != nil {
		return time.Time{}, "", fmt.Errorf("parse username %q: %w: expiry: %v", username, ErrMalformed, perr)
	}
	if uerr := ValidUser(user); uerr != nil {
		return time.Time{}, "", fmt.Errorf("parse username %q: %w: %v", username, ErrMalformed, uerr)
	}
	return time.Unix(sec, 0).UTC(), user, nil
}

// Verify checks a credential presented at now and returns its user and
// expiry. The order matters: form first (ErrMalformed), then the password
// in constant time (ErrBadPassword), and only then expiry (ErrExpired), so
// that without the password an attacker learns nothing about the
// credential. With ErrExpired the user and expiry are returned too, for the
// log line; with other errors they are zero.
func Verify(secret []byte, username, password string, now time.Time) (user string, expires time.Time, err error) {
	if len(secret) == 0 {
		return "", time.Time{}, fmt.Errorf("verify credentials: %w: empty", ErrShortSecret)
	}
	expires, user, err = ParseUsername(username)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("verify credentials: %w", err)
	}
	want := Password(secret, username)
	if !hmac.Equal([]byte(want), []byte(password)) {
		return "", time.Time{}, fmt.Errorf("verify credentials of %q: %w", user, ErrBadPassword)
	}
	if !now.Before(expires) {
		return user, expires, fmt.Errorf("verify credentials of %q: %w at %s", user, ErrExpired, expires.Format(time.RFC3339))
	}
	return user, expires, nil
}

// LoadCredentials reads a credentials file as written by WriteFile or
// `p2psip credentials issue -o`. The username is authoritative: "user" and
// "expires" may be left out (they are filled in from it), but if present
// they must agree with it. The password is not checked (that needs the
// secret) and neither is expiry (the caller decides what to do about it).
func LoadCredentials(path string) (Credentials, error) {
	b, err := readBounded(path, maxCredentialsFile)
	if err != nil {
		return Credentials{}, fmt.Errorf("load credentials %s: %w", path, err)
	}
	var c Credentials
	if err := json.Unmarshal(b, &c); err != nil {
		return Credentials{}, fmt.Errorf("load credentials %s: %w: %v", path, ErrMalformed, err)
	}
	if err := c.complete(); err != nil {
		return Credentials{}, fmt.Errorf("load credentials %s: %w", path, err)
	}
	return c, nil
}

// complete checks c's fields against its username and fills the missing
// ones.
func (c *Credentials) complete() error {
	exp, user, err := ParseUsername(c.Username)
	if err != nil {
		return err
	}
	if c.Password == "" {
		return fmt.Errorf("%w: empty password", ErrMalformed)
	}
	switch {
	case c.User == "":
		c.User = user
	case c.User != user:
		return fmt.Errorf("%w: user %q does not match username %q", ErrMalformed, c.User, c.Username)
	}
	switch {
	case c.Expires.IsZero():
		c.Expires = exp
	case !c.Expires.Equal(exp):
		return fmt.Errorf("%w: expires %s does not match username %q", ErrMalformed, c.Expires.Format(time.RFC3339), c.Username)
	}
	return nil
}

// WriteFile writes c as indented JSON to path, mode 0600, atomically
// (temporary file and rename), replacing any existing file.
func (c Credentials) WriteFile(path string) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("write credentials %s: %w", path, err)
	}
	if err := writeAtomic(path, append(b, '\n')); err != nil {
		return fmt.Errorf("write credentials %s: %w", path, err)
	}
	return nil
}
