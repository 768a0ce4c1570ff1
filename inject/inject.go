// Package inject is the mutating admission webhook that adds Ballast's
// sidecar to pods, as Istio's injector does: an init container that
// installs the iptables redirect (`ballast proxy init`) and the proxy
// itself as a native sidecar (an init container that keeps running), so it
// is ready before the app's containers start and stops after they do.
//
// Which pods: the webhook's namespaceSelector picks namespaces labelled
// ballast-injection=enabled (see deploy/); a pod opts out with the
// annotation ballast.dev/inject: "false". A pod that already has the
// sidecar is left alone, so injecting twice changes nothing. The webhook is
// registered with failurePolicy Ignore and a short timeout: when it is down,
// pods are created without the sidecar rather than not at all.
//
// Inbound capture is on by default, as in Istio, for the TCP ports the
// pod's containers declare: the proxy then counts every call into the pod
// and drains callers with GOAWAY when the pod stops. A pod that declares
// no ports (a pure client) gets no inbound rules. The annotation
// ballast.dev/inbound-ports overrides the ports ("*" for all, a list, or
// "" for none, like Istio's includeInboundPorts), and
// ballast.dev/exclude-inbound-ports removes some.
//
// Since the sidecar accepts a captured connection before it knows whether
// the app listens, the app's probes on captured ports are rewritten to
// the sidecar's admin port, which runs them from inside the pod (see
// RewriteProbes and package probe); ballast.dev/rewrite-app-probes:
// "false" keeps them as they are.
package inject

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/ballast-dev/ballast/probe"
)

// Names fixed by the injector and its manifests.
const (
	NamespaceLabel   = "ballast-injection"
	NamespaceEnabled = "enabled"
	// OptOutAnnotation set to "false" on a pod skips injection.
	OptOutAnnotation = "ballast.dev/inject"
	// InjectedAnnotation records that the pod was injected.
	InjectedAnnotation = "ballast.dev/injected"
	// InboundPortsAnnotation overrides which ports are captured inbound:
	// "*" for all, "50051,8080", or "" for none. Without it, the ports
	// the pod's containers declare.
	InboundPortsAnnotation = "ballast.dev/inbound-ports"
	// ExcludeInboundPortsAnnotation lists ports never captured inbound.
	ExcludeInboundPortsAnnotation = "ballast.dev/exclude-inbound-ports"

	InitContainerName  = "ballast-proxy-init"
	ProxyContainerName = "ballast-proxy"
)

// Config is what the injected containers look like.
type Config struct {
	// Image holds the sidecar binary.
	Image string
	// Command is that binary: ballast-proxy (the default), the sidecar
	// alone, which links no Kubernetes client and no control plane and so
	// holds less memory, or ballast, which runs it as `ballast proxy`.
	Command string
	// ProxyUID is the uid the proxy runs as; the redirect excludes it.
	// Zero means 1337.
	ProxyUID int64
	// ProxyPort, InboundPort and AdminPort: zero means 15001, 15006 and
	// 15021.
	ProxyPort   int32
	InboundPort int32
	AdminPort   int32
	// XDSAddress is the control plane the proxy dials for xds:/// targets.
	XDSAddress string
	// XDSTokenAudience is the audience of the ServiceAccount token the
	// proxy presents to the control plane, projected into the pod when
	// XDSAddress is set; empty means "ballast-control".
	XDSTokenAudience string
	// XDSCAConfigMap, when set, is the ConfigMap (key ca.crt) in the pod's
	// namespace holding the CA of the control plane's certificate, which
	// the control plane publishes in every namespace when it serves TLS
	// (--tls-secret): it is projected beside the token and the proxy
	// connects over TLS. Empty: the proxy connects in plaintext.
	XDSCAConfigMap string
	// InitArgs and ProxyArgs are appended to the proxy's init and to the
	// proxy (say --include-cidrs=<Service CIDR>).
	InitArgs  []string
	ProxyArgs []string
}

// XDSTokenDir is where the proxy finds its token for the control plane.
const XDSTokenDir = "/var/run/secrets/ballast.dev/xds"

