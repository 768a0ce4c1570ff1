//go:build !linux

package proxy

import (
	"io"
	"net"
)

// socketIO returns the reader and writer an h2conn uses: the connection's
// own, off Linux.
func socketIO(nc net.Conn, r io.Reader) (io.Reader, io.Writer) { return r, nc }

// socketConn returns nc: off Linux a layer over the socket reads and
// writes it as it is.
func socketConn(nc net.Conn) net.Conn { return nc }
