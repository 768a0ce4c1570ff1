package bench

// The project's standing goals, the targets the report's headlines check.
// A headline reads "met" only when every run meets its goal.
const (
	// goalSidecarCPU bounds the sidecar's CPU per call over haproxy's.
	goalSidecarCPU = 0.5
	// goalSidecarP99 bounds the sidecar's p99 over haproxy's.
	goalSidecarP99 = 1.0
	// goalSidecarIdleRSS bounds the sidecar's idle RSS, in MiB.
	goalSidecarIdleRSS = 15
	// goalPushP50 and goalPushP99 bound the control plane's push latency,
	// in ms, at the first control-plane size.
	goalPushP50 = 10
	goalPushP99 = 50
	// goalControlRSS bounds the control plane's RSS over istiod's (1/8).
	goalControlRSS = 0.125
	// goalPeakEWMA bounds peak-EWMA's p99 over round_robin's with one slow
	// pod.
	goalPeakEWMA = 0.25
)
