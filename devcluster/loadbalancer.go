package devcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// loadBalancer plays a cloud's load balancer controller for Services of
// type LoadBalancer: each gets a host loopback address of the cluster's
// own 127.(128+slot).0.0/16, listens there on every port of the Service,
// relays each connection from inside the router namespace to one ready
// endpoint of the port (as ExposeService does), and writes the address to
// status.loadBalancer.ingress, where a Gateway controller reads it. So a
// Service's LoadBalancer address is reachable from the host, and only from
// it: nothing binds outside 127.0.0.0/8. Level-triggered: any Service
// change recomputes every Service's listeners.
type loadBalancer struct {
	net    *network
	client kubernetes.Interface
	// base is the first address of the cluster's loopback range.
	base netip.Addr
	log  *slog.Logger

	slices discoverylisters.EndpointSliceLister

	// Owned by run.
	served map[string]*lbService // by namespace/name
}

// lbService is one Service's address and the relays of its ports.
type lbService struct {
	addr  netip.Addr
	ports []int32
	stop  func()
}

// lbRange is the loopback range of a slot's LoadBalancer addresses.
func lbRange(slot int) netip.Addr { return netip.AddrFrom4([4]byte{127, byte(128 + slot), 0, 1}) }

func (lb *loadBalancer) run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactory(lb.client, 10*time.Minute)
	svcs := factory.Core().V1().Services()
	lb.slices = factory.Discovery().V1().EndpointSlices().Lister()
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	if _, err := svcs.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	factory.WaitForCacheSync(ctx.Done())
	lb.served = map[string]*lbService{}
	defer func() {
		for _, s := range lb.served {
			s.stop()
		}
	}()
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-retry:
		}
		retry = nil
		list, err := svcs.Lister().List(labels.Everything())
		if err == nil {
			err = lb.sync(ctx, list)
		}
		if err != nil {
			lb.log.Warn("load balancer sync; retrying", "err", err)
			retry = time.After(time.Second)
		}
	}
}

// sync makes the relays and statuses what the Services of type
// LoadBalancer say.
func (lb *loadBalancer) sync(ctx context.Context, list []*corev1.Service) error {
	want := map[string]*corev1.Service{}
	for _, s := range list {
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer && s.DeletionTimestamp == nil {
			want[s.Namespace+"/"+s.Name] = s
		}
	}
	for key, s := range lb.served {
		if svc, ok := want[key]; !ok || !slices.Equal(s.ports, tcpPorts(svc)) {
			s.stop()
			delete(lb.served, key)
		}
	}
	var errs []error
	for _, key := range slices.Sorted(maps.Keys(want)) {
		svc := want[key]
		s := lb.served[key]
		if s == nil {
			var err error
			if s, err = lb.listen(ctx, svc); err != nil {
				errs = append(errs, err)
				continue
			}
			lb.served[key] = s
		}
		ingress := []corev1.LoadBalancerIngress{{IP: s.addr.String(), IPMode: ptrTo(corev1.LoadBalancerIPModeProxy)}}
		if len(svc.Status.LoadBalancer.Ingress) == 1 && svc.Status.LoadBalancer.Ingress[0].IP == s.addr.String() {
			continue
		}
		next := svc.DeepCopy()
		next.Status.LoadBalancer.Ingress = ingress
		if _, err := lb.client.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, next, metav1.UpdateOptions{}); err != nil {
			errs = append(errs, fmt.Errorf("service %s status: %w", key, err))
		}
	}
	return errors.Join(errs...)
}

func ptrTo[T any](v T) *T { return &v }

// tcpPorts are the Service's TCP ports, sorted.
func tcpPorts(svc *corev1.Service) []int32 {
	var out []int32
	for _, p := range svc.Spec.Ports {
		if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
			out = append(out, p.Port)
		}
	}
	slices.Sort(out)
	return out
}

// listen binds the Service's ports on the first address of the range
// where none is taken (another Service's, or another process's) and
// relays them.
func (lb *loadBalancer) listen(ctx context.Context, svc *corev1.Service) (*lbService, error) {
	ports := tcpPorts(svc)
	taken := map[netip.Addr]bool{}
	for _, s := range lb.served {
		taken[s.addr] = true
	}
	addr := lb.base
	for range 250 {
		if !taken[addr] {
			ls, err := listenAll(addr, ports)
			if err == nil {
				return lb.relay(ctx, svc, addr, ports, ls), nil
			}
		}
		addr = addr.Next()
	}
	return nil, fmt.Errorf("service %s/%s: no free loopback address from %s for ports %v", svc.Namespace, svc.Name, lb.base, ports)
}

// listenAll listens on addr at every port, or on none.
func listenAll(addr netip.Addr, ports []int32) ([]net.Listener, error) {
	var ls []net.Listener
	for _, p := range ports {
		l, err := net.Listen("tcp", netip.AddrPortFrom(addr, uint16(p)).String())
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// relay serves the listeners until the returned lbService stops.
func (lb *loadBalancer) relay(ctx context.Context, svc *corev1.Service, addr netip.Addr, ports []int32, ls []net.Listener) *lbService {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	dial := netnsDialer{netns: lb.net.routerNetns()}
	ns, name := svc.Namespace, svc.Name
	for i, l := range ls {
		var sp corev1.ServicePort
		for _, p := range svc.Spec.Ports {
			if p.Port == ports[i] {
				sp = p
			}
		}
		wg.Go(func() {
			relayDial(ctx, l, 0, func(ctx context.Context) (net.Conn, error) {
				sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name})
				list, err := lb.slices.EndpointSlices(ns).List(sel)
				if err != nil {
					return nil, err
				}
				eps := endpointsFor(lb.net, list, sp)
				if len(eps) == 0 {
					return nil, fmt.Errorf("service %s/%s port %d: no ready endpoint", ns, name, sp.Port)
				}
				ctx, cancelDial := context.WithTimeout(ctx, 5*time.Second)
				defer cancelDial()
				return dial.DialContext(ctx, "tcp", eps[rand.IntN(len(eps))].String())
			})
		})
	}
	lb.log.Info("load balancer", "service", ns+"/"+name, "address", addr, "ports", ports)
	return &lbService{addr: addr, ports: ports, stop: func() {
		cancel()
		wg.Wait()
		lb.log.Info("load balancer stopped", "service", ns+"/"+name, "address", addr)
	}}
}
