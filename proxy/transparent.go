package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// http2Preface is what every HTTP/2 client (so every gRPC client) sends
// first on a connection.
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Reasons a connection is passed through, as metric label values.
const (
	reasonUnknownDestination = "unknown_destination"
	reasonNotHTTP2           = "not_http2"
	reasonNoUpstream         = "no_upstream"
)

// serveTransparent sends one redirected connection on to its original
// destination.
func (p *Proxy) serveTransparent(ctx context.Context, c net.Conn) {
	dst, err := p.opts.OriginalDst(c)
	if err != nil {
		// Not a redirected connection: someone dialled the proxy's port
		// itself. Forwarding it would loop.
		p.log.Debug("no original destination; closing", "client", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	p.dispatch(ctx, c, dst)
}

// dispatch sends an intercepted connection to the gRPC path if it speaks
// HTTP/2 to a known Service, and through as plain TCP to dst otherwise. The
// destination is checked first, so connections to anything else are never
// delayed by sniffing.
func (p *Proxy) dispatch(ctx context.Context, c net.Conn, dst netip.AddrPort) {
	target, known := p.opts.Destinations.Target(dst)
	if !known {
		p.passThrough(ctx, c, dst, nil, reasonUnknownDestination)
		return
	}
	prefix, isHTTP2, err := sniff(c, p.opts.SniffTimeout)
	if err != nil {
		p.log.Debug("reading connection preface", "client", c.RemoteAddr(), "destination", dst, "err", err)
		c.Close()
		return
	}
	if !isHTTP2 {
		p.passThrough(ctx, c, dst, prefix, reasonNotHTTP2)
		return
	}
	up, err := p.upstreams.get(target)
	if err != nil {
		p.log.Warn("no upstream; passing through", "destination", dst, "target", target, "err", err)
		p.passThrough(ctx, c, dst, prefix, reasonNoUpstream)
		return
	}
	p.serveDownstream(&prefixConn{Conn: c, prefix: prefix}, up, nil)
}

// sniff reads until it has the HTTP/2 preface or bytes that differ from
// it, or until timeout passes with the client silent. It returns what it
// read, to be replayed. A client that closes early or stays silent is not
// HTTP/2; only other read errors are errors.
func sniff(c net.Conn, timeout time.Duration) (prefix []byte, isHTTP2 bool, err error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, false, err
	}
	buf := make([]byte, len(http2Preface))
	n := 0
	for n < len(buf) {
		var m int
		m, err = c.Read(buf[n:])
		n += m
		if !bytes.Equal(buf[:n], []byte(http2Preface[:n])) {
			break // not HTTP/2; whatever err says, the bytes go through
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) {
				return buf[:n], false, err
			}
			break // closed early or silent: not HTTP/2
		}
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return buf[:n], false, err
	}
	return buf[:n], string(buf[:n]) == http2Preface, nil
}

// prefixConn replays bytes already read from a connection before reading
// more from it.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// passThrough connects the client to dst and copies bytes both ways,
// replaying prefix first, until both sides are done. Half-closes are
// forwarded, so request/response protocols that close their write side
// still work.
func (p *Proxy) passThrough(ctx context.Context, down net.Conn, dst netip.AddrPort, prefix []byte, reason string) {
	p.metrics.passthrough.WithLabelValues(reason).Inc()
	if !p.passthrough.Add(down) {
		return
	}
	defer p.passthrough.Remove(down)
	d := net.Dialer{Timeout: 10 * time.Second}
	up, err := d.DialContext(ctx, "tcp", dst.String())
	if err != nil {
		p.log.Debug("passthrough dial", "destination", dst, "err", err)
		return
	}
	if !p.passthrough.Add(up) {
		return
	}
	defer p.passthrough.Remove(up)
	if _, err := up.Write(prefix); err != nil {
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() { pipe(up, down) })
	pipe(down, up)
	wg.Wait()
}

// pipe copies src to dst, then half-closes dst's write side (or closes it
// when it cannot half-close).
func pipe(dst, src net.Conn) {
	io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
}
