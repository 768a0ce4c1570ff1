package files_test

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/files"
)

// canaryRoute is a GRPCRoute of demo/greeter sending the given share to
// greeter-v2; header is the regular expression of its header match.
func canaryRoute(v2Weight, header string) string {
	return `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: canary
  namespace: demo
spec:
  parentRefs:
  - {group: "", kind: Service, name: greeter, port: 80}
  rules:
  - name: canary
    matches:
    - headers:
      - type: RegularExpression
        name: user
        value: '` + header + `'
    backendRefs:
    - {name: greeter, port: 80, weight: 90}
    - {name: greeter-v2, port: 80, weight: ` + v2Weight + `}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata:
  name: from-demo
  namespace: other
spec:
  from: [{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: demo}]
  to: [{group: "", kind: Service}]
`
}

func weights(reg *discovery.Registry) string {
	svc, ok := reg.Get(discovery.Key{Namespace: "demo", Name: "greeter"})
	if !ok {
		return "no service"
	}
	pr, ok := svc.Route(80)
	if !ok {
		return "no route"
	}
	var parts []string
	for _, r := range pr.Rules {
		for _, b := range r.Backends {
			parts = append(parts, fmt.Sprintf("%s=%d", b.Service.Name, b.Weight))
		}
	}
	return strings.Join(parts, " ")
}

// GRPCRoutes and ReferenceGrants are read beside Services; a route that
// fails validation is an error at its file and line, and its file keeps
// its last good state.
func TestLoadRoutes(t *testing.T) {
	dir := t.TempDir()
	reg := discovery.NewRegistry()
	src := files.New(dir, reg, files.Options{Logger: slog.New(slog.DiscardHandler)})
	v2 := strings.ReplaceAll(greeterService, "name: greeter", "name: greeter-v2")
	writeFiles(t, dir, map[string]string{"svc.yaml": greeterService + "---\n" + v2, "route.yaml": canaryRoute("7", "a.*")})
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	if got := weights(reg); got != "greeter=90 greeter-v2=7" {
		t.Fatalf("route weights %q, want greeter=90 greeter-v2=7", got)
	}
	writeFiles(t, dir, map[string]string{"route.yaml": canaryRoute("3", "(a")})
	err := src.Load()
	want := filepath.Join(dir, "route.yaml") + ":15: document 1: grpcroute demo/canary: rule 0 (canary): spec.rules[0].matches[0].headers[0].value: invalid regular expression"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Load error %v, want one containing %q", err, want)
	}
	if got := weights(reg); got != "greeter=90 greeter-v2=7" {
		t.Errorf("route weights %q after a bad edit, want the last good greeter-v2=7", got)
	}
	_, parents, ok := reg.RouteStatus(discovery.Key{Namespace: "demo", Name: "canary"})
	if !ok || len(parents) != 1 || parents[0].Conditions[0].Status != "True" {
		t.Errorf("status %+v, want the last good route accepted", parents)
	}
}
