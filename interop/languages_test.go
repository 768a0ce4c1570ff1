package interop

import (
	"bufio"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/discovery/files"
	"github.com/ballast-dev/ballast/greeter/greetertest"
	"github.com/ballast-dev/ballast/xds"
	"github.com/ballast-dev/ballast/xds/node"
)

// services are the matrix's Services, by the policy their lb-policy
// annotation asks for ("" for none: round_robin).
var services = []struct{ name, policy string }{
	{"greeter", ""},
	{"lr", "least_request"},
	{"ewma", "peak_ewma"},
}

// canaryService has no pods of its own: a GRPCRoute attached to it sends
// 90% of its calls to greeter and 10% to lr.
const canaryService = "canary"

// canaryRoute is that route, as a user writes it.
const canaryRoute = `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: canary, namespace: default}
spec:
  parentRefs:
  - {group: "", kind: Service, name: canary, port: 50051}
  rules:
  - backendRefs:
    - {name: greeter, port: 50051, weight: 90}
    - {name: lr, port: 50051, weight: 10}
`

// zonedService has trafficDistribution PreferSameZone and two pods in each
// of zones a and b (zonedPods); the zone row's clients are in zone a.
const zonedService = "zoned"

var zonedPods = []struct{ name, zone string }{
	{"zone-a-0", "zone-a"}, {"zone-a-1", "zone-a"}, {"zone-b-0", "zone-b"}, {"zone-b-1", "zone-b"},
}

// target is what a client dials for service: its xds:/// name, or the
// sidecar's listener for it.
func (m *mesh) target(service string) string {
	if a, ok := m.proxied[service]; ok {
		return a
	}
	return "xds:///" + service + ".default:50051"
}

// mesh is one language's world: greeter pods on loopback addresses of
// their own, the YAML folder that lists them, and `ballast control --files`
// serving it.
type mesh struct {
	t    *testing.T
	dir  string
	pods map[string]*greetertest.Pod // every pod started, listed or not
	// listed are the pods of each Service in the files now.
	listed map[string][]string
	addr   string // the control plane's xDS address, kept across restarts
	stop   func()
	// proxied are ballast-proxy's listeners by Service, when the clients
	// go through it.
	proxied map[string]string
}

func serviceNames() []string {
	var names []string
	for _, s := range services {
		names = append(names, s.name)
	}
	return names
}

func newMesh(t *testing.T) *mesh {
	m := &mesh{t: t, dir: t.TempDir(), pods: map[string]*greetertest.Pod{}, listed: map[string][]string{}}
	host := 10
	for _, s := range services {
		for i := range 3 {
			name := fmt.Sprintf("%s-%d", s.name, i)
			m.pods[name] = greetertest.Start(t, name, greetertest.Options{Host: fmt.Sprintf("127.0.0.%d", host)})
			host++
			m.listed[s.name] = append(m.listed[s.name], name)
		}
	}
	for _, p := range zonedPods {
		m.pods[p.name] = greetertest.Start(t, p.name, greetertest.Options{Host: fmt.Sprintf("127.0.0.%d", host)})
		host++
		m.listed[zonedService] = append(m.listed[zonedService], p.name)
	}
	m.write()
	m.startControl("127.0.0.1:0")
	t.Cleanup(func() { m.stop() })
	return m
}

// addPod starts a pod of service and lists it.
func (m *mesh) addPod(service, name string) {
	m.pods[name] = greetertest.Start(m.t, name, greetertest.Options{Host: fmt.Sprintf("127.0.0.%d", 10+len(m.pods))})
	m.listed[service] = append(m.listed[service], name)
	m.write()
}

// unlistPod takes name out of service's EndpointSlice; the pod keeps
// serving, so only the client's config can stop its calls.
func (m *mesh) unlistPod(service, name string) {
	m.listed[service] = slices.DeleteFunc(m.listed[service], func(p string) bool { return p == name })
	m.write()
}

