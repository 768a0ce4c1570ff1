package inject

import (
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ballast-dev/ballast/probe"
)

// RewriteProbesAnnotation set to "false" on a pod keeps its app probes as
// they are.
const RewriteProbesAnnotation = "ballast.dev/rewrite-app-probes"

// RewriteProbes turns the readiness, liveness and startup probes of pod's
// app containers that the inbound capture would answer for (httpGet,
// tcpSocket and grpc on a captured port) into httpGets on the sidecar's
// admin port, and returns the originals for the sidecar, by path (see
// package probe). Timing fields stay, so the kubelet probes as often and
// gives up as soon as before.
//
// Left as they are: exec probes (they run in the app's container); probes
// on ports not captured (the kubelet already reaches the app there, and a
// rewrite would only make the probe depend on the sidecar); probes with a
// host (the kubelet dials that host, not the pod); probes on a named port
// the container does not declare (the kubelet reports that itself); and
// probes already pointing at the admin port's PathPrefix, so a second pass
// changes nothing.
func RewriteProbes(pod *corev1.Pod, c Config, in InboundCapture) probe.Set {
	set := probe.Set{}
	if v, ok := pod.Annotations[RewriteProbesAnnotation]; ok {
		if on, err := strconv.ParseBool(v); err == nil && !on {
			return set
		}
	}
	captured := capturedPorts(in)
	for i := range pod.Spec.Containers {
		ctr := &pod.Spec.Containers[i]
		for _, p := range []struct {
			probe **corev1.Probe
			kind  string
		}{
			{&ctr.ReadinessProbe, probe.Readiness},
			{&ctr.LivenessProbe, probe.Liveness},
			{&ctr.StartupProbe, probe.Startup},
		} {
			if *p.probe == nil {
				continue
			}
			spec, ok := original(**p.probe, ctr, c)
			if !ok || !captured(spec.port()) {
				continue
			}
			path := probe.Path(ctr.Name, p.kind)
			set[path] = spec.Spec
			rewritten := (*p.probe).DeepCopy()
			rewritten.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(c.adminPort()), Scheme: corev1.URISchemeHTTP,
			}}
			*p.probe = rewritten
		}
	}
	return set
}

// capturedPorts says whether the inbound rules redirect a port.
func capturedPorts(in InboundCapture) func(int32) bool {
	parse := func(s string) []int32 {
		var ports []int32
		for f := range strings.SplitSeq(s, ",") {
			if p, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
				ports = append(ports, int32(p))
			}
		}
		return ports
	}
	include, exclude := parse(in.Ports), parse(in.Exclude)
	return func(port int32) bool {
		return (in.Ports == "*" || slices.Contains(include, port)) && !slices.Contains(exclude, port)
	}
}

type resolved struct{ probe.Spec }

func (r resolved) port() int32 {
	switch {
	case r.HTTPGet != nil:
		return r.HTTPGet.Port
	case r.TCPSocket != nil:
		return r.TCPSocket.Port
	case r.GRPC != nil:
		return r.GRPC.Port
	}
	return 0
}

// original is p as the sidecar runs it, its port resolved against ctr's;
// false when it is not to be rewritten.
func original(p corev1.Probe, ctr *corev1.Container, c Config) (resolved, bool) {
	s := resolved{probe.Spec{TimeoutSeconds: p.TimeoutSeconds}}
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		port, ok := portNumber(g.Port, ctr)
		if !ok || g.Host != "" || (port == c.adminPort() && strings.HasPrefix(g.Path, probe.PathPrefix)) {
			return s, false
		}
		s.HTTPGet = &probe.HTTPGet{Scheme: string(g.Scheme), Path: g.Path, Port: port}
		for _, h := range g.HTTPHeaders {
			s.HTTPGet.HTTPHeaders = append(s.HTTPGet.HTTPHeaders, probe.Header{Name: h.Name, Value: h.Value})
		}
	case p.TCPSocket != nil:
		port, ok := portNumber(p.TCPSocket.Port, ctr)
		if !ok || p.TCPSocket.Host != "" {
			return s, false
		}
		s.TCPSocket = &probe.TCPSocket{Port: port}
	case p.GRPC != nil:
		s.GRPC = &probe.GRPC{Port: p.GRPC.Port}
		if p.GRPC.Service != nil {
			s.GRPC.Service = *p.GRPC.Service
		}
	default:
		return s, false
	}
	return s, s.Validate() == nil
}

// portNumber resolves a numeric or named port against ctr's ports.
func portNumber(port intstr.IntOrString, ctr *corev1.Container) (int32, bool) {
	if port.Type == intstr.Int {
		return port.IntVal, true
	}
	if n, err := strconv.Atoi(port.StrVal); err == nil {
		return int32(n), true
	}
	for _, cp := range ctr.Ports {
		if cp.Name == port.StrVal {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}
