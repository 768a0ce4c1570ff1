package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
)

// HTTP/2 parameters of both sides of the proxy.
const (
	// streamWindow and connWindow are the receive windows the proxy
	// advertises. Received bytes are credited back only once written to
	// the other side, so they also bound what the proxy buffers: at most
	// streamWindow per stream and connWindow per connection. The
	// connection window is many stream windows, so one stalled stream
	// cannot stall the others on its connection.
	streamWindow = 1 << 20
	connWindow   = 16 << 20
	// frameSize is the largest frame the proxy sends or accepts: the
	// HTTP/2 default, which every peer accepts, so a received DATA frame
	// is always forwardable as one frame.
	frameSize = 16 << 10
	// initialWindow is HTTP/2's window before SETTINGS say otherwise.
	initialWindow = 65535
	// upstreamHeaderList bounds a decoded header block from an upstream
	// (response metadata); client connections have Limits.MaxHeaderListBytes.
	upstreamHeaderList = 16 << 20
	// maxClientStreamID is where an upstream connection stops opening
	// streams and is replaced (stream ids are 31 bits and never reused).
	maxClientStreamID = 1<<31 - 1 - 1<<16
	ioBufferSize      = 32 << 10
)

// h2conn is one HTTP/2 connection of the proxy: downstream (the app's
// connection, the proxy is the server) or upstream (to an endpoint, the
// proxy is the client). One goroutine reads its frames (readLoop); any
// goroutine may write to it under mu. Writes go to a buffer that the
// writing goroutine flushes once it has nothing more to read (batch), so
// a burst of frames costs one write system call.
type h2conn struct {
	nc net.Conn
	// sock, if set, runs the read loop (pump) over the socket's raw
	// reads; the connection is then closed with closeConn while it runs.
	sock   readPump
	br     *bufio.Reader
	fr     *http2.Framer
	client bool // the proxy opened it (upstream)

	// Header decoding, by the read loop only: a block is decoded as its
	// fragments arrive (HEADERS, then CONTINUATION), so nothing of it is
	// held but its fields; fields is reused for every block (copied only
	// when a block must wait). Fields past maxHeaderList are decoded (the
	// compression state must stay in step) but not kept; the block's raw
	// bytes, frame headers included, are bounded too, so an endless run
	// of CONTINUATION frames ends the connection.
	hdec          *hpack.Decoder
	fields        []hpack.HeaderField
	fieldSize     int
	maxHeaderList int
	blockRaw      int
	blockID       uint32
	blockEnd      bool
	blockNew      bool // the block opens a stream (server conns)
	blockSelfDep  bool // its priority makes the stream depend on itself
	// head is the checked request of a block that opens a stream, for
	// peerHandler.newStream.
	head requestHead
	// limits bound what the peer of a server conn may hold (nil on
	// client conns). The read loop counts what the peer spends of them:
	// streams it opened and reset before their responses ended, control
	// and empty frames in a row.
	limits  *Limits
	errs    *prometheus.CounterVec
	opened  uint64
	resets  uint64
	control int
	empty   int
	// idleTimer fires when a server conn has had no stream for
	// limits.IdleTimeout; ageTimer steps through the drain at
	// limits.MaxConnectionAge (ageStep says which step is next). Both
	// are guarded by mu.
	idleTimer  *time.Timer
	ageTimer   *time.Timer
	ageStep    int
	drainStart time.Time
	// started says the proxy's SETTINGS went out (guarded by mu): a timer
	// that fires before then closes the connection without a GOAWAY,
	// which may not precede the SETTINGS.
	started bool
	// ackTimer flushes a PING ack that no other write took along within
	// pingAckDelay; ackArmed says it is set (both guarded by mu).
	ackTimer *time.Timer
	ackArmed bool

	mu sync.Mutex
	bw *bufio.Writer
	// henc encodes header blocks; its dynamic table is this
	// connection's, so blocks are encoded in the order they are written.
	henc *headerEncoder
	// sendWindow is the connection-level window the peer gave us;
	// peerWindow the initial window of each new stream.
	sendWindow     int64
	peerWindow     int64
	peerMaxStreams uint32
	legs           map[uint32]*leg
	nextID         uint32 // client: the next stream id to open
	lastPeerID     uint32 // server: the highest stream id the peer opened
	// blocked are legs whose pending data waits for sendWindow.
	blocked []*leg
	// recvUnacked are bytes received and forwarded (or dropped) but not
	// yet given back to the peer with a connection WINDOW_UPDATE;
	// recvWindow is what the peer may still send. A peer that sends more
	// breaks flow control and loses the connection: buffers stay bounded.
	recvUnacked int64
	recvWindow  int64
	// goingAway: no new streams. A server conn sent GOAWAY; a client conn
	// got one, sent one for the peer's protocol error, or ran out of
	// stream ids.
	goingAway bool
	// draining: a server conn sent the first GOAWAY of a drain.
	draining bool
	closed   bool
	// onGoingAway runs (under mu) when a client conn stops taking new
	// streams.
	onGoingAway func()
	// held counts the bytes received on a client conn that wait in
	// pending items for a client's flow-control window; heldOut, on a
	// server conn, those waiting for its own windows.
	held    atomic.Int64
	heldOut atomic.Int64
}

