package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"
)

// The published HTTP/2 attacks against the client-facing edge. Each test
// asserts the proxy's answer, how many streams reached the upstream, and
// what the proxy held meanwhile, read from its own structures.

// held is what the proxy holds for client connections: connections,
// open streams, bytes waiting for a flow-control window on either leg,
// and streams parked waiting for an endpoint; upstreamHeld is what the
// upstream connections count as held for clients' windows.
type held struct {
	conns, streams, bytes, parked int
	upstreamHeld                  int64
}

func (p *Proxy) held() held {
	var h held
	p.downMu.Lock()
	conns := make([]*h2conn, 0, len(p.down))
	for c := range p.down {
		conns = append(conns, c)
	}
	p.downMu.Unlock()
	var peers []*leg
	for _, c := range conns {
		c.mu.Lock()
		h.conns++
		h.streams += len(c.legs)
		for _, l := range c.legs {
			h.bytes += pendingBytes(l)
			peers = append(peers, l.peer)
		}
		c.mu.Unlock()
	}
	for _, l := range peers {
		if l.ready.Load() {
			l.c.mu.Lock()
			h.bytes += pendingBytes(l)
			l.c.mu.Unlock()
		}
	}
	ups := []*upstreams{p.upstreams}
	if p.inbound != nil {
		ups = append(ups, p.inbound.upstreams)
	}
	for _, u := range ups {
		u.mu.Lock()
		for _, up := range u.byName {
			hosts := hostsOf(up)
			up.parkMu.Lock()
			h.parked += len(up.waiting)
			for _, host := range hosts {
				h.parked += len(host.parked)
				for c := range host.live {
					h.upstreamHeld += c.held.Load()
				}
			}
			up.parkMu.Unlock()
		}
		u.mu.Unlock()
	}
	return h
}

func pendingBytes(l *leg) int {
	n := 0
	for _, it := range l.pending {
		n += len(it.data)
	}
	return n
}

// peak samples p.held until stop is called, and returns the largest
// values seen: a sample can miss a peak, never invent one.
func peak(p *Proxy) (stop func() held) {
	var (
		mu   sync.Mutex
		max  held
		done = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Go(func() {
		for {
			h := p.held()
			mu.Lock()
			max = held{conns: maxOf(max.conns, h.conns), streams: maxOf(max.streams, h.streams), bytes: maxOf(max.bytes, h.bytes), parked: maxOf(max.parked, h.parked),
				upstreamHeld: maxOf(max.upstreamHeld, h.upstreamHeld)}
			mu.Unlock()
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})
	return func() held {
		close(done)
		wg.Wait()
		return max
	}
}

func maxOf[T int | int64](a, b T) T { return max(a, b) }

// upstreamStreams counts the streams, sentinel calls aside, that reached
// the recorded upstream.
func (r *wireRecorder) upstreamStreams() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, st := range r.streams {
		if st.path != sentinelMethod && st.headers > 0 {
			n++
		}
	}
	return n
}

// flood is how a server answered a flood: its GOAWAY (zero frame if
// none came before it closed), and what it sent meanwhile.
type flood struct {
	goAway    answer
	acks      int
	resets    map[http2.ErrCode]int
	responses []string
}

// flood writes frames with write (the i-th call writes the i-th; false
// stops) while reading the server's answers, until the server sends a
// GOAWAY that is not a drain's or closes the connection.
func (r *rawClient) flood(write func(i int) bool) flood {
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; write(i); i++ {
		}
	})
	defer func() {
		r.c.Close()
		wg.Wait()
	}()
	res := flood{goAway: closed, resets: map[http2.ErrCode]int{}}
	var status []string
	dec := hpack.NewDecoder(4096, func(hf hpack.HeaderField) {
		if hf.Name == "grpc-status" || hf.Name == "grpc-message" {
			status = append(status, hf.Name+"="+hf.Value)
		}
	})
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			return res
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			if f.LastStreamID != 1<<31-1 {
				res.goAway = goAway(f.ErrCode)
				return res
			}
		case *http2.RSTStreamFrame:
			res.resets[f.ErrCode]++
		case *http2.PingFrame:
			if f.IsAck() {
				res.acks++
			}
		case *http2.HeadersFrame:
			status = status[:0]
			dec.Write(f.HeaderBlockFragment())
			if f.StreamEnded() {
				res.responses = append(res.responses, strings.Join(status, " "))
			}
		}
	}
}

