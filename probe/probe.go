// Package probe runs an app container's kubelet probes from inside its pod,
// on the kubelet's behalf, for the sidecar.
//
// With inbound capture, a connection to any captured port of the pod is
// accepted by the sidecar's inbound listener before it knows whether the
// app listens: the kubelet's tcpSocket probe would succeed as soon as the
// sidecar runs and the pod would turn Ready before its app serves. So the
// injector rewrites the app's httpGet, tcpSocket and grpc probes into
// httpGets on the sidecar's admin port at Path(container, kind), and hands
// the original probes to the sidecar in the environment variable EnvVar
// (JSON, a Set). The sidecar's Handler runs them against 127.0.0.1, which
// the redirect never captures, and answers 200 or 503 with what failed.
// This is Istio's pilot-agent /app-health/ rewrite.
//
// The package links no Kubernetes types: the sidecar binary stays small.
// Its JSON uses the field names of the Kubernetes Probe it came from.
package probe

import (
	"encoding/json"
	"fmt"
	"strings"
)

// EnvVar names the sidecar's environment variable that holds the Set.
const EnvVar = "BALLAST_APP_PROBES"

// PathPrefix starts every rewritten probe's path.
const PathPrefix = "/app-health/"

// Kinds of probe, as the last element of a rewritten probe's path.
const (
	Readiness = "readyz"
	Liveness  = "livez"
	Startup   = "startupz"
)

// Path is where the sidecar answers for container's probe of kind.
func Path(container, kind string) string {
	return PathPrefix + container + "/" + kind
}

// Set maps each rewritten probe's Path to the original probe.
type Set map[string]Spec

// Spec is one original probe, its port resolved to a number. Exactly one
// of HTTPGet, TCPSocket and GRPC is set.
type Spec struct {
	HTTPGet   *HTTPGet   `json:"httpGet,omitempty"`
	TCPSocket *TCPSocket `json:"tcpSocket,omitempty"`
	GRPC      *GRPC      `json:"grpc,omitempty"`
	// TimeoutSeconds bounds one run; zero means the kubelet's default,
	// one second.
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
}

// HTTPGet is an httpGet probe: success is a status from 200 to 399.
type HTTPGet struct {
	// Scheme is HTTP (the default) or HTTPS, whose certificate is not
	// verified, as the kubelet does not.
	Scheme string `json:"scheme,omitempty"`
	Path   string `json:"path,omitempty"`
	Port   int32  `json:"port"`
	// HTTPHeaders are sent as given; a Host header sets the request's
	// host, the connection still goes to 127.0.0.1.
	HTTPHeaders []Header `json:"httpHeaders,omitempty"`
}

// Header is one request header of an HTTPGet.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// TCPSocket is a tcpSocket probe: success is a connection.
type TCPSocket struct {
	Port int32 `json:"port"`
}

// GRPC is a grpc probe: success is SERVING from grpc.health.v1 Check.
type GRPC struct {
	Port    int32  `json:"port"`
	Service string `json:"service,omitempty"`
}

// Validate reports a Spec the Handler could not run.
func (s Spec) Validate() error {
	n, port := 0, int32(0)
	if s.HTTPGet != nil {
		n, port = n+1, s.HTTPGet.Port
		if sc := strings.ToUpper(s.HTTPGet.Scheme); sc != "" && sc != "HTTP" && sc != "HTTPS" {
			return fmt.Errorf("httpGet scheme %q: want HTTP or HTTPS", s.HTTPGet.Scheme)
		}
	}
	if s.TCPSocket != nil {
		n, port = n+1, s.TCPSocket.Port
	}
	if s.GRPC != nil {
		n, port = n+1, s.GRPC.Port
	}
	if n != 1 {
		return fmt.Errorf("want exactly one of httpGet, tcpSocket and grpc, got %d", n)
	}
	if port < 1 || port > 65535 {
		return fmt.Errorf("port %d: want 1-65535", port)
	}
	if s.TimeoutSeconds < 0 {
		return fmt.Errorf("timeoutSeconds %d: want 0 or more", s.TimeoutSeconds)
	}
	return nil
}

// Parse reads a Set from the JSON in EnvVar; "" is an empty Set. A bad
// probe is an error naming its path.
func Parse(s string) (Set, error) {
	set := Set{}
	if strings.TrimSpace(s) == "" {
		return set, nil
	}
	if err := json.Unmarshal([]byte(s), &set); err != nil {
		return nil, fmt.Errorf("%s: %w", EnvVar, err)
	}
	for path, spec := range set {
		if !strings.HasPrefix(path, PathPrefix) {
			return nil, fmt.Errorf("%s: path %q: want it under %s", EnvVar, path, PathPrefix)
		}
		if err := spec.Validate(); err != nil {
			return nil, fmt.Errorf("%s: probe %s: %w", EnvVar, path, err)
		}
	}
	return set, nil
}

// String is the Set as the JSON of EnvVar.
func (s Set) String() string {
	b, err := json.Marshal(s)
	if err != nil {
		// A Set holds only strings and numbers.
		panic(err)
	}
	return string(b)
}
