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

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Names fixed by the injector and its manifests.
const (
	NamespaceLabel   = "ballast-injection"
	NamespaceEnabled = "enabled"
	// OptOutAnnotation set to "false" on a pod skips injection.
	OptOutAnnotation = "ballast.dev/inject"
	// InjectedAnnotation records that the pod was injected.
	InjectedAnnotation = "ballast.dev/injected"

	InitContainerName  = "ballast-proxy-init"
	ProxyContainerName = "ballast-proxy"
)

// Config is what the injected containers look like.
type Config struct {
	// Image holds the sidecar binary.
	Image string
	// Command is that binary: ballast-proxy (the default), the sidecar
	// alone at a quarter of the memory, or ballast, which runs it as
	// `ballast proxy`.
	Command string
	// ProxyUID is the uid the proxy runs as; the redirect excludes it.
	// Zero means 1337.
	ProxyUID int64
	// ProxyPort and AdminPort: zero means 15001 and 15021.
	ProxyPort int32
	AdminPort int32
	// XDSAddress is the control plane the proxy dials for xds:/// targets.
	XDSAddress string
	// InitArgs and ProxyArgs are appended to the proxy's init and to the
	// proxy (say --include-cidrs=<Service CIDR>).
	InitArgs  []string
	ProxyArgs []string
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
func (c Config) proxyPort() int32 { return cmp.Or(c.ProxyPort, 15001) }
func (c Config) adminPort() int32 { return cmp.Or(c.AdminPort, 15021) }

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
	initArgv := append(c.argv("init",
		"--proxy-port", strconv.Itoa(int(c.proxyPort())),
		"--proxy-uid", strconv.FormatInt(uid, 10),
	), c.InitArgs...)
	proxyArgv := c.argv(
		"--transparent-address", fmt.Sprintf("127.0.0.1:%d", c.proxyPort()),
		"--admin-address", fmt.Sprintf(":%d", c.adminPort()),
	)
	if c.XDSAddress != "" {
		proxyArgv = append(proxyArgv, "--xds-address", c.XDSAddress)
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
	pod.Spec.InitContainers = append([]corev1.Container{initC, proxyC}, pod.Spec.InitContainers...)
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[InjectedAnnotation] = "true"
}

// Handler is the webhook: it answers AdmissionReviews for pod creation with
// a JSON patch adding the sidecar, or with no change.
func Handler(c Config) http.Handler {
	return &admission.Webhook{Handler: admission.HandlerFunc(func(_ context.Context, req admission.Request) admission.Response {
		var pod corev1.Pod
		if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode pod %s/%s: %w", req.Namespace, req.Name, err))
		}
		if ok, why := Decide(&pod); !ok {
			return admission.Allowed("not injected: " + why)
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
