package files_test

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/files"
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
