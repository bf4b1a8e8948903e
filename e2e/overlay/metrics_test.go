package overlay

import (
	"testing"

	"github.com/p2psip/p2psip/e2e/harness"
)

// counter sums the series of a counter in sp's registry that carry a label
// with the given value ("" sums them all).
func counter(t *testing.T, sp *harness.SP, name, labelValue string) float64 {
	t.Helper()
	mfs, err := sp.Node.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	v := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := labelValue == ""
			for _, l := range m.GetLabel() {
				match = match || l.GetValue() == labelValue
			}
			if match {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}
