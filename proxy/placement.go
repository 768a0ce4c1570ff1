package proxy

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// routeParked places the parked streams with the current picker (those it
// cannot place park again). Streams stay parked until it runs, so a host
// closed meanwhile fails them.
func (h *host) routeParked() {
	h.mu.Lock()
	parked := h.parked
	h.parked = nil
	h.mu.Unlock()
	if len(parked) == 0 {
		return
	}
	var b batch
	for _, s := range parked {
		h.route(s, &b)
	}
	b.flush()
}

var errNotReady = status.Error(codes.Unavailable, "ballast proxy: picked connection is not ready")

// route places a new or parked stream: Pick, then open the stream on the
// picked connection. With no connection to pick yet, the stream parks
// until the next picker, as grpc-go's calls wait for one.
func (h *host) route(s *stream, b *batch) {
	l := s.upLeg()
	if l.ready.Load() {
		return // placed by another route of the same try
	}
	for {
		ps := h.picker.Load()
		var gen uint64
		if ps != nil {
			gen = ps.gen
			ctx := context.Background()
			if s.hashKey != "" {
				if hh := h.hashHeader.Load(); hh != nil {
					ctx = metadata.NewOutgoingContext(ctx, metadata.MD{*hh: []string{s.hashKey}})
				}
			}
			res, err := ps.p.Pick(balancer.PickInfo{FullMethodName: s.path, Ctx: ctx})
			if err == nil {
				if h.place(s, l, res, b) {
					return
				}
			} else if !errors.Is(err, balancer.ErrNoSubConnAvailable) {
				st, ok := status.FromError(err)
				if !ok {
					st = status.New(codes.Unavailable, err.Error())
				}
				s.up.metrics.newStreamErrors.Inc()
				if s.up.refuseUnplaced {
					s.refuse(b)
					return
				}
				s.fail(st.Code(), st.Message(), b)
				return
			}
		}
		if h.park(s, l, gen, b) {
			return
		}
	}
}

// place opens the try of s whose leg is l on the connection of the picked
// SubConn. It reports false when that connection is not (or no longer)
// usable.
func (h *host) place(s *stream, l *leg, res balancer.PickResult, b *batch) bool {
	sc, _ := res.SubConn.(*subConn)
	var c *h2conn
	if sc != nil {
		c = sc.conn.Load()
	}
	h.mu.Lock()
	s.host = h
	// Cancelled while parked, a try given up, or placed by another route
	// of it.
	if l.closed || l.ready.Load() || !s.placeable(l) {
		h.mu.Unlock()
		if res.Done != nil {
			res.Done(balancer.DoneInfo{Err: status.Error(codes.Canceled, "")})
		}
		return true
	}
	s.done = res.Done
	result := errConnGone
	if c != nil {
		result = s.attach(l, c, b)
	}
	if result != nil {
		s.done = nil
	}
	h.mu.Unlock()
	if result != nil && res.Done != nil {
		res.Done(balancer.DoneInfo{Err: errNotReady})
	}
	if result == errConnFull {
		// Waiting would need another stream to end on that connection;
		// the client is better served by an answer now.
		s.up.metrics.newStreamErrors.Inc()
		s.fail(codes.Unavailable, "ballast proxy: upstream connection is at its peer's maximum of concurrent streams", b)
		return true
	}
	return result == nil
}

var (
	errConnGone = errors.New("connection closed or going away")
	errConnFull = errors.New("connection at its maximum of concurrent streams")
)

// park queues s for the next picker; false means a newer picker than gen
// exists, so the caller should pick again. A stream beyond the host's
// maxPendingRequests fails UNAVAILABLE at once instead: a Cluster with no
// connection ready yet holds at most that many calls waiting for one.
func (h *host) park(s *stream, l *leg, gen uint64, b *batch) bool {
	h.mu.Lock()
	s.host = h
	if h.closed {
		h.mu.Unlock()
		s.fail(codes.Unavailable, "ballast proxy: stopping", b)
		return true
	}
	if l.closed || l.ready.Load() || !s.placeable(l) {
		h.mu.Unlock()
		return true
	}
	if ps := h.picker.Load(); ps != nil && ps.gen != gen {
		h.mu.Unlock()
		return false
	}
	if n := h.maxPending; n > 0 && s.parkedOn != h && uint32(len(h.parked)) >= n {
		h.mu.Unlock()
		s.up.metrics.newStreamErrors.Inc()
		s.fail(codes.Unavailable, fmt.Sprintf("ballast: circuit breaker open: %d requests pending a connection to cluster %s (maxPendingRequests %d)", n, h.target, n), b)
		return true
	}
	s.parkedOn = h
	// The request headers may still borrow the read loop's buffer.
	for i, it := range l.pending {
		l.pending[i] = it.own()
	}
	h.parked = append(h.parked, s)
	h.mu.Unlock()
	return true
}

// attach opens up, an upstream leg of s, on c and writes what waits for
// it (the request headers, and anything that arrived while parked).
func (s *stream) attach(up *leg, c *h2conn, b *batch) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.goingAway {
		return errConnGone
	}
	if uint32(len(c.legs)) >= c.peerMaxStreams {
		return errConnFull
	}
	up.c, up.id = c, c.nextID
	c.nextID += 2
	up.sendWindow = c.peerWindow
	c.legs[up.id] = up
	up.ready.Store(true)
	if c.nextID >= maxClientStreamID {
		c.retireLocked()
	}
	c.drainLocked(up, b)
	b.markDirty(c)
	return nil
}
