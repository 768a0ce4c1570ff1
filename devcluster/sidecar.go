package devcluster

import (
	"context"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// isSidecar reports whether c is a native sidecar: an init container with
// restartPolicy Always, which the kubelet starts in init order and keeps
// running beside the app (how Istio, and Ballast's injector, add a proxy
// that is up before the app's first connection).
func isSidecar(c corev1.Container) bool {
	return c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

// startSidecar starts a native sidecar under a supervisor, with its
// readiness and liveness probes, and returns once it has started: when its
// startup probe first succeeds, or, without one, when its process runs.
// Only then does the next init container (or the app) start, as with the
// kubelet. It returns false if the pod goes away first.
func (p *podRuntime) startSidecar(c *containerRuntime) bool {
	p.startContainer(c)
	return p.waitStarted(c)
}

// waitStarted polls c's startup probe (or its process) until it passes.
// It probes faster than the probe's period, so the app starts soon after
// the sidecar can serve; failing for failureThreshold periods in a row
// kills the process, and its supervisor restarts it, as the kubelet does.
func (p *podRuntime) waitStarted(c *containerRuntime) bool {
	probe := c.spec.StartupProbe
	var giveUp time.Duration
	if probe != nil {
		giveUp = time.Duration(max(probe.PeriodSeconds, 1)) * time.Second * time.Duration(max(probe.FailureThreshold, 1))
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var failingSince time.Time
	for {
		p.mu.Lock()
		proc := c.proc
		p.mu.Unlock()
		switch {
		case proc == nil:
			failingSince = time.Time{}
		case probe == nil:
			return true
		default:
			ctx, cancel := context.WithTimeout(p.ctx, time.Duration(max(probe.TimeoutSeconds, 1))*time.Second)
			err := p.probe(ctx, c, probe)
			cancel()
			if err == nil {
				p.log.Info("sidecar started", "container", c.spec.Name)
				return true
			}
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			if time.Since(failingSince) >= giveUp {
				p.log.Info("startup probe failed, killing container", "container", c.spec.Name, "err", err)
				proc.signal(syscall.SIGKILL)
				failingSince = time.Time{}
			}
		}
		select {
		case <-p.ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// stopAll stops procs together: SIGTERM, then SIGKILL after grace.
func stopAll(procs []*process, grace time.Duration) {
	var wg sync.WaitGroup
	for _, proc := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); proc.stop(grace) }()
	}
	wg.Wait()
}

// startContainer runs c under supervision (restarts per the pod's policy)
// with its readiness and liveness probes, each in a goroutine of the pod.
func (p *podRuntime) startContainer(c *containerRuntime) {
	p.wg.Add(1)
	go p.supervise(c)
	if c.spec.ReadinessProbe != nil {
		p.wg.Add(1)
		go p.probeLoop(c, c.spec.ReadinessProbe, false)
	}
	if c.spec.LivenessProbe != nil {
		p.wg.Add(1)
		go p.probeLoop(c, c.spec.LivenessProbe, true)
	}
}
