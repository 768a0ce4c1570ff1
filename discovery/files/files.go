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
	var errs []error
	services := map[discovery.Key]*corev1.Service{}
	svcFrom := map[discovery.Key]string{}
	byService := map[discovery.Key][]*discoveryv1.EndpointSlice{}
	sliceFrom := map[discovery.Key]string{}
	for _, name := range slices.Sorted(maps.Keys(s.files)) {
		objs := s.files[name]
		for _, svc := range objs.services {
			k := discovery.Key{Namespace: svc.Namespace, Name: svc.Name}
			if first, dup := svcFrom[k]; dup {
				errs = append(errs, fmt.Errorf("%s: Service %s is also declared in %s; using %s",
					filepath.Join(s.dir, name), k, first, first))
				continue
			}
			services[k], svcFrom[k] = svc, name
		}
		for _, es := range objs.slices {
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
	routes := map[discovery.Key]*gatewayv1.GRPCRoute{}
	grants := map[discovery.Key]*gatewayv1.ReferenceGrant{}
	routeFrom, grantFrom := map[discovery.Key]string{}, map[discovery.Key]string{}
	for _, name := range slices.Sorted(maps.Keys(s.files)) {
		for _, rt := range s.files[name].routes {
			k := discovery.Key{Namespace: rt.Namespace, Name: rt.Name}
			if first, dup := routeFrom[k]; dup {
				errs = append(errs, fmt.Errorf("%s: GRPCRoute %s is also declared in %s; using %s",
					filepath.Join(s.dir, name), k, first, first))
				continue
			}
			routes[k], routeFrom[k] = rt, name
		}
		for _, g := range s.files[name].grants {
			k := discovery.Key{Namespace: g.Namespace, Name: g.Name}
			if first, dup := grantFrom[k]; dup {
				errs = append(errs, fmt.Errorf("%s: ReferenceGrant %s is also declared in %s; using %s",
					filepath.Join(s.dir, name), k, first, first))
				continue
			}
			grants[k], grantFrom[k] = g, name
		}
	}
	policies := map[discovery.Key]*v1alpha1.TrafficPolicy{}
	policyFrom := map[discovery.Key]string{}
	for _, name := range slices.Sorted(maps.Keys(s.files)) {
		for _, p := range s.files[name].policies {
			k := discovery.Key{Namespace: p.Namespace, Name: p.Name}
			if first, dup := policyFrom[k]; dup {
				errs = append(errs, fmt.Errorf("%s: TrafficPolicy %s is also declared in %s; using %s",
					filepath.Join(s.dir, name), k, first, first))
				continue
			}
			policies[k], policyFrom[k] = p, name
		}
	}
	// Policies, grants and routes first, so that Services arrive with
	// their routes and call policies.
	for _, p := range policies {
		s.reg.SetPolicy(p)
	}
	for k := range s.publishedPolicies {
		if _, ok := policies[k]; !ok {
			s.reg.DeletePolicy(k)
		}
	}
	s.publishedPolicies = map[discovery.Key]struct{}{}
	for k := range policies {
		s.publishedPolicies[k] = struct{}{}
	}
	backendPolicies := map[discovery.Key]*gatewayx.XBackendTrafficPolicy{}
	backendFrom := map[discovery.Key]string{}
	for _, name := range slices.Sorted(maps.Keys(s.files)) {
		for _, p := range s.files[name].backendPolicies {
			k := discovery.Key{Namespace: p.Namespace, Name: p.Name}
			if first, dup := backendFrom[k]; dup {
				errs = append(errs, fmt.Errorf("%s: XBackendTrafficPolicy %s is also declared in %s; using %s",
					filepath.Join(s.dir, name), k, first, first))
				continue
			}
			backendPolicies[k], backendFrom[k] = p, name
		}
	}
	for _, p := range backendPolicies {
		s.reg.SetBackendPolicy(p)
	}
	for k := range s.publishedBackendPolicies {
		if _, ok := backendPolicies[k]; !ok {
			s.reg.DeleteBackendPolicy(k)
		}
	}
	s.publishedBackendPolicies = map[discovery.Key]struct{}{}
	for k := range backendPolicies {
		s.publishedBackendPolicies[k] = struct{}{}
	}
	for _, g := range grants {
		s.reg.SetGrant(g)
	}
	for k := range s.publishedGrants {
		if _, ok := grants[k]; !ok {
			s.reg.DeleteGrant(k)
		}
	}
	for _, rt := range routes {
		s.reg.SetRoute(rt)
	}
	for k := range s.publishedRoutes {
		if _, ok := routes[k]; !ok {
			s.reg.DeleteRoute(k)
		}
	}
	s.publishedRoutes = map[discovery.Key]struct{}{}
	for k := range routes {
		s.publishedRoutes[k] = struct{}{}
	}
	s.publishedGrants = map[discovery.Key]struct{}{}
	for k := range grants {
		s.publishedGrants[k] = struct{}{}
	}
	errs = append(errs, s.publishGateway()...)
	for k, svc := range services {
		s.reg.Set(discovery.Build(svc, byService[k]))
	}
	for k := range s.published {
		if _, ok := services[k]; !ok {
			s.reg.Delete(k)
		}
	}
	s.published = map[discovery.Key]struct{}{}
	for k := range services {
		s.published[k] = struct{}{}
	}
	return errs
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