// write renders the folder through a rename, as a ConfigMap update lands.
func (m *mesh) write() {
	m.t.Helper()
	var all []byte
	for _, s := range services {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: "default"},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 50051}}},
		}
		if s.policy != "" {
			svc.Annotations = map[string]string{"ballast.dev/lb-policy": s.policy}
		}
		var pods []files.Pod
		for _, name := range m.listed[s.name] {
			pods = append(pods, files.Pod{Name: name, Addr: m.pods[name].Addr})
		}
		doc, err := files.Manifest(svc, "grpc", pods)
		if err != nil {
			m.t.Fatal(err)
		}
		all = append(all, doc...)
	}
	canary, err := files.Manifest(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: canaryService, Namespace: "default"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 50051}}},
	}, "grpc", nil)
	if err != nil {
		m.t.Fatal(err)
	}
	all = append(append(all, canary...), "---\n"+canaryRoute...)
	prefer := "PreferSameZone"
	var zoned []files.Pod
	for _, p := range zonedPods {
		if slices.Contains(m.listed[zonedService], p.name) {
			zoned = append(zoned, files.Pod{Name: p.name, Addr: m.pods[p.name].Addr, Zone: p.zone})
		}
	}
	doc, err := files.Manifest(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: zonedService, Namespace: "default"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "grpc", Port: 50051}}, TrafficDistribution: &prefer},
	}, "grpc", zoned)
	if err != nil {
		m.t.Fatal(err)
	}
	all = append(all, doc...)
	tmp := filepath.Join(m.dir, ".services.yaml.tmp")
	if err := os.WriteFile(tmp, all, 0o644); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(m.dir, "services.yaml")); err != nil {
		m.t.Fatal(err)
	}
}

// startControl runs `ballast-control --files` on addr until stop.
func (m *mesh) startControl(addr string) {
	m.t.Helper()
	cmd := exec.Command(controlBinary, "--files", m.dir, "--xds-address", addr, "--http-address", "127.0.0.1:0", "--log-level", "info")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		m.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	// The log line `msg=serving xds=ADDR` says it listens; the rest of its
	// log is kept for a failure's report.
	served := make(chan string, 1)
	log := &syncBuffer{}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			log.Write([]byte(line + "\n"))
			if sm := servingLine.FindStringSubmatch(line); sm != nil {
				served <- sm[1]
			}
		}
	}()
	stop := func() error {
		cmd.Process.Signal(syscall.SIGTERM)
		<-copied
		return cmd.Wait()
	}
	select {
	case a := <-served:
		m.addr = a
	case <-copied:
		m.t.Fatalf("ballast-control on %s exited: %v\n%s", addr, cmd.Wait(), log.String())
	case <-time.After(30 * time.Second):
		stop()
		m.t.Fatalf("ballast-control never served\n%s", log.String())
	}
	m.stop = func() {
		m.stop = func() {}
		if err := stop(); err != nil {
			m.t.Errorf("ballast-control: %v\n%s", err, log.String())
		}
	}
}

var servingLine = regexp.MustCompile(`msg=serving xds=(\S+)`)

// controlBinary and proxyBinary are ballast-control and ballast-proxy,
// built by TestMain.
var controlBinary, proxyBinary string

// startProxy runs ballast-proxy with an explicit listener per Service on
// 127.0.0.200, fed by the control plane, until the test ends. Ports are
// picked free first; a start that loses its port to another process is
// retried.
func (m *mesh) startProxy() {
	m.t.Helper()
	m.proxied = m.runProxy("client", "", append(serviceNames(), canaryService))
}

// runProxy runs ballast-proxy as pod in zone (none if empty) with an
// explicit listener per service until the test ends, and returns the
// listeners by service.
func (m *mesh) runProxy(pod, zone string, services []string) map[string]string {
	m.t.Helper()
	for try := 0; ; try++ {
		args := []string{"--xds-address", m.addr, "--node-id", node.ID(pod, "default"), "--admin-address", freeAddr(m.t), "--zone", zone}
		proxied := map[string]string{}
		for _, name := range services {
			proxied[name] = freeAddr(m.t)
			args = append(args, "--outbound", proxied[name]+"="+name+".default:50051")
		}
		cmd := exec.Command(proxyBinary, args...)
		log := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			m.t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		err := waitListening(slices.Collect(maps.Values(proxied)), exited)
		if err == nil {
			m.t.Cleanup(func() {
				cmd.Process.Signal(syscall.SIGTERM)
				if err := <-exited; err != nil {
					m.t.Errorf("ballast-proxy: %v\n%s", err, log.String())
				}
			})
			return proxied
		}
		cmd.Process.Kill()
		<-exited
		if try == 2 {
			m.t.Fatalf("ballast-proxy: %v\n%s", err, log.String())
		}
	}
}

