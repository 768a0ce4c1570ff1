package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// FuzzFramesTCP feeds arbitrary bytes, after the connection preface, to a
// proxy over loopback TCP, through the listener the input picks: explicit,
// transparent (the original destination given directly, as in
// TestTransparentDispatch) or inbound. So they reach what FuzzFrames, over
// net.Pipe, never does: the read loop on the raw socket (rawSocket.pump,
// with the kernel saying when a read left the socket empty), the sniffed
// prefix of transparent and inbound connections, and the close by
// shutdown(2). The bytes go in several writes, split where the input says
// (cuts: two bytes per offset into preface and frames), each read by the
// proxy before the next is written, so reads end where writes do, inside
// the preface or a frame as often as between frames; then the client
// half-closes. Whatever the bytes:
//   - the proxy reads each write or closes the connection, and ends it
//     once the client has half-closed;
//   - it then holds nothing for it: no connection, stream, byte or open
//     descriptor;
//   - the upstream (a grpc-go server) never answers with a protocol
//     error, so nothing invalid went on to it;
//   - the listener still serves a call.
//
// Seeds: the frames of every TestRFC9113 rule, through each listener in
// turn, in two writes; under testdata/fuzz/FuzzFramesTCP, a valid call
// through each listener, a truncated frame, a frame header over the
// frame size and a RST_STREAM before END_STREAM, each in a few writes.
func FuzzFramesTCP(f *testing.F) {
	for i, rule := range rfc9113Rules {
		frames := ruleFrames(rule.send)
		half := binary.BigEndian.AppendUint16(nil, uint16(len(http2.ClientPreface)+len(frames)/2))
		f.Add(uint8(i), half, frames)
	}
	accepted := &acceptedConns{byClient: map[string]*net.TCPConn{}}
	// Every input starts with the whole preface, so no sniff may give up
	// on a client whose writes come slowly (a busy machine, -race) and
	// pass its bytes through to the upstream unchecked.
	e := startEdgeOn(f, Options{SniffTimeout: time.Minute}, accepted.wrap)
	// One client per listener for the call that follows each input. Its
	// connection stays open (but for the proxy's idle timeout), so the
	// proxy holds it and its descriptors throughout.
	sentinels := make([]*grpc.ClientConn, len(e.listeners))
	for i, lis := range e.listeners {
		sentinels[i] = dial(f, "passthrough:///"+lis.addr, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dialerFrom(lis.source).DialContext(ctx, "tcp", addr)
		}))
		sentinelCall(f, sentinels[i], lis)
	}
	idle := func() bool {
		h := e.p.held()
		return h.conns <= len(sentinels) && h == held{conns: h.conns}
	}
	eventually(f, "nothing held but the sentinels' idle connections", idle)
	fds := openFDs(f)

	f.Fuzz(func(t *testing.T, listener uint8, cuts, frames []byte) {
		i := int(listener) % len(e.listeners)
		lis := e.listeners[i]
		errorsBefore := len(e.rec.upstreamErrors())
		nc, err := dialerFrom(lis.source).Dial("tcp", lis.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		client := nc.(*net.TCPConn)
		client.SetDeadline(time.Now().Add(10 * time.Second))
		proxySide := accepted.take(t, client.LocalAddr().String())
		var readErr error
		ended := make(chan struct{})
		go func() {
			defer close(ended)
			_, readErr = io.Copy(io.Discard, client)
		}()
		hasEnded := func() bool {
			select {
			case <-ended:
				return true
			default:
				return false
			}
		}

		for _, w := range splitWrites(append([]byte(http2.ClientPreface), frames...), cuts) {
			if _, err := client.Write(w); err != nil {
				break // the proxy closed the connection: it reads no more
			}
			poll(t, "the proxy to read a write or close the connection", func() bool {
				n, open := unread(proxySide)
				return n == 0 || !open || hasEnded()
			})
		}
		client.CloseWrite()
		<-ended
		if errors.Is(readErr, os.ErrDeadlineExceeded) {
			t.Fatalf("the %s listener's connection did not end after the client half-closed", lis.kind)
		}
		poll(t, "the proxy to close its end", func() bool { _, open := unread(proxySide); return !open })
		poll(t, "nothing held once the connection ended", func() bool { return idle() && !e.p.serving(proxySide) })
		client.Close()
		poll(t, "every descriptor of the connection closed", func() bool { return openFDs(t) <= fds })
		// Once the call is answered, the upstream has read every frame
		// sent before it on the proxy's connection, and answered them.
		sentinelCall(t, sentinels[i], lis)
		if errs := e.rec.upstreamErrors()[errorsBefore:]; len(errs) > 0 {
			t.Fatalf("through the %s listener the upstream found protocol errors: %q", lis.kind, errs)
		}
	})
}

