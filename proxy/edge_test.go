package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// The client-facing HTTP/2 edge, driven with raw frames (x/net's Framer)
// by a client that breaks the protocol. The proxy runs in front of a
// real grpc-go server; a recorder under that server's listener sees every
// frame the upstream reads.

// sentinelMethod is answered at once by the recorded upstream; every
// other call blocks until it is cancelled, so a stream stays open (or
// half-closed) for as long as a test needs.
const sentinelMethod = "/ballast.test.Sentinel/Done"

func blockingHandler(_ any, ss grpc.ServerStream) error {
	if m, _ := grpc.MethodFromServerStream(ss); m == sentinelMethod {
		var msg emptypb.Empty
		if err := ss.RecvMsg(&msg); err != nil {
			return err
		}
		return ss.SendMsg(&msg)
	}
	<-ss.Context().Done()
	return ss.Context().Err()
}

// wireRecorder parses what a server reads from its connections and
// counts the request frames of every stream but the sentinel's. It parses
// inside Read, so once the server has answered a call, every frame sent
// before that call on the same connection has been counted.
type wireRecorder struct {
	mu      sync.Mutex
	streams map[wireStream]*streamSeen
	conns   int
	// protocolErrors are the upstream's answers that say the proxy
	// broke HTTP/2 (recordedConn.Write).
	protocolErrors []string
}

type wireStream struct {
	conn int
	id   uint32
}

type streamSeen struct {
	path          string
	headers, data int
}

// upstreamSaw is what an upstream read of the streams a test opened.
type upstreamSaw struct {
	Headers, Data int // HEADERS and DATA frames (including CONTINUATION-less blocks)
}

func (r *wireRecorder) saw() upstreamSaw {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s upstreamSaw
	for _, st := range r.streams {
		if st.path != sentinelMethod {
			s.Headers += st.headers
			s.Data += st.data
		}
	}
	return s
}

type recordedListener struct {
	net.Listener
	r *wireRecorder
}

func (l recordedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.r.mu.Lock()
	l.r.conns++
	n := l.r.conns
	l.r.mu.Unlock()
	rc := &recordedConn{Conn: c, r: l.r, conn: n, skip: len(http2.ClientPreface)}
	rc.dec = hpack.NewDecoder(4096, func(hf hpack.HeaderField) {
		if hf.Name == ":path" {
			rc.path = hf.Value
		}
	})
	return rc, nil
}

type recordedConn struct {
	net.Conn
	r    *wireRecorder
	conn int
	skip int    // preface bytes still to skip
	buf  []byte // read, not yet a whole frame
	out  []byte // written, not yet a whole frame
	dec  *hpack.Decoder
	path string
}

func (c *recordedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.record(b[:n])
	return n, err
}

func (c *recordedConn) record(b []byte) {
	if c.skip > 0 {
		k := min(c.skip, len(b))
		c.skip -= k
		b = b[k:]
	}
	c.buf = append(c.buf, b...)
	c.r.mu.Lock()
	defer c.r.mu.Unlock()
	c.buf = eachFrame(c.buf, func(typ http2.FrameType, flags http2.Flags, id uint32, payload []byte) {
		key := wireStream{c.conn, id}
		st := c.r.streams[key]
		if st == nil && (typ == http2.FrameHeaders || typ == http2.FrameData) {
			st = &streamSeen{}
			c.r.streams[key] = st
		}
		switch typ {
		case http2.FrameHeaders:
			// The proxy writes neither padding nor priority.
			st.headers++
			c.path = ""
			c.dec.Write(payload)
			if flags.Has(http2.FlagHeadersEndHeaders) {
				c.dec.Close()
				st.path = c.path
			}
		case http2.FrameContinuation:
			c.dec.Write(payload)
			if flags.Has(http2.FlagContinuationEndHeaders) {
				c.dec.Close()
				if st := c.r.streams[key]; st != nil {
					st.path = c.path
				}
			}
		case http2.FrameData:
			st.data++
		}
	})
}