// freeAddr is a port on 127.0.0.200 free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.200:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitListening polls addrs until each accepts a connection, the process
// exits, or 30 seconds pass.
func waitListening(addrs []string, exited <-chan error) error {
	deadline := time.Now().Add(30 * time.Second)
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case err := <-exited:
				return fmt.Errorf("exited before listening on %s: %v", a, err)
			case <-time.After(50 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("not listening on %s after 30s", a)
			}
		}
	}
	return nil
}

// bootstrap writes what `ballast bootstrap --pod client --namespace default`
// writes, with no zone: the case grpc-js once refused.
func (m *mesh) bootstrap() string {
	m.t.Helper()
	return m.bootstrapAs("client", "")
}

// bootstrapAs writes what `ballast bootstrap --pod POD --namespace default
// --zone ZONE` writes.
func (m *mesh) bootstrapAs(pod, zone string) string {
	m.t.Helper()
	data, err := xds.Bootstrap{Server: m.addr, Pod: pod, Namespace: "default", Zone: zone}.JSON()
	if err != nil {
		m.t.Fatal(err)
	}
	path := filepath.Join(m.t.TempDir(), "bootstrap.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		m.t.Fatal(err)
	}
	return path
}

// until makes batches of calls to target until done accepts one, failing
// on any failed call or at the deadline.
func until(t *testing.T, c client, tgt string, size int, what string, done func(batch) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b := c.calls(t, tgt, size)
		if b.Errors > 0 {
			t.Fatalf("%s: %d of %d calls failed, first: %s", what, b.Errors, b.total(), b.FirstError)
		}
		if done(b) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen in 30s; last batch %v", what, b.Pods)
		}
	}
}

// spread makes n calls once every listed pod of service answers, and
// returns their max/mean over those pods.
func spread(t *testing.T, c client, m *mesh, service string, n int) (batch, float64) {
	t.Helper()
	seen := map[string]bool{}
	until(t, c, m.target(service), 10, service+": every pod answering", func(b batch) bool {
		for p := range b.Pods {
			seen[p] = true
		}
		for _, p := range m.listed[service] {
			if !seen[p] {
				return false
			}
		}
		return true
	})
	b := c.calls(t, m.target(service), n)
	if b.Errors > 0 {
		t.Fatalf("%s: %d of %d calls failed, first: %s", service, b.Errors, n, b.FirstError)
	}
	for p := range b.Pods {
		if !slices.Contains(m.listed[service], p) {
			t.Fatalf("%s: calls reached %s, which is not listed: %v", service, p, b.Pods)
		}
	}
	most := 0
	for _, p := range m.listed[service] {
		most = max(most, b.Pods[p])
	}
	return b, float64(most) / (float64(n) / float64(len(m.listed[service])))
}

