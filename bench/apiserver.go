package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/ballast-dev/ballast/internal/testapi"
)

func init() {
	// envtest logs through controller-runtime; the benchmark reports errors itself.
	ctrllog.SetLogger(logr.Discard())
}

// apiServer is a real kube-apiserver and etcd (the binaries tools/build.sh
// builds) that the control planes under comparison both watch. Its Service
// range is a /16, not envtest's /24, so thousands of ClusterIP Services
// fit: headless Services would not do, since istiod gives those no EDS
// cluster for proxyless clients.
type apiServer struct {
	env        *envtest.Environment
	etcdDir    string // removed by stop
	client     kubernetes.Interface
	kubeconfig string // file path, for the control planes' --kubeconfig
}

// scaleNamespace holds the Services of the scale scenario.
const scaleNamespace = "scale"

// startAPIServer starts the API server and writes its kubeconfig into dir.
func startAPIServer(dir string) (*apiServer, error) {
	assets, err := testapi.Assets()
	if err != nil {
		return nil, fmt.Errorf("kube-apiserver and etcd (tools/build.sh): %w", err)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		ControlPlaneStartTimeout: 3 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	env.ControlPlane.GetAPIServer().Configure().Set("service-cluster-ip-range", "10.96.0.0/16")
	// etcd's data on tmpfs where there is one: every write waits for two
	// fsyncs, and on this kind of machine's shared disk those alone take
	// milliseconds and spike to tens, which is the disk's latency, not the
	// API server's or a control plane's. A production etcd has a fast disk
	// of its own.
	var etcdDir string
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if etcdDir, err = os.MkdirTemp("/dev/shm", "ballast-bench-etcd-"); err == nil {
			env.ControlPlane.Etcd = &envtest.Etcd{DataDir: etcdDir}
		}
	}
	cfg, err := env.Start()
	if err != nil {
		if etcdDir != "" {
			os.RemoveAll(etcdDir)
		}
		return nil, fmt.Errorf("start kube-apiserver and etcd from %s: %w", assets, err)
	}
	// The benchmark writes thousands of objects, then a steady churn: the
	// client-side limiter (5 per second by default) would be the bottleneck.
	cfg.QPS, cfg.Burst = 2000, 4000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		(&apiServer{env: env, etcdDir: etcdDir}).stop()
		return nil, err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig, 0o600); err != nil {
		(&apiServer{env: env, etcdDir: etcdDir}).stop()
		return nil, err
	}
	return &apiServer{env: env, etcdDir: etcdDir, client: client, kubeconfig: kubeconfig}, nil
}

func (a *apiServer) stop() error {
	err := a.env.Stop()
	if a.etcdDir != "" {
		os.RemoveAll(a.etcdDir)
	}
	return err
}

// ensureNamespace creates a namespace unless it exists.
func (a *apiServer) ensureNamespace(ctx context.Context, name string) error {
	_, err := a.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

// The scale scenario's Services: scale-<i> in namespace scale, one port
// (8080, named grpc) and one EndpointSlice of endpointsPerService ready
// endpoints. The addresses come from 198.18.0.0/15, the range RFC 2544
// sets aside for benchmarks: nothing ever dials them (the simulated
// clients only read them). Endpoint j < last of Service i is
// 198.18.0.0 + i*endpoints + j; the last endpoint is the marker, 198.19.x.y
// with x.y the number of the change that put it there (0 at the start), so
// a client that receives the slice knows which change it is seeing.
const (
	scalePort     = 8080
	scalePortName = "grpc"
)

func scaleServiceName(i int) string { return fmt.Sprintf("scale-%d", i) }

// scaleAddr is the address of Service i's endpoint j (j < endpoints-1).
func scaleAddr(i, j, endpoints int) netip.Addr {
	n := uint32(i*endpoints + j)
	return netip.AddrFrom4([4]byte{198, 18, byte(n >> 8), byte(n)})
}

// markerAddr is the address that says change seq is in effect.
func markerAddr(seq int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 19, byte(seq >> 8), byte(seq)})
}

// markerOf returns the change number an address marks, if it is a marker.
func markerOf(a netip.Addr) (int, bool) {
	if !a.Is4() {
		return 0, false
	}
	b := a.As4()
	if b[0] != 198 || b[1] != 19 {
		return 0, false
	}
	return int(b[2])<<8 | int(b[3]), true
}

// maxScaleChanges is how many changes the marker range can number (0 is
// the initial state).
const maxScaleChanges = 1<<16 - 1

func ptr[T any](v T) *T { return &v }

