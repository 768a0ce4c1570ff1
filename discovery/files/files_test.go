package files_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/goleak"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/files"
)

const greeterService = `apiVersion: v1
kind: Service
metadata:
  name: greeter
  namespace: demo
spec:
  clusterIP: 10.96.0.10
  ports:
  - name: grpc
    port: 80
    targetPort: grpc
`

// greeterSlice returns an EndpointSlice of demo/greeter with the given
// addresses on grpc port 50051; "!" before an address marks it not ready.
func greeterSlice(name string, addrs ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %s
  namespace: demo
  labels:
    kubernetes.io/service-name: greeter
addressType: IPv4
ports:
- name: grpc
  port: 50051
endpoints:
`, name)
	for _, a := range addrs {
		ready := !strings.HasPrefix(a, "!")
		fmt.Fprintf(&b, "- addresses: [%q]\n  conditions: {ready: %v}\n", strings.TrimPrefix(a, "!"), ready)
	}
	return b.String()
}

var greeterKey = discovery.Key{Namespace: "demo", Name: "greeter"}

// state renders the registry as "ns/name port: addr(ready) …" lines, the
// Service's trafficDistribution after its name when it has one.
func state(reg *discovery.Registry) []string {
	var out []string
	for _, s := range reg.List() {
		for _, p := range s.Ports {
			ref := p.Name
			if ref == "" {
				ref = fmt.Sprint(p.Port)
			}
			key := s.Key.String()
			if s.TrafficDistribution != "" {
				key += " " + s.TrafficDistribution
			}
			line := fmt.Sprintf("%s %s:", key, ref)
			for _, e := range p.Endpoints {
				mark := ""
				if !e.Ready {
					mark = "!"
				}
				line += " " + mark + e.Address.String()
			}
			out = append(out, line)
		}
	}
	return out
}

func writeFiles(t *testing.T, dir string, fs map[string]string) {
	t.Helper()
	for name, content := range fs {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  []string
		// wantErrs are substrings that must all appear in Load's error.
		wantErrs []string
	}{
		{
			name:  "multi-document file merges slices",
			files: map[string]string{"greeter.yaml": greeterService + "---\n" + greeterSlice("a", "10.244.0.2") + "---\n" + greeterSlice("b", "10.244.0.1", "!10.244.0.3")},
			want:  []string{"demo/greeter grpc: 10.244.0.1:50051 10.244.0.2:50051 !10.244.0.3:50051"},
		},
		{
			name: "objects of one Service across files, .yml and .json",
			files: map[string]string{
				"svc.yml":   greeterService,
				"a.yaml":    greeterSlice("a", "10.244.0.1"),
				"b.json":    `{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"b","namespace":"demo","labels":{"kubernetes.io/service-name":"greeter"}},"addressType":"IPv6","ports":[{"name":"grpc","port":50052}],"endpoints":[{"addresses":["fd00:10:244::1"]}]}`,
				"notes.txt": "not a manifest",
				".swp.yaml": "::: editor swap file :::",
			},
			want: []string{"demo/greeter grpc: 10.244.0.1:50051 [fd00:10:244::1]:50052"},
		},
		{
			name: "v1 List, empty documents, comments, default namespace",
			files: map[string]string{"list.yaml": `# leading comment
