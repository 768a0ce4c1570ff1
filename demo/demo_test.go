package demo

import (
	"context"
	"testing"
	"time"
)

// TestReplayShowsTheArticlesImbalanceAndItsFix is the article end to end on
// loopback: through the plain Service one pod answers every call; with
// per-call balancing the calls spread evenly.
func TestReplayShowsTheArticlesImbalanceAndItsFix(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{Calls: 300})
	if err != nil {
		t.Fatal(err)
	}
	byMode := map[string]ModeResult{}
	for _, m := range res.Modes {
		byMode[m.Mode] = m
		if m.Calls != 300 || m.Errors != 0 {
			t.Errorf("%s: %d calls, %d errors (last: %s); want 300 calls, 0 errors", m.Mode, m.Calls, m.Errors, m.LastError)
		}
		if len(m.Pods) != 3 {
			t.Errorf("%s: pods %v, want all 3 listed", m.Mode, m.Pods)
		}
	}
	if got := byMode["plain-service"].MaxMean; got != 3 {
		t.Errorf("plain-service max/mean = %.2f, want 3 (every call on one pod): %v", got, byMode["plain-service"].Pods)
	}
	for _, mode := range []string{"client-side", "proxyless", "sidecar"} {
		m, ok := byMode[mode]
		if !ok {
			t.Errorf("no %s row in %+v", mode, res.Modes)
			continue
		}
		if m.MaxMean > 1.05 {
			t.Errorf("%s max/mean = %.2f, want ≤ 1.05: %v", mode, m.MaxMean, m.Pods)
		}
	}
}

func TestMaxMean(t *testing.T) {
	for _, tc := range []struct {
		counts map[string]int
		want   float64
	}{
		{map[string]int{"a": 300, "b": 0, "c": 0}, 3},
		{map[string]int{"a": 100, "b": 100, "c": 100}, 1},
		{map[string]int{"a": 105, "b": 100, "c": 95}, 1.05},
		{map[string]int{"a": 0, "b": 0}, 0},
		{nil, 0},
	} {
		if got := MaxMean(tc.counts); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("MaxMean(%v) = %v, want %v", tc.counts, got, tc.want)
		}
	}
}

// TestCanary is the gray release the article ends on: a GRPCRoute sends
// 10% of the Service's calls to v2, in every per-call mode, and v1's pods
// still share the rest evenly.
func TestCanary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const calls = 2000
	res, err := RunCanary(ctx, CanaryOptions{Options: Options{Calls: calls}, Percent: 10})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"client-side", "proxyless", "sidecar"}
	if len(res.Modes) != len(want) {
		t.Fatalf("%d modes, want %v", len(res.Modes), want)
	}
	for i, m := range res.Modes {
		if m.Mode != want[i] {
			t.Errorf("mode %d is %s, want %s", i, m.Mode, want[i])
		}
		if m.Calls != calls || m.Errors != 0 || len(m.Pods) != 4 {
			t.Errorf("%s: %d calls, %d errors (last: %s) over %v; want %d calls, 0 errors, 3 v1 pods and 1 v2", m.Mode, m.Calls, m.Errors, m.LastError, m.Pods, calls)
			continue
		}
		// 10% of 2,000 calls drawn at random: 2.5 points is 3.7 standard deviations.
		share := 100 * float64(m.Versions["v2"]) / calls
		if share < 7.5 || share > 12.5 {
			t.Errorf("%s: v2 took %.1f%% of the calls, want 10%% ± 2.5: %v", m.Mode, share, m.Versions)
		}
		if m.MaxMean > 1.05 {
			t.Errorf("%s: v1's busiest pod %.2f× its mean, want ≤ 1.05: %v", m.Mode, m.MaxMean, m.Pods)
		}
	}
}
