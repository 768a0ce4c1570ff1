package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// metrics are the proxy's Prometheus series. Per-Service children are made
// once per upstream, so the per-call path only increments.
type metrics struct {
	streams         *prometheus.CounterVec
	inFlight        *prometheus.GaugeVec
	newStreamErrors *prometheus.CounterVec
	passthrough     *prometheus.CounterVec
	clientErrors    *prometheus.CounterVec
	retries         *prometheus.CounterVec
	timeouts        *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_proxy_streams_total",
			Help: "Calls (HTTP/2 streams) proxied, by destination Service and final gRPC status code.",
		}, []string{"service", "code"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ballast_proxy_streams_in_flight",
			Help: "Calls being proxied now, by destination Service.",
		}, []string{"service"}),
		newStreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_proxy_upstream_errors_total",
			Help: "Calls that could not start upstream (no ready endpoint, pick or connection failure), by Service.",
		}, []string{"service"}),
		passthrough: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_proxy_passthrough_connections_total",
			Help: "Intercepted connections passed through as plain TCP, by reason.",
		}, []string{"reason"}),
		clientErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_proxy_client_errors_total",
			Help: "Protocol violations and abuse by clients, by scope (connection: GOAWAY; stream: RST_STREAM or a status) and error (the HTTP/2 error code, or header_list_too_large, client_stalled).",
		}, []string{"scope", "error"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_proxy_retries_total",
			Help: "Tries that failed with a code their route rule retries, by Service and what became of them: retried, attempts_exhausted, budget_exhausted (the rule's retry budget refused), not_buffered (the request was over the replay buffer).",
		}, []string{"service", "result"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ballast_proxy_timeouts_total",
			Help: "Calls and tries the proxy ended with DEADLINE_EXCEEDED because their route rule's timeout (call) or per-try timeout (try) elapsed, by Service.",
		}, []string{"service", "timeout"}),
	}
	reg.MustRegister(m.streams, m.inFlight, m.newStreamErrors, m.passthrough, m.clientErrors, m.retries, m.timeouts)
	return m
}

type upstreamMetrics struct {
	streams         [maxCode + 1]prometheus.Counter
	inFlight        prometheus.Gauge
	newStreamErrors prometheus.Counter
	// duration, if set, observes each call's duration in seconds (inbound
	// calls only: outbound ones do not pay for reading the clock).
	duration prometheus.Observer
	// calls counts what route rules' call policies did; nil where calls
	// have no route (inbound).
	calls *callMetrics
}

// callMetrics are the series of call policies (call.go).
type callMetrics struct {
	retries  [numRetryResults]prometheus.Counter
	timeouts [2]prometheus.Counter // call, try
}

func (m *metrics) forService(service string) upstreamMetrics {
	um := upstreamMetrics{
		inFlight:        m.inFlight.WithLabelValues(service),
		newStreamErrors: m.newStreamErrors.WithLabelValues(service),
	}
	for c := codes.OK; c <= maxCode; c++ {
		um.streams[c] = m.streams.WithLabelValues(service, c.String())
	}
	um.calls = &callMetrics{}
	for r := range numRetryResults {
		um.calls.retries[r] = m.retries.WithLabelValues(service, r.String())
	}
	um.calls.timeouts[callTimeout] = m.timeouts.WithLabelValues(service, "call")
	um.calls.timeouts[tryTimeout] = m.timeouts.WithLabelValues(service, "try")
	return um
}
