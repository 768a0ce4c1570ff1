package xds

import "fmt"

// The server does not validate what it translates (see TranslateService);
// the tests do, with go-control-plane's generated validation.

// validator is what every generated resource type implements.
type validator interface{ ValidateAll() error }

func (r *Resources) validate() error {
	check := func(kind, name string, v validator) error {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s %s: %w", kind, name, err)
		}
		return nil
	}
	for _, l := range r.Listeners {
		if err := check("listener", l.Name, l); err != nil {
			return err
		}
	}
	for _, l := range r.SidecarListeners {
		if err := check("sidecar listener", l.Name, l); err != nil {
			return err
		}
	}
	for _, rc := range r.Routes {
		if err := check("route", rc.Name, rc); err != nil {
			return err
		}
	}
	for _, c := range r.Clusters {
		if err := check("cluster", c.Name, c); err != nil {
			return err
		}
	}
	for _, e := range r.Endpoints {
		if err := check("endpoints", e.ClusterName, e); err != nil {
			return err
		}
	}
	return nil
}