// ok reports whether a write succeeded, for flood's write functions.
func ok(err error) bool { return err == nil }

const attackStreams = 10 // Limits.MaxConcurrentStreams in these tests

func attackEdge(t *testing.T) (*edge, edgeListener) {
	e := startEdge(t, Options{Limits: Limits{MaxConcurrentStreams: attackStreams}})
	lis := e.listeners[0]
	e.sentinel(t, lis)
	return e, lis
}

// TestRapidReset: CVE-2023-44487. A client that opens streams and resets
// them at once loses its connection (GOAWAY ENHANCE_YOUR_CALM) once it
// has reset more than MaxConcurrentStreams streams and most of those it
// opened; the upstream sees no more streams than that.
func TestRapidReset(t *testing.T) {
	e, lis := attackEdge(t)
	r := dialRaw(t, lis.addr, lis.source)
	stop := peak(e.p.Proxy)
	res := r.flood(func(i int) bool {
		id := uint32(2*i + 1)
		return i < 100_000 && ok(r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.block(requestFields()...), EndHeaders: true})) &&
			ok(r.fr.WriteRSTStream(id, http2.ErrCodeCancel))
	})
	max := stop()
	if want := goAway(http2.ErrCodeEnhanceYourCalm); res.goAway != want {
		t.Errorf("answered %v, want %v", res.goAway, want)
	}
	e.sentinel(t, lis)
	if n := e.rec.upstreamStreams(); n > attackStreams+1 {
		t.Errorf("the upstream saw %d streams, want at most %d", n, attackStreams+1)
	}
	if max.streams > attackStreams {
		t.Errorf("the proxy held %d streams at once, want at most %d", max.streams, attackStreams)
	}
	if n := metricValue(e.p.metrics.clientErrors.WithLabelValues("connection", "ENHANCE_YOUR_CALM")); n != 1 {
		t.Errorf("ballast_proxy_client_errors_total{scope=connection,error=ENHANCE_YOUR_CALM} = %v, want 1", n)
	}
}

// TestRapidResetBeforeUpstream: the same, while no endpoint is ready, so
// every stream is parked and reset before any upstream sees it: nothing
// stays parked.
func TestRapidResetBeforeUpstream(t *testing.T) {
	silent := listen(t)                  // accepts connections, never speaks HTTP/2
	t.Cleanup(func() { silent.Close() }) // and stays open (not collected) until then
	lis := listen(t)
	p, err := New(Options{Outbound: []Outbound{{Listener: lis, Target: silent.Addr().String()}}, Limits: Limits{MaxConcurrentStreams: attackStreams}})
	if err != nil {
		t.Fatal(err)
	}
	rp := start(t, p)
	r := dialRaw(t, lis.Addr().String(), "127.0.0.1")
	stop := peak(rp.Proxy)
	res := r.flood(func(i int) bool {
		id := uint32(2*i + 1)
		return i < 100_000 && ok(r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.block(requestFields()...), EndHeaders: true})) &&
			ok(r.fr.WriteRSTStream(id, http2.ErrCodeCancel))
	})
	max := stop()
	if want := goAway(http2.ErrCodeEnhanceYourCalm); res.goAway != want {
		t.Errorf("answered %v, want %v (resets %v, %d responses: %q)", res.goAway, want, res.resets, len(res.responses), res.responses[:min(3, len(res.responses))])
	}
	if max.parked > attackStreams {
		t.Errorf("%d streams parked at once, want at most %d", max.parked, attackStreams)
	}
	eventually(t, "no stream left parked", func() bool { return rp.held().parked == 0 })
}

