package devcluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// proxy plays kube-proxy in iptables mode for the router namespace: every
// ClusterIP:port DNATs to one ready endpoint chosen at random per new
// connection (statistic --mode random), the way a plain Service balances.
// It is level-triggered: any change to a Service or EndpointSlice makes it
// recompute the whole nat table from the informer caches and apply it in
// one iptables-restore.
type proxy struct {
	net     *network
	log     *slog.Logger
	applied string
	synced  chan struct{} // closed after the first successful apply

	// mu guards programmed, the rules in the router now, for callers
	// waiting for a Service's endpoints to be reachable by its ClusterIP.
	mu         sync.Mutex
	programmed string
}

// endpointsProgrammed counts the endpoints the rules in the router DNAT
// ip:port (TCP) to: the endpointslice controller writes a Service's ready
// endpoints before this proxy applies them, and until then a connection to
// the ClusterIP is unreachable.
func (p *proxy) endpointsProgrammed(ip netip.Addr, port int32) int {
	p.mu.Lock()
	rules := p.programmed
	p.mu.Unlock()
	jump := fmt.Sprintf("-A BLST-SERVICES -d %s/32 -p tcp -m tcp --dport %d -j ", ip, port)
	var chain string
	for line := range strings.Lines(rules) {
		if rest, ok := strings.CutPrefix(line, jump); ok {
			chain = strings.TrimSpace(rest)
		}
	}
	if chain == "" {
		return 0
	}
	n := 0
	for line := range strings.Lines(rules) {
		if strings.HasPrefix(line, "-A "+chain+" ") {
			n++
		}
	}
	return n
}

const (
	markMasq = "0x4000/0x4000"
)

func (p *proxy) run(ctx context.Context, client kubernetes.Interface) error {
	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	svcs := factory.Core().V1().Services()
	slicesInf := factory.Discovery().V1().EndpointSlices()
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}
	if _, err := svcs.Informer().AddEventHandler(h); err != nil {
		return err
	}
	if _, err := slicesInf.Informer().AddEventHandler(h); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), svcs.Informer().HasSynced, slicesInf.Informer().HasSynced) {
		return ctx.Err()
	}
	poke()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-retry.C:
		}
		services, err := svcs.Lister().List(labels.Everything())
		if err != nil {
			return err
		}
		eps, err := slicesInf.Lister().List(labels.Everything())
		if err != nil {
			return err
		}
		rules := natRules(p.net, services, eps)
		if rules == p.applied {
			continue
		}
		if err := runInput(ctx, rules, "ip", "netns", "exec", p.net.routerNetns(), "iptables-restore", "-w", "5"); err != nil {
			p.log.Warn("applying ClusterIP rules; retrying", "err", err)
			retry.Reset(time.Second)
			continue
		}
		p.applied = rules
		p.mu.Lock()
		p.programmed = rules
		p.mu.Unlock()
		p.log.Debug("ClusterIP rules applied", "services", len(services), "slices", len(eps))
		select {
		case <-p.synced:
		default:
			close(p.synced)
		}
	}
}

// natRules is the whole nat table for the router: a pure function of the
// Services and EndpointSlices, so it is tested without a kernel. Only pod
// addresses are DNAT targets; anything else in a slice is ignored.
func natRules(n *network, services []*corev1.Service, eps []*discoveryv1.EndpointSlice) string {
	bySvc := map[string][]*discoveryv1.EndpointSlice{}
	for _, s := range eps {
		name := s.Labels[discoveryv1.LabelServiceName]
		if name == "" || s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		bySvc[s.Namespace+"/"+name] = append(bySvc[s.Namespace+"/"+name], s)
	}
	services = slices.Clone(services)
	slices.SortFunc(services, func(a, b *corev1.Service) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	var chains, rules strings.Builder
	rules.WriteString("-A PREROUTING -j BLST-SERVICES\n")
	rules.WriteString("-A OUTPUT -j BLST-SERVICES\n")
	rules.WriteString(fmt.Sprintf("-A POSTROUTING -m mark --mark %s -j SNAT --to-source %s\n", markMasq, n.gateway))
	chains.WriteString(":BLST-SERVICES - [0:0]\n")
	for _, svc := range services {
		ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
		if err != nil || !n.svcCIDR.Contains(ip) {
			continue
		}
		for _, port := range svc.Spec.Ports {
			proto := strings.ToLower(string(port.Protocol))
			if proto == "" {
				proto = "tcp"
			}
			if proto != "tcp" && proto != "udp" {
				continue
			}
			targets := endpointsFor(n, bySvc[svc.Namespace+"/"+svc.Name], port)
			if len(targets) == 0 {
				continue // unroutable in the router: the client gets ICMP unreachable
			}
			svcChain := chainName("BLST-SVC-", svc.Namespace, svc.Name, port.Name, proto)
			chains.WriteString(":" + svcChain + " - [0:0]\n")
			fmt.Fprintf(&rules, "-A BLST-SERVICES -d %s/32 -p %s -m %s --dport %d -j %s\n", ip, proto, proto, port.Port, svcChain)
			for i, t := range targets {
				sep := chainName("BLST-SEP-", svc.Namespace, svc.Name, port.Name, proto, t.String())
				chains.WriteString(":" + sep + " - [0:0]\n")
				if left := len(targets) - i; left > 1 {
					fmt.Fprintf(&rules, "-A %s -m statistic --mode random --probability %.10f -j %s\n", svcChain, 1/float64(left), sep)
				} else {
					fmt.Fprintf(&rules, "-A %s -j %s\n", svcChain, sep)
				}
				// A pod reaching itself through its Service needs the reply
				// to come back through the router: masquerade that case.
				fmt.Fprintf(&rules, "-A %s -s %s/32 -j MARK --set-xmark %s\n", sep, t.Addr(), markMasq)
				fmt.Fprintf(&rules, "-A %s -p %s -m %s -j DNAT --to-destination %s\n", sep, proto, proto, t)
			}
		}
	}
	return "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n" +
		chains.String() + rules.String() + "COMMIT\n"
}

// endpointsFor lists the addresses a Service port sends to: ready
// endpoints, or if there are none, serving terminating ones (as kube-proxy
// does), sorted and without duplicates.
func endpointsFor(n *network, eps []*discoveryv1.EndpointSlice, port corev1.ServicePort) []netip.AddrPort {
	var ready, terminating []netip.AddrPort
	for _, s := range eps {
		var num int32 = -1
		for _, p := range s.Ports {
			if p.Port != nil && (p.Name == nil && port.Name == "" || p.Name != nil && *p.Name == port.Name) {
				num = *p.Port
			}
		}
		if num < 0 {
			continue
		}
		for _, e := range s.Endpoints {
			isReady := e.Conditions.Ready == nil || *e.Conditions.Ready
			serving := e.Conditions.Serving != nil && *e.Conditions.Serving
			term := e.Conditions.Terminating != nil && *e.Conditions.Terminating
			for _, a := range e.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil || !n.podCIDR.Contains(ip) {
					continue
				}
				ap := netip.AddrPortFrom(ip, uint16(num))
				switch {
				case isReady && !term:
					ready = append(ready, ap)
				case serving && term:
					terminating = append(terminating, ap)
				}
			}
		}
	}
	out := ready
	if len(out) == 0 {
		out = terminating
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return slices.Compact(out)
}

func chainName(prefix string, parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "/")))
	return prefix + strings.ToUpper(hex.EncodeToString(h[:])[:16])
}
