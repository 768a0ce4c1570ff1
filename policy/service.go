package policy

import "fmt"

// Defaults are what a Service asks for where it says nothing itself.
type Defaults struct {
	// LB is the policy of Services without the lb-policy annotation; empty
	// means RoundRobin.
	LB LB
}

// ServiceLB is the policy a Service (named service, for errors) with
// these annotations asks for: its annotation's, else d's. ok is false when
// it has no annotation; err names the Service, the annotation and the bad
// value. It takes the annotations rather than a discovery.Service so that
// the model links no Kubernetes code into the sidecar.
func ServiceLB(service string, annotations map[string]string, d Defaults) (p LB, ok bool, err error) {
	v, ok := annotations[LBAnnotation]
	if !ok {
		if d.LB == "" {
			return RoundRobin, false, nil
		}
		if _, err := ParseLB(string(d.LB)); err != nil {
			return "", false, fmt.Errorf("service %s: %w", service, err)
		}
		return d.LB, false, nil
	}
	p, err = ParseLB(v)
	if err != nil {
		return "", true, fmt.Errorf("service %s: annotation %s: %w", service, LBAnnotation, err)
	}
	return p, true, nil
}

// RouteTo is the Route of a Service port that has no routing rules of its
// own: every call goes to the port's Cluster.
func RouteTo(name string, domains []string, cluster string) Route {
	return Route{
		Name:    name,
		Domains: domains,
		Rules:   []Rule{{Match: Match{Path: StringMatch{Type: Prefix, Value: "/"}}, Backends: []Backend{{Cluster: cluster, Weight: 1}}}},
	}
}
