package bench

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/files"
)

// The manifest `ballast control --files` is given describes the pods as
// the ready endpoints of greeter.bench's grpc port, as the files source
// reads it.
func TestServiceManifestLoads(t *testing.T) {
	pods := []*pod{
		{Name: "pod-a", Addr: netip.MustParseAddrPort("127.0.0.20:40001")},
		{Name: "pod-b", Addr: netip.MustParseAddrPort("127.0.0.21:40002")},
		{Name: "pod-slow", Addr: netip.MustParseAddrPort("127.0.0.22:40001")},
	}
	manifest, err := serviceManifest(pods, defaultClusterIP)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "greeter.yaml"), manifest, 0o644); err != nil {
		t.Fatal(err)
	}
	reg := discovery.NewRegistry()
	if err := files.New(dir, reg, files.Options{}).Load(); err != nil {
		t.Fatalf("load:\n%s\n%v", manifest, err)
	}
	svc, ok := reg.Get(discovery.Key{Namespace: benchNamespace, Name: benchService})
	if !ok {
		t.Fatalf("no Service %s.%s in the registry after loading:\n%s", benchService, benchNamespace, manifest)
	}
	port, err := svc.Port("grpc")
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.AddrPort]string{}
	for _, e := range port.Routable() {
		got[e.Address] = e.Pod
	}
	for _, p := range pods {
		if got[p.Addr] != p.Name {
			t.Errorf("endpoint %s: pod %q, want %q (all: %v)", p.Addr, got[p.Addr], p.Name, got)
		}
	}
	if port.Port != benchPort || len(got) != len(pods) {
		t.Errorf("port %d with %d ready endpoints, want %d with %d", port.Port, len(got), benchPort, len(pods))
	}
}

// A mode's row is pending, saying why, while the ballast binary lacks its
// command or there is no binary at all.
func TestHasCommand(t *testing.T) {
	tests := []struct {
		name, binary string
		want         string
	}{
		{"no binary", "", "pending: no ballast binary"},
		{"binary without the command", "/bin/false", "pending: this ballast binary has no `proxy` command: the sidecar"},
		{"binary with the command", "/bin/true", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.binary != "" {
				if _, err := os.Stat(tt.binary); err != nil {
					t.Skip(err)
				}
			}
			b := &Bench{opts: Options{Binary: tt.binary}}
			err := b.hasCommand("proxy", "the sidecar proxy (issue 5)")
			got := ""
			if err != nil {
				got = whyNot(err)
			}
			if (tt.want == "") != (got == "") || !strings.HasPrefix(got, tt.want) {
				t.Errorf("hasCommand with %q: %q, want a note starting %q", tt.binary, got, tt.want)
			}
		})
	}
}
