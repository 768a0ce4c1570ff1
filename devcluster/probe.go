package devcluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probeLoop runs a readiness or liveness probe for c as the kubelet does:
// after initialDelaySeconds, every periodSeconds, with failure and success
// thresholds. A failed liveness probe kills the process; the supervisor
// restarts it per restartPolicy.
func (p *podRuntime) probeLoop(c *containerRuntime, probe *corev1.Probe, liveness bool) {
	defer p.wg.Done()
	period := time.Duration(max(probe.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(probe.TimeoutSeconds, 1)) * time.Second
	failThreshold := int(max(probe.FailureThreshold, 1))
	successThreshold := int(max(probe.SuccessThreshold, 1))
	// Probe often until the first success, so a pod turns ready soon
	// after it can serve; then at the configured period.
	fast := min(period, 200*time.Millisecond)
	t := time.NewTimer(time.Duration(probe.InitialDelaySeconds) * time.Second)
	defer t.Stop()
	successes, failures := 0, 0
	everReady := false
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		proc := c.proc
		p.mu.Unlock()
		if proc == nil {
			successes, failures, everReady = 0, 0, false
			t.Reset(fast)
			continue
		}
		ctx, cancel := context.WithTimeout(p.ctx, timeout)
		err := p.probe(ctx, c, probe)
		cancel()
		if err == nil {
			successes, failures = successes+1, 0
		} else {
			successes, failures = 0, failures+1
		}
		switch {
		case liveness && failures >= failThreshold:
			p.log.Info("liveness probe failed, killing container", "container", c.spec.Name, "err", err)
			proc.signal(syscall.SIGKILL)
			successes, failures = 0, 0
		case !liveness && successes >= successThreshold:
			everReady = true
			p.setReady(c, true)
		case !liveness && failures >= failThreshold:
			p.setReady(c, false)
		}
		if everReady || liveness {
			t.Reset(period)
		} else {
			t.Reset(fast)
		}
	}
}

// probe runs one check from inside the pod's network namespace.
func (p *podRuntime) probe(ctx context.Context, c *containerRuntime, probe *corev1.Probe) error {
	host := p.net.ip.String()
	dialer := netnsDialer{netns: p.net.netns}
	switch {
	case probe.TCPSocket != nil:
		port, err := resolvePort(probe.TCPSocket.Port, c.spec)
		if err != nil {
			return err
		}
		if probe.TCPSocket.Host != "" {
			host = probe.TCPSocket.Host
		}
		conn, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case probe.HTTPGet != nil:
		g := probe.HTTPGet
		port, err := resolvePort(g.Port, c.spec)
		if err != nil {
			return err
		}
		if g.Host != "" {
			host = g.Host
		}
		scheme := "http"
		if g.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), g.Path), nil)
		if err != nil {
			return err
		}
		for _, h := range g.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		// Like the kubelet, an HTTPS probe does not verify the certificate:
		// a webhook's self-signed one is not for the pod's IP.
		client := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true,
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // as the kubelet's prober
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("http probe: %s", resp.Status)
		}
		return nil
	case probe.GRPC != nil:
		target := net.JoinHostPort(host, strconv.Itoa(int(probe.GRPC.Port)))
		conn, err := grpc.NewClient("passthrough:///"+target,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return dialer.DialContext(ctx, "tcp", addr)
			}))
		if err != nil {
			return err
		}
		defer conn.Close()
		service := ""
		if probe.GRPC.Service != nil {
			service = *probe.GRPC.Service
		}
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("grpc probe: %s", resp.GetStatus())
		}
		return nil
	case probe.Exec != nil:
		enter, img, err := p.enter(c)
		if err != nil {
			return err
		}
		argv, err := p.node.agent.resolveArgv(img, p.env(c, img), probe.Exec.Command)
		if err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, enter[0], append(enter[1:], argv...)...)
		cmd.Env = p.env(c, img)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("exec probe: %w: %s", err, out)
		}
		return nil
	}
	return nil
}

// resolvePort turns a numeric or named port into a number.
func resolvePort(port intstr.IntOrString, c corev1.Container) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == port.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, port.StrVal)
}