// Write notes the upstream's answers that say the proxy broke the
// protocol: a GOAWAY with an error, or a RST_STREAM with a code that
// names a violation (not CANCEL, REFUSED_STREAM or the like, which a
// server sends for its own reasons).
func (c *recordedConn) Write(b []byte) (int, error) {
	c.r.mu.Lock()
	c.out = eachFrame(append(c.out, b...), func(typ http2.FrameType, _ http2.Flags, id uint32, payload []byte) {
		var code http2.ErrCode
		switch {
		case typ == http2.FrameGoAway && len(payload) >= 8:
			code = http2.ErrCode(binary.BigEndian.Uint32(payload[4:8]))
		case typ == http2.FrameRSTStream && len(payload) == 4:
			code = http2.ErrCode(binary.BigEndian.Uint32(payload))
			if !violation[code] {
				return
			}
		default:
			return
		}
		if code != http2.ErrCodeNo {
			c.r.protocolErrors = append(c.r.protocolErrors, fmt.Sprintf("%s %s on stream %d of connection %d", typ, code, id, c.conn))
		}
	})
	c.r.mu.Unlock()
	return c.Conn.Write(b)
}

// violation are the RST_STREAM codes by which a server says its peer
// broke the protocol.
var violation = map[http2.ErrCode]bool{
	http2.ErrCodeProtocol:     true,
	http2.ErrCodeFlowControl:  true,
	http2.ErrCodeStreamClosed: true,
	http2.ErrCodeFrameSize:    true,
	http2.ErrCodeCompression:  true,
}

// eachFrame calls fn for each whole frame at the start of buf and returns
// what is left of buf.
func eachFrame(buf []byte, fn func(typ http2.FrameType, flags http2.Flags, id uint32, payload []byte)) []byte {
	for len(buf) >= 9 {
		length := int(buf[0])<<16 | int(buf[1])<<8 | int(buf[2])
		if len(buf) < 9+length {
			break
		}
		id := uint32(buf[5]&0x7f)<<24 | uint32(buf[6])<<16 | uint32(buf[7])<<8 | uint32(buf[8])
		fn(http2.FrameType(buf[3]), http2.Flags(buf[4]), id, buf[9:9+length])
		buf = buf[9+length:]
	}
	return buf
}

// startRecordedUpstream serves blockingHandler behind a recorder.
func startRecordedUpstream(t testing.TB) (string, *wireRecorder) {
	t.Helper()
	rec := &wireRecorder{streams: map[wireStream]*streamSeen{}}
	lis := recordedListener{Listener: listen(t), r: rec}
	gs := grpc.NewServer(grpc.UnknownServiceHandler(blockingHandler))
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	return lis.Addr().String(), rec
}

// edge is a proxy in front of a recorded upstream, with all three kinds
// of listener a client can reach: explicit, transparent and inbound.
type edge struct {
	upstream string
	rec      *wireRecorder
	p        *runningProxy
	// listeners by kind: the address a client dials, and the source
	// address it must dial from (the test's OriginalDst keys on it).
	listeners []edgeListener
}

type edgeListener struct {
	kind, addr, source string
}

func startEdge(t testing.TB, opts Options) *edge {
	t.Helper()
	return startEdgeOn(t, opts, func(l net.Listener) net.Listener { return l })
}

// startEdgeOn is startEdge with each listener the proxy takes wrapped by
// wrap.
func startEdgeOn(t testing.TB, opts Options, wrap func(net.Listener) net.Listener) *edge {
	t.Helper()
	e := &edge{}
	e.upstream, e.rec = startRecordedUpstream(t)
	dst := netip.MustParseAddrPort(e.upstream)
	explicit, transparent, inbound := listen(t), listen(t), listen(t)
	opts.Outbound = append(opts.Outbound, Outbound{Listener: wrap(explicit), Target: e.upstream})
	opts.Transparent = wrap(transparent)
	opts.Destinations = StaticDestinations{dst: e.upstream}
	opts.Inbound = wrap(inbound)
	opts.OriginalDst = func(net.Conn) (netip.AddrPort, error) { return dst, nil }
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e.p = start(t, p)
	e.listeners = []edgeListener{
		{"explicit", explicit.Addr().String(), "127.0.0.1"},
		{"transparent", transparent.Addr().String(), "127.0.0.1"},
		{"inbound", inbound.Addr().String(), "127.0.0.1"},
	}
	return e
}

