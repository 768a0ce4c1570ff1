package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	lis := listen(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestSocketIO(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<19) // 8 MiB: many times the socket buffers
	tests := []struct {
		name string
		// run uses the raw reader and writer of one end (nc) and the
		// plain other end (peer).
		run func(t *testing.T, r io.Reader, w io.Writer, nc, peer net.Conn)
	}{
		{"write larger than the socket buffers waits for room", func(t *testing.T, _ io.Reader, w io.Writer, nc, peer net.Conn) {
			got := make(chan []byte, 1)
			go func() { b, _ := io.ReadAll(peer); got <- b }()
			n, err := w.Write(big)
			if err != nil || n != len(big) {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(big))
			}
			if err := nc.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if b := <-got; !bytes.Equal(b, big) {
				t.Fatalf("peer read %d bytes, not the %d written", len(b), len(big))
			}
		}},
		{"read gets what the peer wrote, then EOF", func(t *testing.T, r io.Reader, _ io.Writer, _, peer net.Conn) {
			go func() { peer.Write(big); peer.Close() }()
			b, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(b, big) {
				t.Fatalf("ReadAll = %d bytes, %v; want the %d written, nil", len(b), err, len(big))
			}
		}},
		{"read on a closed conn fails with net.ErrClosed", func(t *testing.T, r io.Reader, _ io.Writer, nc, _ net.Conn) {
			nc.Close()
			if _, err := r.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Read after Close: %v, want net.ErrClosed", err)
			}
		}},
		{"write on a closed conn fails with net.ErrClosed", func(t *testing.T, _ io.Reader, w io.Writer, nc, _ net.Conn) {
			nc.Close()
			if _, err := w.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Write after Close: %v, want net.ErrClosed", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, peer := tcpPair(t)
			r, w := socketIO(nc, nc)
			if _, ok := r.(*rawSocket); !ok {
				t.Fatalf("socketIO(TCP conn) reader is %T, want *rawSocket", r)
			}
			tt.run(t, r, w, nc, peer)
		})
	}
}

// TestSocketIOReplaysPrefix: a sniffed connection's bytes already read come
// first, then the socket's.
func TestSocketIOReplaysPrefix(t *testing.T) {
	nc, peer := tcpPair(t)
	pc := &prefixConn{Conn: nc, prefix: []byte("PRI * ")}
	r, w := socketIO(pc, pc)
	if _, ok := w.(*rawSocket); !ok {
		t.Fatalf("socketIO(prefixConn) writer is %T, want *rawSocket", w)
	}
	go func() { peer.Write([]byte("HTTP/2.0")); peer.Close() }()
	b, err := io.ReadAll(r)
	if err != nil || string(b) != "PRI * HTTP/2.0" {
		t.Fatalf("ReadAll = %q, %v; want %q", b, err, "PRI * HTTP/2.0")
	}
}
