package bench

import (
	"context"
	"debug/buildinfo"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ballast-dev/ballast/internal/toolcache"
	ballastxds "github.com/ballast-dev/ballast/xds"
	xdsclient "github.com/ballast-dev/ballast/xds/client"
)

// A controlPlane is one xDS control plane under comparison, run as a
// process of its own against the benchmark's API server, so its CPU and
// memory can be read from /proc.
type controlPlane interface {
	// Name is the row's label.
	Name() string
	// start runs the control plane against api and waits until it says it
	// is ready. An error wrapping *unavailable makes the row say why it
	// has no numbers (istiod could not be built).
	start(ctx context.Context, b *Bench, api *apiServer) (*runningControl, error)
}

// runningControl is a started control plane.
type runningControl struct {
	name string
	proc *process
	xds  netip.AddrPort
	// ready is how long it took from the process's start to its readiness
	// endpoint answering 200.
	ready time.Duration
	// node is the identity a client with the given name in namespace
	// presents to this control plane.
	node func(client, namespace string) clientNode
	// listener is the LDS resource name a client asks for to dial the
	// Service name.namespace on port; both control planes serve the fully
	// qualified host:port that grpc-go asks for when the target is
	// xds:///name.namespace.svc.cluster.local:port.
	listener func(name, namespace string, port int) string
}

func (c *runningControl) stop() { c.proc.stop() }

// clientNode is an xDS node: its id and metadata.
type clientNode struct {
	ID       string
	Metadata map[string]string
}

// xdsNode is the node as an xDS client sends it.
func (n clientNode) xdsNode() xdsclient.Node {
	return xdsclient.Node{ID: n.ID, Metadata: n.Metadata, UserAgent: "ballast-bench"}
}

// bootstrap is the gRPC xDS bootstrap (gRFC A27) for a real grpc-go
// client with this node, plaintext to server.
func (n clientNode) bootstrap(server netip.AddrPort) ([]byte, error) {
	return ballastxds.Bootstrap{Server: server.String(), ID: n.ID, Metadata: n.Metadata}.JSON()
}

func fqdnListener(name, namespace string, port int) string {
	return name + "." + namespace + ".svc.cluster.local:" + strconv.Itoa(port)
}

var loopback = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// ballastControl is the control plane on --kubeconfig: ballast-control
// (Options.ControlBinary), as deploy/control runs it, or else
// `ballast control` from Options.Binary.
type ballastControl struct{}

func (ballastControl) Name() string { return "Ballast" }

func (ballastControl) start(ctx context.Context, b *Bench, api *apiServer) (*runningControl, error) {
	var began time.Time
	// ports: xDS, HTTP
	proc, ports, err := onFreePorts(loopback, 2,
		func(ports []netip.AddrPort) (*process, error) {
			began = time.Now()
			return b.startControlProcess("--kubeconfig", api.kubeconfig, "--insecure",
				"--xds-address", ports[0].String(), "--http-address", ports[1].String())
		},
		func(proc *process, ports []netip.AddrPort) error {
			return waitHTTP(ctx, http.DefaultClient, "http://"+ports[1].String()+"/readyz", proc, 2*time.Minute)
		})
	if err != nil {
		return nil, fmt.Errorf("start ballast control: %w", err)
	}
	return &runningControl{
		name: "Ballast", proc: proc, xds: ports[0], ready: time.Since(began),
		node: func(client, namespace string) clientNode {
			return clientNode{ID: "ballast~" + client + "." + namespace}
		},
		listener: fqdnListener,
	}, nil
}

// istiod is pilot-discovery from the istio.io/istio module pinned in
// tools/istio, run outside a cluster the way `ballast control` is:
//
//   - --kubeconfig to the benchmark's API server, every listener on
//     127.0.0.1 (ports picked free), the plaintext xDS port only
//     (--secureGRPCAddr "" and --httpsAddr "": no TLS serving, so no
//     certificates are needed);
//   - ENABLE_CA_SERVER=false and PILOT_CERT_PROVIDER=none: no CA, no
//     istiod certificate, nothing written to the cluster for them;
//   - INJECT_ENABLED=false and VALIDATION_WEBHOOK_CONFIG_NAME="": no
//     sidecar injector, no webhook configuration patched;
//   - POD_NAMESPACE=istio-system (created if missing), where istiod looks
//     for its mesh ConfigMap; there is none, so it runs on the default
//     mesh config, and the working directory is an empty folder, so no
//     file overrides it either;
//   - everything else at istiod's defaults, its push debounce included
//     (PILOT_DEBOUNCE_AFTER 100 ms, PILOT_ENABLE_EDS_DEBOUNCE true):
//     that is what a user gets.
//
// Clients present themselves as istio-agent does for proxyless gRPC: node
// id sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local and metadata
// GENERATOR=grpc, so istiod answers with its gRPC generator (api_listener
// Listeners named host:port, routes and clusters outbound|port||host).
type istiod struct{}

