package inject

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	jsonpatchv5 "github.com/evanphx/json-patch/v5"
	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

func testPod(annotations map[string]string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: "demo", Annotations: annotations},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "app-init", Image: "busybox"}},
			Containers:     []corev1.Container{{Name: "app", Image: "greeter"}},
		},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func TestDecide(t *testing.T) {
	injected := testPod(nil)
	Inject(injected, Config{Image: "ballast"})
	tests := []struct {
		name string
		pod  *corev1.Pod
		want bool
	}{
		{"plain pod", testPod(nil), true},
		{"opt-out", testPod(map[string]string{OptOutAnnotation: "false"}), false},
		{"explicit opt-in", testPod(map[string]string{OptOutAnnotation: "true"}), true},
		{"unparsable annotation injects", testPod(map[string]string{OptOutAnnotation: "maybe"}), true},
		{"host network", testPod(nil, func(p *corev1.Pod) { p.Spec.HostNetwork = true }), false},
		{"already injected", injected, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got, why := Decide(tc.pod); got != tc.want {
				t.Fatalf("Decide = %v (%s), want %v", got, why, tc.want)
			}
		})
	}
}

func TestInject(t *testing.T) {
	pod := testPod(nil)
	Inject(pod, Config{Image: "ballast:dev", XDSAddress: "ballast-control.ballast-system:18000", InitArgs: []string{"--include-cidrs=10.96.0.0/12"}})
	names := func(cs []corev1.Container) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Name)
		}
		return out
	}
	if got, want := names(pod.Spec.InitContainers), []string{InitContainerName, ProxyContainerName, "app-init"}; !slices.Equal(got, want) {
		t.Fatalf("init containers %v, want %v", got, want)
	}
	if got := names(pod.Spec.Containers); !slices.Equal(got, []string{"app"}) {
		t.Fatalf("containers %v, want the app's unchanged", got)
	}
	initC, proxyC := pod.Spec.InitContainers[0], pod.Spec.InitContainers[1]
	if want := []string{"ballast-proxy", "init", "--proxy-port", "15001", "--proxy-uid", "1337", "--include-cidrs=10.96.0.0/12"}; !slices.Equal(append(initC.Command, initC.Args...), want) {
		t.Errorf("init command line %q, want %q", append(initC.Command, initC.Args...), want)
	}
	if got := proxyC.Command; !slices.Equal(got, []string{"ballast-proxy"}) {
		t.Errorf("proxy command %q, want the slim sidecar binary", got)
	}
	full := &corev1.Pod{}
	Inject(full, Config{Image: "ballast:dev", Command: "ballast"})
	if got := append(full.Spec.InitContainers[1].Command, full.Spec.InitContainers[1].Args[:2]...); !slices.Equal(got, []string{"ballast", "proxy", "--transparent-address"}) {
		t.Errorf("with the ballast binary the proxy runs as %q, want `ballast proxy ...`", got)
	}
	if !slices.Contains(initC.SecurityContext.Capabilities.Add, "NET_ADMIN") {
		t.Error("init container lacks NET_ADMIN")
	}
	if proxyC.RestartPolicy == nil || *proxyC.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Error("proxy is not a native sidecar (restartPolicy Always)")
	}
	if *proxyC.SecurityContext.RunAsUser != 1337 {
		t.Errorf("proxy runs as %d, want 1337 (the uid the redirect excludes)", *proxyC.SecurityContext.RunAsUser)
	}
	if !slices.Contains(proxyC.Args, "ballast-control.ballast-system:18000") {
		t.Errorf("proxy args %q lack the xDS address", proxyC.Args)
	}
	if !slices.Contains(proxyC.Args, XDSTokenDir+"/token") || len(proxyC.VolumeMounts) != 1 || proxyC.VolumeMounts[0].MountPath != XDSTokenDir {
		t.Errorf("proxy args %q and mounts %v: no token for the control plane", proxyC.Args, proxyC.VolumeMounts)
	}
	if v := pod.Spec.Volumes; len(v) != 1 || v[0].Projected == nil || v[0].Projected.Sources[0].ServiceAccountToken.Audience != "ballast-control" {
		t.Errorf("volumes %v: want one projected token for audience ballast-control", v)
	}
	if slices.Contains(proxyC.Args, "--xds-ca-file") || len(pod.Spec.Volumes[0].Projected.Sources) != 1 {
		t.Errorf("proxy args %q, volume %v: TLS to the control plane without a CA ConfigMap", proxyC.Args, pod.Spec.Volumes[0])
	}
	tlsPod := testPod(nil)
	Inject(tlsPod, Config{Image: "ballast:dev", XDSAddress: "ballast-control.ballast-system:15010", XDSCAConfigMap: "ballast-control-ca.crt"})
	tlsProxy := tlsPod.Spec.InitContainers[1]
	if i := slices.Index(tlsProxy.Args, "--xds-ca-file"); i < 0 || tlsProxy.Args[i+1] != XDSTokenDir+"/ca.crt" {
		t.Errorf("proxy args %q: want --xds-ca-file %s/ca.crt", tlsProxy.Args, XDSTokenDir)
	}
	if src := tlsPod.Spec.Volumes[0].Projected.Sources; len(src) != 2 || src[1].ConfigMap == nil ||
		src[1].ConfigMap.Name != "ballast-control-ca.crt" || src[1].ConfigMap.Items[0].Path != "ca.crt" {
		t.Errorf("projected sources %v: want the token and the CA ConfigMap's ca.crt", src)
	}
	if proxyC.StartupProbe == nil || proxyC.StartupProbe.HTTPGet.Path != "/ready" {
		t.Error("proxy has no startup probe on /ready: the app could start first")
	}
	if pod.Annotations[InjectedAnnotation] != "true" {
		t.Error("no injected annotation")
	}
}