---
--- # empty document
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: solo}
  spec:
    ports: [{port: 9000}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: solo-a
    labels: {kubernetes.io/service-name: solo}
  addressType: IPv4
  ports: [{port: 9000, name: ""}]
  endpoints: [{addresses: [10.244.5.1]}]
---
`},
			want: []string{"default/solo 9000: 10.244.5.1:9000"},
		},
		{
			name: "Service without slices has no endpoints",
			files: map[string]string{
				"svc.yaml": greeterService,
			},
			want: []string{"demo/greeter grpc:"},
		},
		{
			name:  "trafficDistribution",
			files: map[string]string{"svc.yaml": strings.Replace(greeterService, "spec:\n", "spec:\n  trafficDistribution: PreferSameZone\n", 1)},
			want:  []string{"demo/greeter PreferSameZone grpc:"},
		},
		{
			name:     "unknown trafficDistribution",
			files:    map[string]string{"svc.yaml": strings.Replace(greeterService, "spec:\n", "spec:\n  trafficDistribution: PreferNearby\n", 1)},
			wantErrs: []string{"svc.yaml:7: document 1: ", `Service demo/greeter: trafficDistribution "PreferNearby": want PreferSameZone, PreferClose or PreferSameNode`},
		},
		{
			name: "YAML syntax error names file and line in the file",
			files: map[string]string{
				"svc.yaml": greeterService,
				// Document 2 starts on line 3; its bad line is its 4th.
				"bad.yaml": "# a comment\n---\napiVersion: v1\nkind: Service\nmetadata:\n name: x\n  namespace: y\n",
			},
			want:     []string{"demo/greeter grpc:"},
			wantErrs: []string{"bad.yaml:7: document 2: ", "yaml: line 5"},
		},
		{
			name: "YAML error the converter gives no line for",
			files: map[string]string{
				"tab.yaml": "apiVersion: v1\nkind: Service\n\tmetadata: {}\n",
			},
			wantErrs: []string{"tab.yaml:3: document 1: "},
		},
		{
			name: "misspelt field is located",
			files: map[string]string{
				"typo.yaml": greeterService + "---\n" + strings.Replace(greeterSlice("a", "10.244.0.1"), "  port: 50051", "  prot: 50051", 1),
			},
			// The slice starts on line 13; "prot" is its 11th line.
			wantErrs: []string{"typo.yaml:23: document 2: ", `unknown field "ports[0].prot"`},
		},
		{
			name: "wrong type is located",
			files: map[string]string{
				"type.yaml": strings.Replace(greeterService, "port: 80", "port: eighty", 1),
			},
			wantErrs: []string{"type.yaml:10: document 1: ", "cannot unmarshal string"},
		},
		{
			name: "unknown kind",
			files: map[string]string{
				"deploy.yaml": greeterService + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: greeter}\n",
			},
			wantErrs: []string{"deploy.yaml:14: document 2: ", `unknown kind "Deployment" (apiVersion "apps/v1")`},
		},
		{
			name: "missing name",
			files: map[string]string{
				"noname.yaml": "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: demo\n",
			},
			wantErrs: []string{"noname.yaml:3: document 1: Service has no metadata.name"},
		},
		{
			name: "slice without service-name label",
			files: map[string]string{
				"nolabel.yaml": strings.Replace(greeterSlice("a", "10.244.0.1"), "    kubernetes.io/service-name: greeter\n", "    app: greeter\n", 1),
			},
			wantErrs: []string{"nolabel.yaml:3: document 1: ", "no label kubernetes.io/service-name"},
		},
		{
			name: "address of the wrong family",
			files: map[string]string{
				"family.yaml": greeterSlice("a", "10.244.0.1", "fd00::1"),
			},
			wantErrs: []string{"family.yaml:15: document 1: ", `address "fd00::1" is not an IPv4 address`},
		},
		{
			name: "Service port 0",
			files: map[string]string{
				"port0.yaml": strings.Replace(greeterService, "port: 80", "port: 0", 1),
			},
			wantErrs: []string{"port0.yaml:10: document 1: ", "Service demo/greeter: port 0 is outside 1-65535"},
		},
		{
			name: "Service port over 65535",
			files: map[string]string{
				"port70000.yaml": strings.Replace(greeterService, "port: 80", "port: 70000", 1),
			},
			wantErrs: []string{"port70000.yaml:10: document 1: ", "port 70000 is outside 1-65535"},
		},
		{
			name: "Service targetPort over 65535",
			files: map[string]string{
				"target.yaml": strings.Replace(greeterService, "targetPort: grpc", "targetPort: 65536", 1),
			},
			wantErrs: []string{"target.yaml:11: document 1: ", "targetPort 65536 is outside 1-65535"},
		},
		{
			name: "EndpointSlice port over 65535",
			files: map[string]string{
				"slice.yaml": strings.Replace(greeterSlice("a", "10.244.0.1"), "port: 50051", "port: 70000", 1),
			},
			wantErrs: []string{"slice.yaml:11: document 1: ", "EndpointSlice demo/a: port 70000 is outside 1-65535"},
		},
		{
			name: "unknown addressType",
			files: map[string]string{
				"type.yaml": strings.Replace(greeterSlice("a", "10.244.0.1"), "addressType: IPv4", "addressType: IPv5", 1),
			},
			wantErrs: []string{"type.yaml:8: document 1: ", `addressType "IPv5": want IPv4, IPv6 or FQDN`},
		},
		{
			name: "List item errors name the item",
			files: map[string]string{
				"list.yaml": "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n  spec: {prots: []}\n",
			},
			wantErrs: []string{"list.yaml:7: document 1: items[0]: ", `unknown field "spec.prots"`},
		},
		{
			name: "one bad document rejects the whole file",
			files: map[string]string{
				"half.yaml": greeterService + "---\nkind: Nonsense\n",
			},
			wantErrs: []string{"half.yaml:13: document 2: unknown kind"},
		},
		{
			name: "object declared twice: first file by name wins",
			files: map[string]string{
				"a.yaml": greeterService + "---\n" + greeterSlice("a", "10.244.0.1"),
				"b.yaml": greeterSlice("a", "10.244.0.9"),
			},
			want:     []string{"demo/greeter grpc: 10.244.0.1:50051"},
			wantErrs: []string{"b.yaml: EndpointSlice demo/a is also declared in a.yaml"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			reg := discovery.NewRegistry()
			src := files.New(dir, reg, files.Options{Logger: slog.New(slog.DiscardHandler)})
			err := src.Load()
			if len(tt.wantErrs) == 0 && err != nil {
				t.Fatalf("Load: %v", err)
			}
			if len(tt.wantErrs) > 0 && err == nil {
				t.Fatalf("Load succeeded; want an error containing %q", tt.wantErrs)
			}
			for _, want := range tt.wantErrs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Load error %q\ndoes not contain %q", err, want)
				}
			}
			if diff := cmp.Diff(tt.want, state(reg), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("registry mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadErrorType(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"bad.yaml": greeterService + "---\n" + "kind: Nonsense\n"})
	err := files.New(dir, discovery.NewRegistry(), files.Options{Logger: slog.New(slog.DiscardHandler)}).Load()
	var fe *files.Error
	if !errors.As(err, &fe) {
		t.Fatalf("Load error %v is not a *files.Error", err)
	}
	want := files.Error{File: filepath.Join(dir, "bad.yaml"), Line: 13, Doc: 2}
	if fe.File != want.File || fe.Line != want.Line || fe.Doc != want.Doc {
		t.Errorf("error at %s:%d document %d, want %s:%d document %d", fe.File, fe.Line, fe.Doc, want.File, want.Line, want.Doc)
	}
}

// TestLastGoodState edits files between Loads and checks that a broken
// file keeps its last good contents and never disturbs other files.
func TestLastGoodState(t *testing.T) {
	dir := t.TempDir()
	reg := discovery.NewRegistry()
	src := files.New(dir, reg, files.Options{Logger: slog.New(slog.DiscardHandler)})
	other := strings.ReplaceAll(greeterService, "greeter", "other")
	steps := []struct {
		name    string
		write   map[string]string
		remove  []string
		want    []string
		wantErr string
	}{
		{
			name:  "good files",
			write: map[string]string{"greeter.yaml": greeterService + "---\n" + greeterSlice("a", "10.244.0.1"), "other.yaml": other},
			want:  []string{"demo/greeter grpc: 10.244.0.1:50051", "demo/other grpc:"},
		},
		{
			name:    "greeter.yaml broken: its last good state stays",
			write:   map[string]string{"greeter.yaml": greeterService + "---\n" + greeterSlice("a", "10.244.0.1", "10.244.0.2") + "  bogus: [\n"},
			want:    []string{"demo/greeter grpc: 10.244.0.1:50051", "demo/other grpc:"},
			wantErr: "greeter.yaml:",
		},
		{
			name:    "other.yaml changes while greeter.yaml is still broken",
			write:   map[string]string{"other.yaml": other + "---\n" + strings.ReplaceAll(greeterSlice("o", "10.244.1.1"), "service-name: greeter", "service-name: other")},
			want:    []string{"demo/greeter grpc: 10.244.0.1:50051", "demo/other grpc: 10.244.1.1:50051"},
			wantErr: "greeter.yaml:",
		},
		{
			name:  "greeter.yaml fixed",
			write: map[string]string{"greeter.yaml": greeterService + "---\n" + greeterSlice("a", "10.244.0.1", "!10.244.0.2")},
			want:  []string{"demo/greeter grpc: 10.244.0.1:50051 !10.244.0.2:50051", "demo/other grpc: 10.244.1.1:50051"},
		},
		{
			name:   "other.yaml removed: its Service goes",
			remove: []string{"other.yaml"},
			want:   []string{"demo/greeter grpc: 10.244.0.1:50051 !10.244.0.2:50051"},
		},
		{
			name:    "greeter.yaml broken again",
			write:   map[string]string{"greeter.yaml": "kind: [\n"},
			want:    []string{"demo/greeter grpc: 10.244.0.1:50051 !10.244.0.2:50051"},
			wantErr: "greeter.yaml:1: document 1",
		},
		{
			name:   "broken file removed: its last good state goes too",
			remove: []string{"greeter.yaml"},
		},
	}
	for _, step := range steps {
		writeFiles(t, dir, step.write)
		for _, name := range step.remove {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		err := src.Load()
		switch {
		case step.wantErr == "" && err != nil:
			t.Fatalf("%s: Load: %v", step.name, err)
		case step.wantErr != "" && (err == nil || !strings.Contains(err.Error(), step.wantErr)):
			t.Fatalf("%s: Load error %v, want one containing %q", step.name, err, step.wantErr)
		}
		if diff := cmp.Diff(step.want, state(reg), cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("%s: registry mismatch (-want +got):\n%s", step.name, diff)
		}
	}
}

// TestLoadMissingDirectoryKeepsState checks that losing the directory
// itself is an error, not an empty configuration.
func TestLoadMissingDirectoryKeepsState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "manifests")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"svc.yaml": greeterService})
	reg := discovery.NewRegistry()
	src := files.New(dir, reg, files.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := src.Load(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	err := src.Load()
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Load of a missing directory: error %v, want one naming %s", err, dir)
	}
	if _, ok := reg.Get(greeterKey); !ok {
		t.Errorf("registry lost demo/greeter when the directory disappeared")
	}
}

// errorLog records the messages of logged errors.
type errorLog struct {
	slog.Handler
	mu   *sync.Mutex
	errs *[]string
	c    chan struct{}
}

func newErrorLog() errorLog {
	return errorLog{Handler: slog.DiscardHandler, mu: new(sync.Mutex), errs: new([]string), c: make(chan struct{}, 1)}
}

func (h errorLog) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelError }

func (h errorLog) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			*h.errs = append(*h.errs, a.Value.String())
		}
		return true
	})
	h.mu.Unlock()
	select {
	case h.c <- struct{}{}:
	default:
	}
	return nil
}

func (h errorLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h errorLog) WithGroup(string) slog.Handler      { return h }

func (h errorLog) contains(s string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.ContainsFunc(*h.errs, func(e string) bool { return strings.Contains(e, s) })
}

const waitTimeout = 30 * time.Second

// await waits until the registry shows want, re-checking on every change.
func await(t *testing.T, reg *discovery.Registry, what string, want []string) {
	t.Helper()
	sub := reg.Subscribe()
	defer sub.Close()
	deadline := time.After(waitTimeout)
	for {
		diff := cmp.Diff(want, state(reg), cmpopts.EquateEmpty())
		if diff == "" {
			return
		}
		select {
		case <-sub.C():
			sub.Drain()
		case <-deadline:
			t.Fatalf("%s: registry not as wanted within %v (-want +got):\n%s", what, waitTimeout, diff)
		}
	}
}

// TestRunWatches drives the watcher the ways files really change: plain
// writes, an editor's write-and-rename, a Kubernetes ConfigMap's symlink
// swap, a broken save, and removal.
func TestRunWatches(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	reg := discovery.NewRegistry()
	errLog := newErrorLog()
	src := files.New(dir, reg, files.Options{Logger: slog.New(errLog)})
	writeFiles(t, dir, map[string]string{"svc.yaml": greeterService})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("Run did not return within %v of its context ending", waitTimeout)
		}
	}()
	await(t, reg, "initial load", []string{"demo/greeter grpc:"})

	writeFiles(t, dir, map[string]string{"a.yaml": greeterSlice("a", "10.244.0.1")})
	await(t, reg, "new file", []string{"demo/greeter grpc: 10.244.0.1:50051"})

	// An editor saving by writing a temporary file and renaming it over.
	writeFiles(t, dir, map[string]string{".a.yaml.tmp": greeterSlice("a", "10.244.0.1", "10.244.0.2")})
	if err := os.Rename(filepath.Join(dir, ".a.yaml.tmp"), filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	await(t, reg, "rename over", []string{"demo/greeter grpc: 10.244.0.1:50051 10.244.0.2:50051"})

	// A ConfigMap volume: b.yaml → ..data/b.yaml, ..data → ..<version>;
	// an update writes a new version directory and swaps ..data by rename.
	configMapVersion(t, dir, "..v1", greeterSlice("b", "10.244.1.1"))
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join("..data", "b.yaml"), filepath.Join(dir, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	await(t, reg, "ConfigMap mounted", []string{"demo/greeter grpc: 10.244.0.1:50051 10.244.0.2:50051 10.244.1.1:50051"})
	configMapVersion(t, dir, "..v2", greeterSlice("b", "!10.244.1.1", "10.244.1.2"))
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	await(t, reg, "ConfigMap updated", []string{"demo/greeter grpc: 10.244.0.1:50051 10.244.0.2:50051 !10.244.1.1:50051 10.244.1.2:50051"})

	// A broken save: reported, and nothing served is lost.
	writeFiles(t, dir, map[string]string{"a.yaml": greeterSlice("a", "10.244.0.1") + "endpoints: {\n"})
	deadline := time.After(waitTimeout)
	for !errLog.contains(filepath.Join(dir, "a.yaml") + ":") {
		select {
		case <-errLog.c:
		case <-deadline:
			t.Fatalf("no error logged for the broken a.yaml within %v", waitTimeout)
		}
	}
	if diff := cmp.Diff([]string{"demo/greeter grpc: 10.244.0.1:50051 10.244.0.2:50051 !10.244.1.1:50051 10.244.1.2:50051"}, state(reg)); diff != "" {
		t.Fatalf("broken save changed the registry (-want +got):\n%s", diff)
	}

	if err := os.Remove(filepath.Join(dir, "svc.yaml")); err != nil {
		t.Fatal(err)
	}
	await(t, reg, "Service file removed", nil)
}

func configMapVersion(t *testing.T, dir, version, content string) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(dir, version), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, filepath.Join(dir, version), map[string]string{"b.yaml": content})
}

func TestRunMissingDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "absent")
	err := files.New(dir, discovery.NewRegistry(), files.Options{}).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Run on a missing directory: error %v, want one naming %s", err, dir)
	}
}
