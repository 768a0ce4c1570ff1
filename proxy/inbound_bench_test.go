package proxy

import (
	"net"
	"net/netip"
	"testing"

	"google.golang.org/grpc"
)

// BenchmarkInboundUnary measures one SayHello to one greeter, direct and
// through the inbound listener (which also reads the clock and observes
// the call's duration). As in BenchmarkProxyUnary, client and server run
// in this process, so the difference is the inbound hop's cost.
func BenchmarkInboundUnary(b *testing.B) {
	app := netip.MustParseAddrPort(startGreeters(b, 1)[0])
	inbound := func(b *testing.B) *grpc.ClientConn {
		lis := listen(b)
		p, err := New(Options{Inbound: lis, OriginalDst: func(net.Conn) (netip.AddrPort, error) { return app, nil }})
		if err != nil {
			b.Fatal(err)
		}
		start(b, p)
		return dial(b, lis.Addr().String())
	}
	b.Run("direct", func(b *testing.B) { benchmarkUnary(b, dial(b, app.String())) })
	b.Run("inbound", func(b *testing.B) { benchmarkUnary(b, inbound(b)) })
	b.Run("direct-parallel", func(b *testing.B) { benchmarkUnaryParallel(b, dial(b, app.String())) })
	b.Run("inbound-parallel", func(b *testing.B) { benchmarkUnaryParallel(b, inbound(b)) })
}
