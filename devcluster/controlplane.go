package devcluster

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/ballast-dev/ballast/internal/freeport"
)

// controlPlane is etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler, run as child processes from the binaries tools/build.sh
// builds. Every argument list contains the run directory, which is how a
// later run finds and kills the processes of a run that was killed.
type controlPlane struct {
	dir        string
	bin        string
	kubeconfig string
	config     *rest.Config
	procs      []*process // in start order
}

// freePort is an unused loopback port for a child to listen on.
func freePort() (int, error) {
	ports, err := freeport.Loopback(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (cp *controlPlane) start(ctx context.Context, svcCIDR string, advertise netip.Addr, log *slog.Logger) error {
	for _, sub := range []string{"etcd", "pki"} {
		if err := os.MkdirAll(filepath.Join(cp.dir, sub), 0o700); err != nil {
			return err
		}
	}
	pki := filepath.Join(cp.dir, "pki")
	saKey := filepath.Join(pki, "sa.key")
	saPub := filepath.Join(pki, "sa.pub")
	if err := writeServiceAccountKey(saKey, saPub); err != nil {
		return err
	}
	token := randomHex(16)
	tokens := filepath.Join(pki, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return err
	}

	etcdPort, err := freePort()
	if err != nil {
		return err
	}
	peerPort, err := freePort()
	if err != nil {
		return err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	log.Info("starting etcd", "url", etcdURL)
	if err := cp.spawn("etcd",
		"--name=default",
		"--data-dir="+filepath.Join(cp.dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL,
		"--unsafe-no-fsync=true",
		"--log-level=warn",
	); err != nil {
		return err
	}
	if err := waitHTTP(ctx, cp.procs[len(cp.procs)-1], etcdURL+"/health", "", time.Minute); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}

	apiPort, err := freePort()
	if err != nil {
		return err
	}
	apiURL := "https://127.0.0.1:" + strconv.Itoa(apiPort)
	log.Info("starting kube-apiserver", "url", apiURL, "serviceCIDR", svcCIDR)
	if err := cp.spawn("kube-apiserver",
		"--etcd-servers="+etcdURL,
		// It listens on loopback; pods reach it at the advertised address,
		// the router's, where the harness relays its port to loopback.
		// The endpoint reconciler publishes that address as the kubernetes
		// Service's endpoint.
		"--bind-address=127.0.0.1", "--advertise-address="+advertise.String(),
		"--secure-port="+strconv.Itoa(apiPort),
		"--cert-dir="+pki,
		"--token-auth-file="+tokens,
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range="+svcCIDR,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+saPub,
		"--service-account-signing-key-file="+saKey,
		"--kubelet-preferred-address-types=InternalIP",
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--v=0",
	); err != nil {
		return err
	}
	if err := waitHTTP(ctx, cp.procs[len(cp.procs)-1], apiURL+"/readyz", token, 2*time.Minute); err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}

	cp.config = &rest.Config{
		Host:            apiURL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             200,
		Burst:           400,
	}
	cp.kubeconfig = filepath.Join(cp.dir, "kubeconfig")
	if err := writeKubeconfig(cp.kubeconfig, apiURL, token); err != nil {
		return err
	}

	log.Info("starting kube-controller-manager and kube-scheduler")
	if err := cp.spawn("kube-controller-manager",
		"--kubeconfig="+cp.kubeconfig,
		"--authentication-kubeconfig="+cp.kubeconfig,
		"--authorization-kubeconfig="+cp.kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port=0",
		"--service-account-private-key-file="+saKey,
		"--root-ca-file="+filepath.Join(pki, "apiserver.crt"),
		"--use-service-account-credentials=false",
		"--cluster-name="+filepath.Base(cp.dir),
		"--concurrent-deployment-syncs=10", "--concurrent-service-endpoint-syncs=10",
		"--endpointslice-updates-batch-period=0s",
		"--v=0",
	); err != nil {
		return err
	}
	if err := cp.spawn("kube-scheduler",
		"--kubeconfig="+cp.kubeconfig,
		"--authentication-kubeconfig="+cp.kubeconfig,
		"--authorization-kubeconfig="+cp.kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1", "--secure-port=0",
		"--v=0",
	); err != nil {
		return err
	}
	return nil
}

func (cp *controlPlane) spawn(name string, args ...string) error {
	p, err := startProcess(name, filepath.Join(cp.dir, name+".log"), os.Environ(), append([]string{filepath.Join(cp.bin, name)}, args...)...)
	if err != nil {
		return err
	}
	cp.procs = append(cp.procs, p)
	return nil
}

// stop ends the processes in reverse start order.
func (cp *controlPlane) stop() {
	for i := len(cp.procs) - 1; i >= 0; i-- {
		cp.procs[i].stop(10 * time.Second)
	}
	cp.procs = nil
}

// waitHTTP polls url until it answers 200, p exits, or timeout passes.
func waitHTTP(ctx context.Context, p *process, url, token string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{
		Timeout: 2 * time.Second,
		// Loopback only, to a certificate the apiserver made for itself.
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("%s: %s", url, resp.Status)
		} else {
			last = err
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited before ready (%v); see %s", p.err, p.log)
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %v; see %s", timeout, last, p.log)
		case <-tick.C:
		}
	}
}

func writeServiceAccountKey(keyPath, pubPath string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

// writeKubeconfig writes an admin kubeconfig for url.
func writeKubeconfig(path, url, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["ballast-dev"] = &clientcmdapi.Cluster{Server: url, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["ballast-dev"] = &clientcmdapi.Context{Cluster: "ballast-dev", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "ballast-dev"
	return clientcmd.WriteToFile(*cfg, path)
}
