package auth

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	testSecret = []byte("0123456789abcdef0123456789abcdef")
	testNow    = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

func TestIssueVerify(t *testing.T) {
	c, err := Issue(testSecret, "alice", time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if want := "1772370000:alice"; c.Username != want {
		t.Errorf("username %q, want %q", c.Username, want)
	}
	if !c.Expires.Equal(testNow.Add(time.Hour)) || c.User != "alice" {
		t.Errorf("credentials %+v", c)
	}

	tamperedPass := []byte(c.Password)
	tamperedPass[0] ^= 1
	tests := map[string]struct {
		secret             []byte
		username, password string
		now                time.Time
		wantErr            error
	}{
		"valid":               {testSecret, c.Username, c.Password, testNow, nil},
		"valid at last sec":   {testSecret, c.Username, c.Password, c.Expires.Add(-time.Nanosecond), nil},
		"expired at expiry":   {testSecret, c.Username, c.Password, c.Expires, ErrExpired},
		"expired later":       {testSecret, c.Username, c.Password, testNow.Add(48 * time.Hour), ErrExpired},
		"tampered password":   {testSecret, c.Username, string(tamperedPass), testNow, ErrBadPassword},
		"empty password":      {testSecret, c.Username, "", testNow, ErrBadPassword},
		"user changed":        {testSecret, "1772370000:mallory", c.Password, testNow, ErrBadPassword},
		"expiry extended":     {testSecret, "1772373600:alice", c.Password, testNow, ErrBadPassword},
		"other secret":        {[]byte("another secret of 16+"), c.Username, c.Password, testNow, ErrBadPassword},
		"expired and forged":  {testSecret, "1000:alice", c.Password, testNow, ErrBadPassword},
		"malformed":           {testSecret, "alice", c.Password, testNow, ErrMalformed},
		"empty secret":        {nil, c.Username, c.Password, testNow, ErrShortSecret},
		"password whitespace": {testSecret, c.Username, c.Password + " ", testNow, ErrBadPassword},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			user, exp, err := Verify(tc.secret, tc.username, tc.password, tc.now)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && (user != "alice" || !exp.Equal(c.Expires)) {
				t.Errorf("got %q %v", user, exp)
			}
		})
	}
}

// TestPasswordKnownAnswer recomputes the TURN-REST formula independently:
// base64 (standard, padded) of HMAC-SHA1 keyed by the secret over the whole
// "EXPIRY:USER" string.
func TestPasswordKnownAnswer(t *testing.T) {
	secret := []byte("north-overlay-secret")
	username := "1700000000:bob"
	m := hmac.New(sha1.New, secret)
	m.Write([]byte(username))
	want := base64.StdEncoding.EncodeToString(m.Sum(nil))
	if got := Password(secret, username); got != want {
		t.Fatalf("Password = %q, want %q", got, want)
	}
	if len(want) != 28 || !strings.HasSuffix(want, "=") {
		t.Fatalf("want a padded 28-char base64 SHA-1, got %q", want)
	}
	// And Issue uses exactly that formula.
	c, err := Issue(secret, "bob", 10*time.Second, time.Unix(1700000000-10, 0))
	if err != nil {
		t.Fatal(err)
	}
	if c.Username != username || c.Password != want {
		t.Fatalf("Issue = %+v, want %s / %s", c, username, want)
	}
}