func newH2Conn(nc net.Conn, r io.Reader, client bool) *h2conn {
	rd, wr := socketIO(nc, r)
	c := &h2conn{
		nc:             nc,
		br:             bufio.NewReaderSize(rd, ioBufferSize),
		bw:             bufio.NewWriterSize(wr, ioBufferSize),
		client:         client,
		maxHeaderList:  upstreamHeaderList,
		sendWindow:     initialWindow,
		peerWindow:     initialWindow,
		peerMaxStreams: ^uint32(0),
		legs:           map[uint32]*leg{},
		nextID:         1,
		recvWindow:     connWindow,
	}
	if p, ok := rd.(readPump); ok {
		c.sock = p
	}
	c.fr = http2.NewFramer(c.bw, c.br)
	c.fr.SetReuseFrames()
	// Peers may send frames no larger than the default the proxy keeps,
	// so every frame can go on to the other side as it is.
	c.fr.SetMaxReadFrameSize(frameSize)
	c.hdec = hpack.NewDecoder(4096, func(hf hpack.HeaderField) {
		c.fieldSize += int(hf.Size())
		if c.fieldSize <= c.maxHeaderList {
			c.fields = append(c.fields, hf)
		}
	})
	c.hdec.SetMaxStringLength(c.maxBlockRaw())
	c.henc = newHeaderEncoder()
	return c
}

// newServerConn makes a connection the proxy serves (a client's), whose
// peer is held to limits; errs counts what it does wrong. Its timers run
// from now; stopTimers stops them.
func newServerConn(nc net.Conn, limits *Limits, errs *prometheus.CounterVec) *h2conn {
	c := newH2Conn(nc, nc, false)
	c.limits, c.errs = limits, errs
	c.maxHeaderList = int(limits.MaxHeaderListBytes)
	c.hdec.SetMaxStringLength(c.maxBlockRaw())
	c.mu.Lock()
	defer c.mu.Unlock()
	if limits.IdleTimeout > 0 {
		c.idleTimer = time.AfterFunc(limits.IdleTimeout, c.onIdle)
	}
	if age := limits.MaxConnectionAge; age > 0 {
		age += time.Duration(rand.Int64N(int64(age)/5+1)) - age/10
		c.ageTimer = time.AfterFunc(age, c.onAge)
	}
	return c
}

// drainAckTimeout bounds the wait for the PING ack of a drain the
// connection's age started, before the final GOAWAY.
const drainAckTimeout = 5 * time.Second

// onIdle closes a server conn that has no stream: GOAWAY naming the last
// stream the proxy took, so a stream the client opened meanwhile is
// known to be unprocessed and safe to retry.
func (c *h2conn) onIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.legs) == 0 {
		if c.started {
			c.goAwayLocked()
		}
		if !c.closed {
			c.closed = true
			c.closeConn()
		}
	}
}

// onAge drains a server conn that reached its maximum age: the two-phase
// GOAWAY of a shutdown; the final GOAWAY if the client did not ack the
// PING in time; then, once the grace from the drain's start has passed,
// the connection is closed.
func (c *h2conn) onAge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	grace := c.limits.MaxConnectionAgeGrace
	step := c.ageStep
	c.ageStep++
	if !c.started {
		step = 2
	}
	switch step {
	case 0:
		c.drainStart = time.Now()
		c.startDrainLocked()
		wait := drainAckTimeout
		if grace > 0 {
			wait = min(wait, grace)
		}
		c.ageTimer.Reset(wait)
	case 1:
		c.goAwayLocked()
		if grace > 0 {
			c.ageTimer.Reset(max(0, grace-time.Since(c.drainStart)))
		}
	default:
		if !c.closed {
			c.closed = true
			c.closeConn()
		}
	}
}

// clientError counts an error of a server conn's peer.
func (c *h2conn) clientError(scope, err string) {
	if c.errs != nil {
		c.errs.WithLabelValues(scope, err).Inc()
	}
}

// stopTimers stops a server conn's timers once it is done.
func (c *h2conn) stopTimers() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	if c.ageTimer != nil {
		c.ageTimer.Stop()
	}
}

// start writes the proxy's half of the connection preface (the client
// magic if this is a client conn, SETTINGS, and the connection window).
func (c *h2conn) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.started = true
	if c.idleTimer != nil {
		c.idleTimer.Reset(c.limits.IdleTimeout) // idle from the SETTINGS on
	}
	if c.client {
		if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
	}
	settings := []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: streamWindow}, {ID: http2.SettingMaxHeaderListSize, Val: uint32(c.maxHeaderList)}}
	if c.client {
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	} else {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.limits.MaxConcurrentStreams})
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		return err
	}
	if err := c.fr.WriteWindowUpdate(0, connWindow-initialWindow); err != nil {
		return err
	}
	return c.bw.Flush()
}

