package probe

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Handler answers GET Path(container, kind) for every probe of set: it
// runs the original probe against 127.0.0.1 within its timeout and answers
// 200, or 503 with what failed. Another path under PathPrefix is 404.
//
// One run at a time per path: a request that arrives while its probe runs
// waits for the slot until its own context ends (the kubelet gives up
// after the rewritten probe's timeout, the original one's), so a slow app
// never piles up connections to itself.
//
// Runs are counted in metrics (nil for none) as
// ballast_proxy_app_probes_total{probe,result}: what shows that the
// kubelet probes through the sidecar, and how often the app failed.
func Handler(set Set, metrics prometheus.Registerer) http.Handler {
	h := &handler{probes: make(map[string]*runner, len(set)),
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_proxy_app_probes_total",
			Help: "Runs of the app's rewritten probes by the sidecar, by probe path and result (success, failure).",
		}, []string{"probe", "result"})}
	if metrics != nil && len(set) > 0 {
		metrics.MustRegister(h.runs)
	}
	for path, spec := range set {
		h.probes[path] = &runner{spec: spec, slot: make(chan struct{}, 1), host: "127.0.0.1"}
	}
	return h
}

type handler struct {
	probes map[string]*runner
	runs   *prometheus.CounterVec
}

type runner struct {
	spec Spec
	host string
	slot chan struct{}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p, ok := h.probes[r.URL.Path]
	if !ok {
		http.Error(w, fmt.Sprintf("no app probe at %s", r.URL.Path), http.StatusNotFound)
		return
	}
	select {
	case p.slot <- struct{}{}:
	case <-r.Context().Done():
		http.Error(w, fmt.Sprintf("%s: gave up waiting for the previous run", r.URL.Path), http.StatusServiceUnavailable)
		return
	}
	err := p.run(r.Context())
	<-p.slot
	if err != nil {
		h.runs.WithLabelValues(r.URL.Path, "failure").Inc()
		http.Error(w, fmt.Sprintf("%s: %v", r.URL.Path, err), http.StatusServiceUnavailable)
		return
	}
	h.runs.WithLabelValues(r.URL.Path, "success").Inc()
	fmt.Fprintln(w, "ok")
}

// run runs the probe once, as the kubelet's prober would.
func (p *runner) run(ctx context.Context) error {
	timeout := time.Duration(max(p.spec.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch s := p.spec; {
	case s.TCPSocket != nil:
		return p.tcp(ctx, s.TCPSocket)
	case s.HTTPGet != nil:
		return p.http(ctx, s.HTTPGet)
	case s.GRPC != nil:
		return p.grpc(ctx, s.GRPC)
	}
	return fmt.Errorf("no probe")
}

func (p *runner) addr(port int32) string {
	return net.JoinHostPort(p.host, strconv.Itoa(int(port)))
}

func (p *runner) tcp(ctx context.Context, t *TCPSocket) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.addr(t.Port))
	if err != nil {
		return fmt.Errorf("tcp probe: %w", err)
	}
	return conn.Close()
}

func (p *runner) http(ctx context.Context, g *HTTPGet) error {
	scheme := "http"
	if strings.EqualFold(g.Scheme, "HTTPS") {
		scheme = "https"
	}
	path := g.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	url := scheme + "://" + p.addr(g.Port) + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("http probe %s: %w", url, err)
	}
	// The kubelet's defaults, which the probe's own headers override.
	req.Header.Set("User-Agent", "kube-probe/ballast")
	req.Header.Set("Accept", "*/*")
	for _, h := range g.HTTPHeaders {
		if strings.EqualFold(h.Name, "Host") {
			req.Host = h.Value
			continue
		}
		req.Header.Set(h.Name, h.Value)
	}
	// One connection per run, no redirects followed (a 3xx is success,
	// as the kubelet counts it), and no certificate check: the kubelet
	// does none, and the app's certificate is not for 127.0.0.1.
	client := &http.Client{
		Transport: &http.Transport{
			DisableKeepAlives: true,
			Proxy:             nil,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // as the kubelet's prober
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("http probe: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("http probe %s: %s", url, resp.Status)
	}
	return nil
}

func (p *runner) grpc(ctx context.Context, g *GRPC) error {
	target := p.addr(g.Port)
	conn, err := grpc.NewClient("passthrough:///"+target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("grpc probe %s: %w", target, err)
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: g.Service}, grpc.WaitForReady(false))
	if err != nil {
		return fmt.Errorf("grpc probe %s service %q: %w", target, g.Service, err)
	}
	if st := resp.GetStatus(); st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("grpc probe %s service %q: %s", target, g.Service, st)
	}
	return nil
}
