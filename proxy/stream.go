package proxy

import (
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballast-dev/ballast/policy"
)

// stream is one proxied call: an HTTP/2 stream of a downstream connection
// (down) paired with one of an upstream connection (up). Frames are
// forwarded as they arrive; header blocks are re-encoded for the other
// connection and stream ids remapped; message bytes are never copied
// unless the other side's flow-control window makes them wait.
type stream struct {
	up *upstream
	// host is the host of the Cluster the call was routed to (set as the
	// host places or parks it), nil while it waits for its upstream's
	// first route or if it never had one; guarded by up.parkMu.
	host *host
	// parkedOn is the host it was last parked on: parked again there (as
	// every parked stream is when a new picker cannot place it), it was
	// already counted against the host's maxPendingRequests. Guarded by
	// up.parkMu.
	parkedOn *host
	down     leg
	upl      leg
	path     string
	// req are the request headers the call is routed by: the read loop's
	// while it routes the call first, a copy of its own once it waits.
	req []hpack.HeaderField
	// respHeaders is the route rule's response header modifier, nil for
	// none.
	respHeaders *policy.HeaderModifier
	// start is when the call began, kept only when its duration is
	// observed.
	start time.Time
	// done reports the call's outcome to the balancer that picked it.
	done func(balancer.DoneInfo)
	// open counts legs not yet closed; the stream ends at zero.
	open atomic.Int32
	// code is the call's final status, for metrics and the balancer; set
	// by whichever goroutine ends the call, before the last leg closes.
	code    atomic.Int32
	codeSet atomic.Bool
	// firstPending holds the request headers while the stream is placed,
	// so that queueing them allocates nothing.
	firstPending [1]item
	// call, if set, enforces the call policy of the call's route rule
	// (call.go); nil for the calls of rules without one.
	call atomic.Pointer[call]
	// waited says the call waited for its upstream's first route, or its
	// fault's delay; admitted that it passed its rule's rate limit and
	// fault (upstream.admit), faultAbort the status the fault ends it with
	// after the delay (all guarded by up.parkMu).
	waited, admitted bool
	faultAbort       *status.Status
	// hashKey is the value of the request header the call's host hashes
	// (ring_hash), set as the call is routed; empty if none.
	hashKey string
}

// leg is a stream as seen on one connection. Fields about sending on c
// (sendWindow, pending, blocked, sendDone, headersSent) and about
// receiving (recvDone, recvUnacked) are guarded by c.mu; the message
// framing state is only touched by c's read loop.
type leg struct {
	s    *stream
	c    *h2conn
	peer *leg
	id   uint32
	// ready says c and id are set (an upstream leg is not while its
	// stream is parked).
	ready atomic.Bool

	sendWindow  int64
	pending     []item
	recvUnacked int64
	recvWindow  int64
	blocked     bool
	sendDone    bool
	headersSent bool
	recvDone    bool
	headersRecv bool
	closed      bool

	// gRPC message framing of received DATA, to enforce the size limit.
	// (The fields of a leg are ordered so that it packs without padding:
	// every call allocates two.)
	msgHdr    [5]byte
	msgRemain uint32
	msgHdrN   int

	// contentLength is the request's declared content-length (-1 if
	// none) and dataRecv the DATA bytes received so far, on a server
	// conn's leg; only its read loop touches them.
	contentLength int64
	dataRecv      int64
	// held counts the bytes of pending items that came from an upstream
	// connection (see maxHeldPerUpstream).
	held atomic.Int64
}

// item is a frame waiting for its leg's send window: DATA (data), HEADERS
// (fields), or RST_STREAM (rst).
type item struct {
	data   []byte
	fields []hpack.HeaderField
	end    bool
	rst    bool
	code   http2.ErrCode
	// from is the leg the data arrived on, credited once it is written.
	from *leg
	// held says data counts in the held bytes of from.c, of the leg it
	// waits on and of that leg's conn.
	held bool
}

func newStream(up *upstream, path string) *stream {
	s := &stream{up: up, path: path}
	s.down.s, s.upl.s = s, s
	s.down.peer, s.upl.peer = &s.upl, &s.down
	s.down.recvWindow, s.upl.recvWindow = streamWindow, streamWindow
	s.open.Store(2)
	if up.metrics.duration != nil {
		s.start = time.Now()
	}
	return s
}

