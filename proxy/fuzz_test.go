package proxy

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// FuzzFrames feeds arbitrary bytes, after the connection preface, to the
// frame path of a client connection (the one every listener shares),
// with a real grpc-go server upstream. Whatever the bytes, the connection
// must end once the client closes, and leave nothing behind: no stream,
// no held byte. Seeds: the frames of every TestRFC9113 rule (checked in
// under testdata/fuzz/FuzzFrames too).
func FuzzFrames(f *testing.F) {
	for _, rule := range rfc9113Rules {
		f.Add(ruleFrames(rule.send))
	}
	e := startEdge(f, Options{})
	up := e.p.outbound[0].up
	f.Fuzz(func(t *testing.T, frames []byte) {
		client, server := net.Pipe()
		done := make(chan struct{})
		go func() { defer close(done); e.p.serveDownstream(server, up, nil) }()
		drained := make(chan struct{})
		go func() { defer close(drained); io.Copy(io.Discard, client) }()
		client.SetWriteDeadline(time.Now().Add(10 * time.Second))
		client.Write(append([]byte(http2.ClientPreface), frames...))
		client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the connection's handler did not return after the client closed")
		}
		<-drained
		eventually(t, "nothing held once the connection ended", func() bool {
			h := e.p.held()
			return h.conns == 0 && h.streams == 0 && h.bytes == 0 && h.upstreamHeld == 0
		})
	})
}

// ruleFrames returns the bytes send writes after an empty SETTINGS.
func ruleFrames(send func(*rawClient)) []byte {
	var buf bytes.Buffer
	r := &rawClient{fr: http2.NewFramer(&buf, nil)}
	r.fr.AllowIllegalWrites = true
	r.enc = hpack.NewEncoder(&r.hbuf)
	r.fr.WriteSettings()
	send(r)
	return buf.Bytes()
}
