package bench

import (
	"context"
	"strings"
	"testing"
	"time"
)

// The traffic policy section measures every mode with and without the
// policies, from the binaries `ballast bench` runs: the retries take the
// flaky pod's failures away, the fault fails some calls of the policy's
// rule and none of the plain Service's, and the timeout ends the slow
// calls before the pods answer. (How close each lands to its target is
// the benchmark's to say.)
func TestTrafficPolicySection(t *testing.T) {
	b := newTestBench(t)
	b.opts.Binary = ballastBinary(t)
	b.opts.ProxyBinary = buildBinary(t, "ballast-proxy", true)
	b.opts.ControlBinary = buildBinary(t, "ballast-control", true)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	s := b.trafficPolicy(ctx, trafficPolicyConfig{Calls: 300, Concurrency: 4, RateWindow: 300 * time.Millisecond})
	if s.NotMeasured != "" {
		t.Fatal(s.NotMeasured)
	}
	if len(s.Rows) != 6 {
		t.Errorf("%d rows, want 6 (3 modes, with and without the policies)", len(s.Rows))
	}
	one := func(r *row, col string) float64 {
		t.Helper()
		if v := r.Values[col]; len(v) == 1 {
			return v[0]
		}
		t.Errorf("%s: %s %v, want one value", r.Path, col, r.Values[col])
		return 0
	}
	for _, r := range s.Rows {
		if r.Note != "" {
			if strings.HasPrefix(r.Note, "unavailable: ") && !inCI() {
				t.Logf("%s: %s", r.Path, r.Note)
				continue
			}
			t.Errorf("%s: %q, want numbers", r.Path, r.Note)
			continue
		}
		policy := strings.HasSuffix(r.Path, ", TrafficPolicy")
		flaky, abort, slow := one(r, colFlakyErrors), one(r, colAbortPct), one(r, colSlowMS)
		switch {
		case policy && (flaky > 1 || abort == 0 || slow >= ms(slowDelay)):
			t.Errorf("%s: Flaky errors %.2f%%, Faulty failed %.1f%%, Slow %.0f ms: want under 1%%, above 0, under %v", r.Path, flaky, abort, slow, slowDelay)
		case !policy && (flaky == 0 || abort != 0 || slow < ms(slowDelay)):
			t.Errorf("%s: Flaky errors %.2f%%, Faulty failed %.1f%%, Slow %.0f ms: want above 0, 0, at least %v", r.Path, flaky, abort, slow, slowDelay)
		}
	}
}