// scaleEndpoints are Service i's endpoints with the marker of change seq.
// No targetRef: istiod holds back an endpoint whose Pod it cannot find, and
// these endpoints have no Pods.
func scaleEndpoints(i, endpoints, seq int) []discoveryv1.Endpoint {
	out := make([]discoveryv1.Endpoint, 0, endpoints)
	for j := range endpoints - 1 {
		out = append(out, readyEndpoint(scaleAddr(i, j, endpoints)))
	}
	return append(out, readyEndpoint(markerAddr(seq)))
}

func readyEndpoint(a netip.Addr) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{a.String()},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr(true), Serving: ptr(true), Terminating: ptr(false)},
	}
}

// grpcService is a ClusterIP Service with one port named grpc.
func grpcService(namespace, name string, port int32) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: scalePortName, Port: port, TargetPort: intstr.FromString(scalePortName), Protocol: corev1.ProtocolTCP,
		}}},
	}
}

// endpointSlice is one slice of a Service whose endpoints listen on port.
func endpointSlice(namespace, name, service string, port int32, endpoints []discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace, Name: name,
			Labels: map[string]string{discoveryv1.LabelServiceName: service},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   endpoints,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr(scalePortName), Port: ptr(port), Protocol: ptr(corev1.ProtocolTCP)}},
	}
}

// loadServices makes sure Services 0..services-1 exist in the scale
// namespace, each with its slice at marker 0, writing with a few workers.
// Services already there (from a smaller size earlier in the run) are
// reset to marker 0.
func (a *apiServer) loadServices(ctx context.Context, services, endpoints int) error {
	if err := a.ensureNamespace(ctx, scaleNamespace); err != nil {
		return err
	}
	work := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range work {
				if err := a.putService(ctx, i, endpoints); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	for i := range services {
		select {
		case work <- i:
		case err := <-errs:
			close(work)
			wg.Wait()
			return err
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func (a *apiServer) putService(ctx context.Context, i, endpoints int) error {
	name := scaleServiceName(i)
	if _, err := a.client.CoreV1().Services(scaleNamespace).Create(ctx, grpcService(scaleNamespace, name, scalePort), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service %s/%s: %w", scaleNamespace, name, err)
	}
	slice := endpointSlice(scaleNamespace, name, name, scalePort, scaleEndpoints(i, endpoints, 0))
	_, err := a.client.DiscoveryV1().EndpointSlices(scaleNamespace).Create(ctx, slice, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		err = a.setEndpoints(ctx, scaleNamespace, name, slice.Endpoints)
	}
	if err != nil {
		return fmt.Errorf("create endpointslice %s/%s: %w", scaleNamespace, name, err)
	}
	return nil
}

// setEndpoints replaces a slice's endpoints with one merge patch (a list in
// a merge patch replaces the whole list), so no read is needed first.
func (a *apiServer) setEndpoints(ctx context.Context, namespace, name string, endpoints []discoveryv1.Endpoint) error {
	patch, err := json.Marshal(map[string]any{"endpoints": endpoints})
	if err != nil {
		return err
	}
	if _, err := a.client.DiscoveryV1().EndpointSlices(namespace).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("patch endpointslice %s/%s: %w", namespace, name, err)
	}
	return nil
}

// watchMarkers watches the scale namespace's EndpointSlices and calls got
// with the marker of every update to one of Services 0..services-1, as it
// arrives, until stop is called.
func (a *apiServer) watchMarkers(ctx context.Context, services int, got func(svc, seq int, at time.Time)) (stop func(), err error) {
	slices := a.client.DiscoveryV1().EndpointSlices(scaleNamespace)
	list, err := slices.List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return nil, fmt.Errorf("list endpointslices in %s: %w", scaleNamespace, err)
	}
	w, err := slices.Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		return nil, fmt.Errorf("watch endpointslices in %s: %w", scaleNamespace, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for ev := range w.ResultChan() {
			at := time.Now()
			es, ok := ev.Object.(*discoveryv1.EndpointSlice)
			if !ok {
				continue
			}
			var svc int
			if _, err := fmt.Sscanf(es.Name, "scale-%d", &svc); err != nil || svc >= services {
				continue
			}
			for _, e := range es.Endpoints {
				for _, raw := range e.Addresses {
					if a, err := netip.ParseAddr(raw); err == nil {
						if seq, ok := markerOf(a); ok {
							got(svc, seq, at)
						}
					}
				}
			}
		}
	})
	return func() { w.Stop(); wg.Wait() }, nil
}
