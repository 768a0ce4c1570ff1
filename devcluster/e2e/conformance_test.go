package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crlog "sigs.k8s.io/controller-runtime/pkg/log"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/gateway-api/conformance"
	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
	"sigs.k8s.io/gateway-api/conformance/tests"
	"sigs.k8s.io/gateway-api/conformance/utils/config"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/devcluster"
	ociimage "github.com/ballast-dev/ballast/image"
	"github.com/ballast-dev/ballast/inject"
	"github.com/ballast-dev/ballast/internal/toolcache"
)

// The Gateway API conformance suite (sigs.k8s.io/gateway-api/conformance),
// run on the dev cluster against Ballast as a user installs it: deploy/control
// (with the Gateway API CRDs it reads) and deploy/inject as the sidecar tests
// apply them, and the suite's own namespaces labelled for injection, so every echo pod the
// suite deploys gets the sidecar. Each profile writes the suite's
// ConformanceReport to docs/conformance/, checked against (or, with -update,
// written from) the run.

var updateReports = flag.Bool("update", false, "rewrite docs/conformance/ from this run's conformance reports")

// echoImage is the image of the suite's mesh manifests (mesh/manifests.yaml):
// Istio's echo server and client, which the dev cluster runs from
// tools/build-istio-echo.sh's build (TestMain maps it).
const echoImage = "registry.k8s.io/gateway-api/echo-advanced:v1.5.1"

// The images of the suite's base manifests (base/manifests.yaml), for the
// gateway profiles: echo-basic, the suite's own echo server (HTTP, and
// gRPC with GRPC_ECHO_SERVER), and CoreDNS.
var (
	echoBasicImages = []string{"registry.k8s.io/gateway-api/echo-basic:v1.5.1", "registry.k8s.io/gateway-api/echo-basic:v1.6.0-dev.3"}
	corednsImage    = "registry.k8s.io/coredns/coredns:v1.12.2"
)

// conformanceImages builds echo-basic from the suite's module into dir and
// maps the base manifests' images to it and to the dev cluster's CoreDNS.
func conformanceImages(ctx context.Context, dir string) (map[string]v1.Image, error) {
	root := filepath.Join(dir, "echo-basic")
	out := filepath.Join(root, "usr", "local", "bin", "echo-basic")
	build := exec.CommandContext(ctx, "go", "build", "-o", out, "sigs.k8s.io/gateway-api/conformance/echo-basic")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("build echo-basic: %w", err)
	}
	images := map[string]v1.Image{}
	echo, err := ociimage.Directory(root, []string{"/usr/local/bin/echo-basic"}, ociimage.HostPlatform())
	if err != nil {
		return nil, err
	}
	for _, ref := range echoBasicImages {
		images[ref] = echo
	}
	coredns, err := toolcache.Path("BALLAST_COREDNS", "build-coredns.sh")
	if err != nil {
		return nil, fmt.Errorf("build coredns: %w", err)
	}
	// The coredns image's entrypoint is /coredns.
	croot := filepath.Join(dir, "coredns")
	if err := os.MkdirAll(croot, 0o755); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(coredns)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(croot, "coredns"), data, 0o755); err != nil {
		return nil, err
	}
	if images[corednsImage], err = ociimage.Directory(croot, []string{"/coredns"}, ociimage.HostPlatform()); err != nil {
		return nil, err
	}
	return images, nil
}

// conformanceRun is one profile's run of the suite.
type conformanceRun struct {
	profile suite.ConformanceProfileName
	// supported are the features Ballast claims beyond the profile's core.
	supported []features.FeatureName
	// report is the file in docs/conformance/ the run's report is kept in.
	report string
	// mode is the report's mode: how the profile's traffic is handled.
	mode string
	// skip are tests of the profile not run, each with the reason, which
	// the report shows as skipped.
	skip map[string]string
	// gatewayClass, for a gateway profile, is the GatewayClass tested; its
	// gateways are provisioned by deploy/gateway-provisioner, and the
	// suite's base manifests are not injected.
	gatewayClass string
}

// meshGRPC is GAMMA for gRPC: GRPCRoutes attached to Services, honoured by
// the injected sidecar.
var meshGRPC = conformanceRun{
	profile:   suite.MeshGRPCConformanceProfileName,
	supported: []features.FeatureName{features.SupportMesh, features.SupportGRPCRoute},
	report:    "mesh-grpc-report.yaml",
	mode:      "sidecar",
}

func TestGatewayAPIConformanceMeshGRPC(t *testing.T) {
	runConformance(t, meshGRPC)
}