// setCode records the call's status once.
func (s *stream) setCode(c codes.Code) {
	if s.codeSet.CompareAndSwap(false, true) {
		s.code.Store(int32(c))
	}
}

// closeLocked removes l from its connection (c.mu held) and ends the
// stream with its last leg.
func (l *leg) closeLocked(b *batch) {
	if l.closed {
		return
	}
	l.closed = true
	if l.c != nil && l.ready.Load() {
		delete(l.c.legs, l.id)
		if l.blocked {
			l.c.unblockLocked(l)
		}
		l.c.idleCheckLocked()
	}
	l.s.legClosed()
}

func (s *stream) legClosed() {
	if s.open.Add(-1) != 0 {
		return
	}
	code := codes.Code(s.code.Load())
	if c := s.call.Load(); c != nil {
		c.release()
	}
	s.up.metrics.inFlight.Dec()
	s.up.metrics.streams[codeIndex(code)].Inc()
	if d := s.up.metrics.duration; d != nil {
		d.Observe(time.Since(s.start).Seconds())
	}
	if s.done != nil {
		di := balancer.DoneInfo{BytesSent: true, BytesReceived: true}
		if code != codes.OK {
			di.Err = status.Error(code, "")
		}
		s.done(di)
	}
}

func (c *h2conn) unblockLocked(l *leg) {
	for i, b := range c.blocked {
		if b == l {
			c.blocked = append(c.blocked[:i], c.blocked[i+1:]...)
			break
		}
	}
	l.blocked = false
}

// checkDoneLocked closes l once both directions are done. Once the
// response is complete the call is over, whatever the request still had to
// say: a downstream leg whose response ended while the client still sends
// is reset with NO_ERROR, as a gRPC server does, so the client stops; an
// upstream leg whose response ended before the request did is reset with
// CANCEL, dropping the rest of the request.
func (l *leg) checkDoneLocked(b *batch) {
	c := l.c
	if l.sendDone && !l.recvDone && !c.client {
		if !c.closed {
			c.fr.WriteRSTStream(l.id, http2.ErrCodeNo)
			b.markDirty(c)
		}
		l.recvDone = true
	}
	if l.recvDone && !l.sendDone && c.client {
		if !c.closed {
			c.fr.WriteRSTStream(l.id, http2.ErrCodeCancel)
			b.markDirty(c)
		}
		l.dropPendingLocked(b)
		l.sendDone = true
	}
	if l.sendDone && l.recvDone {
		l.closeLocked(b)
	}
}

// forwardHeaders forwards a header block received on from to its peer.
func (s *stream) forwardHeaders(from *leg, fields []hpack.HeaderField, end bool, b *batch) {
	to := from.peer
	if c := s.call.Load(); c != nil {
		if from == &s.down {
			to = c.request(nil, end, true)
		} else if end && s.overdue(c, from, grpcStatus(fields)) || !s.responded(c, from, fields, end, b) {
			return
		}
	}
	if from != &s.down {
		if end {
			s.setCode(grpcStatus(fields))
		}
		// from.headersRecv is only written by this read loop.
		if s.respHeaders != nil && !from.headersRecv {
			fields = modifyFields(fields, s.respHeaders)
		}
	}
	c := from.c
	c.mu.Lock()
	from.headersRecv = true
	if end {
		from.recvDone = true
		from.checkDoneLocked(b)
	}
	c.mu.Unlock()
	s.send(to, item{fields: fields, end: end, from: from}, b)
}

// grpcStatus reads grpc-status from a trailer block; a block without one
// (not gRPC, or a broken server) counts as Unknown.
func grpcStatus(fields []hpack.HeaderField) codes.Code {
	for _, hf := range fields {
		if hf.Name == "grpc-status" {
			if n, err := strconv.Atoi(hf.Value); err == nil {
				return codes.Code(n)
			}
		}
	}
	return codes.Unknown
}