const (
	xdsTokenVolume = "ballast-xds-token"
	xdsTokenFile   = "token"
	xdsCAFile      = "ca.crt"
	// xdsTokenLifetime is the projected token's: the kubelet writes a new
	// one once 80% of it has passed, and the proxy reads the file for
	// every stream, so a stream is never opened with an expired token.
	xdsTokenLifetime = 3600
)

// xdsTokenVolume is the pod's ServiceAccount token for the control plane
// alone: the proxy never holds the pod's API token, and what it holds is
// no use against the API server.
func (c Config) xdsTokenVolume() corev1.Volume {
	exp := int64(xdsTokenLifetime)
	mode := int32(0o444) // the proxy runs as its own uid, not the app's
	v := corev1.Volume{Name: xdsTokenVolume, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: &mode,
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
			Audience: cmp.Or(c.XDSTokenAudience, "ballast-control"), ExpirationSeconds: &exp, Path: xdsTokenFile,
		}}},
	}}}
	if c.XDSCAConfigMap != "" {
		// Not optional: a pod whose sidecar cannot verify the control
		// plane waits for the ConfigMap rather than start without config.
		v.Projected.Sources = append(v.Projected.Sources, corev1.VolumeProjection{ConfigMap: &corev1.ConfigMapProjection{
			LocalObjectReference: corev1.LocalObjectReference{Name: c.XDSCAConfigMap},
			Items:                []corev1.KeyToPath{{Key: "ca.crt", Path: xdsCAFile}},
		}})
	}
	return v
}

func (c Config) uid() int64      { return cmp.Or(c.ProxyUID, 1337) }
func (c Config) command() string { return cmp.Or(c.Command, "ballast-proxy") }

// argv is the command line of the proxy (sub is nil) or of its init.
func (c Config) argv(sub ...string) []string {
	argv := []string{c.command()}
	if path.Base(c.command()) == "ballast" {
		argv = append(argv, "proxy")
	}
	return append(argv, sub...)
}
func (c Config) proxyPort() int32   { return cmp.Or(c.ProxyPort, 15001) }
func (c Config) inboundPort() int32 { return cmp.Or(c.InboundPort, 15006) }
func (c Config) adminPort() int32   { return cmp.Or(c.AdminPort, 15021) }

// Validate reports a config that cannot produce a working pod.
func (c Config) Validate() error {
	if c.Image == "" {
		return fmt.Errorf("inject: no proxy image")
	}
	return nil
}

// Decide says whether pod should be injected, and why not if not. The
// namespace has already been chosen by the webhook's namespaceSelector.
func Decide(pod *corev1.Pod) (bool, string) {
	if v, ok := pod.Annotations[OptOutAnnotation]; ok {
		if on, err := strconv.ParseBool(v); err == nil && !on {
			return false, "opted out by annotation " + OptOutAnnotation
		}
	}
	if pod.Spec.HostNetwork {
		return false, "host network: iptables would capture the node's traffic"
	}
	has := func(cs []corev1.Container) bool {
		return slices.ContainsFunc(cs, func(c corev1.Container) bool {
			return c.Name == ProxyContainerName || c.Name == InitContainerName
		})
	}
	if has(pod.Spec.InitContainers) || has(pod.Spec.Containers) {
		return false, "already injected"
	}
	return true, ""
}

