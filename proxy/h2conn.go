package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
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
	// maxHeaderList bounds a decoded header block (metadata).
	maxHeaderList = 16 << 20
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
	nc     net.Conn
	br     *bufio.Reader
	fr     *http2.Framer
	client bool // the proxy opened it (upstream)

	// Header decoding, by the read loop only: fields is reused for every
	// block (copied only when a block must wait), block gathers a block
	// split over CONTINUATION frames.
	hdec      *hpack.Decoder
	fields    []hpack.HeaderField
	fieldSize int
	block     []byte
	blockID   uint32
	blockEnd  bool

	mu sync.Mutex
	bw *bufio.Writer
	// henc encodes header blocks into hbuf; its dynamic table is this
	// connection's, so blocks are encoded in the order they are written.
	henc *hpack.Encoder
	hbuf bytes.Buffer
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
	// got one, or ran out of stream ids.
	goingAway bool
	// draining: a server conn sent the first GOAWAY of a drain.
	draining bool
	closed   bool
	// onGoingAway runs (under mu) when a client conn stops taking new
	// streams.
	onGoingAway func()
}

func newH2Conn(nc net.Conn, r io.Reader, client bool) *h2conn {
	rd, wr := socketIO(nc, r)
	c := &h2conn{
		nc:             nc,
		br:             bufio.NewReaderSize(rd, ioBufferSize),
		bw:             bufio.NewWriterSize(wr, ioBufferSize),
		client:         client,
		sendWindow:     initialWindow,
		peerWindow:     initialWindow,
		peerMaxStreams: ^uint32(0),
		legs:           map[uint32]*leg{},
		nextID:         1,
		recvWindow:     connWindow,
	}
	c.fr = http2.NewFramer(c.bw, c.br)
	c.fr.SetReuseFrames()
	// Peers may send frames no larger than the default the proxy keeps,
	// so every frame can go on to the other side as it is.
	c.fr.SetMaxReadFrameSize(frameSize)
	c.hdec = hpack.NewDecoder(4096, func(hf hpack.HeaderField) {
		c.fieldSize += int(hf.Size())
		c.fields = append(c.fields, hf)
	})
	c.hdec.SetMaxStringLength(maxHeaderList)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// start writes the proxy's half of the connection preface (the client
// magic if this is a client conn, SETTINGS, and the connection window).
func (c *h2conn) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client {
		if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
			return err
		}
	}
	settings := []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: streamWindow}, {ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList}}
	if c.client {
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
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
		if !c.closed && c.bw.Buffered() > 0 {
			if err := c.bw.Flush(); err != nil {
				c.failLocked()
			}
		}
		c.mu.Unlock()
		b.dirty[i] = nil
	}
	b.dirty = b.dirty[:0]
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
	// only); fields are only valid during the call.
	newStream(c *h2conn, id uint32, fields []hpack.HeaderField, end bool, b *batch)
	// goAway handles the peer's GOAWAY.
	goAway(c *h2conn, f *http2.GoAwayFrame, b *batch)
	// settings is called after each SETTINGS frame from the peer.
	settings(c *h2conn)
}

// readLoop reads and forwards frames until the connection fails or is
// closed, then ends every stream still on it. Buffers are flushed when no
// further complete frame is already buffered.
func (c *h2conn) readLoop(h peerHandler) error {
	var b batch
	defer func() {
		b.flush()
		c.closeStreams(&b)
		b.flush()
	}()
	for {
		if !c.frameBuffered() {
			if len(b.dirty) > 0 {
				// Yield once before writing: the read loops the
				// netpoller woke with this one run first, and what they
				// forward to the same connections (responses from several
				// upstreams to one client) leaves in this flush, one
				// write instead of one per read loop.
				runtime.Gosched()
			}
			b.flush()
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.resetStream(se.StreamID, se.Code, &b)
				continue
			}
			return err
		}
		switch f := f.(type) {
		case *http2.HeadersFrame:
			if f.HeadersEnded() {
				err = c.onHeaders(f.StreamID, f.StreamEnded(), f.HeaderBlockFragment(), h, &b)
			} else {
				c.block = append(c.block[:0], f.HeaderBlockFragment()...)
				c.blockID, c.blockEnd = f.StreamID, f.StreamEnded()
			}
		case *http2.ContinuationFrame:
			c.block = append(c.block, f.HeaderBlockFragment()...)
			if len(c.block) > maxHeaderList {
				return errors.New("http2: header block too large")
			}
			if f.HeadersEnded() {
				err = c.onHeaders(c.blockID, c.blockEnd, c.block, h, &b)
			}
		case *http2.DataFrame:
			err = c.onData(f, &b)
		case *http2.RSTStreamFrame:
			c.onReset(f.StreamID, f.ErrCode, &b)
		case *http2.WindowUpdateFrame:
			c.onWindowUpdate(f, &b)
		case *http2.SettingsFrame:
			if err := c.onSettings(f, &b); err != nil {
				return err
			}
			h.settings(c)
		case *http2.PingFrame:
			c.mu.Lock()
			if !f.IsAck() {
				c.fr.WritePing(true, f.Data)
				b.markDirty(c)
			} else if f.Data == drainPing && c.draining {
				c.goAwayLocked()
			}
			c.mu.Unlock()
		case *http2.GoAwayFrame:
			h.goAway(c, f, &b)
		case *http2.PushPromiseFrame:
			return errors.New("http2: PUSH_PROMISE, which the proxy disabled")
		}
		if err != nil {
			return err
		}
		b.settle()
	}
}