// TestHandler drives the webhook with AdmissionReviews as the API server
// sends them and applies the returned patch.
func TestHandler(t *testing.T) {
	h := Handler(Config{Image: "ballast"})
	var post func(t *testing.T, body []byte) *admissionv1.AdmissionResponse
	review := func(kind metav1.GroupVersionKind, raw []byte) []byte {
		body, _ := json.Marshal(admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{
				UID: "1", Operation: admissionv1.Create, Namespace: "demo",
				Kind:   kind,
				Object: runtime.RawExtension{Raw: raw},
			},
		})
		return body
	}
	podKind := metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}
	send := func(t *testing.T, pod *corev1.Pod) *admissionv1.AdmissionResponse {
		raw, _ := json.Marshal(pod)
		return post(t, review(podKind, raw))
	}
	post = func(t *testing.T, body []byte) *admissionv1.AdmissionResponse {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/inject", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
		return out.Response
	}
	allowed := func(t *testing.T, pod *corev1.Pod) *admissionv1.AdmissionResponse {
		resp := send(t, pod)
		if !resp.Allowed {
			t.Fatalf("pod not allowed: %v", resp.Result)
		}
		return resp
	}

	t.Run("injects", func(t *testing.T) {
		pod := testPod(nil)
		resp := allowed(t, pod)
		var ops []jsonpatch.Operation
		if err := json.Unmarshal(resp.Patch, &ops); err != nil || len(ops) == 0 {
			t.Fatalf("patch %s: %v", resp.Patch, err)
		}
		if ok, _ := Decide(applyPatch(t, pod, resp.Patch)); ok {
			t.Fatal("after the patch the pod would be injected again")
		}
	})
	t.Run("a bad inbound annotation is refused, naming it", func(t *testing.T) {
		resp := send(t, testPod(map[string]string{InboundPortsAnnotation: "grpc"}))
		if resp.Allowed || !strings.Contains(resp.Result.Message, InboundPortsAnnotation) {
			t.Fatalf("allowed %v, message %q; want refused naming %s", resp.Allowed, resp.Result.Message, InboundPortsAnnotation)
		}
	})
	t.Run("opt-out gets no patch", func(t *testing.T) {
		if resp := allowed(t, testPod(map[string]string{OptOutAnnotation: "false"})); len(resp.Patch) != 0 {
			t.Fatalf("patch %s for an opted-out pod", resp.Patch)
		}
	})
	// Bad input: each gets a 400 in the review's result, naming what was
	// wrong, and no patch.
	deployment, _ := json.Marshal(map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": map[string]any{"name": "greeter"}})
	for _, tc := range []struct {
		name, body, want string
	}{
		{"not JSON", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":`, "unexpected"},
		{"not an AdmissionReview", `{"apiVersion":"v1","kind":"Pod"}`, "AdmissionReview"},
		{"no request", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, "no request.object"},
		{"a Deployment", string(review(metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}, deployment)), "handles v1 Pods; got \"apps/v1, Kind=Deployment\""},
		{"a pod that is not an object", string(review(podKind, []byte(`[1,2]`))), "decode pod demo/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(t, []byte(tc.body))
			if resp == nil || resp.Allowed || resp.Result == nil || resp.Result.Code != http.StatusBadRequest || !strings.Contains(resp.Result.Message, tc.want) || len(resp.Patch) != 0 {
				t.Fatalf("response %+v; want refused with 400 naming %q, no patch", resp, tc.want)
			}
		})
	}
}