// batch is what one goroutine owes after forwarding frames: buffers to
// flush and window credits to give back. Credits are settled without
// holding the lock of the connection that was written to, so no goroutine
// ever holds two connections' locks.
type batch struct {
	dirty   []*h2conn
	credits []credit
}

type credit struct {
	c *h2conn // the connection the bytes were received on
	l *leg    // and the stream, if it is still known
	n int64
}

func (b *batch) markDirty(c *h2conn) {
	for _, d := range b.dirty {
		if d == c {
			return
		}
	}
	b.dirty = append(b.dirty, c)
}

// settle gives back owed window credits (which may dirty more
// connections).
func (b *batch) settle() {
	for i := 0; i < len(b.credits); i++ {
		cr := b.credits[i]
		cr.c.giveCredit(cr.l, cr.n, b)
	}
	b.credits = b.credits[:0]
}

// flush settles and writes out every dirtied buffer.
func (b *batch) flush() {
	b.settle()
	for i, c := range b.dirty {
		c.mu.Lock()
		c.flushLocked()
		c.mu.Unlock()
		b.dirty[i] = nil
	}
	b.dirty = b.dirty[:0]
}

// flushLocked writes out c's buffer, PING acks waiting in it included.
func (c *h2conn) flushLocked() {
	if c.ackArmed {
		c.ackArmed = false
		c.ackTimer.Stop()
	}
	if !c.closed && c.bw.Buffered() > 0 {
		if err := c.bw.Flush(); err != nil {
			c.failLocked()
		}
	}
}

// pingAckDelay bounds how long a PING ack waits in a connection's buffer
// for other frames to leave with. A gRPC peer pings about once a round
// trip while its calls send data (grpc-go's BDP estimator), so flushed at
// once the acks are a third of the proxy's writes under load, each a
// system call and a trip through the loopback stack for a 17-byte frame;
// waiting, they leave with the next call's frames. Data flowing to the
// peer takes an ack along at once, so the wait only stretches the peer's
// round-trip sample of a connection going quiet, and stays far below any
// keepalive's timeout.
const pingAckDelay = 5 * time.Millisecond

// deferFlushLocked leaves what c's buffer holds (a PING ack) for the next
// flush of c, making sure one happens within pingAckDelay.
func (c *h2conn) deferFlushLocked() {
	if c.ackArmed {
		return
	}
	c.ackArmed = true
	if c.ackTimer == nil {
		c.ackTimer = time.AfterFunc(pingAckDelay, c.flushAck)
		return
	}
	c.ackTimer.Reset(pingAckDelay)
}

// flushAck is ackTimer's: no other write took the ack along in time.
func (c *h2conn) flushAck() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ackArmed {
		c.flushLocked()
	}
}

// giveCredit records n bytes received on l (of c) as forwarded or dropped,
// and sends WINDOW_UPDATEs once a quarter of a window is owed.
func (c *h2conn) giveCredit(l *leg, n int64, b *batch) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.recvUnacked += n
	if c.recvUnacked >= connWindow/4 {
		c.fr.WriteWindowUpdate(0, uint32(c.recvUnacked))
		c.recvWindow += c.recvUnacked
		c.recvUnacked = 0
		b.markDirty(c)
	}
	if l == nil || l.recvDone {
		return
	}
	l.recvUnacked += n
	if l.recvUnacked >= streamWindow/4 {
		c.fr.WriteWindowUpdate(l.id, uint32(l.recvUnacked))
		l.recvWindow += l.recvUnacked
		l.recvUnacked = 0
		b.markDirty(c)
	}
}

// peerHandler is what a connection's read loop calls for the frames that
// depend on its role.
type peerHandler interface {
	// newStream handles a header block opening a stream (server conns
	// only), checked as c.head says; fields are only valid during the
	// call.
	newStream(c *h2conn, id uint32, fields []hpack.HeaderField, end bool, b *batch)
	// goAway handles the peer's GOAWAY.
	goAway(c *h2conn, f *http2.GoAwayFrame, b *batch)
	// settings is called after each SETTINGS frame from the peer.
	settings(c *h2conn)
}

