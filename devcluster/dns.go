package devcluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/internal/toolcache"
)

var metav1GetOptions = metav1.GetOptions{}

// clusterDomain is the DNS suffix of Services.
const clusterDomain = "cluster.local"

// dnsServer is cluster DNS: CoreDNS with its kubernetes plugin, run from
// the binary tools/build-coredns.sh builds, listening on host loopback
// only, plus a relay inside the router namespace on the gateway address,
// port 53, so pods reach it while the router stays unconnected to the host.
type dnsServer struct {
	net  *network
	log  *slog.Logger
	addr netip.Addr // what pods' resolv.conf names
	proc *process
	wg   sync.WaitGroup
}

func (d *dnsServer) start(ctx context.Context, kubeconfig, dir string) error {
	d.addr = d.net.gateway
	bin, err := corednsBinary()
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	corefile := filepath.Join(dir, "Corefile")
	conf := fmt.Sprintf(`%s:%d {
    bind 127.0.0.1
    errors
    kubernetes %s in-addr.arpa {
        kubeconfig %s
        pods insecure
        ttl 5
    }
}
`, clusterDomain, port, clusterDomain, kubeconfig)
	if err := os.WriteFile(corefile, []byte(conf), 0o644); err != nil {
		return err
	}
	d.proc, err = startProcess("coredns", filepath.Join(dir, "coredns.log"), os.Environ(), bin, "-conf", corefile)
	if err != nil {
		return err
	}
	upstream := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	// Wait until CoreDNS answers over TCP (it binds UDP and TCP together).
	if err := Poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		if d.proc.exited() {
			return false, fmt.Errorf("coredns exited (%v); see %s", d.proc.err, d.proc.log)
		}
		conn, err := net.DialTimeout("tcp", upstream, time.Second)
		if err != nil {
			return false, nil
		}
		conn.Close()
		return true, nil
	}); err != nil {
		return fmt.Errorf("coredns: %w", err)
	}
	listen := net.JoinHostPort(d.addr.String(), "53")
	pc, err := listenPacketInNetns(d.net.routerNetns(), "udp", listen)
	if err != nil {
		return fmt.Errorf("dns relay: %w", err)
	}
	l, err := listenInNetns(d.net.routerNetns(), "tcp", listen)
	if err != nil {
		pc.Close()
		return fmt.Errorf("dns relay: %w", err)
	}
	d.wg.Add(3)
	go func() { defer d.wg.Done(); <-ctx.Done(); pc.Close(); l.Close() }()
	go func() { defer d.wg.Done(); d.relayUDP(pc, upstream) }()
	go func() { defer d.wg.Done(); relayTCP(ctx, l, upstream, 30*time.Second) }()
	return nil
}

// wait returns when the relays have stopped (their context ended), then
// stops CoreDNS.
func (d *dnsServer) wait() {
	d.wg.Wait()
	if d.proc != nil {
		d.proc.stop(5 * time.Second)
	}
}

// relayUDP forwards each query to CoreDNS from its own socket and sends
// the one answer back; a query gets at most 5s.
func (d *dnsServer) relayUDP(pc net.PacketConn, upstream string) {
	var wg sync.WaitGroup
	defer wg.Wait()
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		query := append([]byte(nil), buf[:n]...)
		wg.Add(1)
		go func() {
			defer wg.Done()
			up, err := net.Dial("udp", upstream)
			if err != nil {
				return
			}
			defer up.Close()
			up.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := up.Write(query); err != nil {
				return
			}
			ans := make([]byte, 65535)
			m, err := up.Read(ans)
			if err != nil {
				d.log.Debug("dns relay", "err", err)
				return
			}
			pc.WriteTo(ans[:m], from)
		}()
	}
}

// corednsBinary is $BALLAST_COREDNS, else what tools/build-coredns.sh
// prints (building on first use).
func corednsBinary() (string, error) { return toolcache.Path("BALLAST_COREDNS", "build-coredns.sh") }

// podFiles are the files `ip netns exec` bind-mounts over /etc for a pod:
// resolv.conf from its dnsPolicy and dnsConfig (ClusterFirst: the cluster
// DNS with the kubelet's search path; Default: none, so the host's shows
// through; None: dnsConfig alone), and hostname.
func podFiles(pod *corev1.Pod, dns netip.Addr) map[string]string {
	files := map[string]string{"hostname": podHostname(pod) + "\n"}
	var servers, search, options []string
	switch pod.Spec.DNSPolicy {
	case corev1.DNSDefault:
		if pod.Spec.DNSConfig == nil {
			return files
		}
	case corev1.DNSNone:
	default:
		servers = []string{dns.String()}
		search = []string{pod.Namespace + ".svc." + clusterDomain, "svc." + clusterDomain, clusterDomain}
		options = []string{"ndots:5"}
	}
	if dc := pod.Spec.DNSConfig; dc != nil {
		servers = append(servers, dc.Nameservers...)
		search = append(search, dc.Searches...)
		for _, o := range dc.Options {
			opt := o.Name
			if o.Value != nil {
				opt += ":" + *o.Value
			}
			options = append(options, opt)
		}
	}
	var b strings.Builder
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	if len(options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(options, " "))
	}
	files["resolv.conf"] = b.String()
	return files
}

// podHostname is the pod's hostname as the kubelet sets it: spec.hostname,
// else the pod's name, cut to 63 characters.
func podHostname(pod *corev1.Pod) string {
	host := pod.Name
	if pod.Spec.Hostname != "" {
		host = pod.Spec.Hostname
	}
	if len(host) > 63 {
		host = host[:63]
	}
	return strings.TrimRight(host, "-.")
}

// podHosts is the pod's /etc/hosts as the kubelet writes it: localhost,
// the pod's own name (fully qualified when it has a subdomain), and
// hostAliases.
func podHosts(pod *corev1.Pod, ip netip.Addr) string {
	var b strings.Builder
	b.WriteString("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	b.WriteString("fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n")
	host := podHostname(pod)
	if pod.Spec.Subdomain != "" {
		fmt.Fprintf(&b, "%s\t%s.%s.%s.svc.%s\t%s\n", ip, host, pod.Spec.Subdomain, pod.Namespace, clusterDomain, host)
	} else {
		fmt.Fprintf(&b, "%s\t%s\n", ip, host)
	}
	if len(pod.Spec.HostAliases) > 0 {
		b.WriteString("\n# Entries added by HostAliases.\n")
		for _, a := range pod.Spec.HostAliases {
			fmt.Fprintf(&b, "%s\t%s\n", a.IP, strings.Join(a.Hostnames, "\t"))
		}
	}
	return b.String()
}