// forwardData forwards DATA received on from to its peer, unless a
// message in it is over the size limit.
func (s *stream) forwardData(from *leg, data []byte, end bool, b *batch) {
	if err := from.checkMessages(data, s.up.maxMessage); err != nil {
		b.credits = append(b.credits, credit{c: from.c, l: from, n: int64(len(data))})
		s.fail(codes.ResourceExhausted, err.Error(), b)
		return
	}
	to := from.peer
	if c := s.call.Load(); c != nil {
		if from == &s.down {
			to = c.request(data, end, false)
		} else if !s.responding(c, from) {
			b.credits = append(b.credits, credit{c: from.c, l: from, n: int64(len(data))})
			return
		}
	}
	if end {
		c := from.c
		c.mu.Lock()
		from.recvDone = true
		from.checkDoneLocked(b)
		c.mu.Unlock()
	}
	s.send(to, item{data: data, end: end, from: from}, b)
}

// checkMessages follows the gRPC message framing (5-byte header, then the
// message) through the received bytes and fails on a message over max.
func (l *leg) checkMessages(data []byte, max uint32) error {
	for len(data) > 0 {
		if l.msgRemain > 0 {
			n := uint32(len(data))
			if n > l.msgRemain {
				n = l.msgRemain
			}
			l.msgRemain -= n
			data = data[n:]
			continue
		}
		n := copy(l.msgHdr[l.msgHdrN:], data)
		l.msgHdrN += n
		data = data[n:]
		if l.msgHdrN < len(l.msgHdr) {
			return nil
		}
		l.msgHdrN = 0
		size := grpcMessageLength(l.msgHdr[:])
		if size > max {
			return fmt.Errorf("grpc: received message larger than max (%d vs. %d)", size, max)
		}
		l.msgRemain = size
	}
	return nil
}

// send writes it on leg to, or queues it there until the window allows.
func (s *stream) send(to *leg, it item, b *batch) {
	if !to.ready.Load() {
		mu := &s.up.parkMu
		mu.Lock()
		if !to.ready.Load() {
			if to.sendDone {
				mu.Unlock()
				b.dropped(it)
				return
			}
			to.pending = append(to.pending, it.own())
			mu.Unlock()
			return
		}
		mu.Unlock()
	}
	c := to.c
	c.mu.Lock()
	if c.closed || to.sendDone {
		c.mu.Unlock()
		b.dropped(it)
		return
	}
	if len(to.pending) == 0 && c.writeItemLocked(to, &it, b) {
		c.mu.Unlock()
		return
	}
	it = it.own()
	over := false
	if from := it.from; from != nil && from.c.client && len(it.data) > 0 {
		n := int64(len(it.data))
		it.held = true
		to.held.Add(n)
		c.heldOut.Add(n)
		over = from.c.held.Add(n) > maxHeldPerUpstream
	}
	to.pending = append(to.pending, it)
	c.mu.Unlock()
	if over {
		evictStalled(it.from.c, b)
	}
}

// maxHeldPerUpstream bounds the bytes received on one upstream connection
// that wait for clients' flow-control windows: half its receive window,
// so the other half stays open for calls whose clients read.
const maxHeldPerUpstream = connWindow / 2

// evictStalled handles a zero-window stall: clients that do not open
// their windows leave the bytes sent to them on the proxy, and they hold
// the window of the upstream connection they came on, shared with every
// other client's calls there. While more than half of it is held, the
// stream holding most, of the client connection holding most, ends with
// RESOURCE_EXHAUSTED, and its bytes are credited back.
func evictStalled(up *h2conn, b *batch) {
	for up.held.Load() > maxHeldPerUpstream {
		up.mu.Lock()
		var worst *leg
		var worstConn, worstLeg int64
		for _, l := range up.legs {
			d := l.peer
			if !d.ready.Load() {
				continue
			}
			nc, nl := d.c.heldOut.Load(), d.held.Load()
			if nl > 0 && (nc > worstConn || nc == worstConn && nl > worstLeg) {
				worst, worstConn, worstLeg = d, nc, nl
			}
		}
		up.mu.Unlock()
		if worst == nil {
			return
		}
		worst.c.clientError("stream", "client_stalled")
		worst.s.fail(codes.ResourceExhausted, "ballast proxy: the client is not reading the response (its flow-control window stays closed)", b)
	}
}