// readLoop reads and forwards frames until the connection fails or is
// closed, then ends every stream still on it. Buffers are flushed when no
// further complete frame is already buffered. A peer that breaks the
// protocol in a way that spoils the whole connection gets GOAWAY with the
// error's code (RFC 9113 §5.4.1) before the connection closes.
func (c *h2conn) readLoop(h peerHandler) (err error) {
	var b batch
	defer func() {
		var ce connError
		goAway := errors.As(err, &ce) && c.writeGoAwayError(ce)
		b.flush()
		c.closeStreams(&b)
		b.flush()
		c.mu.Lock()
		if c.ackArmed {
			c.ackArmed = false
			c.ackTimer.Stop()
		}
		c.mu.Unlock()
		if goAway {
			c.linger()
		}
		c.nc.Close()
	}()
	if c.sock != nil {
		return c.sock.pump(c.br, func() error {
			for c.frameBuffered() {
				if err := c.readFrame(h, &b); err != nil {
					return err
				}
			}
			c.flushBatch(&b)
			return nil
		})
	}
	for {
		if !c.frameBuffered() {
			c.flushBatch(&b)
		}
		if err := c.readFrame(h, &b); err != nil {
			return err
		}
	}
}

// flushBatch writes out what the read loop forwarded, once no further
// whole frame is buffered.
func (c *h2conn) flushBatch(b *batch) {
	if len(b.dirty) > 0 {
		// Yield once before writing: the read loops the netpoller woke
		// with this one run first, and what they forward to the same
		// connections (responses from several upstreams to one client)
		// leaves in this flush, one write instead of one per read loop.
		runtime.Gosched()
	}
	b.flush()
}

// readFrame reads one frame and handles it.
func (c *h2conn) readFrame(h peerHandler, b *batch) error {
	f, err := c.fr.ReadFrame()
	if err != nil {
		var se http2.StreamError
		if errors.As(err, &se) {
			c.resetStream(se.StreamID, se.Code, b)
			return nil
		}
		return c.framerError(err)
	}
	if err := c.onFrame(f, h, b); err != nil {
		return err
	}
	b.settle()
	return nil
}

// onFrame handles one frame read from the peer.
func (c *h2conn) onFrame(f http2.Frame, h peerHandler, b *batch) error {
	if !c.client {
		if err := c.account(f); err != nil {
			return err
		}
	}
	switch f := f.(type) {
	case *http2.HeadersFrame:
		if err := c.startBlock(f); err != nil {
			return err
		}
		if f.HeadersEnded() {
			return c.endBlock(h, b)
		}
	case *http2.ContinuationFrame:
		if err := c.decodeFragment(f.HeaderBlockFragment()); err != nil {
			return err
		}
		if f.HeadersEnded() {
			return c.endBlock(h, b)
		}
	case *http2.DataFrame:
		return c.onData(f, b)
	case *http2.RSTStreamFrame:
		if c.idle(f.StreamID) {
			return connError{http2.ErrCodeProtocol, fmt.Sprintf("RST_STREAM on idle stream %d", f.StreamID)}
		}
		if !c.onReset(f.StreamID, f.ErrCode, b) {
			return c.spendControl()
		}
		if !c.client {
			// Rapid reset (CVE-2023-44487): each stream opened and reset
			// at once costs an upstream a stream while the client pays
			// nothing, and the concurrency limit never binds.
			c.resets++
			if c.resets > uint64(c.limits.MaxConcurrentStreams) && 2*c.resets > c.opened {
				return connError{http2.ErrCodeEnhanceYourCalm, fmt.Sprintf("%d of %d streams reset before their responses ended", c.resets, c.opened)}
			}
		}
	case *http2.WindowUpdateFrame:
		if f.StreamID != 0 && c.idle(f.StreamID) {
			return connError{http2.ErrCodeProtocol, fmt.Sprintf("WINDOW_UPDATE on idle stream %d", f.StreamID)}
		}
		return c.onWindowUpdate(f, b)
	case *http2.PriorityFrame:
		if err := c.spendControl(); err != nil {
			return err
		}
		if f.StreamDep == f.StreamID {
			c.resetStream(f.StreamID, http2.ErrCodeProtocol, b)
		}
	case *http2.SettingsFrame:
		if err := c.onSettings(f, b); err != nil {
			return err
		}
		h.settings(c)
	case *http2.PingFrame:
		c.mu.Lock()
		if !f.IsAck() {
			c.fr.WritePing(true, f.Data)
			c.deferFlushLocked()
		} else if f.Data == drainPing && c.draining {
			c.goAwayLocked()
		}
		c.mu.Unlock()
	case *http2.GoAwayFrame:
		h.goAway(c, f, b)
	case *http2.PushPromiseFrame:
		return connError{http2.ErrCodeProtocol, "PUSH_PROMISE, which the proxy does not allow"}
	}
	return nil
}