// sentinel makes one call through lis and waits for its answer: every
// frame a raw client sent through lis before is then recorded.
func (e *edge) sentinel(t testing.TB, lis edgeListener) {
	t.Helper()
	conn := dial(t, "passthrough:///"+lis.addr, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return dialerFrom(lis.source).DialContext(ctx, "tcp", addr)
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Invoke(ctx, sentinelMethod, &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("sentinel call through the %s listener: %v", lis.kind, err)
	}
	conn.Close()
}

// rawClient writes frames as a (possibly hostile) client would.
type rawClient struct {
	c    net.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
}

func dialRaw(t testing.TB, addr, source string) *rawClient {
	t.Helper()
	c, err := dialerFrom(source).Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := &rawClient{c: c, fr: http2.NewFramer(c, c)}
	r.fr.AllowIllegalWrites = true
	r.fr.AllowIllegalReads = true
	r.fr.SetMaxReadFrameSize(1 << 24)
	r.enc = hpack.NewEncoder(&r.hbuf)
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := r.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return r
}

// block encodes name/value pairs as a header block.
func (r *rawClient) block(kv ...string) []byte {
	r.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		r.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return append([]byte(nil), r.hbuf.Bytes()...)
}

// headers writes one HEADERS frame with exactly the fields kv.
func (r *rawClient) headers(id uint32, end bool, kv ...string) {
	r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.block(kv...), EndStream: end, EndHeaders: true})
}

// requestFields are those of a well-formed gRPC request to a blocking
// method, with extra fields after them.
func requestFields(extra ...string) []string {
	return append([]string{":method", "POST", ":scheme", "http", ":path", "/ballast.test.Echo/Block", ":authority", "greeter", "content-type", "application/grpc", "te", "trailers"}, extra...)
}

// request opens stream id with a well-formed request.
func (r *rawClient) request(id uint32, end bool, extra ...string) {
	r.headers(id, end, requestFields(extra...)...)
}

// without returns requestFields without the field name.
func without(name string) []string {
	f := requestFields()
	for i := 0; i < len(f); i += 2 {
		if f[i] == name {
			return append(f[:i:i], f[i+2:]...)
		}
	}
	return f
}

// with returns requestFields with name's value replaced.
func with(name, value string) []string {
	f := requestFields()
	for i := 0; i < len(f); i += 2 {
		if f[i] == name {
			f[i+1] = value
		}
	}
	return f
}

// answer is how a server answered: the first GOAWAY or RST_STREAM it
// sent, or a response that ended the stream at once (a status), or
// "accepted" when it acknowledged a PING sent after the frames under test
// first, or "closed" when it closed without a GOAWAY.
type answer struct {
	frame  string
	code   http2.ErrCode
	status string // of a response: ":status" and "grpc-status"
}

func (a answer) String() string {
	switch a.frame {
	case "GOAWAY", "RST_STREAM":
		return fmt.Sprintf("%s %s", a.frame, a.code)
	case "response":
		return "response " + a.status
	}
	return a.frame
}

func response(status string) answer { return answer{frame: "response", status: status} }

var (
	accepted = answer{frame: "accepted"}
	closed   = answer{frame: "closed"}
)

func goAway(code http2.ErrCode) answer { return answer{frame: "GOAWAY", code: code} }
func rst(code http2.ErrCode) answer    { return answer{frame: "RST_STREAM", code: code} }

var probePing = [8]byte{'p', 'r', 'o', 'b', 'e'}

