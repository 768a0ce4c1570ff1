package proxy

import (
	"encoding/binary"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestPingAnswered: the proxy answers a client's PING itself, which is
// what keeps a client's keepalive satisfied.
func TestPingAnswered(t *testing.T) {
	_, addr := startOutbound(t, "127.0.0.1:1", Options{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	want := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	if err := fr.WritePing(false, want); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading frames, no PING ack: %v", err)
		}
		if p, ok := f.(*http2.PingFrame); ok {
			if !p.IsAck() || p.Data != want {
				t.Fatalf("got PING ack=%v data=%v, want an ack of %v", p.IsAck(), p.Data, want)
			}
			return
		}
	}
}

func TestCheckMessages(t *testing.T) {
	msg := func(n uint32) []byte {
		b := make([]byte, 5+n)
		binary.BigEndian.PutUint32(b[1:5], n)
		return b
	}
	cat := func(bs ...[]byte) (out []byte) {
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	tests := []struct {
		name    string
		chunks  [][]byte
		max     uint32
		wantErr bool
	}{
		{name: "one under", chunks: [][]byte{msg(10)}, max: 10},
		{name: "one over", chunks: [][]byte{msg(11)}, max: 10, wantErr: true},
		{name: "empty message", chunks: [][]byte{msg(0)}, max: 0},
		{name: "two in one frame, second over", chunks: [][]byte{cat(msg(3), msg(20))}, max: 10, wantErr: true},
		{name: "header split over frames", chunks: [][]byte{msg(20)[:2], msg(20)[2:]}, max: 10, wantErr: true},
		{name: "body split over frames, then another", chunks: [][]byte{msg(8)[:7], cat(msg(8)[7:], msg(9))}, max: 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var l leg
			var err error
			for _, c := range tc.chunks {
				if err = l.checkMessages(c, tc.max); err != nil {
					break
				}
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error: %v", err, tc.wantErr)
			}
		})
	}
}

func TestEncodeGRPCMessage(t *testing.T) {
	for in, want := range map[string]string{
		"plain text":         "plain text",
		"nö: 100% missing\n": "n%C3%B6: 100%25 missing%0A",
		"":                   "",
	} {
		if got := encodeGRPCMessage(in); got != want {
			t.Errorf("encodeGRPCMessage(%q) = %q, want %q", in, got, want)
		}
	}
}