// TestContinuationFlood: CVE-2024-27316 and its Go variant CVE-2023-45288.
// A header block that never ends, in CONTINUATION frames with fields or
// empty, ends the connection once its bytes pass a bound; nothing of it
// is kept beyond the header list limit, and nothing reaches the upstream.
func TestContinuationFlood(t *testing.T) {
	tests := []struct {
		name     string
		fragment func(r *rawClient) []byte
	}{
		{"fields", func(r *rawClient) []byte { return r.block("x-pad", strings.Repeat("p", 8000)) }},
		{"empty", func(*rawClient) []byte { return nil }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, lis := attackEdge(t)
			r := dialRaw(t, lis.addr, lis.source)
			res := r.flood(func(i int) bool {
				if i == 0 {
					return ok(r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(requestFields()...)}))
				}
				return i < 100_000 && ok(r.fr.WriteContinuation(1, false, tc.fragment(r)))
			})
			if want := goAway(http2.ErrCodeEnhanceYourCalm); res.goAway != want {
				t.Errorf("answered %v, want %v", res.goAway, want)
			}
			e.sentinel(t, lis)
			if n := e.rec.upstreamStreams(); n != 0 {
				t.Errorf("the upstream saw %d streams, want none", n)
			}
		})
	}
}

// TestOversizedHeaders: the proxy advertises SETTINGS_MAX_HEADER_LIST_SIZE;
// a request over it, whether sent in full or as an HPACK bomb (one large
// field in the dynamic table, then referenced a byte at a time), is
// answered RESOURCE_EXHAUSTED without reaching the upstream, and the
// connection goes on serving.
func TestOversizedHeaders(t *testing.T) {
	big := strings.Repeat("b", 4000)
	tests := []struct {
		name   string
		fields []string
	}{
		{"large fields", requestFields("x-a", strings.Repeat("a", 40<<10), "x-b", strings.Repeat("b", 40<<10))},
		{"one field over the limit", requestFields("x-a", strings.Repeat("a", 100<<10))},
		{"hpack bomb", func() []string {
			f := requestFields()
			for range 1000 {
				f = append(f, "x-bomb", big)
			}
			return f
		}()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, lis := attackEdge(t)
			r := dialRaw(t, lis.addr, lis.source)
			settings := map[http2.SettingID]uint32{}
			for len(settings) == 0 {
				f, err := r.fr.ReadFrame()
				if err != nil {
					t.Fatal(err)
				}
				if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
					s.ForeachSetting(func(s http2.Setting) error { settings[s.ID] = s.Val; return nil })
				}
			}
			if got := settings[http2.SettingMaxHeaderListSize]; got != DefaultMaxHeaderListBytes {
				t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE %d, want %d", got, DefaultMaxHeaderListBytes)
			}
			block := r.block(tc.fields...)
			if tc.name == "hpack bomb" && len(block) > 8<<10 {
				t.Fatalf("the bomb is %d bytes encoded; it should be small", len(block))
			}
			writeBlock(r, 1, block, true)
			got := r.answer(true)
			if want := response("grpc-status=8"); got.frame != want.frame || !strings.HasPrefix(got.status, ":status=200 grpc-status=8") {
				t.Errorf("answered %v, want a RESOURCE_EXHAUSTED response", got)
			}
			r.request(3, true)
			if got := r.answer(false); got != accepted {
				t.Errorf("after it, a request on the same connection was answered %v, want accepted", got)
			}
			// Stream 3 was only accepted, not answered: wait until it
			// reached the upstream before the sentinel closes the count.
			eventually(t, "the well-formed request reaching the upstream", func() bool { return e.rec.upstreamStreams() >= 1 })
			e.sentinel(t, lis)
			if n := e.rec.upstreamStreams(); n != 1 {
				t.Errorf("the upstream saw %d streams, want only the well-formed one", n)
			}
		})
	}
}

// writeBlock writes a header block in frames no larger than the default
// maximum frame size.
func writeBlock(r *rawClient, id uint32, block []byte, end bool) {
	first := block[:min(len(block), 1<<14)]
	block = block[len(first):]
	r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0})
	for len(block) > 0 {
		frag := block[:min(len(block), 1<<14)]
		block = block[len(frag):]
		r.fr.WriteContinuation(id, len(block) == 0, frag)
	}
}

