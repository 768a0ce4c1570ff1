package files

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	sigjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/ballast-dev/ballast/api/v1alpha1"
	"github.com/ballast-dev/ballast/discovery"
)

// Error is a problem with one document of one file, located as precisely as
// the decoder allows: the line of the offending field when known, else the
// document's first line.
type Error struct {
	File string // path of the file
	Line int    // 1-based line in the file
	Doc  int    // 1-based document number within the file
	Err  error
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d: document %d: %v", e.File, e.Line, e.Doc, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// objects are the Services, EndpointSlices, GRPCRoutes and
// ReferenceGrants one file declares.
type objects struct {
	services []*corev1.Service
	slices   []*discoveryv1.EndpointSlice
	routes   []*gatewayv1.GRPCRoute
	grants   []*gatewayv1.ReferenceGrant
	gateway  gatewayObjects
	policies []*v1alpha1.TrafficPolicy
	// backendPolicies are Gateway API's experimental
	// XBackendTrafficPolicies.
	backendPolicies []*gatewayx.XBackendTrafficPolicy
}

// document is one YAML document of a file and the line it starts on.
type document struct {
	data  []byte
	start int // 1-based line of data's first line in the file
	index int // 1-based
}

// splitDocuments cuts a multi-document YAML file at its "---" lines,
// remembering where each document starts so errors can name file lines.
func splitDocuments(data []byte) []document {
	var docs []document
	cur := document{start: 1, index: 1}
	var buf bytes.Buffer
	line := 1
	for len(data) > 0 {
		text, rest, _ := bytes.Cut(data, []byte("\n"))
		data = rest
		if isSeparator(text) {
			cur.data = bytes.Clone(buf.Bytes())
			docs = append(docs, cur)
			buf.Reset()
			cur = document{start: line + 1, index: cur.index + 1}
		} else {
			buf.Write(text)
			buf.WriteByte('\n')
		}
		line++
	}
	cur.data = buf.Bytes()
	return append(docs, cur)
}

// isSeparator reports whether a line is a bare document marker, "---"
// optionally followed by a comment.
func isSeparator(line []byte) bool {
	rest, ok := bytes.CutPrefix(bytes.TrimRight(line, " \t\r"), []byte("---"))
	if !ok {
		return false
	}
	if len(rest) == 0 {
		return true
	}
	if rest[0] != ' ' && rest[0] != '\t' {
		return false
	}
	rest = bytes.TrimLeft(rest, " \t")
	return len(rest) == 0 || rest[0] == '#'
}

// typeMeta is what decides how to decode a document.
type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// decodeFile reads every document of a file. Any error rejects the whole
// file, so that its last good state stays in force rather than half of it.
func decodeFile(path string, data []byte) (objects, error) {
	var out objects
	var errs []error
	for _, doc := range splitDocuments(data) {
		fail := func(line int, err error) {
			errs = append(errs, &Error{File: path, Line: doc.start + max(line, 1) - 1, Doc: doc.index, Err: err})
		}
		j, err := yaml.YAMLToJSONStrict(doc.data)
		if err != nil {
			fail(yamlErrorLine(doc.data, err), err)
			continue
		}
		if bytes.Equal(bytes.TrimSpace(j), []byte("null")) {
			continue // empty, or only comments
		}
		var tm typeMeta
		if err := sigjson.UnmarshalCaseSensitivePreserveInts(j, &tm); err != nil {
			fail(1, fmt.Errorf("not a Kubernetes object: %w", err))
			continue
		}
		if tm.APIVersion == "v1" && tm.Kind == "List" {
			var list struct {
				Items []jsonRaw `json:"items"`
			}
			if err := sigjson.UnmarshalCaseSensitivePreserveInts(j, &list); err != nil {
				fail(1, fmt.Errorf("v1 List: %w", err))
				continue
			}
			for i, item := range list.Items {
				if err := decodeObject(item, fmt.Sprintf("items[%d].", i), &out); err != nil {
					fail(errorLine(doc.data, err), fmt.Errorf("items[%d]: %w", i, err))
				}
			}
			continue
		}
		if err := decodeObject(j, "", &out); err != nil {
			fail(errorLine(doc.data, err), err)
		}
	}
	return out, errors.Join(errs...)
}

// jsonRaw keeps a JSON value undecoded.
type jsonRaw []byte

func (r *jsonRaw) UnmarshalJSON(b []byte) error {
	*r = bytes.Clone(b)
	return nil
}

// fieldError is a decoding problem at a field path such as
// "spec.ports[0].name"; the path locates it in the YAML.
type fieldError struct {
	path string
	err  error
}

func (e *fieldError) Error() string { return e.err.Error() }
func (e *fieldError) Unwrap() error { return e.err }

// decodeObject strictly decodes one Service or EndpointSlice (prefix is the
// object's path within the document, for locating fields) and checks what
// Ballast relies on.
func decodeObject(j []byte, prefix string, out *objects) error {
	var tm typeMeta
	if err := sigjson.UnmarshalCaseSensitivePreserveInts(j, &tm); err != nil {
		return &fieldError{path: prefix, err: fmt.Errorf("not a Kubernetes object: %w", err)}
	}
	switch {
	case tm.APIVersion == "v1" && tm.Kind == "Service":
		svc := &corev1.Service{}
		if err := strictDecode(j, svc, prefix); err != nil {
			return err
		}
		if err := checkMeta(&svc.ObjectMeta, "Service", prefix); err != nil {
			return err
		}
		if err := checkServicePorts(svc, prefix); err != nil {
			return err
		}
		if td := svc.Spec.TrafficDistribution; td != nil && !discovery.PrefersZone(*td) {
			return &fieldError{path: prefix + "spec.trafficDistribution", err: fmt.Errorf(
				"Service %s/%s: trafficDistribution %q: want %s, %s or %s", svc.Namespace, svc.Name, *td,
				discovery.PreferSameZone, discovery.PreferClose, discovery.PreferSameNode)}
		}
		out.services = append(out.services, svc)
	case tm.APIVersion == discoveryv1.SchemeGroupVersion.String() && tm.Kind == "EndpointSlice":
		es := &discoveryv1.EndpointSlice{}
		if err := strictDecode(j, es, prefix); err != nil {
			return err
		}
		if err := checkMeta(&es.ObjectMeta, "EndpointSlice", prefix); err != nil {
			return err
		}
		if err := checkSlice(es, prefix); err != nil {
			return err
		}
		out.slices = append(out.slices, es)
	case tm.APIVersion == gatewayv1.GroupVersion.String() && tm.Kind == "GRPCRoute":
		rt := &gatewayv1.GRPCRoute{}
		if err := strictDecode(j, rt, prefix); err != nil {
			return err
		}
		if err := checkMeta(&rt.ObjectMeta, "GRPCRoute", prefix); err != nil {
			return err
		}
		if rt.Generation == 0 {
			rt.Generation = 1 // as the API server would, so status has one to observe
		}
		if err := discovery.ValidateRoute(rt); err != nil {
			path := prefix
			var fe *discovery.RouteFieldError
			if errors.As(err, &fe) {
				path += fe.Path
			}
			return &fieldError{path: path, err: err}
		}
		out.routes = append(out.routes, rt)
	case (tm.APIVersion == gatewayv1.GroupVersion.String() || tm.APIVersion == gatewayv1beta1.GroupVersion.String()) && tm.Kind == "ReferenceGrant":
		g := &gatewayv1.ReferenceGrant{}
		if err := strictDecode(j, g, prefix); err != nil {
			return err
		}
		if err := checkMeta(&g.ObjectMeta, "ReferenceGrant", prefix); err != nil {
			return err
		}
		out.grants = append(out.grants, g)
	case tm.APIVersion == v1alpha1.GroupVersion.String() && tm.Kind == "TrafficPolicy":
		p := &v1alpha1.TrafficPolicy{}
		if err := strictDecode(j, p, prefix); err != nil {
			return err
		}
		if err := checkMeta(&p.ObjectMeta, "TrafficPolicy", prefix); err != nil {
			return err
		}
		if p.Generation == 0 {
			p.Generation = 1 // as the API server would, so status has one to observe
		}
		if err := p.Spec.Validate(); err != nil {
			// Validate's message starts with the field's path.
			field, _, _ := strings.Cut(err.Error(), ":")
			field, _, _ = strings.Cut(field, " ")
			return &fieldError{path: prefix + field, err: fmt.Errorf("trafficpolicy %s/%s: %w", p.Namespace, p.Name, err)}
		}
		out.policies = append(out.policies, p)
	case tm.APIVersion == gatewayx.GroupVersion.String() && tm.Kind == "XBackendTrafficPolicy":
		p := &gatewayx.XBackendTrafficPolicy{}
		if err := strictDecode(j, p, prefix); err != nil {
			return err
		}
		if err := checkMeta(&p.ObjectMeta, "XBackendTrafficPolicy", prefix); err != nil {
			return err
		}
		if p.Generation == 0 {
			p.Generation = 1
		}
		if err := discovery.ValidateBackendPolicy(p); err != nil {
			field, _, _ := strings.Cut(err.Error(), ":")
			return &fieldError{path: prefix + field, err: fmt.Errorf("xbackendtrafficpolicy %s/%s: %w", p.Namespace, p.Name, err)}
		}
		out.backendPolicies = append(out.backendPolicies, p)
	default:
		if ok, err := decodeGatewayObject(tm, j, prefix, &out.gateway); ok {
			return err
		}
		return &fieldError{path: prefix + "kind", err: fmt.Errorf(
			"unknown kind %q (apiVersion %q): want v1 Service or Secret, discovery.k8s.io/v1 EndpointSlice, gateway.networking.k8s.io/v1 GRPCRoute, ReferenceGrant, Gateway or GatewayClass, gateway.networking.x-k8s.io/v1alpha1 XBackendTrafficPolicy, ballast.dev/v1alpha1 TrafficPolicy", tm.Kind, tm.APIVersion)}
	}
	return nil
}

// typeErrorField finds the field of a JSON type error, as encoding/json
// words it: "Go struct field ServicePort.spec.ports.port of type int32".
var typeErrorField = regexp.MustCompile(`Go struct field [^ .]+\.(\S+) of type`)

func strictDecode(j []byte, obj any, prefix string) error {
	strict, err := sigjson.UnmarshalStrict(j, obj)
	if err != nil {
		path := prefix
		if m := typeErrorField.FindStringSubmatch(err.Error()); m != nil {
			path += m[1]
		}
		return &fieldError{path: path, err: err}
	}
	if len(strict) > 0 {
		// The first problem is located; all are reported.
		path := prefix
		var fe sigjson.FieldError
		if errors.As(strict[0], &fe) {
			path += fe.FieldPath()
		}
		return &fieldError{path: path, err: errors.Join(strict...)}
	}
	return nil
}

func checkMeta(m interface {
	GetName() string
	GetNamespace() string
	SetNamespace(string)
}, kind, prefix string) error {
	if m.GetName() == "" {
		return &fieldError{path: prefix + "metadata", err: fmt.Errorf("%s has no metadata.name", kind)}
	}
	if m.GetNamespace() == "" {
		m.SetNamespace(corev1.NamespaceDefault) // as kubectl apply would
	}
	return nil
}

// checkServicePorts rejects ports outside 1–65535, which the API server
// would refuse too.
func checkServicePorts(svc *corev1.Service, prefix string) error {
	for i, p := range svc.Spec.Ports {
		if p.Port < 1 || p.Port > 65535 {
			return &fieldError{path: fmt.Sprintf("%sspec.ports[%d].port", prefix, i), err: fmt.Errorf(
				"Service %s/%s: port %d is outside 1-65535", svc.Namespace, svc.Name, p.Port)}
		}
		if t := p.TargetPort; t.Type == intstr.Int && (t.IntVal < 0 || t.IntVal > 65535) {
			return &fieldError{path: fmt.Sprintf("%sspec.ports[%d].targetPort", prefix, i), err: fmt.Errorf(
				"Service %s/%s: targetPort %d is outside 1-65535", svc.Namespace, svc.Name, t.IntVal)}
		}
	}
	return nil
}

// checkSlice rejects slices Ballast would silently drop entries of.
func checkSlice(es *discoveryv1.EndpointSlice, prefix string) error {
	for i, p := range es.Ports {
		if p.Port != nil && (*p.Port < 1 || *p.Port > 65535) {
			return &fieldError{path: fmt.Sprintf("%sports[%d].port", prefix, i), err: fmt.Errorf(
				"EndpointSlice %s/%s: port %d is outside 1-65535", es.Namespace, es.Name, *p.Port)}
		}
	}
	if es.Labels[discoveryv1.LabelServiceName] == "" {
		return &fieldError{path: prefix + "metadata", err: fmt.Errorf(
			"EndpointSlice %s/%s has no label %s naming its Service", es.Namespace, es.Name, discoveryv1.LabelServiceName)}
	}
	var want func(netip.Addr) bool
	switch es.AddressType {
	case discoveryv1.AddressTypeIPv4:
		want = netip.Addr.Is4
	case discoveryv1.AddressTypeIPv6:
		want = netip.Addr.Is6
	case discoveryv1.AddressTypeFQDN:
		return nil // valid, and ignored, as in a cluster
	default:
		return &fieldError{path: prefix + "addressType", err: fmt.Errorf(
			"EndpointSlice %s/%s: addressType %q: want IPv4, IPv6 or FQDN", es.Namespace, es.Name, es.AddressType)}
	}
	for i, ep := range es.Endpoints {
		for k, a := range ep.Addresses {
			ip, err := netip.ParseAddr(a)
			if err != nil || !want(ip) {
				return &fieldError{path: fmt.Sprintf("%sendpoints[%d].addresses[%d]", prefix, i, k), err: fmt.Errorf(
					"EndpointSlice %s/%s: address %q is not an %s address", es.Namespace, es.Name, a, es.AddressType)}
			}
		}
	}
	return nil
}

// yamlLine finds "line N" in a YAML parser's message.
var yamlLine = regexp.MustCompile(`line (\d+)`)

// yamlErrorLine returns the document line of a YAML syntax error. Some
// messages of the YAML→JSON converter carry no line; the v3 parser's
// message for the same document usually does.
func yamlErrorLine(doc []byte, err error) int {
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	var node yamlv3.Node
	if err3 := yamlv3.Unmarshal(doc, &node); err3 != nil {
		if m := yamlLine.FindStringSubmatch(err3.Error()); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	return 1
}

// errorLine returns the document line of a decoding error's field, or 1.
func errorLine(doc []byte, err error) int {
	var fe *fieldError
	if !errors.As(err, &fe) {
		return 1
	}
	var root yamlv3.Node
	if yamlv3.Unmarshal(doc, &root) != nil || len(root.Content) == 0 {
		return 1
	}
	if n := locate(root.Content[0], parsePath(fe.path)); n != nil {
		return n.Line
	}
	return 1
}

// pathStep is a map key or, when key is empty, a sequence index (index < 0:
// any element, as in a JSON type error's path, which has no indices).
type pathStep struct {
	key   string
	index int
}

// parsePath reads paths like "spec.ports[0].name" or "spec.ports.port".
func parsePath(p string) []pathStep {
	var steps []pathStep
	for part := range strings.SplitSeq(strings.Trim(p, "."), ".") {
		if part == "" {
			continue
		}
		key, rest, _ := strings.Cut(part, "[")
		if key != "" {
			steps = append(steps, pathStep{key: key})
		}
		for rest != "" {
			idx, after, _ := strings.Cut(rest, "]")
			n, err := strconv.Atoi(idx)
			if err != nil {
				return steps
			}
			steps = append(steps, pathStep{index: n})
			_, rest, _ = strings.Cut(after, "[")
		}
	}
	return steps
}

// locate walks a YAML node along a path and returns the deepest node found:
// the key node of the last map step, so the line is the field's own line.
// A key step on a sequence searches its elements in order.
func locate(n *yamlv3.Node, path []pathStep) *yamlv3.Node {
	if n.Kind == yamlv3.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	if len(path) == 0 {
		return n
	}
	step := path[0]
	switch {
	case n.Kind == yamlv3.MappingNode && step.key != "":
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == step.key {
				if len(path) == 1 {
					return n.Content[i]
				}
				if found := locate(n.Content[i+1], path[1:]); found != nil {
					return found
				}
				return n.Content[i]
			}
		}
		return n
	case n.Kind == yamlv3.SequenceNode && step.key == "":
		if step.index < len(n.Content) {
			return locate(n.Content[step.index], path[1:])
		}
		return n
	case n.Kind == yamlv3.SequenceNode:
		for _, el := range n.Content {
			if found := locate(el, path); found != nil && found != el {
				return found
			}
		}
		return n
	}
	return n
}
