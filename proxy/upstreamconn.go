package proxy

import (
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// upstreamConn handles the connection-level frames of an upstream
// connection.
type upstreamConn struct {
	sc    *subConn
	ready chan struct{}
	once  sync.Once
}

func (u *upstreamConn) newStream(*h2conn, uint32, []hpack.HeaderField, bool, *batch) {}

func (u *upstreamConn) settings(*h2conn) { u.once.Do(func() { close(u.ready) }) }

// goAway: streams the server will not process are refused downstream, so
// clients retry them (gRPC retries REFUSED_STREAM transparently); the
// rest finish, and the connection closes after them.
func (u *upstreamConn) goAway(c *h2conn, f *http2.GoAwayFrame, b *batch) {
	c.mu.Lock()
	var refused []*leg
	for id, l := range c.legs {
		if id > f.LastStreamID {
			refused = append(refused, l)
		}
	}
	c.mu.Unlock()
	for _, l := range refused {
		l.s.reset(l, http2.ErrCodeRefusedStream, b)
	}
	c.mu.Lock()
	c.retireLocked()
	c.mu.Unlock()
}

// retireLocked stops new streams on an upstream connection; its SubConn
// then reports IDLE and the balancer has it reconnect.
func (c *h2conn) retireLocked() {
	if c.goingAway {
		return
	}
	c.goingAway = true
	if c.onGoingAway != nil {
		c.onGoingAway()
	}
	c.idleCheckLocked()
}