// TestFrameFloods: PING, SETTINGS and PRIORITY frames, and empty DATA
// frames, sent in a stream that never ends: the proxy answers a bounded
// number, then ends the connection with ENHANCE_YOUR_CALM.
func TestFrameFloods(t *testing.T) {
	tests := []struct {
		name  string
		open  bool // open a stream first
		frame func(r *rawClient, i int) error
		// most is the largest number of frames the flood may get
		// answered (PING acks) or forwarded (DATA to the upstream).
		most int
	}{
		{"ping", false, func(r *rawClient, i int) error { return r.fr.WritePing(false, [8]byte{byte(i)}) }, maxControlFrames},
		{"settings", false, func(r *rawClient, _ int) error { return r.fr.WriteSettings() }, maxControlFrames},
		{"priority", false, func(r *rawClient, i int) error {
			return r.fr.WritePriority(uint32(2*i+1), http2.PriorityParam{StreamDep: 0, Weight: 1})
		}, maxControlFrames},
		{"empty data", true, func(r *rawClient, _ int) error { return r.fr.WriteData(1, false, nil) }, maxEmptyFrames},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e, lis := attackEdge(t)
			r := dialRaw(t, lis.addr, lis.source)
			if tc.open {
				r.request(1, false)
			}
			res := r.flood(func(i int) bool { return i < 100_000 && ok(tc.frame(r, i)) })
			if want := goAway(http2.ErrCodeEnhanceYourCalm); res.goAway != want {
				t.Errorf("answered %v, want %v", res.goAway, want)
			}
			if res.acks > tc.most+1 { // +1: the ack of the test client's SETTINGS
				t.Errorf("%d PINGs or SETTINGS acknowledged, want at most %d", res.acks, tc.most)
			}
			e.sentinel(t, lis)
			if saw := e.rec.saw(); saw.Data > tc.most {
				t.Errorf("the upstream saw %d DATA frames, want at most %d", saw.Data, tc.most)
			}
		})
	}
}

// TestMaxConcurrentStreams: streams over the advertised
// SETTINGS_MAX_CONCURRENT_STREAMS are refused (REFUSED_STREAM, which
// clients retry) and never reach the upstream.
func TestMaxConcurrentStreams(t *testing.T) {
	e, lis := attackEdge(t)
	r := dialRaw(t, lis.addr, lis.source)
	const streams = 5 * attackStreams
	for i := range streams {
		r.request(uint32(2*i+1), false)
	}
	r.fr.WritePing(false, probePing)
	refused := 0
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading answers: %v", err)
		}
		if f, ok := f.(*http2.RSTStreamFrame); ok && f.ErrCode == http2.ErrCodeRefusedStream {
			refused++
		}
		if f, ok := f.(*http2.PingFrame); ok && f.IsAck() && f.Data == probePing {
			break
		}
	}
	if refused != streams-attackStreams {
		t.Errorf("%d streams refused, want %d", refused, streams-attackStreams)
	}
	e.sentinel(t, lis)
	if n := e.rec.upstreamStreams(); n != attackStreams {
		t.Errorf("the upstream saw %d streams, want %d", n, attackStreams)
	}
}

