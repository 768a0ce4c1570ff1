package policy

import (
	"slices"
	"strings"
	"testing"
)

// Proxyless clients cannot apply header modifier filters; the sidecar and
// the library can; a feature the table does not list, every mode can.
func TestCapabilities(t *testing.T) {
	for _, f := range []Feature{RequestHeaderModifier, ResponseHeaderModifier, PerTryTimeout, BudgetedRetry, RetryCodes} {
		modes, why := f.Unsupported()
		if !slices.Equal(modes, []Mode{Proxyless}) || why == "" {
			t.Errorf("%s: unsupported by %v (%q), want proxyless with a reason", f, modes, why)
		}
		if n := f.Notice("rule 0"); !strings.HasPrefix(n, "rule 0: "+string(f)+" is not applied by proxyless clients (") {
			t.Errorf("%s: notice %q", f, n)
		}
	}
	if modes, _ := Feature("WeightedBackends").Unsupported(); len(modes) != 0 {
		t.Errorf("an unlisted feature is unsupported by %v, want none", modes)
	}
	if n := Feature("WeightedBackends").Notice("rule 0"); n != "" {
		t.Errorf("notice %q for an unlisted feature, want none", n)
	}
}
