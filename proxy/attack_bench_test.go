package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// envEdgeChild, set to a target, makes the test binary a proxy to that
// target (runEdgeChild) instead of running tests: the attack benchmark
// measures the proxy's RSS apart from its clients and upstream.
const envEdgeChild = "BALLAST_EDGE_CHILD"

// runEdgeChild serves an explicit listener to target, prints its address
// and serves until stdin closes.
func runEdgeChild(target string) int {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	p, err := New(Options{Outbound: []Outbound{{Listener: lis, Target: target}}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(lis.Addr())
	ctx, cancel := context.WithCancel(context.Background())
	go func() { io.Copy(io.Discard, os.Stdin); cancel() }()
	if err := p.Serve(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// edgeChild is a proxy running in a child process.
type edgeChild struct {
	cmd  *exec.Cmd
	addr string
}

func startEdgeChild(b *testing.B, target string) *edgeChild {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envEdgeChild+"="+target)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stdin.Close(); cmd.Wait() })
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("proxy child: %v", err)
	}
	return &edgeChild{cmd: cmd, addr: strings.TrimSpace(addr)}
}

// rss reads the child's resident set and its peak, in bytes.
func (c *edgeChild) rss(b *testing.B) (now, peak float64) {
	b.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			now = kb * 1024
		case "VmHWM:":
			peak = kb * 1024
		}
	}
	return now, peak
}

// resetPeak starts the child's peak RSS over from its current RSS.
func (c *edgeChild) resetPeak(b *testing.B) {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", c.cmd.Process.Pid), []byte("5"), 0); err != nil {
		b.Skipf("cannot reset the peak RSS: %v", err)
	}
}

// attackUpstream serves the interop TestService and, for any other
// method, blockingHandler.
func attackUpstream(b *testing.B) string {
	lis := listen(b)
	gs := grpc.NewServer(grpc.UnknownServiceHandler(blockingHandler))
	testpb.RegisterTestServiceServer(gs, newTestService())
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(lis) }()
	b.Cleanup(func() { gs.Stop(); <-done })
	return lis.Addr().String()
}

// BenchmarkEdgeUnderAttack measures the RSS of a proxy (a child process)
// under each attack of attack_test.go, against its RSS under ordinary
// load: 16 clients making unary calls with 64 KiB responses and 4
// streaming calls of 4 MiB each. Each iteration is one attacking
// connection run until the proxy ends it (or, for attacks the proxy
// answers per stream, for a fixed number of streams). Metrics:
// loaded-MiB, attack-peak-MiB, and their ratio.
func BenchmarkEdgeUnderAttack(b *testing.B) {
	attacks := []struct {
		name string
		run  func(b *testing.B, addr string)
	}{
		{"rapid-reset", func(b *testing.B, addr string) {
			r := dialRaw(b, addr, "127.0.0.1")
			r.flood(func(i int) bool {
				id := uint32(2*i + 1)
				return i < 1_000_000 && ok(r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.block(requestFields()...), EndHeaders: true})) &&
					ok(r.fr.WriteRSTStream(id, http2.ErrCodeCancel))
			})
		}},
		{"continuation-flood", func(b *testing.B, addr string) {
			r := dialRaw(b, addr, "127.0.0.1")
			r.flood(func(i int) bool {
				if i == 0 {
					return ok(r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(requestFields()...)}))
				}
				return i < 1_000_000 && ok(r.fr.WriteContinuation(1, false, r.block("x-pad", strings.Repeat("p", 8000))))
			})
		}},
		{"hpack-bomb", func(b *testing.B, addr string) {
			r := dialRaw(b, addr, "127.0.0.1")
			f := requestFields()
			for range 1000 {
				f = append(f, "x-bomb", strings.Repeat("b", 4000))
			}
			r.flood(func(i int) bool {
				if i == 1000 {
					r.c.Close()
				}
				writeBlock(r, uint32(2*i+1), r.block(f...), true)
				return i < 1000
			})
		}},
		{"ping-flood", func(b *testing.B, addr string) {
			r := dialRaw(b, addr, "127.0.0.1")
			r.flood(func(i int) bool { return i < 1_000_000 && ok(r.fr.WritePing(false, [8]byte{byte(i)})) })
		}},
		{"stream-flood", func(b *testing.B, addr string) {
			r := dialRaw(b, addr, "127.0.0.1")
			r.flood(func(i int) bool {
				if i == 1000 {
					r.c.Close()
				}
				return i < 1000 && ok(r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: r.block(requestFields()...), EndHeaders: true}))
			})
		}},
		{"zero-window", func(b *testing.B, addr string) {
			r := dialRaw(b, addr, "127.0.0.1")
			req := &testpb.StreamingOutputCallRequest{}
			for range 4 {
				req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: 1 << 20})
			}
			msg, _ := proto.Marshal(req)
			framed := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
			framed = append(framed, msg...)
			for i := range 100 {
				id := uint32(2*i + 1)
				r.headers(id, false, with(":path", "/grpc.testing.TestService/StreamingOutputCall")...)
				r.fr.WriteData(id, true, framed)
			}
			// The stall lasts while the proxy answers a round trip.
			r.answer(false)
			r.c.Close()
		}},
	}
	for _, a := range attacks {
		b.Run(a.name, func(b *testing.B) {
			child := startEdgeChild(b, attackUpstream(b))
			conn := dial(b, "passthrough:///"+child.addr, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*bigMessage)))
			load(b, conn)
			loaded, _ := child.rss(b)
			child.resetPeak(b)
			b.ResetTimer()
			for range b.N {
				a.run(b, child.addr)
			}
			b.StopTimer()
			// The sentinel shows the proxy still serves.
			if err := conn.Invoke(context.Background(), sentinelMethod, &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
				b.Fatalf("after the attack: %v", err)
			}
			_, peak := child.rss(b)
			b.ReportMetric(loaded/(1<<20), "loaded-MiB")
			b.ReportMetric(peak/(1<<20), "attack-peak-MiB")
			b.ReportMetric(peak/loaded, "peak/loaded")
		})
	}
}

// load runs the ordinary load of BenchmarkEdgeUnderAttack.
func load(b *testing.B, conn *grpc.ClientConn) {
	client := testpb.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 16 {
		wg.Go(func() {
			for range 50 {
				if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 64 << 10}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			req := &testpb.StreamingOutputCallRequest{}
			for range 4 {
				req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: 1 << 20})
			}
			stream, err := client.StreamingOutputCall(ctx, req)
			if err != nil {
				errs <- err
				return
			}
			for {
				if _, err := stream.Recv(); err != nil {
					if err != io.EOF {
						errs <- err
					}
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("load: %v", err)
	}
}
