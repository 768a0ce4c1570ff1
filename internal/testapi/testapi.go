// Package testapi runs a real kube-apiserver and etcd for tests, through
// controller-runtime's envtest, with binaries built from the Go modules pinned
// in tools/ (tools/build.sh caches them in ~/.cache/ballast).
//
// One API server serves a whole test package: start it in TestMain.
package testapi

import (
	"fmt"
	"time"

	"github.com/go-logr/logr"
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
