package files_test

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/files"
	"github.com/ballast-dev/ballast/policy"
)

func greeterPolicy(request string) string {
	return `apiVersion: ballast.dev/v1alpha1
kind: TrafficPolicy
metadata:
  name: greeter
  namespace: demo
spec:
  targetRefs:
  - {group: "", kind: Service, name: greeter}
  timeouts:
    request: ` + request + `
  retry: {codes: [Unavailable], attempts: 2}
`
}

// TrafficPolicies are read beside Services and apply to their calls; an
// invalid one is an error at its file and line, naming the field, and its
// file keeps its last good state.
func TestLoadTrafficPolicies(t *testing.T) {
	dir := t.TempDir()
	reg := discovery.NewRegistry()
	src := files.New(dir, reg, files.Options{Logger: slog.New(slog.DiscardHandler)})
	timeout := func() time.Duration {
		svc, ok := reg.Get(discovery.Key{Namespace: "demo", Name: "greeter"})
		if !ok {
			return -1
		}
		return svc.Call.Timeout
	}
	writeFiles(t, dir, map[string]string{"svc.yaml": greeterService, "policy.yaml": greeterPolicy("200ms")})
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	if got := timeout(); got != 200*time.Millisecond {
		t.Fatalf("timeout %v, want 200ms", got)
	}
	writeFiles(t, dir, map[string]string{"policy.yaml": greeterPolicy("1.5s")})
	err := src.Load()
	want := filepath.Join(dir, "policy.yaml") + ":10: document 1: trafficpolicy demo/greeter: spec.timeouts.request: duration \"1.5s\""
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Load error %v, want one containing %q", err, want)
	}
	if got := timeout(); got != 200*time.Millisecond {
		t.Errorf("timeout %v after a bad edit, want the last good 200ms", got)
	}
	writeFiles(t, dir, map[string]string{"policy.yaml": "# no policy\n"})
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	if got := timeout(); got != 0 {
		t.Errorf("timeout %v once the policy is gone, want none", got)
	}
}

func greeterBackendPolicy(percent string) string {
	return `apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackendTrafficPolicy
metadata:
  name: budget
  namespace: demo
spec:
  targetRefs:
  - {group: "", kind: Service, name: greeter}
  retryConstraint:
    budget: {percent: ` + percent + `, interval: 10s}
    minRetryRate: {count: 1, interval: 1s}
`
}

// XBackendTrafficPolicies (Gateway API's experimental channel) are read
// beside TrafficPolicies: a retry budget on a Service bounds the retries
// its TrafficPolicy asks for; an invalid one is an error at its file and
// line, naming the field, and its file keeps its last good state.
func TestLoadBackendTrafficPolicies(t *testing.T) {
	dir := t.TempDir()
	reg := discovery.NewRegistry()
	src := files.New(dir, reg, files.Options{Logger: slog.New(slog.DiscardHandler)})
	budget := func() *policy.RetryBudget {
		svc, ok := reg.Get(discovery.Key{Namespace: "demo", Name: "greeter"})
		if !ok || svc.Call.Retry == nil {
			return nil
		}
		return svc.Call.Retry.Budget
	}
	writeFiles(t, dir, map[string]string{"svc.yaml": greeterService, "policy.yaml": greeterPolicy("200ms"), "budget.yaml": greeterBackendPolicy("25")})
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	want := policy.RetryBudget{Percent: 25, Interval: 10 * time.Second, MinRetries: 10}
	if got := budget(); got == nil || *got != want {
		t.Fatalf("budget %+v, want %+v", got, want)
	}
	_, anc, ok := reg.BackendPolicyStatus(discovery.Key{Namespace: "demo", Name: "budget"})
	if !ok || len(anc) != 1 || anc[0].Conditions[0].Reason != "Accepted" ||
		!strings.Contains(anc[0].Conditions[0].Message, "RetryBudget is not applied by proxyless clients") {
		t.Errorf("status %+v, %v: want Accepted, saying proxyless clients do not honour the budget", anc, ok)
	}
	writeFiles(t, dir, map[string]string{"budget.yaml": greeterBackendPolicy("120")})
	err := src.Load()
	wantErr := filepath.Join(dir, "budget.yaml") + ":10: document 1: xbackendtrafficpolicy demo/budget: spec.retryConstraint.budget.percent: 120 is outside 0..100"
	if err == nil || !strings.Contains(err.Error(), wantErr) {
		t.Fatalf("Load error %v, want one containing %q", err, wantErr)
	}
	if got := budget(); got == nil || *got != want {
		t.Errorf("budget %+v after a bad edit, want the last good %+v", got, want)
	}
	writeFiles(t, dir, map[string]string{"budget.yaml": "# no policy\n"})
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	if got := budget(); got != nil {
		t.Errorf("budget %+v once the policy is gone, want none", got)
	}
}
