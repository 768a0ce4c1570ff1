package devcluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ExposeService makes a Service reachable from host loopback, the other
// way round from ForwardToHost: it returns a 127.0.0.1 address whose
// connections are relayed, from inside the cluster's router namespace, to
// the Service's ClusterIP:port, so they reach a ready endpoint as a pod's
// would. This is how the host's kube-apiserver calls an admission webhook
// served by a pod (a clientConfig.url on 127.0.0.1): it cannot route to
// ClusterIPs, which are blackholed on the host. When the Service has no
// ready endpoint, connections are closed at once. The relay lives until
// Stop.
func (c *Cluster) ExposeService(ctx context.Context, namespace, name string, port int32) (netip.AddrPort, error) {
	svc, err := c.Client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("expose service %s/%s: %w", namespace, name, err)
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !c.ServiceCIDR.Contains(ip) {
		return netip.AddrPort{}, fmt.Errorf("expose service %s/%s: ClusterIP %q is not in %s", namespace, name, svc.Spec.ClusterIP, c.ServiceCIDR)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("expose service %s/%s: %w", namespace, name, err)
	}
	upstream := net.JoinHostPort(ip.String(), strconv.Itoa(int(port)))
	dial := netnsDialer{netns: c.net.routerNetns()}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		relayDial(c.runCtx, l, func(ctx context.Context) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return dial.DialContext(ctx, "tcp", upstream)
		})
	}()
	return netip.MustParseAddrPort(l.Addr().String()), nil
}

// relayDial accepts connections on l and joins each to a connection made
// by dial, until ctx ends.
func relayDial(ctx context.Context, l net.Listener, dial func(context.Context) (net.Conn, error)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() { <-ctx.Done(); l.Close() }()
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			up, err := dial(ctx)
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(up, conn); done <- struct{}{} }()
			go func() { io.Copy(conn, up); done <- struct{}{} }()
			select {
			case <-done:
			case <-ctx.Done():
			}
		}()
	}
}