// gatewayGRPC is GRPCRoutes attached to Gateways: Ballast's gateway, one
// per Gateway of the class "ballast" (deploy/gateway-provisioner), at a
// LoadBalancer address the dev cluster relays from host loopback.
var gatewayGRPC = conformanceRun{
	profile:      suite.GatewayGRPCConformanceProfileName,
	supported:    []features.FeatureName{features.SupportGateway, features.SupportReferenceGrant, features.SupportGRPCRoute},
	report:       "gateway-grpc-report.yaml",
	mode:         "default",
	gatewayClass: "ballast",
	// These Gateway tests check a listener's supportedKinds for HTTPRoute
	// (the listeners they make allow every kind): a gateway for gRPC that
	// serves GRPCRoute alone cannot say HTTPRoute without lying. Their
	// other checks (conditions, attachedRoutes) are TestStatus's.
	skip: map[string]string{
		"GatewayInvalidRouteKind":                   skipHTTPRouteKind,
		"GatewayInvalidTLSConfiguration":            skipHTTPRouteKind,
		"GatewayListenerUnsupportedProtocol":        skipHTTPRouteKind,
		"GatewayModifyListeners":                    skipHTTPRouteKind,
		"GatewaySecretInvalidReferenceGrant":        skipHTTPRouteKind,
		"GatewaySecretMissingReferenceGrant":        skipHTTPRouteKind,
		"GatewaySecretReferenceGrantAllInNamespace": skipHTTPRouteKind,
		"GatewaySecretReferenceGrantSpecific":       skipHTTPRouteKind,
	},
}

const skipHTTPRouteKind = "expects HTTPRoute in a listener's supportedKinds; Ballast's gateway serves GRPCRoute only"

func TestGatewayAPIConformanceGatewayGRPC(t *testing.T) {
	runConformance(t, gatewayGRPC)
}

// setupGatewayProvisioner applies deploy/gateway-provisioner and waits for
// the provisioner; at the end it removes the provisioner (the gateways it
// made go with the suite's Gateways).
func setupGatewayProvisioner(t *testing.T, ctx context.Context) {
	t.Helper()
	// The GatewayClass is refused until its CRD, applied with it, is
	// established: apply again, as a user would.
	dir := deployDir(t, "gateway-provisioner")
	var applyErr error
	if err := devcluster.Poll(ctx, time.Minute, func(ctx context.Context) (bool, error) {
		_, applyErr = cluster.Kubectl(ctx, nil, "apply", "-k", dir)
		return applyErr == nil, nil
	}); err != nil {
		t.Fatalf("apply deploy/gateway-provisioner: %v (%v)", applyErr, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := cluster.Kubectl(ctx, nil, "-n", "ballast-system", "delete", "deployment,service", "-l", "ballast.dev/managed-by=gateway-provisioner", "--ignore-not-found"); err != nil {
			t.Error(err)
		}
		if _, err := cluster.Kubectl(ctx, nil, "-n", "ballast-system", "delete", "deployment", "ballast-gateway-provisioner", "--ignore-not-found", "--wait=true"); err != nil {
			t.Error(err)
		}
	})
	if _, err := cluster.Kubectl(ctx, nil, "-n", "ballast-system", "rollout", "status", "deployment/ballast-gateway-provisioner", "--timeout=2m"); err != nil {
		t.Fatal(err)
	}
}

