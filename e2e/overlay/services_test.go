package overlay

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/p2psip/p2psip/e2e/harness"
	"github.com/p2psip/p2psip/ordinarypeer/nat"
)

// Super peers publish stun and turn service records with their load, and
// an agent discovers its NAT against two of them.
func TestServiceRecordsAndNATDiscovery(t *testing.T) {
	o := harness.New(t)
	a := o.Start()
	o.Start()
	o.Start()
	o.WaitConverged(10 * time.Second)
	c := o.Client(a, "alice")
	for _, name := range []string{"stun", "turn"} {
		harness.Eventually(t, 10*time.Second, func() error {
			rec, err := c.Find(context.Background(), name)
			if err != nil {
				return err
			}
			if len(rec.Entries) != 3 {
				return fmt.Errorf("%s: %d providers, want 3", name, len(rec.Entries))
			}
			for _, e := range rec.Entries {
				if e.Provider == nil || len(e.Provider.Addrs) == 0 || e.Provider.Capacity == 0 {
					return fmt.Errorf("%s: incomplete provider %+v", name, e.Provider)
				}
			}
			return nil
		})
	}

	ag := o.StartAgent("bob", a)
	harness.Eventually(t, 10*time.Second, func() error {
		st := ag.Status()
		res, ok := st.NAT.(*nat.Result)
		if !ok || res == nil {
			return errors.New("no NAT result yet: " + st.NATError)
		}
		// On loopback there is no NAT: the reflexive address is the local one.
		if res.Behind || res.Reflexive == "" || res.Mapping != nat.EndpointIndependent {
			return fmt.Errorf("unexpected NAT result %+v", res)
		}
		return nil
	})
}
