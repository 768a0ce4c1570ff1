package gateway

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gatewayinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
)

// ProvisionerOptions configure a Provisioner.
type ProvisionerOptions struct {
	// Controller is the controllerName whose classes' Gateways get a
	// gateway; empty means ControllerName.
	Controller gatewayv1.GatewayController
	// Namespace is where the gateways' Deployments and Services are made:
	// one namespace, so that one ServiceAccount bound once (deploy/gateway's
	// ballast-gateway) serves them all, and the provisioner needs rights
	// on Deployments and Services there alone.
	Namespace string
	// Image is the gateways' image (ballast-gateway:dev).
	Image string
	// ServiceAccount is the gateways' ServiceAccount in Namespace.
	ServiceAccount string
	// Replicas of each gateway; zero means 1.
	Replicas int32
	Log      *slog.Logger
}

// Provisioner runs one gateway per Gateway of the controller's classes: a
// Deployment of ballast-gateway serving that Gateway alone (--gateway)
// and a Service of type LoadBalancer with the Gateway's listener ports,
// whose address the gateway reports in the Gateway's status
// (--status-service). One per Gateway rather than one shared, because
// Gateways are independent front doors: each has its own ports (several
// Gateways may listen on 80), its own address, its own TLS keys, and its
// failures and rollouts stay its own. Gateways that are gone lose their
// Deployment and Service.
//
// Level-triggered: any change to a Gateway, a GatewayClass or a managed
// object recomputes every gateway's desired objects and converges on them.
type Provisioner struct {
	cfg  *rest.Config
	opts ProvisionerOptions
	log  *slog.Logger
}

// The labels and annotation of the objects a Provisioner manages.
const (
	ManagedLabel      = "ballast.dev/managed-by"
	ManagedValue      = "gateway-provisioner"
	GatewayAnnotation = "ballast.dev/gateway"
	gatewayHashLabel  = "ballast.dev/gateway-hash"
)

// NewProvisioner returns a Provisioner for the cluster cfg points at.
func NewProvisioner(cfg *rest.Config, opts ProvisionerOptions) (*Provisioner, error) {
	opts.Controller = cmp.Or(opts.Controller, ControllerName)
	opts.ServiceAccount = cmp.Or(opts.ServiceAccount, "ballast-gateway")
	if opts.Namespace == "" || opts.Image == "" {
		return nil, errors.New("gateway provisioner: a namespace and an image are needed")
	}
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	return &Provisioner{cfg: cfg, opts: opts, log: cmp.Or(opts.Log, slog.Default()).With("component", "gateway-provisioner")}, nil
}

// Run provisions until ctx ends.
func (p *Provisioner) Run(ctx context.Context) error {
	kc, err := kubernetes.NewForConfig(rest.CopyConfig(p.cfg))
	if err != nil {
		return fmt.Errorf("gateway provisioner: %w", err)
	}
	gc, err := gatewayclient.NewForConfig(rest.CopyConfig(p.cfg))
	if err != nil {
		return fmt.Errorf("gateway provisioner: %w", err)
	}
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{AddFunc: func(any) { poke() }, UpdateFunc: func(any, any) { poke() }, DeleteFunc: func(any) { poke() }}
	gf := gatewayinformers.NewSharedInformerFactory(gc, 10*time.Minute)
	classes, gateways := gf.Gateway().V1().GatewayClasses(), gf.Gateway().V1().Gateways()
	managed := informers.NewSharedInformerFactoryWithOptions(kc, 10*time.Minute, informers.WithNamespace(p.opts.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = ManagedLabel + "=" + ManagedValue }))
	deps, svcs := managed.Apps().V1().Deployments(), managed.Core().V1().Services()
	for _, inf := range []cache.SharedIndexInformer{classes.Informer(), gateways.Informer(), deps.Informer(), svcs.Informer()} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return err
		}
	}
	gf.Start(ctx.Done())
	managed.Start(ctx.Done())
	defer gf.Shutdown()
	defer managed.Shutdown()
	gf.WaitForCacheSync(ctx.Done())
	managed.WaitForCacheSync(ctx.Done())
	backoff := time.Duration(0)
	for {
		var retry <-chan time.Time
		if backoff > 0 {
			retry = time.After(backoff)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-retry:
		}
		cl, _ := classes.Lister().List(labels.Everything())
		gws, _ := gateways.Lister().List(labels.Everything())
		ds, _ := deps.Lister().List(labels.Everything())
		ss, _ := svcs.Lister().List(labels.Everything())
		err := errors.Join(p.sync(ctx, kc, p.desired(cl, gws), ds, ss), p.acceptClasses(ctx, gc, cl))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			backoff = min(max(2*backoff, 100*time.Millisecond), 10*time.Second)
			p.log.Warn("gateways not provisioned; retrying", "in", backoff, "err", err)
			continue
		}
		backoff = 0
	}
}