func runConformance(t *testing.T, run conformanceRun) {
	ctx := ctxFor(t, 20*time.Minute)
	checkEchoImage(t)
	// The suite sets its own user agent per test on the config it gets.
	cfg := rest.CopyConfig(cluster.Config)
	opts, err := conformanceClientOptions()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	namespaces := []string{suite.MeshNamespace, suite.MeshConsumerNamespace}
	labels := map[string]string{inject.NamespaceLabel: inject.NamespaceEnabled}
	if run.gatewayClass != "" {
		namespaces = []string{suite.InfrastructureNamespace, suite.AppBackendNamespace, suite.WebBackendNamespace}
		labels = nil
		setupGatewayProvisioner(t, ctx)
	} else {
		// deploy/control installs the Gateway API CRDs Ballast reads.
		setupMesh(t, ctx)
		// Later tests of the package may remove deploy/control (the proxyless
		// test deletes what it applied, ballast-system with it): the next test
		// that needs the mesh installs it again (InstallMesh may run again).
		t.Cleanup(func() { meshReady = false })
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpState(t, append(namespaces, "ballast-system")...)
		}
	})
	// The suite deletes its namespaces at the end without waiting; the
	// next test gets a cluster without them (cleanups run last first, so
	// this one runs after the suite's).
	t.Cleanup(func() { waitNamespacesGone(t, namespaces...) })

	clientset, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var skip []string
	for name, why := range run.skip {
		t.Logf("skipping %s: %s", name, why)
		skip = append(skip, name)
	}
	cs, err := suite.NewConformanceTestSuite(suite.ConformanceOptions{
		ConfigurableOptions: suite.ConfigurableOptions{
			NamespaceLabels:      labels,
			GatewayClassName:     run.gatewayClass,
			CleanupBaseResources: true,
			CleanupTestResources: true,
			SupportedFeatures:    run.supported,
			TimeoutConfig:        config.DefaultTimeoutConfig(),
			SkipTests:            skip,
			Mode:                 run.mode,
			Implementation: confv1.Implementation{
				Organization: "ballast-dev",
				Project:      "ballast",
				URL:          "https://github.com/ballast-dev/ballast",
				Version:      "main",
				Contact:      []string{"https://github.com/ballast-dev/ballast/issues"},
			},
			ConformanceProfiles: []suite.ConformanceProfileName{run.profile},
		},
		Client:        c,
		ClientOptions: opts,
		Clientset:     clientset,
		RestConfig:    cfg,
		ManifestFS:    []fs.FS{&conformance.Manifests},
	})
	if err != nil {
		t.Fatal(err)
	}
	setUp := false
	// Registered before Run, whose own cleanup (the end of the run) must
	// come first: Report refuses a running suite.
	t.Cleanup(func() {
		if setUp {
			checkReport(t, cs, run.report)
		}
	})
	cs.Setup(t, tests.ConformanceTests)
	setUp = !t.Failed()
	if run.gatewayClass == "" {
		checkInjected(t, ctx, namespaces...)
	}
	if err := cs.Run(t, tests.ConformanceTests); err != nil {
		t.Fatal(err)
	}
}

// checkEchoImage fails clearly when the suite's manifests name another echo
// image than the one TestMain maps (a new suite version).
func checkEchoImage(t *testing.T) {
	t.Helper()
	const manifests = "mesh/manifests.yaml"
	data, err := fs.ReadFile(conformance.Manifests, manifests)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte("image: "+echoImage+"\n")) {
		t.Fatalf("the suite's %s does not run %s: map its echo image in TestMain", manifests, echoImage)
	}
}

// conformanceClientOptions are for the suite's controller-runtime clients:
// a scheme with the types it reads and writes (core, CRDs and Gateway
// API's), and its log discarded (controller-runtime complains without one).
func conformanceClientOptions() (client.Options, error) {
	crlog.SetLogger(logr.Discard())
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, gatewayv1.Install} {
		if err := add(scheme); err != nil {
			return client.Options{}, err
		}
	}
	return client.Options{Scheme: scheme}, nil
}

// checkInjected fails the test unless every pod of the namespaces has the
// sidecar: the suite's calls are to go through it.
func checkInjected(t *testing.T, ctx context.Context, namespaces ...string) {
	t.Helper()
	for _, ns := range namespaces {
		pods, err := cluster.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) == 0 {
			t.Fatalf("namespace %s: no pods", ns)
		}
		for _, p := range pods.Items {
			if !devcluster.Injected(&p) {
				t.Fatalf("pod %s/%s runs without the sidecar", ns, p.Name)
			}
		}
	}
}

// waitNamespacesGone waits until the namespaces are deleted.
func waitNamespacesGone(t *testing.T, names ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, ns := range names {
		if _, err := cluster.Kubectl(ctx, nil, "delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=3m"); err != nil {
			t.Errorf("namespace %s: %v", ns, err)
		}
	}
}

// checkReport compares the run's report with docs/conformance/<file> (the
// date aside), or writes it there with -update.
func checkReport(t *testing.T, cs *suite.ConformanceTestSuite, file string) {
	t.Helper()
	report, err := cs.Report()
	if err != nil {
		t.Fatal(err)
	}
	got, err := renderReport(*report)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("..", "..", "docs", "conformance", file)
	if *updateReports {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./devcluster/e2e -run %s -update)", err, t.Name())
	}
	if !bytes.Equal(undated(got), undated(want)) {
		t.Errorf("docs/conformance/%s differs from this run's report (run go test ./devcluster/e2e -run %s -update):\n%s", file, t.Name(), got)
	}
}

func renderReport(r confv1.ConformanceReport) ([]byte, error) {
	body, err := yaml.Marshal(r)
	if err != nil {
		return nil, err
	}
	head := "# Generated by `go test ./devcluster/e2e -run TestGatewayAPIConformance -update`: the Gateway API\n" +
		"# conformance suite's report of its run on the dev cluster; do not edit.\n"
	return append([]byte(head), body...), nil
}

// undated is a report without its date line.
func undated(report []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(report, []byte("\n")) {
		if !bytes.HasPrefix(l, []byte("date: ")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}
