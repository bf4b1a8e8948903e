package register

import (
	"os"
	"strings"
	"testing"
)

func TestScenario(t *testing.T) {
	dir := t.TempDir()
	for _, noAuth := range []bool{false, true} {
		p, err := Scenario(dir, noAuth)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if got := strings.Contains(s, `<recv response="401"`); got == noAuth {
			t.Errorf("noAuth %v: challenge present %v", noAuth, got)
		}
		if got, want := strings.Count(s, "REGISTER sip:"), map[bool]int{false: 2, true: 1}[noAuth]; got != want {
			t.Errorf("noAuth %v: %d REGISTERs, want %d", noAuth, got, want)
		}
		if !strings.HasSuffix(strings.TrimSpace(s), "</scenario>") || !strings.Contains(s, `<recv response="200"/>`) {
			t.Errorf("noAuth %v: broken scenario:\n%s", noAuth, s)
		}
	}
}