// acceptClasses writes Accepted on the controller's GatewayClasses: the
// provisioner is what runs while a class has no Gateway yet.
func (p *Provisioner) acceptClasses(ctx context.Context, gc gatewayclient.Interface, classes []*gatewayv1.GatewayClass) error {
	w := NewStatusWriter(p.cfg, StatusWriterOptions{Controller: p.opts.Controller, Log: p.opts.Log})
	var s Status
	for _, c := range classes {
		if c.Spec.ControllerName == p.opts.Controller {
			s.Classes = append(s.Classes, classStatus(c, p.opts.Controller))
		}
	}
	return w.write(ctx, gc, &s)
}

// provisioned is what one Gateway's gateway is made of.
type provisioned struct {
	deployment *appsv1.Deployment
	service    *corev1.Service
}

// desired are the objects the Gateways of the controller's classes need,
// by object name.
func (p *Provisioner) desired(classes []*gatewayv1.GatewayClass, gws []*gatewayv1.Gateway) map[string]provisioned {
	ours := map[string]bool{}
	for _, c := range classes {
		if c.Spec.ControllerName == p.opts.Controller {
			ours[c.Name] = true
		}
	}
	out := map[string]provisioned{}
	for _, gw := range gws {
		if !ours[string(gw.Spec.GatewayClassName)] || gw.DeletionTimestamp != nil {
			continue
		}
		name := ProvisionedName(gw.Namespace, gw.Name)
		out[name] = provisioned{deployment: p.deployment(gw, name), service: p.service(gw, name)}
	}
	return out
}

// ProvisionedName is the name of the Deployment and Service of a
// Gateway's gateway: readable, unique by a hash of namespace/name, and
// within the 63 characters of a label value and a Service name.
func ProvisionedName(namespace, name string) string {
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	h := hex.EncodeToString(sum[:])[:8]
	base := "gw-" + namespace + "-" + name
	if len(base) > 50 {
		base = base[:50]
	}
	return strings.TrimRight(base, "-.") + "-" + h
}

func (p *Provisioner) labels(name string) map[string]string {
	return map[string]string{ManagedLabel: ManagedValue, gatewayHashLabel: name, "app.kubernetes.io/name": "ballast-gateway", "app.kubernetes.io/part-of": "ballast"}
}

func (p *Provisioner) deployment(gw *gatewayv1.Gateway, name string) *appsv1.Deployment {
	lbl := p.labels(name)
	sel := map[string]string{gatewayHashLabel: name}
	nonRoot, noEsc, ro := true, false, true
	uid := int64(65532)
	grace := int64(35)
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: p.opts.Namespace, Labels: lbl,
			Annotations: map[string]string{GatewayAnnotation: gw.Namespace + "/" + gw.Name}},
		Spec: appsv1.DeploymentSpec{
			Replicas: &p.opts.Replicas,
			Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: lbl, Annotations: map[string]string{GatewayAnnotation: gw.Namespace + "/" + gw.Name}},
				Spec: corev1.PodSpec{
					ServiceAccountName:            p.opts.ServiceAccount,
					TerminationGracePeriodSeconds: &grace,
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot: &nonRoot, RunAsUser: &uid,
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
						// Listener ports below 1024 without root or NET_BIND_SERVICE.
						Sysctls: []corev1.Sysctl{{Name: "net.ipv4.ip_unprivileged_port_start", Value: "0"}},
					},
					Containers: []corev1.Container{{
						Name:            "gateway",
						Image:           p.opts.Image,
						ImagePullPolicy: corev1.PullIfNotPresent,
						Command:         []string{"ballast-gateway"},
						Args: []string{
							"--gateway=" + gw.Namespace + "/" + gw.Name,
							"--status-service=" + p.opts.Namespace + "/" + name,
							"--admin-address=:15021",
						},
						Ports: []corev1.ContainerPort{{Name: "admin", ContainerPort: 15021, Protocol: corev1.ProtocolTCP}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("admin"), Scheme: corev1.URISchemeHTTP}},
							PeriodSeconds:    2,
							FailureThreshold: 2, SuccessThreshold: 1, TimeoutSeconds: 1,
						},
						Resources: corev1.ResourceRequirements{
							Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
							Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
						},
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: &noEsc, ReadOnlyRootFilesystem: &ro,
							Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
						TerminationMessagePath:   corev1.TerminationMessagePathDefault,
						TerminationMessagePolicy: corev1.TerminationMessageReadFile,
					}},
				},
			},
		},
	}
}