// unhold takes n bytes of it, leaving l's pending items (written or
// dropped), out of the counts of held bytes.
func (l *leg) unhold(it *item, n int64) {
	if it.held {
		it.from.c.held.Add(-n)
		l.held.Add(-n)
		l.c.heldOut.Add(-n)
	}
}

// own copies what an item borrows from its read loop's buffers, for an
// item that must wait.
func (it item) own() item {
	if it.data != nil {
		it.data = append([]byte(nil), it.data...)
	}
	if it.fields != nil {
		it.fields = append([]hpack.HeaderField(nil), it.fields...)
	}
	return it
}

// dropped credits the window for data that will never be written.
func (b *batch) dropped(it item) {
	if len(it.data) > 0 && it.from != nil {
		b.credits = append(b.credits, credit{c: it.from.c, l: it.from, n: int64(len(it.data))})
	}
}

// writeItemLocked writes as much of it as the windows allow and reports
// whether all of it was written.
func (c *h2conn) writeItemLocked(l *leg, it *item, b *batch) bool {
	b.markDirty(c)
	switch {
	case it.rst:
		c.fr.WriteRSTStream(l.id, it.code)
		l.sendDone, l.recvDone = true, true
		l.dropPendingLocked(b)
		l.closeLocked(b)
		return true
	case it.fields != nil:
		c.writeHeadersLocked(l.id, it.fields, it.end)
		l.headersSent = true
		it.fields = nil
	default:
		for {
			n := int64(len(it.data))
			n = min(n, c.sendWindow, l.sendWindow)
			if n <= 0 && len(it.data) > 0 {
				if c.sendWindow <= 0 && !l.blocked {
					l.blocked = true
					c.blocked = append(c.blocked, l)
				}
				return false
			}
			last := n == int64(len(it.data))
			c.fr.WriteData(l.id, it.end && last, it.data[:n])
			c.sendWindow -= n
			l.sendWindow -= n
			l.unhold(it, n)
			if n > 0 && it.from != nil {
				b.credits = append(b.credits, credit{c: it.from.c, l: it.from, n: n})
			}
			it.data = it.data[n:]
			if last {
				break
			}
		}
	}
	if it.end {
		l.sendDone = true
		l.checkDoneLocked(b)
	}
	return true
}

// drainLocked writes l's pending items while the windows allow.
func (c *h2conn) drainLocked(l *leg, b *batch) {
	for len(l.pending) > 0 {
		if !c.writeItemLocked(l, &l.pending[0], b) {
			return
		}
		if len(l.pending) == 0 { // an RST dropped the rest
			return
		}
		l.pending[0] = item{}
		l.pending = l.pending[1:]
	}
	l.pending = nil
}

func (l *leg) dropPendingLocked(b *batch) {
	for i, it := range l.pending {
		l.unhold(&l.pending[i], int64(len(it.data)))
		b.dropped(it)
	}
	l.pending = nil
}

// reset handles RST_STREAM received on from: the stream ends on both
// sides. A NO_ERROR reset after a complete response only means the server
// wants no more of the request, so the client is not reset.
func (s *stream) reset(from *leg, code http2.ErrCode, b *batch) {
	call := s.call.Load()
	if call != nil && from == &s.down {
		call.finish()
	}
	c := from.c
	c.mu.Lock()
	responseComplete := from.recvDone
	from.recvDone, from.sendDone = true, true
	from.dropPendingLocked(b)
	from.closeLocked(b)
	c.mu.Unlock()
	if from == &s.down {
		s.setCode(codes.Canceled)
		s.sendReset(s.upLeg(), http2.ErrCodeCancel, b)
		return
	}
	if code == http2.ErrCodeNo && responseComplete {
		return
	}
	var status codes.Code
	switch code {
	case http2.ErrCodeCancel:
		status = codes.Canceled
	case http2.ErrCodeRefusedStream:
		status = codes.Unavailable
	default:
		status = codes.Internal
	}
	if call != nil && (s.overdue(call, from, status) || s.tryFailed(call, from, status)) {
		return
	}
	s.setCode(status)
	s.sendReset(&s.down, code, b)
}