// account charges a frame from a server conn's peer against the budgets
// of frames that do not move a call forward.
func (c *h2conn) account(f http2.Frame) error {
	empty := false
	switch f := f.(type) {
	case *http2.DataFrame:
		empty = len(f.Data()) == 0 && !f.StreamEnded()
		if len(f.Data()) > 0 {
			c.control = 0
		}
	case *http2.ContinuationFrame:
		empty = len(f.HeaderBlockFragment()) == 0 && !f.HeadersEnded()
	case *http2.PingFrame:
		if !f.IsAck() {
			return c.spendControl()
		}
	case *http2.SettingsFrame:
		if !f.IsAck() {
			return c.spendControl()
		}
	}
	if !empty {
		c.empty = 0
		return nil
	}
	c.empty++
	if c.empty > maxEmptyFrames {
		return connError{http2.ErrCodeEnhanceYourCalm, fmt.Sprintf("more than %d empty frames in a row", maxEmptyFrames)}
	}
	return nil
}

// spendControl counts a control frame (or one for a closed stream) from
// a server conn's peer.
func (c *h2conn) spendControl() error {
	if c.client {
		return nil
	}
	c.control++
	if c.control > maxControlFrames {
		return connError{http2.ErrCodeEnhanceYourCalm, fmt.Sprintf("more than %d control frames without a request", maxControlFrames)}
	}
	return nil
}

// connError is a connection error (RFC 9113 §5.4.1): the connection ends
// with a GOAWAY carrying code, and reason as its debug data.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string { return fmt.Sprintf("http2: %v: %s", e.code, e.reason) }

// framerError turns an error of the framer into a connError when the
// framer found the peer at fault.
func (c *h2conn) framerError(err error) error {
	var code http2.ConnectionError
	switch {
	case errors.As(err, &code):
		reason := "malformed frame"
		if d := c.fr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		return connError{http2.ErrCode(code), reason}
	case errors.Is(err, http2.ErrFrameTooLarge):
		return connError{http2.ErrCodeFrameSize, fmt.Sprintf("frame larger than SETTINGS_MAX_FRAME_SIZE %d", frameSize)}
	}
	return err
}

// writeGoAwayError sends the GOAWAY of a connection error; it reports
// whether it was sent.
func (c *h2conn) writeGoAwayError(e connError) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.clientError("connection", e.code.String())
	c.goingAway = true
	// An upstream connection's SubConn stops taking streams now, not
	// once the linger after this GOAWAY ends: calls picked meanwhile would
	// wait for the next picker.
	if c.onGoingAway != nil {
		c.onGoingAway()
	}
	c.fr.WriteGoAway(c.lastPeerID, e.code, []byte(e.reason))
	if err := c.bw.Flush(); err != nil {
		c.failLocked()
		return false
	}
	return true
}

// lingerTimeout and lingerBytes bound how long and how much the proxy
// reads after a GOAWAY for a connection error before closing: closing a
// socket with unread bytes makes the kernel reset it, and the peer may
// lose the GOAWAY that says why.
const (
	lingerTimeout = time.Second
	lingerBytes   = 1 << 20
)

// linger half-closes the connection and discards what the peer still
// sends, until it closes too or a bound is reached.
func (c *h2conn) linger() {
	nc := c.nc
	if pc, ok := nc.(*prefixConn); ok {
		nc = pc.Conn
	}
	if cw, ok := nc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.nc.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.Copy(io.Discard, io.LimitReader(c.br, lingerBytes))
}

