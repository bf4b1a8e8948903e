package promtext

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	page := `# HELP p2psip_sip_rejected_total Requests the SIP edge answered itself.
# TYPE p2psip_sip_rejected_total counter
p2psip_sip_rejected_total 7500
p2psip_registrar_registers_total{outcome="ok"} 2
p2psip_registrar_registers_total{outcome="unauthorized"} 7500

garbage
go_gc_duration_seconds{quantile="0.5"} 1.5e-05
`
	m, err := Parse(strings.NewReader(page))
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]float64{
		"p2psip_sip_rejected_total":                                7500,
		`p2psip_registrar_registers_total{outcome="ok"}`:           2,
		`p2psip_registrar_registers_total{outcome="unauthorized"}`: 7500,
		`go_gc_duration_seconds{quantile="0.5"}`:                   1.5e-05,
	} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v", k, m[k], want)
		}
	}
	if len(m) != 4 {
		t.Errorf("%d samples, want 4: %v", len(m), m)
	}
}
