// Package files fills a discovery.Registry from a directory of Kubernetes
// YAML (or JSON): the same Service, EndpointSlice, GRPCRoute and
// ReferenceGrant objects a cluster would serve, for machines without a
// cluster and for the demo. A GRPCRoute is checked as discovery.ValidateRoute
// checks it, and an invalid one rejects its file like any other error.
//
// Each file is decoded whole or not at all. A file that fails to decode is
// reported with its name and line and keeps its last good contents, so a
// typo while editing one file never takes endpoints away, from it or from
// any other file.
package files

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/discovery"
)

// Options configure a Source.
type Options struct {
	// Logger receives the source's logs. Nil means slog.Default().
	Logger *slog.Logger
	// Quiet is how long the directory must be still after a change before
	// it is read again, so that a file caught half-written (truncated, then
	// filled) is not taken for the new state. Zero means 50ms.
	Quiet time.Duration
}

// Source keeps a Registry in step with a directory of YAML files.
type Source struct {
	dir   string
	reg   *discovery.Registry
	log   *slog.Logger
	quiet time.Duration

	mu sync.Mutex // serialises Load
	// files holds the last good objects of each file, by file name.
	files map[string]objects
	// published are the Services this source has put in the registry.
	published map[discovery.Key]struct{}
	// publishedRoutes and publishedGrants are the GRPCRoutes and
	// ReferenceGrants it has.
	publishedRoutes, publishedGrants map[discovery.Key]struct{}
	// publishedGateway are the objects of a gateway it has.
	publishedGateway publishedGateway
	// publishedPolicies and publishedBackendPolicies are the
	// TrafficPolicies and XBackendTrafficPolicies it has.
	publishedPolicies, publishedBackendPolicies map[discovery.Key]struct{}
}

// New returns a Source for dir that writes to reg on Load or Run.
func New(dir string, reg *discovery.Registry, opts Options) *Source {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Source{
		dir:               dir,
		reg:               reg,
		log:               log.With("component", "discovery/files", "dir", dir),
		quiet:             cmp.Or(opts.Quiet, 50*time.Millisecond),
		files:             map[string]objects{},
		published:         map[discovery.Key]struct{}{},
		publishedRoutes:   map[discovery.Key]struct{}{},
		publishedGrants:   map[discovery.Key]struct{}{},
		publishedPolicies: map[discovery.Key]struct{}{},

		publishedBackendPolicies: map[discovery.Key]struct{}{},
	}
}

// manifest reports whether a directory entry name is one the source reads.
// Hidden names are skipped: editors' swap files, and the "..data" links and
// "..<timestamp>" directories of a mounted ConfigMap.
func manifest(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// Load reads the directory once and updates the registry. It returns every
// problem found, joined; files with problems keep their last good state.
func (s *Source) Load() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		err = fmt.Errorf("read directory %s: %w", s.dir, err)
		s.log.Error("cannot read directory; keeping the last good state", "err", err)
		return err
	}
	var errs []error
	present := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		if !manifest(name) {
			continue
		}
		path := filepath.Join(s.dir, name)
		// Stat follows symlinks, as a ConfigMap's files are.
		if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("%s: %w", path, err))
				present[name] = true // unreadable for now: keep what it said
			}
			continue
		}
		present[name] = true
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
			continue
		}
		objs, err := decodeFile(path, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.files[name] = objs
	}
	for name := range s.files {
		if !present[name] {
			delete(s.files, name)
		}
	}
	errs = append(errs, s.publish()...)
	for _, err := range errs {
		s.log.Error("invalid manifest; keeping the file's last good state", "err", err)
	}
	return errors.Join(errs...)
}