// idle reports whether stream id of a server conn was never opened by
// the peer (RFC 9113 §5.1): a higher id than any it opened, or an even
// one, which only the proxy could open and never does.
func (c *h2conn) idle(id uint32) bool {
	if c.client {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return id%2 == 0 || id > c.lastPeerID
}

// startBlock begins a header block. On a server conn it opens a stream
// (an odd id above every earlier one) or belongs to an open one;
// anything else breaks §5.1.1.
func (c *h2conn) startBlock(f *http2.HeadersFrame) error {
	id := f.StreamID
	c.blockID, c.blockEnd, c.blockNew = id, f.StreamEnded(), false
	c.blockSelfDep = f.HasPriority() && f.Priority.StreamDep == id
	c.fields, c.fieldSize, c.blockRaw = c.fields[:0], 0, 0
	if !c.client {
		if id%2 == 0 {
			return connError{http2.ErrCodeProtocol, fmt.Sprintf("HEADERS on even stream %d, which a client may not open", id)}
		}
		c.mu.Lock()
		l, last := c.legs[id], c.lastPeerID
		if id > last {
			c.lastPeerID = id
			c.blockNew = true
		}
		c.mu.Unlock()
		if l == nil && id <= last {
			return connError{http2.ErrCodeProtocol, fmt.Sprintf("HEADERS on stream %d, closed or below stream %d already opened", id, last)}
		}
	}
	return c.decodeFragment(f.HeaderBlockFragment())
}

// maxBlockRaw bounds the encoded bytes of one header block, frame
// headers included, and so the longest string in it. A block whose list
// is over maxHeaderList but whose bytes are within this is still decoded
// (the compression state must stay in step) and answered per stream; one
// beyond it ends the connection, as a CONTINUATION flood would.
func (c *h2conn) maxBlockRaw() int { return 4*c.maxHeaderList + frameSize }

// decodeFragment decodes the next fragment of the current header block.
// A block that cannot be decoded breaks the connection's header
// compression state: that is a connection error.
func (c *h2conn) decodeFragment(frag []byte) error {
	c.blockRaw += 9 + len(frag)
	if c.blockRaw > c.maxBlockRaw() {
		return connError{http2.ErrCodeEnhanceYourCalm, fmt.Sprintf("header block on stream %d over %d bytes", c.blockID, c.maxBlockRaw())}
	}
	if _, err := c.hdec.Write(frag); err != nil {
		return connError{http2.ErrCodeCompression, fmt.Sprintf("decoding headers of stream %d: %v", c.blockID, err)}
	}
	return nil
}

// endBlock finishes the current header block and forwards it, or starts
// a stream with it, or answers a malformed one with a stream error.
func (c *h2conn) endBlock(h peerHandler, b *batch) error {
	if err := c.hdec.Close(); err != nil {
		return connError{http2.ErrCodeCompression, fmt.Sprintf("decoding headers of stream %d: %v", c.blockID, err)}
	}
	id, end := c.blockID, c.blockEnd
	c.mu.Lock()
	l := c.legs[id]
	c.mu.Unlock()
	if c.client {
		if l != nil {
			if c.fieldSize > c.maxHeaderList {
				return connError{http2.ErrCodeEnhanceYourCalm, fmt.Sprintf("header list of %d bytes, over %d", c.fieldSize, c.maxHeaderList)}
			}
			l.s.forwardHeaders(l, c.fields, end, b)
		}
		return nil // else a stream that already ended
	}
	if !c.blockNew {
		switch {
		case l == nil || l.recvDone: // §5.1: half-closed (remote) or closed
			c.resetStream(id, http2.ErrCodeStreamClosed, b)
		case c.blockSelfDep:
			c.resetStream(id, http2.ErrCodeProtocol, b)
		case c.fieldSize > c.maxHeaderList:
			c.clientError("stream", "header_list_too_large")
			l.s.fail(codes.ResourceExhausted, c.headerListError("trailers"), b)
		case checkTrailers(c.fields, end) != nil:
			c.resetStream(id, http2.ErrCodeProtocol, b)
		case l.contentLength >= 0 && l.dataRecv != l.contentLength:
			c.resetStream(id, http2.ErrCodeProtocol, b)
		default:
			l.s.forwardHeaders(l, c.fields, end, b)
		}
		return nil
	}
	if c.blockSelfDep {
		c.resetStream(id, http2.ErrCodeProtocol, b)
		return nil
	}
	if c.fieldSize > c.maxHeaderList {
		c.clientError("stream", "header_list_too_large")
		c.mu.Lock()
		c.writeHeadersLocked(id, statusFields(codes.ResourceExhausted, c.headerListError("request headers"), false), true)
		c.mu.Unlock()
		b.markDirty(c)
		return nil
	}
	head, err := checkRequest(c.fields)
	if err != nil {
		c.resetStream(id, http2.ErrCodeProtocol, b)
		return nil
	}
	if head.contentLength > 0 && end {
		c.resetStream(id, http2.ErrCodeProtocol, b)
		return nil
	}
	c.head = head
	c.opened++
	c.control = 0
	h.newStream(c, id, c.fields, end, b)
	return nil
}

func (c *h2conn) headerListError(what string) string {
	return fmt.Sprintf("ballast proxy: %s of %d bytes, over the limit of %d", what, c.fieldSize, c.maxHeaderList)
}

// frameBuffered says whether reading the next frame takes only what the
// read buffer holds: a whole frame, or the header of one over frameSize,
// which the framer refuses without reading on.
func (c *h2conn) frameBuffered() bool {
	n := c.br.Buffered()
	if n < 9 {
		return false
	}
	hdr, _ := c.br.Peek(3)
	length := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	return n >= 9+length || length > frameSize
}

// maxWindow is the largest flow-control window HTTP/2 allows.
const maxWindow = 1<<31 - 1

func (c *h2conn) onSettings(f *http2.SettingsFrame, b *batch) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var code http2.ConnectionError
			errors.As(err, &code)
			return connError{http2.ErrCode(code), fmt.Sprintf("invalid setting %v", s)}
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerWindow
			c.peerWindow = int64(s.Val)
			for _, l := range c.legs {
				l.sendWindow += delta
				if l.sendWindow > maxWindow {
					return connError{http2.ErrCodeFlowControl, fmt.Sprintf("SETTINGS_INITIAL_WINDOW_SIZE %d takes stream %d's window past 2^31-1", s.Val, l.id)}
				}
				if delta > 0 && len(l.pending) > 0 {
					c.drainLocked(l, b)
				}
			}
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingHeaderTableSize:
			c.henc.setMaxDynamicTableSizeLimit(s.Val)
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.fr.WriteSettingsAck()
	b.markDirty(c)
	return nil
}

