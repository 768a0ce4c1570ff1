// Package servingcert gives the control plane a TLS certificate with no
// certificate manager installed: a CA kept in a Secret of the control
// plane's namespace (the first replica makes it), a short-lived serving
// certificate each replica issues itself from it and renews in place, and
// the CA's certificate published in every namespace as a ConfigMap, where
// clients (a proxyless pod's bootstrap, an injected sidecar) mount it.
// Kubernetes publishes its own CA the same way (kube-root-ca.crt), as
// Istio does its mesh CA.
package servingcert

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/ballast-dev/ballast/internal/keypair"
	"github.com/ballast-dev/ballast/internal/kubeclient"
)

// CAFile is the key of the CA certificate in the Secret and the
// ConfigMap, and the file name clients mount it as.
const CAFile = "ca.crt"

// caKeyFile is the key of the CA's private key in the Secret.
const caKeyFile = "ca.key"

// Config says where the CA lives and what the serving certificate names.
type Config struct {
	Client *kubeclient.Client
	// Namespace holds the Secret: the control plane's own.
	Namespace string
	// Secret is the name of the Secret holding the CA (ca.crt, ca.key).
	Secret string
	// ConfigMap is the name of the ConfigMap holding ca.crt that is
	// published in every namespace.
	ConfigMap string
	// Hosts are the names clients dial the control plane by (its
	// Service's DNS names), which the serving certificate is for.
	Hosts []string
	// CAValidity is a new CA's lifetime; zero means ten years.
	CAValidity time.Duration
	// Validity is a serving certificate's lifetime; zero means a day. It
	// is renewed when two thirds have passed.
	Validity time.Duration
	Log      *slog.Logger
}

// Issuer holds the CA and serves the current certificate.
type Issuer struct {
	cfg        Config
	log        *slog.Logger
	secrets    kubeclient.Resource[*corev1.Secret]
	configMaps kubeclient.Resource[*corev1.ConfigMap]
	namespaces kubeclient.Resource[*corev1.Namespace]
	ca         *keypair.CA
	cert       atomic.Pointer[tls.Certificate]
}

// New loads the CA from the Secret, making it if there is none yet, and
// issues this replica's first certificate. Replicas starting together
// race to create the Secret; the losers read the winner's.
func New(ctx context.Context, cfg Config) (*Issuer, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.Secret == "" || cfg.ConfigMap == "" || len(cfg.Hosts) == 0 {
		return nil, errors.New("serving certificate: client, namespace, Secret, ConfigMap and hosts are all needed")
	}
	cfg.CAValidity = cmp.Or(cfg.CAValidity, 10*365*24*time.Hour)
	cfg.Validity = cmp.Or(cfg.Validity, 24*time.Hour)
	core, err := cfg.Client.Group(corev1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	i := &Issuer{cfg: cfg, log: cmp.Or(cfg.Log, slog.Default()).With("component", "servingcert", "secret", cfg.Namespace+"/"+cfg.Secret),
		secrets:    kubeclient.NewResource(core, "secrets", func() *corev1.Secret { return &corev1.Secret{} }),
		configMaps: kubeclient.NewResource(core, "configmaps", func() *corev1.ConfigMap { return &corev1.ConfigMap{} }),
		namespaces: kubeclient.NewResource(core, "namespaces", func() *corev1.Namespace { return &corev1.Namespace{} }),
	}
	ca, err := i.loadCA(ctx)
	if err != nil {
		return nil, err
	}
	i.ca = ca
	if err := i.issue(); err != nil {
		return nil, err
	}
	return i, nil
}

func (i *Issuer) loadCA(ctx context.Context) (*keypair.CA, error) {
	for range 3 {
		s, err := i.secrets.Get(ctx, i.cfg.Namespace, i.cfg.Secret)
		if err == nil {
			ca, err := keypair.ParseCA(s.Data[CAFile], s.Data[caKeyFile])
			if err != nil {
				return nil, fmt.Errorf("Secret %s/%s: %w (delete it to have a new CA made)", i.cfg.Namespace, i.cfg.Secret, err)
			}
			return ca, nil
		}
		if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("Secret %s/%s: %w", i.cfg.Namespace, i.cfg.Secret, err)
		}
		ca, err := keypair.NewCA("ballast-control-ca", i.cfg.CAValidity)
		if err != nil {
			return nil, err
		}
		_, err = i.secrets.Create(ctx, i.cfg.Namespace, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: i.cfg.Secret, Namespace: i.cfg.Namespace,
				Labels: map[string]string{"app.kubernetes.io/part-of": "ballast"}},
			Type: corev1.SecretTypeOpaque,
			Data: map[string][]byte{CAFile: ca.CertPEM, caKeyFile: ca.KeyPEM},
		})
		if err == nil {
			i.log.Info("made the control plane's CA", "not_after", ca.Cert.NotAfter)
			return ca, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create Secret %s/%s: %w", i.cfg.Namespace, i.cfg.Secret, err)
		}
		// Another replica made it first: read theirs.
	}
	return nil, fmt.Errorf("Secret %s/%s: neither found nor created", i.cfg.Namespace, i.cfg.Secret)
}