// sentinelCall makes the sentinel call on conn and waits for its answer.
func sentinelCall(t testing.TB, conn *grpc.ClientConn, lis edgeListener) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.Invoke(ctx, sentinelMethod, &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("sentinel call through the %s listener: %v", lis.kind, err)
	}
}

// maxWrites bounds the writes one input is split into.
const maxWrites = 32

// splitWrites splits b at the offsets in cuts (two bytes each, big-endian,
// modulo len(b)) into at most maxWrites pieces.
func splitWrites(b, cuts []byte) [][]byte {
	var at []int
	for i := 0; i+1 < len(cuts) && len(at) < maxWrites-1; i += 2 {
		at = append(at, int(binary.BigEndian.Uint16(cuts[i:]))%len(b))
	}
	slices.Sort(at)
	var writes [][]byte
	last := 0
	for _, a := range at {
		if a > last {
			writes = append(writes, b[last:a])
			last = a
		}
	}
	return append(writes, b[last:])
}

// poll waits for cond, checking it often: an input makes many waits, and
// each is short.
func poll(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for wait := time.Microsecond; !cond(); wait = min(2*wait, time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(wait)
	}
}

// acceptedConns is a view of the connections a proxy's listeners accept,
// by client address: the proxy's ends, which the test asks the kernel
// about.
type acceptedConns struct {
	mu       sync.Mutex
	byClient map[string]*net.TCPConn
}

func (a *acceptedConns) wrap(l net.Listener) net.Listener { return &acceptedListener{l, a} }

// take returns the proxy's end of the connection from client, once the
// proxy has accepted it.
func (a *acceptedConns) take(t testing.TB, client string) *net.TCPConn {
	t.Helper()
	var c *net.TCPConn
	poll(t, "the proxy to accept "+client, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		c = a.byClient[client]
		delete(a.byClient, client)
		return c != nil
	})
	return c
}

type acceptedListener struct {
	net.Listener
	a *acceptedConns
}

// Accept hands the proxy the connection as it is (its type says it is a
// socket).
func (l *acceptedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.a.mu.Lock()
	l.a.byClient[c.RemoteAddr().String()] = c.(*net.TCPConn)
	l.a.mu.Unlock()
	return c, nil
}

// unread is how many bytes the socket c holds that its reader has not
// read (SIOCINQ), and whether c is still open.
func unread(c *net.TCPConn) (n int, open bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
		return 0, false
	}
	return n, ierr == nil
}

// serving reports whether nc is a client connection the proxy serves.
func (p *Proxy) serving(nc net.Conn) bool {
	p.downMu.Lock()
	defer p.downMu.Unlock()
	for c := range p.down {
		if pc, ok := c.nc.(*prefixConn); ok && pc.Conn == nc || c.nc == nc {
			return true
		}
	}
	return false
}

// openFDs counts the process's open descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// upstreamErrors are the protocol errors the upstream answered so far.
func (r *wireRecorder) upstreamErrors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.protocolErrors)
}
