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
// resolv.conf with the kubelet's search path, and hostname.
func podFiles(pod *corev1.Pod, dns netip.Addr) map[string]string {
	search := []string{pod.Namespace + ".svc." + clusterDomain, "svc." + clusterDomain, clusterDomain}
	return map[string]string{
		"resolv.conf": fmt.Sprintf("nameserver %s\nsearch %s\noptions ndots:5\n", dns, strings.Join(search, " ")),
		"hostname":    pod.Name + "\n",
	}
}
