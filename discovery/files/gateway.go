package files

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"

	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ballast-dev/ballast/discovery"
)

// gatewayObjects are the objects of a gateway one file declares:
// GatewayClasses, Gateways and TLS Secrets.
type gatewayObjects struct {
	classes  []*gatewayv1.GatewayClass
	gateways []*gatewayv1.Gateway
	secrets  []*corev1.Secret
}

// publishedGateway are the keys of the gateway objects a Source has put
// in the registry.
type publishedGateway struct {
	classes, gateways, secrets map[discovery.Key]struct{}
}

// decodeGatewayObject decodes a GatewayClass, Gateway or Secret; ok is
// false for any other kind.
func decodeGatewayObject(tm typeMeta, j []byte, prefix string, out *gatewayObjects) (ok bool, err error) {
	switch {
	case tm.APIVersion == gatewayv1.GroupVersion.String() && tm.Kind == "GatewayClass":
		c := &gatewayv1.GatewayClass{}
		if err := strictDecode(j, c, prefix); err != nil {
			return true, err
		}
		if c.Name == "" {
			return true, &fieldError{path: prefix + "metadata", err: fmt.Errorf("GatewayClass has no metadata.name")}
		}
		c.Namespace = ""
		if c.Generation == 0 {
			c.Generation = 1 // as the API server would, so status has one to observe
		}
		out.classes = append(out.classes, c)
	case tm.APIVersion == gatewayv1.GroupVersion.String() && tm.Kind == "Gateway":
		g := &gatewayv1.Gateway{}
		if err := strictDecode(j, g, prefix); err != nil {
			return true, err
		}
		if err := checkMeta(&g.ObjectMeta, "Gateway", prefix); err != nil {
			return true, err
		}
		if g.Generation == 0 {
			g.Generation = 1
		}
		for i, l := range g.Spec.Listeners {
			if l.Port < 1 || l.Port > 65535 {
				return true, &fieldError{path: fmt.Sprintf("%sspec.listeners[%d].port", prefix, i), err: fmt.Errorf(
					"Gateway %s/%s: listener %s: port %d is outside 1-65535", g.Namespace, g.Name, l.Name, l.Port)}
			}
		}
		out.gateways = append(out.gateways, g)
	case tm.APIVersion == "v1" && tm.Kind == "Secret":
		sec := &corev1.Secret{}
		if err := strictDecode(j, sec, prefix); err != nil {
			return true, err
		}
		if err := checkMeta(&sec.ObjectMeta, "Secret", prefix); err != nil {
			return true, err
		}
		// The API server folds stringData into data.
		for k, v := range sec.StringData {
			if sec.Data == nil {
				sec.Data = map[string][]byte{}
			}
			sec.Data[k] = []byte(v)
		}
		sec.StringData = nil
		out.secrets = append(out.secrets, sec)
	default:
		return false, nil
	}
	return true, nil
}

// publishGateway writes the gateway objects of every file to the registry
// and deletes those no file declares any more. It returns the conflicts
// it resolved (an object declared by two files: the file first by name
// wins).
func (s *Source) publishGateway() []error {
	var errs []error
	classes := map[discovery.Key]*gatewayv1.GatewayClass{}
	gateways := map[discovery.Key]*gatewayv1.Gateway{}
	secrets := map[discovery.Key]*corev1.Secret{}
	from := map[string]string{}
	claim := func(file, kind string, k discovery.Key) bool {
		id := kind + " " + k.String()
		if first, dup := from[id]; dup {
			errs = append(errs, fmt.Errorf("%s: %s is also declared in %s; using %s", filepath.Join(s.dir, file), id, first, first))
			return false
		}
		from[id] = file
		return true
	}
	for _, name := range slices.Sorted(maps.Keys(s.files)) {
		objs := s.files[name].gateway
		for _, c := range objs.classes {
			if k := (discovery.Key{Name: c.Name}); claim(name, "GatewayClass", k) {
				classes[k] = c
			}
		}
		for _, g := range objs.gateways {
			if k := (discovery.Key{Namespace: g.Namespace, Name: g.Name}); claim(name, "Gateway", k) {
				gateways[k] = g
			}
		}
		for _, sec := range objs.secrets {
			if k := (discovery.Key{Namespace: sec.Namespace, Name: sec.Name}); claim(name, "Secret", k) {
				secrets[k] = sec
			}
		}
	}
	p := &s.publishedGateway
	for _, sec := range secrets {
		s.reg.SetSecret(sec)
	}
	for k := range p.secrets {
		if secrets[k] == nil {
			s.reg.DeleteSecret(k)
		}
	}
	for _, c := range classes {
		s.reg.SetGatewayClass(c)
	}
	for k := range p.classes {
		if classes[k] == nil {
			s.reg.DeleteGatewayClass(k.Name)
		}
	}
	for _, g := range gateways {
		s.reg.SetGateway(g)
	}
	for k := range p.gateways {
		if gateways[k] == nil {
			s.reg.DeleteGateway(k)
		}
	}
	p.classes, p.gateways, p.secrets = keySet(classes), keySet(gateways), keySet(secrets)
	return errs
}

func keySet[V any](m map[discovery.Key]V) map[discovery.Key]struct{} {
	out := make(map[discovery.Key]struct{}, len(m))
	for k := range m {
		out[k] = struct{}{}
	}
	return out
}
