package proxy

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestUpstreamProtocolErrorRetiresAtOnce: an upstream that breaks HTTP/2
// gets the connection error's GOAWAY, and its connection lingers a while
// after (so the GOAWAY is not lost to a reset). Its SubConn must stop
// taking streams before that GOAWAY goes out, not after the linger: calls
// picked meanwhile would otherwise wait for the next picker, which, with
// nothing else changing, comes only when the linger ends.
func TestUpstreamProtocolErrorRetiresAtOnce(t *testing.T) {
	proxySide, upstreamSide := net.Pipe()
	defer upstreamSide.Close()
	upstreamSide.SetDeadline(time.Now().Add(20 * time.Second))
	c := newH2Conn(proxySide, proxySide, true)
	var retired atomic.Bool
	c.onGoingAway = func() { retired.Store(true) }
	started := make(chan error, 1)
	go func() { started <- c.start() }()
	ended := make(chan error, 1)
	go func() {
		if err := <-started; err != nil {
			ended <- err
			return
		}
		ended <- c.readLoop(&upstreamConn{ready: make(chan struct{})})
	}()

	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(upstreamSide, preface); err != nil || string(preface) != http2.ClientPreface {
		t.Fatalf("client preface %q: %v", preface, err)
	}
	fr := http2.NewFramer(upstreamSide, upstreamSide)
	go func() {
		fr.WriteSettings()
		fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true})
	}()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY from the proxy: %v", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeProtocol {
				t.Fatalf("GOAWAY %v, want PROTOCOL_ERROR", ga.ErrCode)
			}
			break
		}
	}
	if !retired.Load() {
		t.Fatal("the connection error's GOAWAY went out before the connection was retired")
	}
	upstreamSide.Close()
	<-ended
}