func (istiod) Name() string { return "istiod" }

// istiodNamespace is where istiod runs, as in a cluster.
const istiodNamespace = "istio-system"

// istiodVersion is what clients say in ISTIO_VERSION; it matches the
// istio.io/api of the pinned module.
const istiodVersion = "1.31.0"

// findIstiod builds (once, cached, serialised across processes) or finds
// pilot-discovery; an error says why it cannot run.
func findIstiod() (string, error) {
	bin, err := toolcache.Path("BALLAST_ISTIOD", "build-istiod.sh")
	if err != nil {
		return "", &unavailable{Status: "unavailable", Reason: "istiod could not be built: " + err.Error()}
	}
	if _, err := os.Stat(bin); err != nil {
		return "", &unavailable{Status: "unavailable", Reason: "istiod binary: " + err.Error()}
	}
	return bin, nil
}

func (istiod) start(ctx context.Context, b *Bench, api *apiServer) (*runningControl, error) {
	bin, err := findIstiod()
	if err != nil {
		return nil, err
	}
	if info, err := buildinfo.ReadFile(bin); err == nil {
		b.istiodVersion.Store(info.Main.Path + " " + info.Main.Version)
	}
	if err := api.ensureNamespace(ctx, istiodNamespace); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(b.dir, "istiod-")
	if err != nil {
		return nil, err
	}
	var began time.Time
	// ports: http, grpc, monitoring, ctrlz
	proc, ports, err := onFreePorts(loopback, 4,
		func(ports []netip.AddrPort) (*process, error) {
			cmd := exec.Command(bin, istiodArgs(api.kubeconfig, ports[0], ports[1], ports[2], ports[3], dir)...)
			cmd.Dir = dir
			cmd.Env = istiodEnv(os.Environ())
			began = time.Now()
			return startProcess(cmd, "istiod")
		},
		func(proc *process, ports []netip.AddrPort) error {
			return waitHTTP(ctx, http.DefaultClient, "http://"+ports[0].String()+"/ready", proc, 3*time.Minute)
		})
	if err != nil {
		return nil, fmt.Errorf("start istiod: %w", err)
	}
	return &runningControl{
		name: "istiod", proc: proc, xds: ports[1], ready: time.Since(began),
		node:     istiodNode,
		listener: fqdnListener,
	}, nil
}

// istiodArgs are pilot-discovery's flags: the API server, and every
// listener on loopback.
func istiodArgs(kubeconfig string, http, grpc, monitoring, ctrlz netip.AddrPort, dir string) []string {
	return []string{"discovery",
		"--kubeconfig", kubeconfig,
		"--httpAddr", http.String(),
		"--grpcAddr", grpc.String(),
		"--monitoringAddr", monitoring.String(),
		"--ctrlz_address", ctrlz.Addr().String(), "--ctrlz_port", strconv.Itoa(int(ctrlz.Port())),
		"--secureGRPCAddr", "",
		"--httpsAddr", "",
		"--meshConfig", filepath.Join(dir, "mesh"),
		"--networksConfig", filepath.Join(dir, "meshNetworks"),
		"--domain", "cluster.local",
	}
}

// istiodEnv is base (the benchmark's environment, minus anything that
// would point istiod at another cluster) with istiod's settings.
func istiodEnv(base []string) []string {
	var env []string
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "POD_NAMESPACE", "POD_NAME", "REVISION":
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"POD_NAMESPACE="+istiodNamespace,
		"POD_NAME=istiod-bench",
		"ENABLE_CA_SERVER=false",
		"PILOT_CERT_PROVIDER=none",
		"INJECT_ENABLED=false",
		"VALIDATION_WEBHOOK_CONFIG_NAME=",
	)
}

// istiodNode is the identity istio-agent gives a proxyless gRPC client.
// The IP is from TEST-NET-2 (RFC 5737): istiod only uses it to look for
// the client's own Pod, which does not exist.
func istiodNode(client, namespace string) clientNode {
	ip := "198.51.100.1"
	return clientNode{
		ID: "sidecar~" + ip + "~" + client + "." + namespace + "~" + namespace + ".svc.cluster.local",
		Metadata: map[string]string{
			"GENERATOR":     "grpc",
			"NAMESPACE":     namespace,
			"INSTANCE_IPS":  ip,
			"ISTIO_VERSION": istiodVersion,
			"CLUSTER_ID":    "Kubernetes",
		},
	}
}