// Inject adds the init container and the sidecar to pod, in place, ahead
// of the pod's own init containers, so even those have the proxy.
func Inject(pod *corev1.Pod, c Config) {
	always := corev1.ContainerRestartPolicyAlways
	uid, root := c.uid(), int64(0)
	yes, no := true, false
	initArgv := c.argv("init",
		"--proxy-port", strconv.Itoa(int(c.proxyPort())),
		"--proxy-uid", strconv.FormatInt(uid, 10),
	)
	proxyArgv := c.argv(
		"--transparent-address", fmt.Sprintf("127.0.0.1:%d", c.proxyPort()),
		"--admin-address", fmt.Sprintf(":%d", c.adminPort()),
	)
	// The Handler rejects bad annotations before Inject runs; a caller
	// that skips it gets no inbound capture from them.
	var appProbes probe.Set
	if in, err := Inbound(pod, c); err == nil && in.Ports != "" {
		appProbes = RewriteProbes(pod, c, in)
		initArgv = append(initArgv,
			"--inbound-ports", in.Ports,
			"--inbound-port", strconv.Itoa(int(c.inboundPort())),
			"--admin-port", strconv.Itoa(int(c.adminPort())),
		)
		if in.Exclude != "" {
			initArgv = append(initArgv, "--exclude-inbound-ports", in.Exclude)
		}
		proxyArgv = append(proxyArgv, "--inbound-address", fmt.Sprintf(":%d", c.inboundPort()))
	}
	initArgv = append(initArgv, c.InitArgs...)
	if c.XDSAddress != "" {
		proxyArgv = append(proxyArgv, "--xds-address", c.XDSAddress,
			"--xds-token-file", XDSTokenDir+"/"+xdsTokenFile)
		if c.XDSCAConfigMap != "" {
			proxyArgv = append(proxyArgv, "--xds-ca-file", XDSTokenDir+"/"+xdsCAFile)
		}
	}
	proxyArgv = append(proxyArgv, c.ProxyArgs...)
	ready := &corev1.Probe{
		ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
			Path: "/ready", Port: intstr.FromInt32(c.adminPort()),
		}},
		PeriodSeconds:    1,
		FailureThreshold: 60,
	}
	initC := corev1.Container{
		Name:    InitContainerName,
		Image:   c.Image,
		Command: initArgv[:1],
		Args:    initArgv[1:],
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:    &root,
			RunAsNonRoot: &no,
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
		},
	}
	proxyC := corev1.Container{
		Name:          ProxyContainerName,
		Image:         c.Image,
		Command:       proxyArgv[:1],
		Args:          proxyArgv[1:],
		RestartPolicy: &always,
		Ports:         []corev1.ContainerPort{{Name: "ballast-admin", ContainerPort: c.adminPort()}},
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			// The zone Services with a trafficDistribution keep calls in:
			// Kubernetes (1.35+, PodTopologyLabelsAdmission) copies the
			// Node's zone label onto the Pod when it binds it, before any
			// container starts; without the label it is empty, and the
			// proxy prefers no zone.
			{Name: "ZONE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['" + corev1.LabelTopologyZone + "']"}}},
		},
		// The kubelet starts the app only once the proxy answers /ready.
		StartupProbe:   ready,
		ReadinessProbe: ready,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &uid,
			RunAsNonRoot:             &yes,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &yes,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}
	if len(appProbes) > 0 {
		proxyC.Env = append(proxyC.Env, corev1.EnvVar{Name: probe.EnvVar, Value: appProbes.String()})
	}
	if c.XDSAddress != "" {
		pod.Spec.Volumes = append(pod.Spec.Volumes, c.xdsTokenVolume())
		proxyC.VolumeMounts = append(proxyC.VolumeMounts, corev1.VolumeMount{Name: xdsTokenVolume, MountPath: XDSTokenDir, ReadOnly: true})
	}
	pod.Spec.InitContainers = append([]corev1.Container{initC, proxyC}, pod.Spec.InitContainers...)
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[InjectedAnnotation] = "true"
}

// InboundCapture is what a pod's inbound rules capture, as flag values
// for `ballast proxy init`: Ports is "*", a comma-separated list, or ""
// for nothing; Exclude a list or "".
type InboundCapture struct {
	Ports   string
	Exclude string
}