// sendReset resets leg to at once, dropping what waits there.
func (s *stream) sendReset(to *leg, code http2.ErrCode, b *batch) {
	if !to.ready.Load() {
		if s.unpark(to, b) {
			return
		}
	}
	c := to.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if to.closed {
		return
	}
	to.dropPendingLocked(b)
	if !c.closed {
		c.fr.WriteRSTStream(to.id, code)
		b.markDirty(c)
	}
	to.sendDone, to.recvDone = true, true
	to.closeLocked(b)
}

// unpark ends a parked stream's upstream leg l; it reports false if the
// stream got placed meanwhile (then the leg is ready).
func (s *stream) unpark(l *leg, b *batch) bool {
	s.up.parkMu.Lock()
	defer s.up.parkMu.Unlock()
	if l.ready.Load() {
		return false
	}
	if !l.closed {
		l.sendDone, l.recvDone = true, true
		l.dropPendingLocked(b)
		l.closeLocked(b)
	}
	// A stream reset while parked leaves the queue now: a client that
	// opens and resets streams while no endpoint is ready must not grow
	// it (rapid reset before the upstream saw the streams).
	queue := &s.up.waiting
	if s.host != nil {
		queue = &s.host.parked
	}
	if i := slices.Index(*queue, s); i >= 0 {
		*queue = slices.Delete(*queue, i, i+1)
	}
	return true
}

// fail ends the call with a status made by the proxy: the client gets it
// in trailers, the upstream stream (if any) is cancelled.
func (s *stream) fail(code codes.Code, msg string, b *batch) {
	up := &s.upl
	if c := s.call.Load(); c != nil {
		up = c.finish()
	}
	s.setCode(code)
	s.abort(code, msg, b)
	s.sendReset(up, http2.ErrCodeCancel, b)
}

// abort ends the downstream leg with a status: trailers after response
// headers, or a trailers-only response.
func (s *stream) abort(code codes.Code, msg string, b *batch) {
	l := &s.down
	c := l.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if l.closed {
		return
	}
	l.dropPendingLocked(b)
	if !c.closed && !l.sendDone {
		c.writeHeadersLocked(l.id, statusFields(code, msg, l.headersSent), true)
		b.markDirty(c)
	}
	l.sendDone = true
	l.checkDoneLocked(b)
}

// statusFields is a gRPC status as trailers, or as a trailers-only
// response when no response headers were sent.
func statusFields(code codes.Code, msg string, headersSent bool) []hpack.HeaderField {
	fields := make([]hpack.HeaderField, 0, 4)
	if !headersSent {
		fields = append(fields, hpack.HeaderField{Name: ":status", Value: "200"}, hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
	}
	fields = append(fields, hpack.HeaderField{Name: "grpc-status", Value: strconv.Itoa(int(code))})
	if msg != "" {
		fields = append(fields, hpack.HeaderField{Name: "grpc-message", Value: encodeGRPCMessage(msg)})
	}
	return fields
}

// connLost ends the stream of leg l, whose connection is gone.
func (s *stream) connLost(l *leg, b *batch) {
	call := s.call.Load()
	if call != nil && l == &s.down {
		call.finish()
	}
	c := l.c
	c.mu.Lock()
	l.recvDone, l.sendDone = true, true
	l.dropPendingLocked(b)
	l.closeLocked(b)
	c.mu.Unlock()
	if l == &s.down {
		s.setCode(codes.Canceled)
		s.sendReset(s.upLeg(), http2.ErrCodeCancel, b)
		return
	}
	if call != nil && s.tryFailed(call, l, codes.Unavailable) {
		return
	}
	s.setCode(codes.Unavailable)
	s.abort(codes.Unavailable, "ballast proxy: upstream connection lost", b)
}

// encodeGRPCMessage percent-encodes a status message as gRPC requires
// (bytes outside printable ASCII, and '%').
func encodeGRPCMessage(msg string) string {
	clean := true
	for i := 0; i < len(msg); i++ {
		if c := msg[i]; c < ' ' || c > '~' || c == '%' {
			clean = false
			break
		}
	}
	if clean {
		return msg
	}
	const hex = "0123456789ABCDEF"
	out := make([]byte, 0, len(msg)*3)
	for i := 0; i < len(msg); i++ {
		if c := msg[i]; c < ' ' || c > '~' || c == '%' {
			out = append(out, '%', hex[c>>4], hex[c&15])
		} else {
			out = append(out, c)
		}
	}
	return string(out)
}