func TestLanguages(t *testing.T) {
	ran(t.Name())
	for _, lang := range languages {
		t.Run(lang.name, func(t *testing.T) {
			m := newMesh(t)
			bootstrap := m.bootstrap()
			if lang.sidecar {
				m.startProxy()
				bootstrap = ""
			}
			c, versions := lang.start(t, bootstrap)
			record(lang.name, versions)

			t.Run("balance", func(t *testing.T) {
				b, ratio := spread(t, c, m, "greeter", 300)
				t.Logf("300 calls: %v, max/mean %.2f", b.Pods, ratio)
				if ratio > 1.05 {
					t.Fatalf("max/mean %.2f > 1.05: %v", ratio, b.Pods)
				}
				pass(lang.name, "balance")
			})
			for _, s := range services[1:] {
				t.Run("policy "+s.policy, func(t *testing.T) {
					// The client runs the first policy of the Cluster's list it
					// has; each list ends in round_robin. least_request picks
					// between two random pods, so the bound is looser.
					b, ratio := spread(t, c, m, s.name, 300)
					t.Logf("300 calls: %v, max/mean %.2f", b.Pods, ratio)
					if lang.sidecar && s.policy == "peak_ewma" {
						// The sidecar runs peak_ewma itself, which sends calls
						// where latency is lowest: with equal pods it need not
						// spread them. spread has checked every call succeeded
						// on a listed pod.
						passAs(lang.name, "policy "+s.policy, "yes: runs peak_ewma (calls follow latency, spread not asserted)")
						return
					}
					if ratio > 1.5 {
						t.Fatalf("max/mean %.2f > 1.5: %v", ratio, b.Pods)
					}
					pass(lang.name, "policy "+s.policy)
				})
			}
			t.Run("canary 90/10", func(t *testing.T) {
				const n = 1000
				until(t, c, m.target(canaryService), 20, "calls to the canary backend", func(b batch) bool {
					return b.Pods["lr-0"]+b.Pods["lr-1"]+b.Pods["lr-2"] > 0
				})
				b := c.calls(t, m.target(canaryService), n)
				if b.Errors > 0 {
					t.Fatalf("%d of %d calls failed, first: %s", b.Errors, n, b.FirstError)
				}
				lr := 0
				for p, k := range b.Pods {
					if strings.HasPrefix(p, "lr-") {
						lr += k
					} else if !strings.HasPrefix(p, "greeter-") {
						t.Fatalf("a call reached %s, which neither backend holds: %v", p, b.Pods)
					}
				}
				share := 100 * float64(lr) / n
				t.Logf("%d calls: %.1f%% to the 10%% backend: %v", n, share, b.Pods)
				// 3 points is 3.2 standard deviations of 1,000 draws at 10%.
				if share < 7 || share > 13 {
					t.Fatalf("%.1f%% of calls to the 10%% backend, want 10 ± 3: %v", share, b.Pods)
				}
				pass(lang.name, "canary 90/10")
			})
			t.Run("zone", func(t *testing.T) {
				// A second client in zone-a: a bootstrap with its
				// locality, or a sidecar with --zone.
				var zc client
				target := "xds:///" + zonedService + ".default:50051"
				if lang.sidecar {
					zc = c
					target = m.runProxy("client-zone", "zone-a", []string{zonedService})[zonedService]
				} else {
					zc, _ = lang.start(t, m.bootstrapAs("client-zone", "zone-a"))
				}
				inZone := func(b batch) int { return b.Pods["zone-a-0"] + b.Pods["zone-a-1"] }
				until(t, zc, target, 20, "calls answered in zone-a", func(b batch) bool { return inZone(b) > 0 })
				const n = 300
				b := zc.calls(t, target, n)
				if b.Errors > 0 {
					t.Fatalf("%d of %d calls failed, first: %s", b.Errors, n, b.FirstError)
				}
				t.Logf("%d calls from zone-a: %v", n, b.Pods)
				if in := inZone(b); float64(in) < 0.99*n {
					t.Fatalf("%d of %d calls answered in zone-a, want ≥ 99%%: %v", in, n, b.Pods)
				}
				m.unlistPod(zonedService, "zone-a-0")
				m.unlistPod(zonedService, "zone-a-1")
				until(t, zc, target, 20, "calls failed over to zone-b", func(b batch) bool { return inZone(b) == 0 && len(b.Pods) == 2 })
				b = zc.calls(t, target, 90)
				if b.Errors > 0 || inZone(b) > 0 {
					t.Fatalf("zone-a's pods gone: %v, %d failed, first: %s", b.Pods, b.Errors, b.FirstError)
				}
				pass(lang.name, "zone")
			})
			t.Run("scale-up", func(t *testing.T) {
				m.addPod("greeter", "greeter-3")
				until(t, c, m.target("greeter"), 20, "calls on the added pod", func(b batch) bool { return b.Pods["greeter-3"] > 0 })
				pass(lang.name, "scale-up")
			})
			t.Run("removal", func(t *testing.T) {
				m.unlistPod("greeter", "greeter-1")
				until(t, c, m.target("greeter"), 30, "no calls on the removed pod", func(b batch) bool { return b.Pods["greeter-1"] == 0 })
				b, _ := spread(t, c, m, "greeter", 90)
				if b.Pods["greeter-1"] != 0 {
					t.Fatalf("removed pod still called: %v", b.Pods)
				}
				pass(lang.name, "removal")
			})
			t.Run("control-plane restart", func(t *testing.T) {
				m.stop()
				// Without a control plane the client keeps its last config.
				b := c.calls(t, m.target("greeter"), 60)
				if b.Errors > 0 || len(b.Pods) != len(m.listed["greeter"]) {
					t.Fatalf("with the control plane down: %v, %d failed, first: %s", b.Pods, b.Errors, b.FirstError)
				}
				m.addPod("greeter", "greeter-4")
				m.startControl(m.addr)
				until(t, c, m.target("greeter"), 20, "calls on the pod added while the control plane was down", func(b batch) bool { return b.Pods["greeter-4"] > 0 })
				pass(lang.name, "control-plane restart")
			})
		})
	}
}