// Inbound reads which ports of pod are captured inbound: the annotation
// when set, else the TCP ports its containers declare (the proxy's own
// ports left out). A bad annotation is an error naming it.
func Inbound(pod *corev1.Pod, c Config) (InboundCapture, error) {
	own := []int{int(c.proxyPort()), int(c.inboundPort()), int(c.adminPort())}
	var in InboundCapture
	if v, ok := pod.Annotations[InboundPortsAnnotation]; ok {
		v = strings.TrimSpace(v)
		if v != "*" && v != "" {
			ports, err := parsePorts(v)
			if err != nil {
				return InboundCapture{}, fmt.Errorf("annotation %s: %w", InboundPortsAnnotation, err)
			}
			for _, p := range ports {
				if slices.Contains(own, p) {
					return InboundCapture{}, fmt.Errorf("annotation %s: %d is one of the proxy's own ports", InboundPortsAnnotation, p)
				}
			}
			v = joinPorts(ports)
		}
		in.Ports = v
	} else {
		var ports []int
		for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
			for _, ctr := range cs {
				for _, p := range ctr.Ports {
					port := int(p.ContainerPort)
					if (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) && port > 0 && !slices.Contains(own, port) && !slices.Contains(ports, port) {
						ports = append(ports, port)
					}
				}
			}
		}
		slices.Sort(ports)
		in.Ports = joinPorts(ports)
	}
	if v, ok := pod.Annotations[ExcludeInboundPortsAnnotation]; ok && strings.TrimSpace(v) != "" {
		ports, err := parsePorts(v)
		if err != nil {
			return InboundCapture{}, fmt.Errorf("annotation %s: %w", ExcludeInboundPortsAnnotation, err)
		}
		in.Exclude = joinPorts(ports)
	}
	return in, nil
}

func parsePorts(s string) ([]int, error) {
	var ports []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		p, err := strconv.Atoi(f)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("%q is not a port (want \"*\", or ports like \"50051,8080\")", f)
		}
		ports = append(ports, p)
	}
	return ports, nil
}

func joinPorts(ports []int) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}

// Handler is the webhook: it answers AdmissionReviews for pod creation with
// a JSON patch adding the sidecar, or with no change.
func Handler(c Config) http.Handler {
	return &admission.Webhook{Handler: admission.HandlerFunc(func(_ context.Context, req admission.Request) admission.Response {
		// A review of anything but a Pod (a webhook configuration that
		// matches more than pods) would decode into an empty Pod and be
		// patched as one: refuse to handle it, naming what it was. With
		// failurePolicy Ignore the object is admitted unchanged.
		if len(req.Object.Raw) == 0 {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("AdmissionReview %q has no request.object", req.UID))
		}
		if k := req.Kind; k.Group != "" || k.Version != "v1" || k.Kind != "Pod" {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("ballast injector handles v1 Pods; got %q %s/%s", k.String(), req.Namespace, req.Name))
		}
		var pod corev1.Pod
		if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode pod %s/%s: %w", req.Namespace, req.Name, err))
		}
		if ok, why := Decide(&pod); !ok {
			return admission.Allowed("not injected: " + why)
		}
		if _, err := Inbound(&pod, c); err != nil {
			return admission.Denied(fmt.Sprintf("pod %s/%s: %v", req.Namespace, cmp.Or(pod.Name, pod.GenerateName), err))
		}
		Inject(&pod, c)
		mutated, err := json.Marshal(&pod)
		if err != nil {
			return admission.Errored(http.StatusInternalServerError, fmt.Errorf("encode pod: %w", err))
		}
		return admission.PatchResponseFromRaw(req.Object.Raw, mutated)
	})}
}

// WebhookConfiguration registers the injector with the API server: pod
// creations in namespaces labelled ballast-injection=enabled, with
// failurePolicy Ignore and a 5s timeout so that a down injector never
// blocks pod creation (the pod is then created without the sidecar).
func WebhookConfiguration(name string, client admissionregistrationv1.WebhookClientConfig) *admissionregistrationv1.MutatingWebhookConfiguration {
	ignore := admissionregistrationv1.Ignore
	none := admissionregistrationv1.SideEffectClassNone
	never := admissionregistrationv1.NeverReinvocationPolicy
	timeout := int32(5)
	return &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name:         "inject.ballast.dev",
			ClientConfig: client,
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule: admissionregistrationv1.Rule{
					APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"},
				},
			}},
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{NamespaceLabel: NamespaceEnabled}},
			FailurePolicy:           &ignore,
			SideEffects:             &none,
			TimeoutSeconds:          &timeout,
			ReinvocationPolicy:      &never,
			AdmissionReviewVersions: []string{"v1"},
		}},
	}
}
