package harness

import (
	"context"
	"testing"
	"time"

	"github.com/p2psip/p2psip/ordinarypeer/agent"
)

// Agent is an ordinary-peer agent run by the test.
type Agent struct {
	*agent.Agent
	User   string
	t      testing.TB
	cancel context.CancelFunc
	done   chan error
}

// AgentConfig is the configuration StartAgent uses: user's credentials,
// bootstrap at sp, SIP on 127.0.0.1 with an ephemeral port (UDP and TCP),
// a fresh data directory and a 200 ms keepalive, so a dead super peer is
// noticed within half a second.
func (o *Overlay) AgentConfig(user string, sp *SP) agent.Config {
	return agent.Config{
		Overlay:     o.Name,
		Bootstrap:   []string{sp.Node.PeerAddr()},
		Credentials: o.Credentials(user),
		DataDir:     o.T.TempDir(),
		SIPListen:   "127.0.0.1:0",
		Roots:       o.CA.Pool(),
		Keepalive:   200 * time.Millisecond,
	}
}

// StartAgent runs an agent for user bootstrapped at sp and waits until it
// is attached; it stops at test cleanup.
func (o *Overlay) StartAgent(user string, sp *SP) *Agent {
	o.T.Helper()
	return o.RunAgent(user, o.AgentConfig(user, sp))
}

// RunAgent runs an agent with cfg and waits until it is attached; it stops
// at test cleanup.
func (o *Overlay) RunAgent(user string, cfg agent.Config) *Agent {
	o.T.Helper()
	a, err := agent.New(cfg, o.Log.With().Str("agent", user).Logger())
	if err != nil {
		o.T.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Agent{Agent: a, User: user, t: o.T, cancel: cancel, done: make(chan error, 1)}
	go func() { h.done <- a.Run(ctx) }()
	o.T.Cleanup(h.Stop)
	select {
	case <-a.Uplink().Ready():
	case err := <-h.done:
		h.done <- err
		o.T.Fatalf("agent %s stopped before attaching: %v", user, err)
	case <-time.After(10 * time.Second):
		o.T.Fatalf("agent %s not attached after 10s", user)
	}
	return h
}

// Stop stops the agent and waits for it (at most 10 s); its phones'
// contacts stay in the overlay until they expire. Stopping twice is fine.
func (a *Agent) Stop() {
	a.cancel()
	select {
	case err := <-a.done:
		a.done <- err
	case <-time.After(10 * time.Second):
		a.t.Errorf("agent %s did not stop within 10s", a.User)
	}
}
