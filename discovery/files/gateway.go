package files

import (
	"fmt"
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
	classes, errs := merged(s, "GatewayClass", func(o objects) []*gatewayv1.GatewayClass { return o.gateway.classes })
	gateways, gatewayErrs := merged(s, "Gateway", func(o objects) []*gatewayv1.Gateway { return o.gateway.gateways })
	secrets, secretErrs := merged(s, "Secret", func(o objects) []*corev1.Secret { return o.gateway.secrets })
	p := &s.publishedGateway
	p.secrets = publishAll(secrets, p.secrets, s.reg.SetSecret, s.reg.DeleteSecret)
	p.classes = publishAll(classes, p.classes, s.reg.SetGatewayClass, func(k discovery.Key) { s.reg.DeleteGatewayClass(k.Name) })
	p.gateways = publishAll(gateways, p.gateways, s.reg.SetGateway, s.reg.DeleteGateway)
	return slices.Concat(errs, gatewayErrs, secretErrs)
}

func keySet[V any](m map[discovery.Key]V) map[discovery.Key]struct{} {
	out := make(map[discovery.Key]struct{}, len(m))
	for k := range m {
		out[k] = struct{}{}
	}
	return out
}
