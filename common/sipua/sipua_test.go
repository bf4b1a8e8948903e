package sipua

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Domain: "d.test", Proxy: "127.0.0.1:5060"}, "user and domain are required"},
		{Config{User: "a", Domain: "d.test", Proxy: "nowhere"}, `proxy "nowhere"`},
		{Config{User: "a", Domain: "d.test", Proxy: "127.0.0.1:5060", Listen: "127.0.0.1:99999"}, "listen"},
	} {
		if _, err := New(tc.cfg, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error with %q", tc.cfg, err, tc.want)
		}
	}
}

// TestCallAndRegisterErrors has alice call bob with bob's own socket as
// her outbound proxy (no proxy in between): the call goes INVITE, 180,
// 200, ACK, BYE. A REGISTER to bob, who is no registrar, comes back as an
// error with his status code.
func TestCallAndRegisterErrors(t *testing.T) {
	bob, err := New(Config{User: "bob", Domain: "d.test", Proxy: "127.0.0.1:9", Listen: "127.0.0.1:0"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	alice, err := New(Config{User: "alice", Domain: "d.test", Proxy: bob.Addr()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := alice.Call(ctx, bob.AoR())
	if err != nil {
		t.Fatalf("call: %v (%+v)", err, res)
	}
	if !slices.Equal(res.Codes, []int{180, 200}) || res.CallID == "" || res.Setup <= 0 {
		t.Errorf("call result %+v, want codes 180 200 and a Call-ID", res)
	}
	deadline := time.Now().Add(5 * time.Second)
	for bob.Answered() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("bob answered %d calls, want 1", bob.Answered())
		}
		time.Sleep(5 * time.Millisecond)
	}
	code, err := alice.Register(ctx, 60)
	if err == nil || code < 400 {
		t.Errorf("REGISTER to a phone: %d %v, want a final error", code, err)
	}
	t.Logf("REGISTER to a phone: %v", err)
}