func TestIssueErrors(t *testing.T) {
	tests := map[string]struct {
		secret  []byte
		user    string
		ttl     time.Duration
		wantErr error
	}{
		"empty user":   {testSecret, "", time.Hour, ErrBadUser},
		"user with @":  {testSecret, "a@b", time.Hour, ErrBadUser},
		"user with :":  {testSecret, "a:b", time.Hour, ErrBadUser},
		"long user":    {testSecret, strings.Repeat("u", MaxUserLen+1), time.Hour, ErrBadUser},
		"zero ttl":     {testSecret, "alice", 0, errBadTTL},
		"negative ttl": {testSecret, "alice", -time.Hour, errBadTTL},
		"huge ttl":     {testSecret, "alice", MaxTTL + time.Second, errBadTTL},
		"empty secret": {nil, "alice", time.Hour, ErrShortSecret},
		"max ttl":      {testSecret, "alice", MaxTTL, nil},
		"longest user": {testSecret, strings.Repeat("u", MaxUserLen), time.Hour, nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := Issue(tc.secret, tc.user, tc.ttl, testNow)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestIssueRoundsExpiryUp(t *testing.T) {
	now := testNow.Add(300 * time.Millisecond)
	c, err := Issue(testSecret, "alice", 500*time.Millisecond, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Verify(testSecret, c.Username, c.Password, now); err != nil {
		t.Fatalf("a sub-second credential must be usable at issue time: %v", err)
	}
}

func TestValidUser(t *testing.T) {
	tests := map[string]struct {
		user string
		ok   bool
	}{
		"simple":       {"alice", true},
		"all classes":  {"A.z_0+9-x", true},
		"empty":        {"", false},
		"colon":        {"a:b", false},
		"at":           {"a@b", false},
		"space":        {"a b", false},
		"semicolon":    {"a;b", false},
		"non-ascii":    {"ålice", false},
		"control":      {"a\x00", false},
		"max length":   {strings.Repeat("x", 64), true},
		"over max len": {strings.Repeat("x", 65), false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := ValidUser(tc.user)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidUser(%q) = %v, want ok=%v", tc.user, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrBadUser) {
				t.Fatalf("err %v is not ErrBadUser", err)
			}
		})
	}
}

func TestParseUsername(t *testing.T) {
	tests := map[string]struct {
		username string
		wantExp  int64
		wantUser string
		ok       bool
	}{
		"valid":              {"1700000000:alice", 1700000000, "alice", true},
		"zero expiry":        {"0:alice", 0, "alice", true},
		"no colon":           {"1700000000alice", 0, "", false},
		"empty":              {"", 0, "", false},
		"non-numeric expiry": {"abc:alice", 0, "", false},
		"signed expiry":      {"+1700000000:alice", 0, "", false},
		"negative expiry":    {"-1:alice", 0, "", false},
		"spaced expiry":      {" 1700000000:alice", 0, "", false},
		"overflow expiry":    {"99999999999999999999:alice", 0, "", false},
		"empty expiry":       {":alice", 0, "", false},
		"empty user":         {"1700000000:", 0, "", false},
		"user with colon":    {"1700000000:al:ice", 0, "", false},
		"user with at":       {"1700000000:alice@example.net", 0, "", false},
		"user first":         {"alice:1700000000", 0, "", false},
		"huge":               {"1700000000:" + strings.Repeat("a", 1<<20), 0, "", false},
		"just over bound":    {"1:" + strings.Repeat("a", MaxUsernameLen-1), 0, "", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			exp, user, err := ParseUsername(tc.username)
			if !tc.ok {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("err %v, want ErrMalformed", err)
				}
				if len(err.Error()) > 400 {
					t.Fatalf("error echoes unbounded input: %d bytes", len(err.Error()))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if exp.Unix() != tc.wantExp || user != tc.wantUser || exp.Location() != time.UTC {
				t.Fatalf("got %v %q", exp, user)
			}
		})
	}
}

func TestCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "alice.json")
	c, err := Issue(testSecret, "alice", 24*time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), `"expires": "2026-03-02T12:00:00Z"`) {
		t.Errorf("expires not RFC3339 UTC:\n%s", raw)
	}
	got, err := LoadCredentials(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.User != c.User || got.Username != c.Username || got.Password != c.Password || !got.Expires.Equal(c.Expires) {
		t.Fatalf("round trip: got %+v, want %+v", got, c)
	}
	// Overwriting works and leaves no temporary files behind.
	if err := c.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("directory has %d entries, want 1", len(ents))
	}
}

func TestLoadCredentialsInvalid(t *testing.T) {
	c, err := Issue(testSecret, "alice", time.Hour, testNow)
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		content string
		wantErr error
	}{
		"not json":          {"user=alice", ErrMalformed},
		"bad username":      {`{"user":"alice","username":"alice","password":"x"}`, ErrMalformed},
		"user mismatch":     {`{"user":"bob","username":"` + c.Username + `","password":"x"}`, ErrMalformed},
		"expires mismatch":  {`{"username":"` + c.Username + `","password":"x","expires":"2030-01-01T00:00:00Z"}`, ErrMalformed},
		"empty password":    {`{"user":"alice","username":"` + c.Username + `","password":""}`, ErrMalformed},
		"too large":         {`{"user":"` + strings.Repeat(" ", maxCredentialsFile) + `"}`, errTooLarge},
		"minimal is filled": {`{"username":"` + c.Username + `","password":"x"}`, nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.json")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := LoadCredentials(path)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if err == nil && (got.User != "alice" || !got.Expires.Equal(c.Expires)) {
				t.Fatalf("not filled in: %+v", got)
			}
		})
	}
	if _, err := LoadCredentials(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func BenchmarkVerify(b *testing.B) {
	c, err := Issue(testSecret, "alice", time.Hour, testNow)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Verify(testSecret, c.Username, c.Password, testNow); err != nil {
			b.Fatal(err)
		}
	}
}