// TestConnectionTimeouts: a connection with no stream for IdleTimeout is
// closed with GOAWAY, as is one that never sends a preface; a connection
// older than MaxConnectionAge is drained (GOAWAY, PING, final GOAWAY
// naming its last stream) and, after MaxConnectionAgeGrace, closed.
func TestConnectionTimeouts(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		e := startEdge(t, Options{Limits: Limits{IdleTimeout: 200 * time.Millisecond}})
		lis := e.listeners[0]
		r := dialRaw(t, lis.addr, lis.source)
		res := r.flood(func(int) bool { return false })
		if want := goAway(http2.ErrCodeNo); res.goAway != want {
			t.Errorf("an idle connection got %v, want %v", res.goAway, want)
		}
		c, err := net.Dial("tcp", lis.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			// The GOAWAY; then the close.
			for err == nil {
				_, err = c.Read(make([]byte, 1024))
			}
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("a connection that sent nothing is still open")
		}
	})
	t.Run("age", func(t *testing.T) {
		e := startEdge(t, Options{Limits: Limits{MaxConnectionAge: 50 * time.Millisecond, MaxConnectionAgeGrace: time.Second}})
		lis := e.listeners[0]
		r := dialRaw(t, lis.addr, lis.source)
		r.request(1, true)
		var seen []string
		for {
			f, err := r.fr.ReadFrame()
			if err != nil {
				seen = append(seen, "closed")
				break
			}
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				seen = append(seen, fmt.Sprintf("GOAWAY %v last=%d", f.ErrCode, f.LastStreamID))
			case *http2.PingFrame:
				if !f.IsAck() {
					seen = append(seen, "PING")
					r.fr.WritePing(true, f.Data)
				}
			case *http2.RSTStreamFrame:
				seen = append(seen, "RST_STREAM "+f.ErrCode.String())
			}
		}
		want := []string{"GOAWAY NO_ERROR last=2147483647", "PING", "GOAWAY NO_ERROR last=1", "closed"}
		if !slices.Equal(seen, want) {
			t.Errorf("an old connection with a stream got %q, want %q", seen, want)
		}
	})
}

// TestZeroWindowStall: a client that opens streaming calls and never
// opens its flow-control windows must not stall other clients' calls on
// the same upstream connection. The proxy holds at most half that
// connection's window for such clients, ending (RESOURCE_EXHAUSTED) the
// streams that would hold more, and another client's large streaming
// call completes meanwhile.
func TestZeroWindowStall(t *testing.T) {
	svc := newTestService()
	up := startTestService(t, svc)
	p, addr := startOutbound(t, up, Options{})
	conn := dial(t, addr, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(2*bigMessage)))
	client := testpb.NewTestServiceClient(conn)
	// One call first, so the upstream connection is up and shared.
	if _, err := client.UnaryCall(t.Context(), &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}

	r := dialRaw(t, addr, "127.0.0.1")
	req := &testpb.StreamingOutputCallRequest{}
	for range 4 {
		req.ResponseParameters = append(req.ResponseParameters, &testpb.ResponseParameters{Size: 1 << 20})
	}
	msg, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	framed := append([]byte{0, 0, 0, 0, 0}, msg...)
	binary.BigEndian.PutUint32(framed[1:5], uint32(len(msg)))
	const stalled = 40 // streams whose windows never open, 4 MiB asked on each
	stop := peak(p.Proxy)
	for i := range stalled {
		id := uint32(2*i + 1)
		r.headers(id, false, with(":path", "/grpc.testing.TestService/StreamingOutputCall")...)
		r.fr.WriteData(id, true, framed)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	streamReq := &testpb.StreamingOutputCallRequest{}
	for range 8 {
		streamReq.ResponseParameters = append(streamReq.ResponseParameters, &testpb.ResponseParameters{Size: 1 << 20})
	}
	stream, err := client.StreamingOutputCall(ctx, streamReq)
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; ; n++ {
		if _, err := stream.Recv(); err != nil {
			if !errors.Is(err, io.EOF) || n != 8 {
				t.Fatalf("a reading client's streaming call, after %d of 8 responses: %v", n, err)
			}
			break
		}
	}
	max := stop()
	// The upstream connection's own count is exact at each sample; it may
	// pass the bound by the frame being queued before the eviction.
	if bound := int64(maxHeldPerUpstream + frameSize); max.upstreamHeld > bound {
		t.Errorf("the upstream connection held %d bytes for stalled clients, want at most %d", max.upstreamHeld, bound)
	}
	if n := metricValue(p.metrics.clientErrors.WithLabelValues("stream", "client_stalled")); n == 0 {
		t.Error("no stalled stream counted in ballast_proxy_client_errors_total")
	}
	r.c.Close()
	eventually(t, "nothing held once the stalled client is gone", func() bool {
		h := p.held()
		return h.bytes == 0 && h.upstreamHeld == 0
	})
}
