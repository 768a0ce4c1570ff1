package p2c_test

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/leastrequest"
	"google.golang.org/grpc/balancer/roundrobin"

	"github.com/ballast-dev/ballast/balancer/p2c"
	"github.com/ballast-dev/ballast/balancer/peakewma"
	"github.com/ballast-dev/ballast/internal/balancertest"
)

// BenchmarkPick measures one pick and its Done on 8 ready endpoints from
// every core at once, for Ballast's policies and grpc-go's beside them, each
// over the same endpointsharding and pickfirst children.
func BenchmarkPick(b *testing.B) {
	addrs := make([]string, 8)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("10.0.0.%d:80", i+1)
	}
	for _, policy := range []struct{ name, config string }{
		{p2c.Name, `{}`},
		{peakewma.Name, `{"decay":"10s","defaultRtt":"30ms"}`},
		{leastrequest.Name, `{"choiceCount":2}`},
		{roundrobin.Name, ``},
	} {
		b.Run(policy.name, func(b *testing.B) {
			cc, _ := balancertest.Start(b, policy.name, policy.config, addrs...)
			p := cc.State().Picker
			done := balancer.DoneInfo{BytesReceived: true}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					res, err := p.Pick(balancer.PickInfo{FullMethodName: "/helloworld.Greeter/SayHello"})
					if err != nil {
						b.Error(err)
						return
					}
					if res.Done != nil {
						res.Done(done)
					}
				}
			})
		})
	}
}
