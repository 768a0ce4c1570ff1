package proxy

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// TestSocketConnUnderTLS: TLS layered over socketConn (the proxy's TLS
// listeners) reads and writes the socket with raw system calls, honours
// deadlines, and carries what the peer sends both ways.
func TestSocketConnUnderTLS(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"proxy.test"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)

	nc, peer := tcpPair(t)
	raw := socketConn(nc)
	if _, ok := raw.(*rawConn); !ok {
		t.Fatalf("socketConn(TCP conn) is %T, want *rawConn", raw)
	}
	server := tls.Server(raw, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	client := tls.Client(peer, &tls.Config{RootCAs: roots, ServerName: "proxy.test"})
	handshake := make(chan error, 1)
	go func() { handshake <- client.Handshake() }()
	if err := server.Handshake(); err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	if err := <-handshake; err != nil {
		t.Fatalf("client handshake: %v", err)
	}

	server.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := server.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	server.SetReadDeadline(time.Time{})

	msg := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB: many records, more than the socket buffers
	sent := make(chan error, 1)
	go func() {
		_, err := client.Write(msg)
		if err == nil {
			err = client.CloseWrite()
		}
		sent <- err
	}()
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("server read %d bytes, %v; want the %d the client wrote, nil", len(got), err, len(msg))
	}
	if err := <-sent; err != nil {
		t.Fatalf("client write: %v", err)
	}
	go func() {
		_, err := server.Write(msg)
		server.Close()
		sent <- err
	}()
	got, err = io.ReadAll(client)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("client read %d bytes, %v; want the %d the server wrote, nil", len(got), err, len(msg))
	}
	if err := <-sent; err != nil {
		t.Fatalf("server write: %v", err)
	}
}

// TestPump: the read loop of a raw socket reads what the peer sends and
// ends at its end of stream even when the end came in with the last bytes
// (a read that leaves the socket empty but for the end of stream must not
// wait for word of more), and ends when the socket is shut down meanwhile.
func TestPump(t *testing.T) {
	tests := []struct {
		name string
		// peer acts on the other end; it may stop the pump with s.
		peer    func(t *testing.T, nc, peer net.Conn, s *rawSocket)
		want    string
		wantErr error
	}{
		{"end of stream already in with the last bytes", func(t *testing.T, nc, peer net.Conn, _ *rawSocket) {
			// A goroutine waiting on the poller for another socket has
			// the runtime poll, as it does in a proxy: the word that
			// the bytes and the FIN came is taken before the pump runs.
			waiting, other := tcpPair(t)
			go waiting.Read(make([]byte, 1))
			t.Cleanup(func() { other.Close() })
			peer.Write([]byte("last words"))
			peer.Close()
			eventually(t, "the peer's FIN", func() bool { return tcpState(t, nc) == tcpCloseWait })
		}, "last words", io.EOF},
		{"bytes then end of stream while the pump waits", func(t *testing.T, _, peer net.Conn, _ *rawSocket) {
			go func() {
				peer.Write([]byte("one"))
				peer.Write([]byte("two"))
				peer.Close()
			}()
		}, "onetwo", io.EOF},
		{"shut down while it waits", func(t *testing.T, _, peer net.Conn, s *rawSocket) {
			go func() {
				peer.Write([]byte("hi"))
				s.shutdown()
			}()
		}, "", net.ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, peer := tcpPair(t)
			r, _ := socketIO(nc, nc)
			s := r.(*rawSocket)
			br := bufio.NewReader(s)
			var got []byte
			tt.peer(t, nc, peer, s)
			ended := make(chan error, 1)
			go func() {
				ended <- s.pump(br, func() error {
					b, _ := br.Peek(br.Buffered())
					got = append(got, b...)
					br.Discard(len(b))
					return nil
				})
			}()
			var err error
			select {
			case err = <-ended:
			case <-time.After(10 * time.Second):
				t.Fatal("pump still running 10s after the peer was done")
			}
			if !errors.Is(err, tt.wantErr) || (tt.want != "" && string(got) != tt.want) {
				t.Fatalf("pump read %q and ended with %v; want %q and %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// tcpCloseWait is TCP_CLOSE_WAIT of Linux's tcp_states.h: the peer closed.
const tcpCloseWait = 8

// tcpState is the TCP state of nc (tcp_states.h).
func tcpState(t *testing.T, nc net.Conn) int {
	rc, err := nc.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	rc.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
	if err != nil {
		t.Fatal(err)
	}
	return int(info.State)
}
