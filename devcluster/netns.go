package devcluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns add` keeps its named namespaces.
const netnsDir = "/run/netns"

// inNetns runs fn on an OS thread switched into the named network namespace
// and switches the thread back before returning it to the scheduler. A
// socket created by fn stays in that namespace for its whole life, which is
// how the harness dials pod addresses that exist nowhere else.
func inNetns(name string, fn func() error) error {
	target, err := os.Open(netnsDir + "/" + name)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime discards it when this
			// goroutine exits, so no other goroutine runs in the wrong netns.
			errc <- fmt.Errorf("leave netns %s: %w", name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// netnsDialer dials from inside a named network namespace.
type netnsDialer struct{ netns string }

// DialContext creates the socket inside the namespace and connects it. The
// connect itself may complete on another thread: the namespace is fixed
// when the socket is created.
func (d netnsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := inNetns(d.netns, func() error {
		var derr error
		conn, derr = (&net.Dialer{}).DialContext(ctx, network, addr)
		return derr
	})
	return conn, err
}

// listenInNetns opens a listener inside a named network namespace.
func listenInNetns(name, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := inNetns(name, func() error {
		var lerr error
		l, lerr = net.Listen(network, addr)
		return lerr
	})
	return l, err
}

// listenPacketInNetns opens a packet socket inside a named network namespace.
func listenPacketInNetns(name, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := inNetns(name, func() error {
		var lerr error
		pc, lerr = net.ListenPacket(network, addr)
		return lerr
	})
	return pc, err
}