// publish merges every file's objects and writes the registry: a snapshot
// per Service, and deletions for Services no file declares any more. It
// returns the conflicts it resolved (an object declared by two files: the
// file first by name wins).
func (s *Source) publish() []error {
	services, errs := merged(s, "Service", func(o objects) []*corev1.Service { return o.services })
	byService := map[discovery.Key][]*discoveryv1.EndpointSlice{}
	sliceFrom := map[discovery.Key]string{}
	for _, name := range slices.Sorted(maps.Keys(s.files)) {
		for _, es := range s.files[name].slices {
			k := discovery.Key{Namespace: es.Namespace, Name: es.Name}
			if first, dup := sliceFrom[k]; dup {
				errs = append(errs, fmt.Errorf("%s: EndpointSlice %s is also declared in %s; using %s",
					filepath.Join(s.dir, name), k, first, first))
				continue
			}
			sliceFrom[k] = name
			svcKey := discovery.Key{Namespace: es.Namespace, Name: es.Labels[discoveryv1.LabelServiceName]}
			byService[svcKey] = append(byService[svcKey], es)
		}
	}
	routes, routeErrs := merged(s, "GRPCRoute", func(o objects) []*gatewayv1.GRPCRoute { return o.routes })
	grants, grantErrs := merged(s, "ReferenceGrant", func(o objects) []*gatewayv1.ReferenceGrant { return o.grants })
	policies, policyErrs := merged(s, "TrafficPolicy", func(o objects) []*v1alpha1.TrafficPolicy { return o.policies })
	backendPolicies, backendErrs := merged(s, "XBackendTrafficPolicy", func(o objects) []*gatewayx.XBackendTrafficPolicy { return o.backendPolicies })
	errs = slices.Concat(errs, routeErrs, grantErrs, policyErrs, backendErrs)
	// Policies, grants and routes first, so that Services arrive with
	// their routes and call policies.
	s.publishedPolicies = publishAll(policies, s.publishedPolicies, s.reg.SetPolicy, s.reg.DeletePolicy)
	s.publishedBackendPolicies = publishAll(backendPolicies, s.publishedBackendPolicies, s.reg.SetBackendPolicy, s.reg.DeleteBackendPolicy)
	s.publishedGrants = publishAll(grants, s.publishedGrants, s.reg.SetGrant, s.reg.DeleteGrant)
	s.publishedRoutes = publishAll(routes, s.publishedRoutes, s.reg.SetRoute, s.reg.DeleteRoute)
	errs = append(errs, s.publishGateway()...)
	s.published = publishAll(services, s.published, func(svc *corev1.Service) {
		s.reg.Set(discovery.Build(svc, byService[discovery.Key{Namespace: svc.Namespace, Name: svc.Name}]))
	}, s.reg.Delete)
	return errs
}

// merged gathers one kind's objects from every file, by key. Of an
// object two files declare, the file first by name wins; the other
// declaration is returned as an error naming both.
func merged[T metav1.Object](s *Source, kind string, of func(objects) []T) (map[discovery.Key]T, []error) {
	out := map[discovery.Key]T{}
	from := map[discovery.Key]string{}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(s.files)) {
		for _, o := range of(s.files[name]) {
			k := discovery.Key{Namespace: o.GetNamespace(), Name: o.GetName()}
			if first, dup := from[k]; dup {
				errs = append(errs, fmt.Errorf("%s: %s %s is also declared in %s; using %s",
					filepath.Join(s.dir, name), kind, k, first, first))
				continue
			}
			out[k], from[k] = o, name
		}
	}
	return out, errs
}

// publishAll puts every object of objs in the registry with set, deletes
// with del those published before that objs no longer has, and returns
// the keys published now.
func publishAll[T any](objs map[discovery.Key]T, published map[discovery.Key]struct{}, set func(T), del func(discovery.Key)) map[discovery.Key]struct{} {
	for _, o := range objs {
		set(o)
	}
	for k := range published {
		if _, ok := objs[k]; !ok {
			del(k)
		}
	}
	return keySet(objs)
}

// Run loads the directory, then reloads it after every change until ctx is
// done. Problems with files are logged and leave the last good state; Run
// returns an error only if the directory cannot be watched.
func (s *Source) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", s.dir, err)
	}
	defer w.Close()
	// Watch before the first Load so no change falls between the two.
	if err := w.Add(s.dir); err != nil {
		return fmt.Errorf("watch %s: %w", s.dir, err)
	}
	_ = s.Load() // logged by Load

	// Any event in the directory means "read it again": editors replace
	// files by rename, and ConfigMap updates swap the "..data" symlink, so
	// the name in an event says little about which file changed.
	settle := time.NewTimer(time.Hour)
	settle.Stop() // armed by the first event; Go ≥1.23 timers leave no stale tick
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			s.log.Debug("directory changed", "event", ev.String())
			settle.Reset(s.quiet)
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// An overflow means events were lost: reading again recovers.
			s.log.Warn("watch error; reloading", "err", err)
			settle.Reset(s.quiet)
		case <-settle.C:
			_ = s.Load()
		}
	}
}