func (c *h2conn) onWindowUpdate(f *http2.WindowUpdateFrame, b *batch) error {
	c.mu.Lock()
	if f.StreamID == 0 {
		defer c.mu.Unlock()
		if c.sendWindow+int64(f.Increment) > maxWindow {
			return connError{http2.ErrCodeFlowControl, "WINDOW_UPDATE takes the connection's window past 2^31-1"}
		}
		c.sendWindow += int64(f.Increment)
		for len(c.blocked) > 0 && c.sendWindow > 0 {
			l := c.blocked[0]
			c.blocked = c.blocked[1:]
			l.blocked = false
			c.drainLocked(l, b)
		}
		return nil
	}
	l := c.legs[f.StreamID]
	if l == nil {
		c.mu.Unlock()
		return c.spendControl() // a closed stream's update is allowed, and ignored
	}
	overflow := l.sendWindow+int64(f.Increment) > maxWindow
	if !overflow {
		l.sendWindow += int64(f.Increment)
		if len(l.pending) > 0 && !l.blocked {
			c.drainLocked(l, b)
		}
	}
	c.mu.Unlock()
	if overflow {
		c.resetStream(f.StreamID, http2.ErrCodeFlowControl, b)
	}
	return nil
}

func (c *h2conn) onData(f *http2.DataFrame, b *batch) error {
	id := f.StreamID
	if c.idle(id) {
		return connError{http2.ErrCodeProtocol, fmt.Sprintf("DATA on idle stream %d", id)}
	}
	n := int64(f.Length)
	c.mu.Lock()
	l := c.legs[id]
	c.recvWindow -= n
	overrun := c.recvWindow < 0
	if l != nil {
		l.recvWindow -= n
		overrun = overrun || l.recvWindow < 0
	}
	c.mu.Unlock()
	if overrun {
		return connError{http2.ErrCodeFlowControl, fmt.Sprintf("DATA beyond the flow-control window (stream %d)", id)}
	}
	if l == nil || (!c.client && l.recvDone) {
		// §5.1: closed, or half-closed (remote) after the peer's
		// END_STREAM. The bytes still count against the connection's
		// window, so they are credited back.
		b.credits = append(b.credits, credit{c: c, n: n})
		if !c.client {
			c.resetStream(id, http2.ErrCodeStreamClosed, b)
		}
		return nil
	}
	data := f.Data()
	if !c.client && l.contentLength >= 0 {
		l.dataRecv += int64(len(data))
		if l.dataRecv > l.contentLength || (f.StreamEnded() && l.dataRecv != l.contentLength) {
			b.credits = append(b.credits, credit{c: c, n: n})
			c.resetStream(id, http2.ErrCodeProtocol, b)
			return nil
		}
	}
	if pad := n - int64(len(data)); pad > 0 {
		b.credits = append(b.credits, credit{c: c, l: l, n: pad})
	}
	l.s.forwardData(l, data, f.StreamEnded(), b)
	return nil
}

// onReset handles RST_STREAM from the peer; it reports whether the
// stream was open.
func (c *h2conn) onReset(id uint32, code http2.ErrCode, b *batch) bool {
	c.mu.Lock()
	l := c.legs[id]
	c.mu.Unlock()
	if l == nil {
		return false
	}
	l.s.reset(l, code, b)
	return true
}

// resetStream answers a stream error (RFC 9113 §5.4.2): RST_STREAM with
// code to the peer, and the proxied stream, if any, ends on both sides.
func (c *h2conn) resetStream(id uint32, code http2.ErrCode, b *batch) {
	c.clientError("stream", code.String())
	c.mu.Lock()
	l := c.legs[id]
	c.mu.Unlock()
	if l != nil {
		l.s.reset(l, code, b)
	}
	c.mu.Lock()
	if !c.closed {
		c.fr.WriteRSTStream(id, code)
	}
	c.mu.Unlock()
	b.markDirty(c)
}

// closeStreams ends every stream on a connection that is gone.
func (c *h2conn) closeStreams(b *batch) {
	c.mu.Lock()
	c.closed = true
	legs := make([]*leg, 0, len(c.legs))
	for _, l := range c.legs {
		legs = append(legs, l)
	}
	c.mu.Unlock()
	for _, l := range legs {
		l.s.connLost(l, b)
	}
}

// failLocked marks the connection broken after a write error; its read
// loop then fails and ends its streams.
func (c *h2conn) failLocked() {
	c.closed = true
	c.closeConn()
}

// readPump is a reader that runs a connection's read loop itself
// (rawSocket.pump), and can shut the connection down meanwhile.
type readPump interface {
	pump(br *bufio.Reader, handle func() error) error
	shutdown() error
}

