package kube

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// client reads the two API groups discovery needs, and only those. It
// stands in for client-go's clientset on purpose: the clientset's scheme
// registers every built-in API group at init, which links all of their
// types (most of a control-plane binary's code) and keeps their
// registration in memory in every process that imports this package.
// The objects come as protobuf, as kube-controller-manager reads them:
// smaller on the wire and cheaper to decode than JSON.
type client struct {
	core, discovery rest.Interface
}

// scheme holds the types the client decodes: Services and EndpointSlices
// with their lists, and the meta types (watch events, list options, status
// errors) each group version registers alongside.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, discoveryv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(fmt.Sprintf("kube: register API types: %v", err)) // static data: a bug, not an input
		}
	}
	return s
}()

func newClient(cfg *rest.Config) (*client, error) {
	if cfg == nil {
		return nil, fmt.Errorf("kubernetes client: no rest.Config")
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	codecs := serializer.NewCodecFactory(scheme)
	group := func(apiPath string, gv *schema.GroupVersion) (rest.Interface, error) {
		c := rest.CopyConfig(cfg)
		c.APIPath = apiPath
		c.GroupVersion = gv
		c.NegotiatedSerializer = codecs.WithoutConversion()
		c.ContentType = runtime.ContentTypeProtobuf
		c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
		if c.UserAgent == "" {
			c.UserAgent = rest.DefaultKubernetesUserAgent()
		}
		rc, err := rest.RESTClientForConfigAndClient(c, hc)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client for %s: %w", gv, err)
		}
		return rc, nil
	}
	core, err := group("/api", &corev1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	disc, err := group("/apis", &discoveryv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	return &client{core: core, discovery: disc}, nil
}

// informer is an informer on resource (in namespace; "" for all) of the
// group rc serves, holding objects like example, indexed by namespace as
// listers need, its objects trimmed of what discovery never reads.
func (c *client) informer(example runtime.Object, rc rest.Interface, resource, namespace string) (cache.SharedIndexInformer, error) {
	lw := cache.NewFilteredListWatchFromClient(rc, resource, namespace, func(*metav1.ListOptions) {})
	inf := cache.NewSharedIndexInformerWithOptions(lw, example, cache.SharedIndexInformerOptions{
		Indexers: cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
	})
	if err := inf.SetTransform(trim); err != nil {
		return nil, fmt.Errorf("informer on %s: %w", resource, err)
	}
	return inf, nil
}