// frameBuffered says whether a whole frame is already in the read buffer,
// so reading it will not block.
func (c *h2conn) frameBuffered() bool {
	n := c.br.Buffered()
	if n < 9 {
		return false
	}
	hdr, _ := c.br.Peek(3)
	length := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
	return n >= 9+length
}

func (c *h2conn) onSettings(f *http2.SettingsFrame, b *batch) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingInitialWindowSize:
			if s.Val > 1<<31-1 {
				return fmt.Errorf("http2: initial window size %d", s.Val)
			}
			delta := int64(s.Val) - c.peerWindow
			c.peerWindow = int64(s.Val)
			for _, l := range c.legs {
				l.sendWindow += delta
				if delta > 0 && len(l.pending) > 0 {
					c.drainLocked(l, b)
				}
			}
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams = s.Val
		case http2.SettingHeaderTableSize:
			c.henc.SetMaxDynamicTableSizeLimit(s.Val)
		}
		return nil
	})
	c.fr.WriteSettingsAck()
	b.markDirty(c)
	return err
}

func (c *h2conn) onWindowUpdate(f *http2.WindowUpdateFrame, b *batch) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		for len(c.blocked) > 0 && c.sendWindow > 0 {
			l := c.blocked[0]
			c.blocked = c.blocked[1:]
			l.blocked = false
			c.drainLocked(l, b)
		}
		return
	}
	if l := c.legs[f.StreamID]; l != nil {
		l.sendWindow += int64(f.Increment)
		if len(l.pending) > 0 && !l.blocked {
			c.drainLocked(l, b)
		}
	}
}

// onHeaders decodes a complete header block and forwards it, or starts a
// stream with it. A block that cannot be decoded breaks the connection's
// header compression state: that is a connection error.
func (c *h2conn) onHeaders(id uint32, end bool, block []byte, h peerHandler, b *batch) error {
	c.fields, c.fieldSize = c.fields[:0], 0
	if _, err := c.hdec.Write(block); err != nil {
		return fmt.Errorf("http2: decoding headers: %w", err)
	}
	if err := c.hdec.Close(); err != nil {
		return fmt.Errorf("http2: decoding headers: %w", err)
	}
	if c.fieldSize > maxHeaderList {
		return fmt.Errorf("http2: header list of %d bytes, over %d", c.fieldSize, maxHeaderList)
	}
	c.mu.Lock()
	l := c.legs[id]
	c.mu.Unlock()
	if l == nil {
		if !c.client {
			h.newStream(c, id, c.fields, end, b)
		}
		return nil // else a stream that already ended
	}
	l.s.forwardHeaders(l, c.fields, end, b)
	return nil
}

func (c *h2conn) onData(f *http2.DataFrame, b *batch) error {
	n := int64(f.Length)
	c.mu.Lock()
	l := c.legs[f.StreamID]
	c.recvWindow -= n
	overrun := c.recvWindow < 0
	if l != nil {
		l.recvWindow -= n
		overrun = overrun || l.recvWindow < 0
	}
	c.mu.Unlock()
	if overrun {
		return fmt.Errorf("http2: peer sent DATA beyond its flow-control window (stream %d)", f.StreamID)
	}
	if l == nil {
		b.credits = append(b.credits, credit{c: c, n: n})
		return nil
	}
	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		b.credits = append(b.credits, credit{c: c, l: l, n: pad})
	}
	l.s.forwardData(l, data, f.StreamEnded(), b)
	return nil
}

// onReset handles RST_STREAM from the peer.
func (c *h2conn) onReset(id uint32, code http2.ErrCode, b *batch) {
	c.mu.Lock()
	l := c.legs[id]
	c.mu.Unlock()
	if l != nil {
		l.s.reset(l, code, b)
	}
}

// resetStream sends RST_STREAM for a stream the framer found malformed,
// and ends the proxied stream.
func (c *h2conn) resetStream(id uint32, code http2.ErrCode, b *batch) {
	c.mu.Lock()
	l := c.legs[id]
	c.mu.Unlock()
	if l == nil {
		c.mu.Lock()
		c.fr.WriteRSTStream(id, code)
		c.mu.Unlock()
		b.markDirty(c)
		return
	}
	l.s.reset(l, code, b)
	c.mu.Lock()
	c.fr.WriteRSTStream(id, code)
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
	c.nc.Close()
	for _, l := range legs {
		l.s.connLost(l, b)
	}
}

// failLocked marks the connection broken after a write error; its read
// loop then fails and ends its streams.
func (c *h2conn) failLocked() {
	c.closed = true
	c.nc.Close()
}

// writeHeadersLocked encodes fields and writes them as HEADERS (and
// CONTINUATION) frames.
func (c *h2conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, end bool) {
	c.hbuf.Reset()
	for _, hf := range fields {
		c.henc.WriteField(hf)
	}
	block := c.hbuf.Bytes()
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
// streams left.
func (c *h2conn) idleCheckLocked() {
	if c.goingAway && len(c.legs) == 0 && !c.closed {
		c.bw.Flush()
		c.closed = true
		c.nc.Close()
	}
}

// readPreface reads the client connection preface of a downstream conn.
func (c *h2conn) readPreface() error {
	buf, err := c.br.Peek(len(http2.ClientPreface))
	if err != nil {
		return fmt.Errorf("reading HTTP/2 preface: %w", err)
	}
	if string(buf) != http2.ClientPreface {
		return errors.New("not an HTTP/2 client preface")
	}
	c.br.Discard(len(buf))
	return nil
}

// grpcMessageLength is the length in a gRPC message header (1 byte flag,
// 4 bytes big-endian length).
func grpcMessageLength(hdr []byte) uint32 { return binary.BigEndian.Uint32(hdr[1:5]) }