// service is the Gateway's address: its listener ports (each once) on its
// gateway's pods.
func (p *Provisioner) service(gw *gatewayv1.Gateway, name string) *corev1.Service {
	var ports []corev1.ServicePort
	seen := map[gatewayv1.PortNumber]bool{}
	for _, l := range gw.Spec.Listeners {
		if seen[l.Port] {
			continue
		}
		seen[l.Port] = true
		sp := corev1.ServicePort{Name: fmt.Sprintf("port-%d", l.Port), Port: int32(l.Port), TargetPort: intstr.FromInt32(int32(l.Port)), Protocol: corev1.ProtocolTCP}
		if l.Protocol == gatewayv1.HTTPProtocolType {
			sp.AppProtocol = ptr("kubernetes.io/h2c")
		}
		ports = append(ports, sp)
	}
	slices.SortFunc(ports, func(a, b corev1.ServicePort) int { return cmp.Compare(a.Port, b.Port) })
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: p.opts.Namespace, Labels: p.labels(name),
			Annotations: map[string]string{GatewayAnnotation: gw.Namespace + "/" + gw.Name}},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeLoadBalancer,
			Selector: map[string]string{gatewayHashLabel: name},
			Ports:    ports,
		},
	}
}

// sync converges the managed Deployments and Services on want.
func (p *Provisioner) sync(ctx context.Context, kc kubernetes.Interface, want map[string]provisioned, deps []*appsv1.Deployment, svcs []*corev1.Service) error {
	var errs []error
	haveDep := map[string]*appsv1.Deployment{}
	for _, d := range deps {
		haveDep[d.Name] = d
	}
	haveSvc := map[string]*corev1.Service{}
	for _, s := range svcs {
		haveSvc[s.Name] = s
	}
	dapi, sapi := kc.AppsV1().Deployments(p.opts.Namespace), kc.CoreV1().Services(p.opts.Namespace)
	for name, w := range want {
		// The Service first: its address is what the gateway reports.
		if cur := haveSvc[name]; cur == nil {
			_, err := sapi.Create(ctx, w.service, metav1.CreateOptions{})
			errs = append(errs, ignoreExists(err))
			if err == nil {
				p.log.Info("gateway service created", "gateway", w.service.Annotations[GatewayAnnotation], "service", name)
			}
		} else if !equality.Semantic.DeepEqual(cur.Spec.Ports, w.service.Spec.Ports) || cur.Spec.Type != w.service.Spec.Type ||
			!equality.Semantic.DeepEqual(cur.Spec.Selector, w.service.Spec.Selector) {
			next := cur.DeepCopy()
			next.Spec.Ports, next.Spec.Type, next.Spec.Selector = w.service.Spec.Ports, w.service.Spec.Type, w.service.Spec.Selector
			_, err := sapi.Update(ctx, next, metav1.UpdateOptions{})
			errs = append(errs, err)
		}
		if cur := haveDep[name]; cur == nil {
			_, err := dapi.Create(ctx, w.deployment, metav1.CreateOptions{})
			errs = append(errs, ignoreExists(err))
			if err == nil {
				p.log.Info("gateway deployment created", "gateway", w.deployment.Annotations[GatewayAnnotation], "deployment", name)
			}
		} else if !deploymentCurrent(cur, w.deployment) {
			next := cur.DeepCopy()
			next.Spec.Replicas = w.deployment.Spec.Replicas
			next.Spec.Template = w.deployment.Spec.Template
			_, err := dapi.Update(ctx, next, metav1.UpdateOptions{})
			errs = append(errs, err)
		}
	}
	for name := range haveDep {
		if _, ok := want[name]; !ok {
			errs = append(errs, ignoreGone(dapi.Delete(ctx, name, metav1.DeleteOptions{})))
			p.log.Info("gateway deployment deleted", "deployment", name)
		}
	}
	for name := range haveSvc {
		if _, ok := want[name]; !ok {
			errs = append(errs, ignoreGone(sapi.Delete(ctx, name, metav1.DeleteOptions{})))
		}
	}
	return errors.Join(errs...)
}

// deploymentCurrent says whether cur runs what want says: the fields the
// provisioner sets (the API server defaults the others).
func deploymentCurrent(cur, want *appsv1.Deployment) bool {
	if *cur.Spec.Replicas != *want.Spec.Replicas {
		return false
	}
	ct, wt := cur.Spec.Template.Spec, want.Spec.Template.Spec
	if len(ct.Containers) != 1 || ct.ServiceAccountName != wt.ServiceAccountName {
		return false
	}
	c, w := ct.Containers[0], wt.Containers[0]
	return c.Image == w.Image && slices.Equal(c.Args, w.Args) && slices.Equal(c.Command, w.Command)
}

func ignoreExists(err error) error {
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}