// answer sends the probe PING and reads until the server answers. A
// server that answers a request from another goroutine than the one
// reading frames (grpc-go's handlers) may ack the PING first: with
// awaitResponse, reading goes on after the ack.
func (r *rawClient) answer(awaitResponse bool) answer {
	r.fr.WritePing(false, probePing)
	var status []string
	dec := hpack.NewDecoder(4096, func(hf hpack.HeaderField) {
		if hf.Name == ":status" || hf.Name == "grpc-status" {
			status = append(status, hf.Name+"="+hf.Value)
		}
	})
	for {
		f, err := r.fr.ReadFrame()
		if err != nil {
			return closed
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			if f.ErrCode != http2.ErrCodeNo || f.LastStreamID != 1<<31-1 {
				return goAway(f.ErrCode)
			}
		case *http2.RSTStreamFrame:
			return rst(f.ErrCode)
		case *http2.HeadersFrame:
			status = status[:0]
			dec.Write(f.HeaderBlockFragment())
			if f.StreamEnded() {
				return response(strings.Join(status, " "))
			}
		case *http2.PingFrame:
			if f.IsAck() && f.Data == probePing && !awaitResponse {
				return accepted
			}
		}
	}
}

// rfc9113Rules are the rules of RFC 9113 a client can break, one row
// each: what the client sends, how the proxy must answer, what of it may
// reach the upstream, and how a grpc-go server answers the same frames
// (for comparison: the proxy is as strict or stricter).
var rfc9113Rules = []struct {
	name     string
	send     func(r *rawClient)
	want     answer
	upstream upstreamSaw
	grpcGo   answer
}{
	// §5.1: stream states.
	{"5.1 DATA on an idle stream", func(r *rawClient) { r.fr.WriteData(1, true, []byte("x")) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"5.1 RST_STREAM on an idle stream", func(r *rawClient) { r.fr.WriteRSTStream(1, http2.ErrCodeCancel) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"5.1 WINDOW_UPDATE on an idle stream", func(r *rawClient) { r.fr.WriteWindowUpdate(1, 100) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"5.1 PRIORITY on an idle stream is allowed", func(r *rawClient) { r.fr.WritePriority(1, http2.PriorityParam{StreamDep: 3, Weight: 10}) },
		accepted, upstreamSaw{}, accepted},
	{"5.1 DATA on a half-closed (remote) stream", func(r *rawClient) {
		r.request(1, true)
		r.fr.WriteData(1, true, []byte("x"))
	}, rst(http2.ErrCodeStreamClosed), upstreamSaw{Headers: 1}, rst(http2.ErrCodeStreamClosed)},
	{"5.1 HEADERS on a half-closed (remote) stream", func(r *rawClient) {
		r.request(1, true)
		r.headers(1, true, "x-trailer", "1")
	}, rst(http2.ErrCodeStreamClosed), upstreamSaw{Headers: 1}, goAway(http2.ErrCodeProtocol)},
	{"5.1 DATA on a stream the client reset", func(r *rawClient) {
		r.request(1, false)
		r.fr.WriteRSTStream(1, http2.ErrCodeCancel)
		r.fr.WriteData(1, true, []byte("x"))
	}, rst(http2.ErrCodeStreamClosed), upstreamSaw{Headers: 1}, accepted},
	{"5.1 WINDOW_UPDATE on a closed stream is allowed", func(r *rawClient) {
		r.request(1, false)
		r.fr.WriteRSTStream(1, http2.ErrCodeCancel)
		r.fr.WriteWindowUpdate(1, 100)
	}, accepted, upstreamSaw{Headers: 1}, accepted},
	{"5.1 RST_STREAM on a closed stream is allowed", func(r *rawClient) {
		r.request(1, false)
		r.fr.WriteRSTStream(1, http2.ErrCodeCancel)
		r.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	}, accepted, upstreamSaw{Headers: 1}, accepted},
	{"5.1.1 HEADERS on an even stream", func(r *rawClient) { r.request(2, true) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, goAway(http2.ErrCodeProtocol)},
	{"5.1.1 HEADERS with a decreasing stream id", func(r *rawClient) {
		r.request(5, true)
		r.request(3, true)
	}, goAway(http2.ErrCodeProtocol), upstreamSaw{Headers: 1}, goAway(http2.ErrCodeProtocol)},
	{"5.1.1 HEADERS reusing a closed stream's id", func(r *rawClient) {
		r.request(1, false)
		r.fr.WriteRSTStream(1, http2.ErrCodeCancel)
		r.request(1, true)
	}, goAway(http2.ErrCodeProtocol), upstreamSaw{Headers: 1}, goAway(http2.ErrCodeProtocol)},

	// §5.3, §6: frame rules.
	{"5.3.1 PRIORITY making a stream depend on itself", func(r *rawClient) { r.fr.WritePriority(1, http2.PriorityParam{StreamDep: 1, Weight: 10}) },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"5.3.1 HEADERS making its stream depend on itself", func(r *rawClient) {
		r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block(requestFields()...), EndStream: true, EndHeaders: true, Priority: http2.PriorityParam{StreamDep: 1, Weight: 10}})
	}, rst(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"6.1 DATA on stream 0", func(r *rawClient) { r.fr.WriteData(0, false, []byte("x")) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, closed},
	{"6.2 HEADERS on stream 0", func(r *rawClient) { r.headers(0, true, requestFields()...) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, closed},
	{"6.3 PRIORITY of the wrong length", func(r *rawClient) { r.fr.WriteRawFrame(http2.FramePriority, 0, 1, []byte{0, 0, 0, 3}) },
		goAway(http2.ErrCodeFrameSize), upstreamSaw{}, closed},
	{"6.4 RST_STREAM of the wrong length", func(r *rawClient) {
		r.request(1, false)
		r.fr.WriteRawFrame(http2.FrameRSTStream, 0, 1, []byte{0, 0, 8})
	}, goAway(http2.ErrCodeFrameSize), upstreamSaw{Headers: 1}, closed},
	{"6.5 SETTINGS on a stream", func(r *rawClient) { r.fr.WriteRawFrame(http2.FrameSettings, 0, 1, nil) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, closed},
	{"6.5 SETTINGS of a length not a multiple of 6", func(r *rawClient) { r.fr.WriteRawFrame(http2.FrameSettings, 0, 0, []byte{0, 4, 0, 0}) },
		goAway(http2.ErrCodeFrameSize), upstreamSaw{}, closed},
	{"6.5 SETTINGS ACK with a payload", func(r *rawClient) {
		r.fr.WriteRawFrame(http2.FrameSettings, http2.FlagSettingsAck, 0, []byte{0, 4, 0, 0, 0, 1})
	}, goAway(http2.ErrCodeFrameSize), upstreamSaw{}, closed},
	{"6.5.2 SETTINGS_ENABLE_PUSH of 2", func(r *rawClient) { r.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 2}) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"6.5.2 SETTINGS_MAX_FRAME_SIZE below 2^14", func(r *rawClient) { r.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1<<14 - 1}) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"6.5.2 SETTINGS_MAX_FRAME_SIZE above 2^24-1", func(r *rawClient) { r.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 24}) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"6.5.2 SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1", func(r *rawClient) {
		r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31})
	}, goAway(http2.ErrCodeFlowControl), upstreamSaw{}, closed},
	{"6.7 PING of the wrong length", func(r *rawClient) { r.fr.WriteRawFrame(http2.FramePing, 0, 0, []byte{1, 2, 3}) },
		goAway(http2.ErrCodeFrameSize), upstreamSaw{}, closed},
	{"6.7 PING on a stream", func(r *rawClient) { r.fr.WriteRawFrame(http2.FramePing, 0, 1, make([]byte, 8)) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, closed},
	{"6.9 WINDOW_UPDATE of 0 on the connection", func(r *rawClient) { r.fr.WriteWindowUpdate(0, 0) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, closed},
	{"6.9 WINDOW_UPDATE of 0 on a stream", func(r *rawClient) {
		r.request(1, false)
		r.fr.WriteWindowUpdate(1, 0)
	}, rst(http2.ErrCodeProtocol), upstreamSaw{Headers: 1}, rst(http2.ErrCodeProtocol)},
	{"6.9.1 connection window past 2^31-1", func(r *rawClient) { r.fr.WriteWindowUpdate(0, 1<<31-1) },
		goAway(http2.ErrCodeFlowControl), upstreamSaw{}, accepted},
	{"6.9.1 stream window past 2^31-1", func(r *rawClient) {
		r.request(1, false)
		r.fr.WriteWindowUpdate(1, 1<<31-1)
	}, rst(http2.ErrCodeFlowControl), upstreamSaw{Headers: 1}, accepted},
	{"6.9.2 SETTINGS_INITIAL_WINDOW_SIZE taking a stream window past 2^31-1", func(r *rawClient) {
		r.request(1, false)
		r.fr.WriteWindowUpdate(1, 1<<31-1-65535)
		r.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	}, goAway(http2.ErrCodeFlowControl), upstreamSaw{Headers: 1}, accepted},
	{"6.10 CONTINUATION without HEADERS", func(r *rawClient) { r.fr.WriteContinuation(1, true, r.block(requestFields()...)) },
		goAway(http2.ErrCodeProtocol), upstreamSaw{}, closed},
	{"6.10 another frame inside a header block", func(r *rawClient) {
		b := r.block(requestFields()...)
		r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:4], EndStream: true})
		r.fr.WritePing(false, [8]byte{})
		r.fr.WriteContinuation(1, true, b[4:])
	}, goAway(http2.ErrCodeProtocol), upstreamSaw{}, closed},
	{"8.4 PUSH_PROMISE from a client", func(r *rawClient) {
		r.request(1, false)
		r.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: r.block(requestFields()...), EndHeaders: true})
	}, goAway(http2.ErrCodeProtocol), upstreamSaw{Headers: 1}, accepted},
	{"4.2 frame over SETTINGS_MAX_FRAME_SIZE", func(r *rawClient) {
		r.request(1, false)
		r.fr.WriteData(1, false, make([]byte, 1<<14+1))
	}, goAway(http2.ErrCodeFrameSize), upstreamSaw{Headers: 1}, closed},
	{"4.3 a header block that does not decode", func(r *rawClient) {
		r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff}, EndStream: true, EndHeaders: true})
	}, goAway(http2.ErrCodeCompression), upstreamSaw{}, closed},

	// §8.1–8.3: requests.
	{"8.1 a second HEADERS without END_STREAM", func(r *rawClient) {
		r.request(1, false)
		r.headers(1, false, "x-trailer", "1")
	}, rst(http2.ErrCodeProtocol), upstreamSaw{Headers: 1}, goAway(http2.ErrCodeProtocol)},
	{"8.1 pseudo-header in trailers", func(r *rawClient) {
		r.request(1, false)
		r.headers(1, true, ":path", "/x")
	}, rst(http2.ErrCodeProtocol), upstreamSaw{Headers: 1}, goAway(http2.ErrCodeProtocol)},
	{"8.1.1 content-length above the DATA sent", func(r *rawClient) {
		r.request(1, false, "content-length", "10")
		r.fr.WriteData(1, true, make([]byte, 5))
	}, rst(http2.ErrCodeProtocol), upstreamSaw{Headers: 1}, accepted},
	{"8.1.1 content-length below the DATA sent", func(r *rawClient) {
		r.request(1, false, "content-length", "3")
		r.fr.WriteData(1, false, make([]byte, 5))
	}, rst(http2.ErrCodeProtocol), upstreamSaw{Headers: 1}, accepted},
	{"8.1.1 content-length on a request with no DATA", func(r *rawClient) { r.request(1, true, "content-length", "5") },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"8.1.1 content-length that is not a number", func(r *rawClient) { r.request(1, true, "content-length", "five") },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"8.2.1 uppercase field name", func(r *rawClient) { r.request(1, true, "X-Upper", "1") },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, rst(http2.ErrCodeProtocol)},
	{"8.2.1 field name with a separator", func(r *rawClient) { r.request(1, true, "x\"quote", "1") },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, rst(http2.ErrCodeProtocol)},
	{"8.2.1 field value with a control character", func(r *rawClient) { r.request(1, true, "x-value", "a\x01b") },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, rst(http2.ErrCodeProtocol)},
	{"8.2.1 field value with a line feed", func(r *rawClient) { r.request(1, true, "x-value", "a\nb") },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, rst(http2.ErrCodeProtocol)},
	{"8.2.1 field value with a NUL", func(r *rawClient) { r.request(1, true, "x-value", "a\x00b") },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, rst(http2.ErrCodeProtocol)},
	{"8.2.1 field value with leading whitespace", func(r *rawClient) { r.request(1, true, "x-value", " a") },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"8.2.2 connection", func(r *rawClient) { r.request(1, true, "connection", "keep-alive") },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, rst(http2.ErrCodeProtocol)},
	{"8.2.2 transfer-encoding", func(r *rawClient) { r.request(1, true, "transfer-encoding", "chunked") },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"8.2.2 upgrade", func(r *rawClient) { r.request(1, true, "upgrade", "h2c") },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"8.2.2 te other than trailers", func(r *rawClient) { r.headers(1, true, with("te", "gzip")...) },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"8.2.2 te: trailers is allowed", func(r *rawClient) { r.request(1, true) },
		accepted, upstreamSaw{Headers: 1}, accepted},
	{"8.3 no :method", func(r *rawClient) { r.headers(1, true, without(":method")...) },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, response(":status=405 grpc-status=13")},
	{"8.3 empty :method", func(r *rawClient) { r.headers(1, true, with(":method", "")...) },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, response(":status=405 grpc-status=13")},
	{"8.3 no :scheme", func(r *rawClient) { r.headers(1, true, without(":scheme")...) },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"8.3 empty :scheme", func(r *rawClient) { r.headers(1, true, with(":scheme", "")...) },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, accepted},
	{"8.3 no :path", func(r *rawClient) { r.headers(1, true, without(":path")...) },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, response(":status=200 grpc-status=12")},
	{"8.3 empty :path", func(r *rawClient) { r.headers(1, true, with(":path", "")...) },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, response(":status=200 grpc-status=12")},
	{"8.3 :path not absolute", func(r *rawClient) { r.headers(1, true, with(":path", "ballast.test.Echo/Block")...) },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, response(":status=200 grpc-status=12")},
	{"8.3 repeated :path", func(r *rawClient) {
		r.request(1, true)
		r.headers(3, true, append([]string{":path", "/a"}, requestFields()...)...)
	},
		rst(http2.ErrCodeProtocol), upstreamSaw{Headers: 1}, rst(http2.ErrCodeProtocol)},
	{"8.3 response pseudo-header :status in a request", func(r *rawClient) { r.headers(1, true, append([]string{":status", "200"}, requestFields()...)...) },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, rst(http2.ErrCodeProtocol)},
	{"8.3 unknown pseudo-header", func(r *rawClient) { r.headers(1, true, append([]string{":ballast", "1"}, requestFields()...)...) },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, rst(http2.ErrCodeProtocol)},
	{"8.3 pseudo-header after a regular field", func(r *rawClient) { r.headers(1, true, append(requestFields(), ":authority", "x")...) },
		rst(http2.ErrCodeProtocol), upstreamSaw{}, rst(http2.ErrCodeProtocol)},
}