func (i *Issuer) issue() error {
	certPEM, keyPEM, err := i.ca.Issue(keypair.Leaf{Hosts: i.cfg.Hosts, ValidFor: i.cfg.Validity})
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	i.cert.Store(&pair)
	i.log.Debug("issued the serving certificate", "hosts", i.cfg.Hosts, "not_after", pair.Leaf.NotAfter)
	return nil
}

// GetCertificate is the current serving certificate, as a tls.Config's.
func (i *Issuer) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return i.cert.Load(), nil
}

// CAPEM is the CA certificate clients trust.
func (i *Issuer) CAPEM() []byte { return i.ca.CertPEM }

// Run renews the serving certificate before it expires and keeps the
// CA's ConfigMap in every namespace, until ctx ends.
func (i *Issuer) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- i.publish(ctx) }()
	for {
		// The last third of its validity is left when it is renewed (its
		// NotBefore is backdated for clock skew, so it is not counted).
		renew := time.Until(i.cert.Load().Leaf.NotAfter.Add(-i.cfg.Validity / 3))
		t := time.NewTimer(max(renew, time.Second))
		select {
		case <-ctx.Done():
			t.Stop()
			return <-errc
		case <-t.C:
		}
		if err := i.issue(); err != nil {
			// The certificate in use is still valid for a third of its life.
			i.log.Error("renewing the serving certificate failed; retrying", "err", err)
		}
	}
}

// publish writes the CA's ConfigMap into each namespace and again when one
// is changed or deleted: level-triggered, from an informer of Namespaces
// and one of the ConfigMaps of that name, through a queue keyed by
// namespace.
func (i *Issuer) publish(ctx context.Context) error {
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer queue.ShutDown()
	nsInformer, err := i.namespaces.Informer("", nil, nil)
	if err != nil {
		return err
	}
	cmInformer, err := i.configMaps.Informer("", func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", i.cfg.ConfigMap).String()
	}, nil)
	if err != nil {
		return err
	}
	enqueueNS := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { enqueue(queue, obj, true) },
		UpdateFunc: func(_, obj any) { enqueue(queue, obj, true) },
	}
	enqueueCM := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { enqueue(queue, obj, false) },
		UpdateFunc: func(_, obj any) { enqueue(queue, obj, false) },
		DeleteFunc: func(obj any) { enqueue(queue, obj, false) },
	}
	if _, err := nsInformer.AddEventHandler(enqueueNS); err != nil {
		return err
	}
	if _, err := cmInformer.AddEventHandler(enqueueCM); err != nil {
		return err
	}
	var running sync.WaitGroup
	defer running.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	running.Go(func() { nsInformer.RunWithContext(ctx) })
	running.Go(func() { cmInformer.RunWithContext(ctx) })
	go func() { <-ctx.Done(); queue.ShutDown() }()
	if !cache.WaitForCacheSync(ctx.Done(), nsInformer.HasSynced, cmInformer.HasSynced) {
		return nil
	}
	nsLister := corelisters.NewNamespaceLister(nsInformer.GetIndexer())
	cmLister := corelisters.NewConfigMapLister(cmInformer.GetIndexer())
	for {
		ns, shutdown := queue.Get()
		if shutdown {
			return nil
		}
		err := i.ensure(ctx, ns, nsLister, cmLister)
		if err != nil && ctx.Err() == nil {
			i.log.Warn("publishing the CA failed; retrying", "namespace", ns, "err", err)
			queue.AddRateLimited(ns)
		} else {
			queue.Forget(ns)
		}
		queue.Done(ns)
	}
}

func enqueue(q workqueue.TypedRateLimitingInterface[string], obj any, isNamespace bool) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return
	}
	if isNamespace {
		q.Add(m.GetName())
	} else {
		q.Add(m.GetNamespace())
	}
}

// ensure makes the namespace's ConfigMap hold the CA, if the namespace
// still exists and is not being deleted.
func (i *Issuer) ensure(ctx context.Context, ns string, nsl corelisters.NamespaceLister, cml corelisters.ConfigMapLister) error {
	n, err := nsl.Get(ns)
	if apierrors.IsNotFound(err) || err == nil && n.DeletionTimestamp != nil {
		return nil
	}
	if err != nil {
		return err
	}
	want := map[string]string{CAFile: string(i.ca.CertPEM)}
	cm, err := cml.ConfigMaps(ns).Get(i.cfg.ConfigMap)
	switch {
	case apierrors.IsNotFound(err):
		_, err = i.configMaps.Create(ctx, ns, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: i.cfg.ConfigMap, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/part-of": "ballast"}},
			Data:       want,
		})
		if apierrors.IsAlreadyExists(err) {
			return nil // another replica's; its event brings it back here
		}
		return err
	case err != nil:
		return err
	case bytes.Equal([]byte(cm.Data[CAFile]), i.ca.CertPEM):
		return nil
	}
	cm = cm.DeepCopy()
	cm.Data = want
	_, err = i.configMaps.Update(ctx, ns, cm.Name, cm)
	return err
}
