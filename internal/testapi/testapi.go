// Package testapi runs a real kube-apiserver and etcd for tests, through
// controller-runtime's envtest, with binaries built from the Go modules pinned
// in tools/ (tools/build.sh caches them in ~/.cache/ballast).
//
// One API server serves a whole test package: start it in TestMain.
package testapi

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/ballast-dev/ballast/internal/toolcache"
)

func init() {
	// envtest logs through controller-runtime; tests report errors themselves.
	ctrllog.SetLogger(logr.Discard())
}

// Env is a running API server.
type Env struct {
	Config *rest.Config
	Client kubernetes.Interface
	env    *envtest.Environment
}

// Start builds (once, cached) and starts etcd and kube-apiserver.
func Start() (*Env, error) {
	assets, err := Assets()
	if err != nil {
		return nil, err
	}
	// Shared 2-core machines start kube-apiserver slowly when test packages
	// run side by side: give it minutes, not envtest's default 20 seconds.
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		ControlPlaneStartTimeout: 3 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("start kube-apiserver and etcd from %s: %w", assets, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		env.Stop()
		return nil, err
	}
	return &Env{Config: cfg, Client: client, env: env}, nil
}

// Stop stops the API server and etcd and removes their data.
func (e *Env) Stop() error { return e.env.Stop() }

// Assets returns the directory with etcd, kube-apiserver and kubectl:
// $KUBEBUILDER_ASSETS if set, else what tools/build.sh prints (building on
// first use).
func Assets() (string, error) { return toolcache.Path("KUBEBUILDER_ASSETS", "build.sh") }

// Main is a test package's TestMain: it starts the API server into *env,
// runs the package's tests and stops it. The package fails, naming pkg,
// when the API server does not start or does not stop.
func Main(m *testing.M, pkg string, env **Env) {
	e, err := Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s tests need a kube-apiserver: %v\n", pkg, err)
		os.Exit(1)
	}
	*env = e
	code := m.Run()
	if err := e.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "%s tests: stop kube-apiserver: %v\n", pkg, err)
		code = max(code, 1)
	}
	os.Exit(code)
}

// Namespace creates a namespace of its own for one test, named prefix-
// and a random suffix, and deletes it when the test ends. envtest runs no
// namespace controller, so a deleted namespace stays terminating with its
// objects, harmless in a namespace of its own, until the API server stops.
func (e *Env) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	ns, err := e.Client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		_ = e.Client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}
