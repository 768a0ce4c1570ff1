package inject

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ballast-dev/ballast/probe"
)

func TestRewriteProbes(t *testing.T) {
	svc := "helloworld.Greeter"
	timing := func(p *corev1.Probe) *corev1.Probe {
		p.InitialDelaySeconds, p.PeriodSeconds, p.TimeoutSeconds = 3, 2, 4
		p.SuccessThreshold, p.FailureThreshold = 1, 5
		return p
	}
	handler := func(h corev1.ProbeHandler) *corev1.Probe { return timing(&corev1.Probe{ProbeHandler: h}) }
	tcp := func(port intstr.IntOrString) *corev1.Probe {
		return handler(corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: port}})
	}
	admin := func(kind string) *corev1.Probe {
		return handler(corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: probe.Path("app", kind), Port: intstr.FromInt32(15021), Scheme: corev1.URISchemeHTTP}})
	}
	exec := handler(corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}})
	ports := []corev1.ContainerPort{{Name: "grpc", ContainerPort: 50051}, {Name: "http", ContainerPort: 8080}}

	tests := []struct {
		name        string
		annotations map[string]string
		ready       *corev1.Probe // the app container's readiness probe
		live, start *corev1.Probe
		want        probe.Set // nil: no probe changed
	}{
		{name: "tcpSocket, numeric port", ready: tcp(intstr.FromInt32(50051)),
			want: probe.Set{"/app-health/app/readyz": {TCPSocket: &probe.TCPSocket{Port: 50051}, TimeoutSeconds: 4}}},
		{name: "tcpSocket, named port resolved", ready: tcp(intstr.FromString("grpc")),
			want: probe.Set{"/app-health/app/readyz": {TCPSocket: &probe.TCPSocket{Port: 50051}, TimeoutSeconds: 4}}},
		{name: "httpGet, named port, scheme, headers", live: handler(corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: "/healthz", Port: intstr.FromString("http"), Scheme: corev1.URISchemeHTTPS,
			HTTPHeaders: []corev1.HTTPHeader{{Name: "Host", Value: "app.example"}}}}),
			want: probe.Set{"/app-health/app/livez": {HTTPGet: &probe.HTTPGet{Scheme: "HTTPS", Path: "/healthz", Port: 8080,
				HTTPHeaders: []probe.Header{{Name: "Host", Value: "app.example"}}}, TimeoutSeconds: 4}}},
		{name: "grpc with service", start: handler(corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 50051, Service: &svc}}),
			want: probe.Set{"/app-health/app/startupz": {GRPC: &probe.GRPC{Port: 50051, Service: svc}, TimeoutSeconds: 4}}},
		{name: "all three kinds", ready: tcp(intstr.FromInt32(8080)), live: tcp(intstr.FromInt32(8080)),
			start: handler(corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 50051}}),
			want: probe.Set{
				"/app-health/app/readyz":   {TCPSocket: &probe.TCPSocket{Port: 8080}, TimeoutSeconds: 4},
				"/app-health/app/livez":    {TCPSocket: &probe.TCPSocket{Port: 8080}, TimeoutSeconds: 4},
				"/app-health/app/startupz": {GRPC: &probe.GRPC{Port: 50051}, TimeoutSeconds: 4},
			}},
		{name: "exec untouched", ready: exec, live: exec},
		{name: "opted out", annotations: map[string]string{RewriteProbesAnnotation: "false"}, ready: tcp(intstr.FromInt32(50051))},
		{name: "port excluded from capture", annotations: map[string]string{ExcludeInboundPortsAnnotation: "50051"},
			ready: tcp(intstr.FromInt32(50051))},
		{name: "port not captured", annotations: map[string]string{InboundPortsAnnotation: "8080"},
			ready: tcp(intstr.FromInt32(50051))},
		{name: "all ports captured", annotations: map[string]string{InboundPortsAnnotation: "*"}, ready: tcp(intstr.FromInt32(9000)),
			want: probe.Set{"/app-health/app/readyz": {TCPSocket: &probe.TCPSocket{Port: 9000}, TimeoutSeconds: 4}}},
		{name: "undeclared named port", ready: tcp(intstr.FromString("metrics"))},
		{name: "probe of another host", ready: handler(corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(50051), Host: "10.0.0.1"}})},
		{name: "already rewritten", ready: admin(probe.Readiness), live: admin(probe.Liveness)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := testPod(tc.annotations, func(p *corev1.Pod) {
				app := &p.Spec.Containers[0]
				app.Ports, app.ReadinessProbe, app.LivenessProbe, app.StartupProbe = ports, tc.ready, tc.live, tc.start
			})
			before := pod.DeepCopy()
			in, err := Inbound(pod, Config{})
			if err != nil {
				t.Fatal(err)
			}
			got := RewriteProbes(pod, Config{}, in)
			if !equality.Semantic.DeepEqual(got, tc.want) && !(len(got) == 0 && tc.want == nil) {
				t.Fatalf("originals for the sidecar:\n got %s\nwant %s", got, tc.want)
			}
			app, was := pod.Spec.Containers[0], before.Spec.Containers[0]
			for _, p := range []struct {
				kind     string
				got, was *corev1.Probe
			}{{probe.Readiness, app.ReadinessProbe, was.ReadinessProbe}, {probe.Liveness, app.LivenessProbe, was.LivenessProbe}, {probe.Startup, app.StartupProbe, was.StartupProbe}} {
				path := probe.Path("app", p.kind)
				if _, rewritten := tc.want[path]; !rewritten {
					if !equality.Semantic.DeepEqual(p.got, p.was) {
						t.Errorf("%s probe changed to %+v, want it untouched", p.kind, p.got)
					}
					continue
				}
				g := p.got.HTTPGet
				if g == nil || g.Path != path || g.Port != intstr.FromInt32(15021) || p.got.TCPSocket != nil || p.got.GRPC != nil {
					t.Errorf("%s probe %+v, want an httpGet of :15021%s", p.kind, p.got.ProbeHandler, path)
				}
				if p.got.InitialDelaySeconds != 3 || p.got.PeriodSeconds != 2 || p.got.TimeoutSeconds != 4 ||
					p.got.SuccessThreshold != 1 || p.got.FailureThreshold != 5 {
					t.Errorf("%s probe timing %+v, want the original's", p.kind, p.got)
				}
			}
			for path, spec := range got {
				if err := spec.Validate(); err != nil {
					t.Errorf("%s: %v", path, err)
				}
			}
			// A second pass finds nothing left to rewrite.
			again := pod.DeepCopy()
			if second := RewriteProbes(again, Config{}, in); len(second) != 0 || !equality.Semantic.DeepEqual(again, pod) {
				t.Errorf("second pass rewrote %s", second)
			}
		})
	}
}

