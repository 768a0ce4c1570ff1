package gateway_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ballast-dev/ballast/gateway"
)

// The provisioner against a real API server: the class of its controller
// is Accepted before any Gateway exists; a Gateway of the class gets a
// Deployment running ballast-gateway for it alone and a LoadBalancer
// Service with its listener ports (each once); a Gateway of another
// controller's class gets nothing; an edit of the listeners moves the
// Service's ports; a deleted Gateway loses both objects.
func TestProvisioner(t *testing.T) {
	ctx := context.Background()
	if _, err := envtest.InstallCRDs(env.Config, envtest.CRDInstallOptions{
		Paths: []string{"../deploy/control/gateway-api", "../deploy/gateway/gateway-api"}}); err != nil {
		t.Fatal(err)
	}
	gc, err := gatewayclient.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ns, system := env.Namespace(t, "gateway"), env.Namespace(t, "gateway")
	classes := map[string]gatewayv1.GatewayController{ns: gateway.ControllerName, ns + "-other": "example.com/other"}
	for name, ctrl := range classes {
		if _, err := gc.GatewayV1().GatewayClasses().Create(ctx, &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: gatewayv1.GatewayClassSpec{ControllerName: ctrl}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { gc.GatewayV1().GatewayClasses().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}

	p, err := gateway.NewProvisioner(env.Config, gateway.ProvisionerOptions{Namespace: system, Image: "ballast-gateway:dev", Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() {
		if err := p.Run(runCtx); err != nil {
			t.Errorf("provisioner: %v", err)
		}
	})

	t.Run("class Accepted without a Gateway", func(t *testing.T) {
		eventually(t, "the class is accepted", func() string {
			c, err := gc.GatewayV1().GatewayClasses().Get(ctx, ns, metav1.GetOptions{})
			if err != nil {
				return err.Error()
			}
			return checkCondition(c.Status.Conditions, "Accepted", metav1.ConditionTrue, "Accepted", c.Generation)
		})
	})

	listeners := []gatewayv1.Listener{
		{Name: "http", Protocol: gatewayv1.HTTPProtocolType, Port: 80},
		{Name: "https-a", Protocol: gatewayv1.HTTPSProtocolType, Port: 443, Hostname: ptr(gatewayv1.Hostname("a.example.com"))},
		{Name: "https-b", Protocol: gatewayv1.HTTPSProtocolType, Port: 443, Hostname: ptr(gatewayv1.Hostname("b.example.com"))},
	}
	for _, g := range []struct{ name, class string }{{"edge", ns}, {"foreign", ns + "-other"}} {
		if _, err := gc.GatewayV1().Gateways(ns).Create(ctx, &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: g.name},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: gatewayv1.ObjectName(g.class), Listeners: listeners}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	name := gateway.ProvisionedName(ns, "edge")
	servicePorts := func() ([]int32, error) {
		svc, err := env.Client.CoreV1().Services(system).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
			return nil, fmt.Errorf("service type %s, want LoadBalancer", svc.Spec.Type)
		}
		var ports []int32
		for _, p := range svc.Spec.Ports {
			if p.TargetPort.IntVal != p.Port {
				return nil, fmt.Errorf("port %d targets %v", p.Port, p.TargetPort)
			}
			ports = append(ports, p.Port)
		}
		return ports, nil
	}

	t.Run("a Gateway of the class gets its gateway", func(t *testing.T) {
		eventually(t, "the Deployment and Service of Gateway edge", func() string {
			d, err := env.Client.AppsV1().Deployments(system).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err.Error()
			}
			c := d.Spec.Template.Spec.Containers[0]
			wantArgs := []string{"--gateway=" + ns + "/edge", "--status-service=" + system + "/" + name}
			for _, a := range wantArgs {
				if !slices.Contains(c.Args, a) {
					return fmt.Sprintf("args %v lack %s", c.Args, a)
				}
			}
			if c.Image != "ballast-gateway:dev" || d.Spec.Template.Spec.ServiceAccountName != "ballast-gateway" {
				return fmt.Sprintf("image %s, service account %s", c.Image, d.Spec.Template.Spec.ServiceAccountName)
			}
			ports, err := servicePorts()
			if err != nil {
				return err.Error()
			}
			if !slices.Equal(ports, []int32{80, 443}) {
				return fmt.Sprintf("service ports %v, want [80 443]", ports)
			}
			return ""
		})
	})

	t.Run("another controller's Gateway gets none", func(t *testing.T) {
		list, err := env.Client.AppsV1().Deployments(system).List(ctx, metav1.ListOptions{LabelSelector: gateway.ManagedLabel + "=" + gateway.ManagedValue})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != 1 || list.Items[0].Name != name {
			t.Fatalf("%d managed Deployments, want only %s", len(list.Items), name)
		}
	})

	t.Run("the Service follows the listeners", func(t *testing.T) {
		// A controller may write status meanwhile: an update may conflict.
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			g, err := gc.GatewayV1().Gateways(ns).Get(ctx, "edge", metav1.GetOptions{})
			if err != nil {
				return err
			}
			g.Spec.Listeners = append(g.Spec.Listeners, gatewayv1.Listener{Name: "alt", Protocol: gatewayv1.HTTPProtocolType, Port: 8080})
			_, err = gc.GatewayV1().Gateways(ns).Update(ctx, g, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "the Service has port 8080", func() string {
			ports, err := servicePorts()
			if err != nil {
				return err.Error()
			}
			if !slices.Equal(ports, []int32{80, 443, 8080}) {
				return fmt.Sprintf("service ports %v, want [80 443 8080]", ports)
			}
			return ""
		})
	})

	t.Run("a deleted Gateway loses its gateway", func(t *testing.T) {
		if err := gc.GatewayV1().Gateways(ns).Delete(ctx, "edge", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the Deployment and Service are gone", func() string {
			if _, err := env.Client.AppsV1().Deployments(system).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Sprintf("deployment: %v", err)
			}
			if _, err := env.Client.CoreV1().Services(system).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Sprintf("service: %v", err)
			}
			return ""
		})
	})
}