// TestRFC9113 sends each rule's frames to every listener of a proxy in
// front of a real grpc-go server: the proxy answers with the stream or
// connection error the rule requires, and nothing the rule forbids
// reaches the upstream. The same frames sent straight to a grpc-go server
// show how it answers.
func TestRFC9113(t *testing.T) {
	grpcGo := listen(t)
	gs := grpc.NewServer(grpc.UnknownServiceHandler(blockingHandler))
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(grpcGo) }()
	t.Cleanup(func() { gs.Stop(); <-done })

	for _, rule := range rfc9113Rules {
		t.Run(rule.name, func(t *testing.T) {
			e := startEdge(t, Options{})
			for _, lis := range e.listeners {
				e.sentinel(t, lis)
				before := e.rec.saw()
				r := dialRaw(t, lis.addr, lis.source)
				rule.send(r)
				if got := r.answer(false); got != rule.want {
					t.Errorf("%s listener answered %v, want %v", lis.kind, got, rule.want)
				}
				e.sentinel(t, lis)
				after := e.rec.saw()
				if got := (upstreamSaw{after.Headers - before.Headers, after.Data - before.Data}); got != rule.upstream {
					t.Errorf("through the %s listener the upstream saw %+v, want %+v", lis.kind, got, rule.upstream)
				}
			}
			if scope := map[string]string{"GOAWAY": "connection", "RST_STREAM": "stream"}[rule.want.frame]; scope != "" {
				counted := metricValue(e.p.metrics.clientErrors.WithLabelValues(scope, rule.want.code.String()))
				if counted != float64(len(e.listeners)) {
					t.Errorf("ballast_proxy_client_errors_total{scope=%q,error=%q} = %v, want %d", scope, rule.want.code, counted, len(e.listeners))
				}
			}
			r := dialRaw(t, grpcGo.Addr().String(), "127.0.0.1")
			rule.send(r)
			got := r.answer(rule.grpcGo.frame == "response")
			if got != rule.grpcGo {
				t.Errorf("grpc-go server answered %v, the table says %v", got, rule.grpcGo)
			}
			t.Logf("| %s | %v | %v |", rule.name, rule.want, got)
		})
	}
}

