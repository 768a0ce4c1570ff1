package devcluster

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ExposeService makes a Service reachable from host loopback, the other
// way round from ForwardToHost: it returns a 127.0.0.1 address whose
// connections are relayed, from inside the cluster's router namespace, to
// one ready endpoint of the Service's port, picked at random per
// connection from its EndpointSlices, as a ClusterIP would. This is how the
// host's kube-apiserver calls an admission webhook served by a pod (a
// clientConfig.url on 127.0.0.1): it cannot route to ClusterIPs, which are
// blackholed on the host. When the Service has no ready endpoint,
// connections are closed at once, as they are while the Service does not
// exist. The relay lives until Stop.
func (c *Cluster) ExposeService(ctx context.Context, namespace, name string, port int32) (netip.AddrPort, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("expose service %s/%s: %w", namespace, name, err)
	}
	dial := netnsDialer{netns: c.net.routerNetns()}
	log := c.log.With("component", "expose", "service", namespace+"/"+name)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		relayDial(c.runCtx, l, 0, func(ctx context.Context) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			sp, err := servicePort(ctx, c, namespace, name, port)
			if err != nil {
				log.Debug("service port", "err", err)
				return nil, err
			}
			list, err := c.Client.DiscoveryV1().EndpointSlices(namespace).List(ctx,
				metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + name})
			if err != nil {
				log.Debug("listing endpoints", "err", err)
				return nil, err
			}
			ptrs := make([]*discoveryv1.EndpointSlice, len(list.Items))
			for i := range list.Items {
				ptrs[i] = &list.Items[i]
			}
			eps := endpointsFor(c.net, ptrs, sp)
			if len(eps) == 0 {
				log.Debug("no ready endpoint")
				return nil, fmt.Errorf("service %s/%s port %d: no ready endpoint", namespace, name, port)
			}
			return dial.DialContext(ctx, "tcp", eps[rand.IntN(len(eps))].String())
		})
	}()
	return netip.MustParseAddrPort(l.Addr().String()), nil
}

// servicePort reads the Service's port at each connection, so a Service
// may be exposed before it exists (the webhook's URL is rendered into the
// manifests that create it).
func servicePort(ctx context.Context, c *Cluster, namespace, name string, port int32) (corev1.ServicePort, error) {
	svc, err := c.Client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return corev1.ServicePort{}, fmt.Errorf("service %s/%s: %w", namespace, name, err)
	}
	for _, sp := range svc.Spec.Ports {
		if sp.Port == port {
			return sp, nil
		}
	}
	return corev1.ServicePort{}, fmt.Errorf("service %s/%s: no port %d", namespace, name, port)
}