// Inject hands the originals to the sidecar in its environment, and a pod
// already injected is not injected (nor its probes rewritten) again.
func TestInjectAppProbes(t *testing.T) {
	pod := testPod(nil, func(p *corev1.Pod) {
		app := &p.Spec.Containers[0]
		app.Ports = []corev1.ContainerPort{{Name: "grpc", ContainerPort: 50051}}
		app.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 50051}}}
	})
	Inject(pod, Config{Image: "ballast"})
	proxyC := pod.Spec.InitContainers[1]
	var env string
	for _, e := range proxyC.Env {
		if e.Name == probe.EnvVar {
			env = e.Value
		}
	}
	set, err := probe.Parse(env)
	if err != nil {
		t.Fatal(err)
	}
	want := probe.Set{"/app-health/app/readyz": {GRPC: &probe.GRPC{Port: 50051}}}
	if set.String() != want.String() {
		t.Fatalf("%s=%s, want %s", probe.EnvVar, env, want)
	}
	if ok, _ := Decide(pod); ok {
		t.Fatal("Decide would inject an injected pod again")
	}

	plain := testPod(nil)
	Inject(plain, Config{Image: "ballast"})
	for _, e := range plain.Spec.InitContainers[1].Env {
		if e.Name == probe.EnvVar {
			t.Fatalf("a pod without probes got %s=%s", e.Name, e.Value)
		}
	}
}
