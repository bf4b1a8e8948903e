package auth

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestSecretFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "overlay.secret")
	created, err := CreateSecretFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(created) != 64 {
		t.Fatalf("secret is %d bytes, want 64 hex digits", len(created))
	}
	if _, err := hex.DecodeString(string(created)); err != nil {
		t.Fatalf("secret is not hex: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	loaded, err := LoadSecret(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(loaded, created) {
		t.Fatalf("LoadSecret = %q, CreateSecretFile returned %q", loaded, created)
	}

	if _, err := CreateSecretFile(path); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second create: %v, want fs.ErrExist", err)
	}
	again, err := LoadSecret(path)
	if err != nil || !bytes.Equal(again, created) {
		t.Fatalf("secret changed by refused create: %q %v", again, err)
	}
}

func TestLoadSecret(t *testing.T) {
	tests := map[string]struct {
		content string
		want    string
		wantErr error
	}{
		"trimmed":        {"  0123456789abcdef\r\n", "0123456789abcdef", nil},
		"inner space":    {"correct horse battery\n", "correct horse battery", nil},
		"short":          {"secret\n", "", ErrShortSecret},
		"short padded":   {"        short         \n", "", ErrShortSecret},
		"empty":          {"", "", ErrShortSecret},
		"too large":      {string(bytes.Repeat([]byte("a"), maxSecretFile+1)), "", errTooLarge},
		"exactly at max": {string(bytes.Repeat([]byte("a"), maxSecretFile)), string(bytes.Repeat([]byte("a"), maxSecretFile)), nil},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := LoadSecret(path)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			if string(got) != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLoadOrCreateSecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	s1, created, err := LoadOrCreateSecret(path)
	if err != nil || !created {
		t.Fatalf("first: created=%v err=%v", created, err)
	}
	s2, created, err := LoadOrCreateSecret(path)
	if err != nil || created || !bytes.Equal(s1, s2) {
		t.Fatalf("second: created=%v err=%v same=%v", created, err, bytes.Equal(s1, s2))
	}

	short := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(short, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateSecret(short); !errors.Is(err, ErrShortSecret) {
		t.Fatalf("short existing secret: %v, want ErrShortSecret (and no overwrite)", err)
	}
}

func TestDeriveKey(t *testing.T) {
	a := DeriveKey(testSecret, "memberlist", 32)
	if len(a) != 32 || !bytes.Equal(a, MemberlistKey(testSecret)) {
		t.Fatal("MemberlistKey is not DeriveKey(secret, \"memberlist\", 32)")
	}
	if !bytes.Equal(a, DeriveKey(testSecret, "memberlist", 32)) {
		t.Fatal("not deterministic")
	}
	distinct := map[string][]byte{
		"label":  DeriveKey(testSecret, "mesh", 32),
		"secret": DeriveKey([]byte("another secret of 16+"), "memberlist", 32),
	}
	for name, k := range distinct {
		if bytes.Equal(a, k) {
			t.Errorf("changing the %s does not change the key", name)
		}
	}
	if long := DeriveKey(testSecret, "memberlist", 64); !bytes.Equal(long[:32], a) {
		t.Error("HKDF output is a prefix-stable stream; 64-byte key should start with the 32-byte one")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("DeriveKey with n=0 did not panic")
		}
	}()
	DeriveKey(testSecret, "x", 0)
}