// TestNotHTTP2 sends what is not HTTP/2 to the explicit listener: an
// HTTP/1.1 client gets a 400 saying what the port speaks, anything else
// a GOAWAY PROTOCOL_ERROR saying the same, and the listener goes on
// serving gRPC.
func TestNotHTTP2(t *testing.T) {
	tests := []struct {
		name string
		send string
		want string // the start of the answer
	}{
		{"HTTP/1.1 request", "GET / HTTP/1.1\r\nHost: greeter\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"HTTP/1.1 upgrade to h2c", "GET / HTTP/1.1\r\nHost: greeter\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"POST", "POST /greeter.Greeter/SayHello HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage that is no preface", "GOAWAY PROTOCOL_ERROR"},
		{"almost the preface", "PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", "GOAWAY PROTOCOL_ERROR"},
	}
	e := startEdge(t, Options{})
	lis := e.listeners[0]
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", lis.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Write([]byte(tc.send)); err != nil {
				t.Fatal(err)
			}
			reply, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("reading the answer: %v", err)
			}
			got := string(reply)
			if f, err := http2.NewFramer(nil, bytes.NewReader(reply)).ReadFrame(); err == nil {
				if ga, ok := f.(*http2.GoAwayFrame); ok {
					got = fmt.Sprintf("GOAWAY %v %s", ga.ErrCode, ga.DebugData())
				}
			}
			if !strings.HasPrefix(got, tc.want) || !strings.Contains(got, "HTTP/2 with prior knowledge") {
				t.Errorf("answered %q, want %q and what the port speaks", got, tc.want)
			}
			e.sentinel(t, lis)
		})
	}
}

// TestResponseOverLimit: a response message over MaxMessageBytes ends the
// call with RESOURCE_EXHAUSTED naming the sizes, the upstream's stream is
// cancelled, and the next call on the same connection succeeds.
func TestResponseOverLimit(t *testing.T) {
	svc := newTestService()
	addr := startTestService(t, svc)
	_, proxyAddr := startOutbound(t, addr, Options{MaxMessageBytes: 1 << 20})
	client := testpb.NewTestServiceClient(dial(t, proxyAddr, grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(4<<20))))
	_, err := client.UnaryCall(t.Context(), &testpb.SimpleRequest{ResponseSize: 2 << 20})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "larger than max") {
		t.Fatalf("a 2 MiB response through a 1 MiB proxy: got %v, want ResourceExhausted naming the sizes", err)
	}
	if _, err := client.UnaryCall(t.Context(), &testpb.SimpleRequest{ResponseSize: 1 << 10}); err != nil {
		t.Fatalf("the next call: %v", err)
	}
}
