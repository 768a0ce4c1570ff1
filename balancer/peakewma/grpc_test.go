package peakewma_test

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	_ "github.com/ballast-dev/ballast/balancer/peakewma"
	"github.com/ballast-dev/ballast/greeter/greetertest"
)

// dial opens a real ClientConn to pods through a manual resolver with the
// given load balancing config.
func dial(t *testing.T, lbConfig string, pods ...*greetertest.Pod) *grpc.ClientConn {
	t.Helper()
	r := manual.NewBuilderWithScheme("test")
	var eps []resolver.Endpoint
	for _, p := range pods {
		eps = append(eps, resolver.Endpoint{Addresses: []resolver.Address{{Addr: p.Addr.String()}}})
	}
	r.InitialState(resolver.State{Endpoints: eps})
	conn, err := grpc.NewClient("test:///greeter",
		grpc.WithResolvers(r),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[%s]}`, lbConfig)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestSlowEndpointLosesShare sends concurrent calls to two fast pods and one
// that takes 20ms per call: peak-EWMA sends the slow pod a small share.
func TestSlowEndpointLosesShare(t *testing.T) {
	const calls, workers = 600, 8
	for _, tc := range []struct {
		name     string
		lbConfig string
		maxShare float64 // of calls on the slow pod; round_robin gives it 1/3
	}{
		// With the defaults (decay 10s, 30ms for endpoints not yet seen)
		// a shunned endpoint forgets little within a test this short, and
		// the fast ones' estimates follow their last calls.
		{name: "defaults", lbConfig: `{"ballast_peak_ewma":{}}`, maxShare: 0.20},
		// A decay on the test's time scale lets fast pods forget the
		// scheduling spikes of a loaded machine, and a low default makes
		// the slow pod's first 20ms sample a peak.
		{name: "test time scale", lbConfig: `{"ballast_peak_ewma":{"decay":"250ms","defaultRtt":"1ms"}}`, maxShare: 0.25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fast1 := greetertest.Start(t, "fast-1", greetertest.Options{})
			fast2 := greetertest.Start(t, "fast-2", greetertest.Options{})
			slow := greetertest.Start(t, "slow", greetertest.Options{Delay: 20 * time.Millisecond})
			conn := dial(t, tc.lbConfig, fast1, slow, fast2)
			counts := greetertest.Spread(t, conn, calls, workers)
			share := float64(counts["slow"]) / calls
			t.Logf("%s: calls by pod %v, slow share %.3f", tc.name, counts, share)
			if share > tc.maxShare {
				t.Fatalf("slow pod got %.1f%% of %d calls (%v); want at most %.1f%%", 100*share, calls, counts, 100*tc.maxShare)
			}
		})
	}
}
