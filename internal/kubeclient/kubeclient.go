// Package kubeclient is the control plane's Kubernetes client: a REST
// client per API group version it talks to, decoding with a scheme that
// holds only the types it reads and writes, and a typed handle on each
// resource (get, create, update, status, list and watch).
//
// It stands in for client-go's clientset, and for Gateway API's, on
// purpose: a clientset's scheme (k8s.io/client-go/kubernetes/scheme, which
// client-go's discovery client and every generated clientset import)
// registers every built-in API group at init, which links all of their
// types, most of a control-plane binary's code, and keeps their
// registrations in memory in every process. The control plane reads a
// handful of kinds.
package kubeclient

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	gatewayx "sigs.k8s.io/gateway-api/apisx/v1alpha1"

	"github.com/ballast-dev/ballast/api/v1alpha1"
)

// Scheme holds every type the control plane decodes, with the meta types
// (watch events, list and get options, status errors) each group version
// registers alongside.
var Scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, discoveryv1.AddToScheme, coordinationv1.AddToScheme, authenticationv1.AddToScheme,
		gatewayv1.Install, gatewayv1beta1.Install, gatewayx.Install, v1alpha1.AddToScheme,
	} {
		if err := add(s); err != nil {
			panic(fmt.Sprintf("kubeclient: register API types: %v", err)) // static data: a bug, not an input
		}
	}
	return s
}()

var (
	codecs         = serializer.NewCodecFactory(Scheme)
	parameterCodec = runtime.NewParameterCodec(Scheme)
)

// Client makes REST clients of one cluster that share one HTTP client, so
// every group's requests share its connections.
type Client struct {
	cfg *rest.Config
	hc  *http.Client
}

// New returns a Client of the cluster cfg points at.
func New(cfg *rest.Config) (*Client, error) {
	if cfg == nil {
		return nil, fmt.Errorf("kubernetes client: no rest.Config")
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &Client{cfg: cfg, hc: hc}, nil
}

// builtIn are the group versions the API server serves itself, in
// protobuf too (as kube-controller-manager reads them: smaller on the wire
// and cheaper to decode than JSON); custom resources are JSON only.
var builtIn = map[schema.GroupVersion]bool{
	corev1.SchemeGroupVersion: true, discoveryv1.SchemeGroupVersion: true,
	coordinationv1.SchemeGroupVersion: true, authenticationv1.SchemeGroupVersion: true,
}

// Group is a REST client of gv, which Scheme must hold.
func (c *Client) Group(gv schema.GroupVersion) (rest.Interface, error) {
	rc := rest.CopyConfig(c.cfg)
	rc.APIPath = "/apis"
	if gv.Group == "" {
		rc.APIPath = "/api"
	}
	rc.GroupVersion = &gv
	rc.NegotiatedSerializer = codecs.WithoutConversion()
	rc.ContentType = runtime.ContentTypeJSON
	if builtIn[gv] {
		rc.ContentType = runtime.ContentTypeProtobuf
		rc.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	}
	if rc.UserAgent == "" {
		rc.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	out, err := rest.RESTClientForConfigAndClient(rc, c.hc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", gv, err)
	}
	return out, nil
}

// Served reports whether the API server serves resource in gv, as
// client-go's discovery client would say.
func (c *Client) Served(ctx context.Context, gv schema.GroupVersion, resource string) (bool, error) {
	rc, err := c.Group(gv)
	if err != nil {
		return false, err
	}
	path := "/apis/" + gv.String()
	if gv.Group == "" {
		path = "/api/" + gv.Version
	}
	raw, err := rc.Get().AbsPath(path).SetHeader("Accept", runtime.ContentTypeJSON).Do(ctx).Raw()
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("discover %s: %w", gv, err)
	}
	var list metav1.APIResourceList
	if err := json.Unmarshal(raw, &list); err != nil {
		return false, fmt.Errorf("discover %s: %w", gv, err)
	}
	for _, r := range list.APIResources {
		if r.Name == resource {
			return true, nil
		}
	}
	return false, nil
}

// Resource is one resource (plural name) of a group, whose objects are
// T, as a generated typed client offers it.
type Resource[T runtime.Object] struct {
	rc   rest.Interface
	name string
	new  func() T
}

// NewResource is the resource name of rc's group, whose objects newObj
// makes (empty, for decoding into).
func NewResource[T runtime.Object](rc rest.Interface, name string, newObj func() T) Resource[T] {
	return Resource[T]{rc: rc, name: name, new: newObj}
}

// request is req on the resource in namespace: none for "" (a
// cluster-scoped resource, or all namespaces), since client-go refuses to
// create an object in the empty namespace it is told.
func (r Resource[T]) request(req *rest.Request, namespace string) *rest.Request {
	if namespace != "" {
		req = req.Namespace(namespace)
	}
	return req.Resource(r.name)
}

// Get reads one object ("" namespace for a cluster-scoped resource).
func (r Resource[T]) Get(ctx context.Context, namespace, name string) (T, error) {
	out := r.new()
	err := r.request(r.rc.Get(), namespace).Name(name).Do(ctx).Into(out)
	return out, err
}

// Create writes a new object into namespace.
func (r Resource[T]) Create(ctx context.Context, namespace string, obj T) (T, error) {
	out := r.new()
	err := r.request(r.rc.Post(), namespace).Body(obj).Do(ctx).Into(out)
	return out, err
}

// Update replaces an object (its metadata and spec), named as obj names
// it, if its resourceVersion is still the API's.
func (r Resource[T]) Update(ctx context.Context, namespace, name string, obj T) (T, error) {
	out := r.new()
	err := r.request(r.rc.Put(), namespace).Name(name).Body(obj).Do(ctx).Into(out)
	return out, err
}

// UpdateStatus replaces an object's status, as Update does its spec.
func (r Resource[T]) UpdateStatus(ctx context.Context, namespace, name string, obj T) (T, error) {
	out := r.new()
	err := r.request(r.rc.Put(), namespace).Name(name).SubResource("status").Body(obj).Do(ctx).Into(out)
	return out, err
}

// List lists into list, an empty list of T.
func (r Resource[T]) List(ctx context.Context, namespace string, opts metav1.ListOptions, list runtime.Object) error {
	return r.request(r.rc.Get(), namespace).VersionedParams(&opts, parameterCodec).Do(ctx).Into(list)
}

// ListWatch lists and watches the resource in namespace ("" for all),
// for an informer; tweak, if not nil, sets the options' selectors.
func (r Resource[T]) ListWatch(namespace string, tweak func(*metav1.ListOptions)) cache.ListerWatcher {
	if tweak == nil {
		tweak = func(*metav1.ListOptions) {}
	}
	return cache.NewFilteredListWatchFromClient(r.rc, r.name, namespace, tweak)
}

// Informer is an informer on the resource in namespace ("" for all),
// indexed by namespace as listers need, that never resyncs. tweak, if not
// nil, sets the list options' selectors; transform, if not nil, trims each
// object before the informer stores it.
func (r Resource[T]) Informer(namespace string, tweak func(*metav1.ListOptions), transform cache.TransformFunc) (cache.SharedIndexInformer, error) {
	inf := cache.NewSharedIndexInformerWithOptions(r.ListWatch(namespace, tweak), r.new(), cache.SharedIndexInformerOptions{
		Indexers: cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
	})
	if transform != nil {
		if err := inf.SetTransform(transform); err != nil {
			return nil, fmt.Errorf("informer on %s: %w", r.name, err)
		}
	}
	return inf, nil
}