// closeConn closes the connection from any goroutine, under any lock. A
// connection read by a pump is shut down, which ends the pump without
// waiting for it (a Close would wait for the pump, which may wait for the
// lock the caller holds); its read loop closes it when it ends.
func (c *h2conn) closeConn() {
	if c.sock != nil {
		c.sock.shutdown()
		return
	}
	c.nc.Close()
}

// writeHeadersLocked encodes fields and writes them as HEADERS (and
// CONTINUATION) frames.
func (c *h2conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, end bool) {
	block := c.henc.encode(fields)
	first := block
	if len(first) > frameSize {
		first = first[:frameSize]
	}
	block = block[len(first):]
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0})
	for len(block) > 0 {
		frag := block
		if len(frag) > frameSize {
			frag = frag[:frameSize]
		}
		block = block[len(frag):]
		c.fr.WriteContinuation(id, len(block) == 0, frag)
	}
}

// drainPing is the PING payload of the first phase of a drain.
var drainPing = [8]byte{'b', 'a', 'l', 'l', 'a', 's', 't', 0}

// startDrainLocked starts a graceful drain of a server conn in two phases, as
// grpc-go's server does: a GOAWAY that lets no stream be refused (last
// stream id 2^31-1) and a PING; the PING's ack proves the client has seen
// the GOAWAY, so the final GOAWAY (goAwayLocked) can name the last stream
// the proxy will serve without refusing a stream the client sent before
// it knew.
func (c *h2conn) startDrainLocked() {
	if c.draining || c.goingAway || c.closed {
		return
	}
	c.draining = true
	c.fr.WriteGoAway(1<<31-1, http2.ErrCodeNo, nil)
	c.fr.WritePing(false, drainPing)
	if err := c.bw.Flush(); err != nil {
		c.failLocked()
	}
}

// goAwayLocked tells the peer to open no more streams (server conns) and
// closes the conn once the streams it has end.
func (c *h2conn) goAwayLocked() {
	if c.goingAway || c.closed {
		return
	}
	c.goingAway = true
	c.fr.WriteGoAway(c.lastPeerID, http2.ErrCodeNo, nil)
	if err := c.bw.Flush(); err != nil {
		c.failLocked()
	}
	c.idleCheckLocked()
}

// idleCheckLocked closes a connection that is going away and has no
// streams left, and starts a server conn's idle timer when its last
// stream ends.
func (c *h2conn) idleCheckLocked() {
	if c.idleTimer != nil && len(c.legs) == 0 {
		c.idleTimer.Reset(c.limits.IdleTimeout)
	}
	if c.goingAway && len(c.legs) == 0 && !c.closed {
		c.bw.Flush()
		c.closed = true
		c.closeConn()
	}
}

// readPreface reads the client connection preface of a downstream conn.
// It compares bytes as they arrive, so a client that sends something else
// (an HTTP/1.1 request shorter than the preface, say) is answered at once
// rather than left waiting for bytes it will never send. HTTP/1 gets an
// HTTP/1.1 400 saying what the listener speaks; anything else a GOAWAY
// (RFC 9113 §3.4: PROTOCOL_ERROR).
func (c *h2conn) readPreface() error {
	for n := 1; n <= len(http2.ClientPreface); n++ {
		buf, err := c.br.Peek(n)
		if len(buf) == n && buf[n-1] != http2.ClientPreface[n-1] {
			buf, _ = c.br.Peek(c.br.Buffered())
			return c.rejectPreface(buf)
		}
		if err != nil {
			return fmt.Errorf("reading HTTP/2 preface: %w", err)
		}
	}
	c.br.Discard(len(http2.ClientPreface))
	return nil
}

// notHTTP2 is the answer to a client that does not speak HTTP/2.
const notHTTP2 = "ballast proxy: this port takes gRPC, which is HTTP/2 with prior knowledge (h2c); the connection did not start with the HTTP/2 preface"

// rejectPreface answers a connection that did not start with the preface.
func (c *h2conn) rejectPreface(got []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if looksLikeHTTP1(got) {
		fmt.Fprintf(c.bw, "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s\n", len(notHTTP2)+1, notHTTP2)
	} else {
		c.fr.WriteGoAway(0, http2.ErrCodeProtocol, []byte(notHTTP2))
	}
	c.bw.Flush()
	return errors.New("not an HTTP/2 client preface")
}

// looksLikeHTTP1 reports whether b starts like an HTTP/1 request line: an
// uppercase method token and a space (PRI, the preface's, aside).
func looksLikeHTTP1(b []byte) bool {
	if bytes.HasPrefix(b, []byte("PRI ")) {
		return false
	}
	i := 0
	for i < len(b) && 'A' <= b[i] && b[i] <= 'Z' {
		i++
	}
	return i > 0 && i < len(b) && b[i] == ' '
}

// grpcMessageLength is the length in a gRPC message header (1 byte flag,
// 4 bytes big-endian length).
func grpcMessageLength(hdr []byte) uint32 { return binary.BigEndian.Uint32(hdr[1:5]) }