func applyPatch(t *testing.T, pod *corev1.Pod, patch []byte) *corev1.Pod {
	t.Helper()
	p, err := jsonpatchv5.DecodePatch(patch)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(pod)
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatal(err)
	}
	var patched corev1.Pod
	if err := json.Unmarshal(out, &patched); err != nil {
		t.Fatal(err)
	}
	return &patched
}

func TestInboundCapture(t *testing.T) {
	withPorts := func(ports ...corev1.ContainerPort) func(*corev1.Pod) {
		return func(p *corev1.Pod) { p.Spec.Containers[0].Ports = ports }
	}
	tests := []struct {
		name    string
		pod     *corev1.Pod
		want    InboundCapture
		wantErr string
	}{
		{"no declared ports: none", testPod(nil), InboundCapture{}, ""},
		{"declared TCP ports, sorted, deduplicated, UDP and the proxy's own left out",
			testPod(nil, withPorts(
				corev1.ContainerPort{Name: "http", ContainerPort: 8080},
				corev1.ContainerPort{Name: "grpc", ContainerPort: 50051, Protocol: corev1.ProtocolTCP},
				corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
				corev1.ContainerPort{Name: "again", ContainerPort: 8080},
				corev1.ContainerPort{Name: "clash", ContainerPort: 15021},
			), func(p *corev1.Pod) {
				p.Spec.InitContainers[0].Ports = []corev1.ContainerPort{{ContainerPort: 9090}}
			}),
			InboundCapture{Ports: "8080,9090,50051"}, ""},
		{"annotation: all", testPod(map[string]string{InboundPortsAnnotation: "*"}, withPorts(corev1.ContainerPort{ContainerPort: 8080})), InboundCapture{Ports: "*"}, ""},
		{"annotation: a list replaces the declared ports", testPod(map[string]string{InboundPortsAnnotation: "50051, 9000"}, withPorts(corev1.ContainerPort{ContainerPort: 8080})), InboundCapture{Ports: "50051,9000"}, ""},
		{"annotation: empty turns capture off", testPod(map[string]string{InboundPortsAnnotation: ""}, withPorts(corev1.ContainerPort{ContainerPort: 8080})), InboundCapture{}, ""},
		{"exclude", testPod(map[string]string{InboundPortsAnnotation: "*", ExcludeInboundPortsAnnotation: "22,9090"}), InboundCapture{Ports: "*", Exclude: "22,9090"}, ""},
		{"bad list", testPod(map[string]string{InboundPortsAnnotation: "grpc"}), InboundCapture{}, `annotation ballast.dev/inbound-ports: "grpc" is not a port`},
		{"proxy's port", testPod(map[string]string{InboundPortsAnnotation: "15006"}), InboundCapture{}, "annotation ballast.dev/inbound-ports: 15006 is one of the proxy's own ports"},
		{"bad exclude", testPod(map[string]string{ExcludeInboundPortsAnnotation: "70000"}), InboundCapture{}, `annotation ballast.dev/exclude-inbound-ports: "70000" is not a port`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Inbound(tc.pod, Config{Image: "ballast"})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// TestInjectInbound: a pod serving ports gets the inbound rules and the
// proxy its inbound listener; one serving none (the client) gets neither.
func TestInjectInbound(t *testing.T) {
	server := testPod(map[string]string{ExcludeInboundPortsAnnotation: "9090"}, func(p *corev1.Pod) {
		p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "grpc", ContainerPort: 50051}}
	})
	Inject(server, Config{Image: "ballast:dev", InitArgs: []string{"--include-cidrs=10.96.0.0/12"}})
	initC, proxyC := server.Spec.InitContainers[0], server.Spec.InitContainers[1]
	want := []string{"ballast-proxy", "init", "--proxy-port", "15001", "--proxy-uid", "1337",
		"--inbound-ports", "50051", "--inbound-port", "15006", "--admin-port", "15021",
		"--exclude-inbound-ports", "9090", "--include-cidrs=10.96.0.0/12"}
	if got := append(initC.Command, initC.Args...); !slices.Equal(got, want) {
		t.Errorf("init command line %q, want %q", got, want)
	}
	if !slices.Contains(proxyC.Args, "--inbound-address") || !slices.Contains(proxyC.Args, ":15006") {
		t.Errorf("proxy args %q lack --inbound-address :15006", proxyC.Args)
	}

	client := testPod(nil)
	Inject(client, Config{Image: "ballast:dev"})
	for _, c := range client.Spec.InitContainers[:2] {
		for _, a := range c.Args {
			if strings.Contains(a, "inbound") {
				t.Errorf("%s of a pod serving no port has %q", c.Name, a)
			}
		}
	}
}
