package charts

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// valueSets are the values CI lints and renders the chart with: the
// defaults, deploy/'s, and each switch away from them.
var valueSets = []struct {
	name   string
	values map[string]any
}{
	{"defaults", nil},
	{"deploy", map[string]any{
		"image":     map[string]any{"registry": "", "tag": "dev"},
		"namespace": map[string]any{"create": true},
		"inject":    map[string]any{"replicas": 1, "certificate": map[string]any{"source": "self-signed"}},
	}},
	{"gateway and one replica each", map[string]any{
		"gateway": map[string]any{"enabled": true},
		"control": map[string]any{"replicas": 1, "nodeSelector": map[string]any{"kubernetes.io/os": "linux"}},
		"inject":  map[string]any{"replicas": 1, "url": "https://127.0.0.1:8443/inject", "certificate": map[string]any{"extraIPs": []any{"127.0.0.1"}}},
	}},
	{"no injector", map[string]any{"inject": map[string]any{"enabled": false}}},
}

// TestLint is `helm lint --strict` with each value set: no warning, no
// error.
func TestLint(t *testing.T) {
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			res := lint.RunAll("ballast", vs.values, DefaultNamespace)
			for _, m := range res.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("%s", m)
				} else {
					t.Logf("%s", m)
				}
			}
		})
	}
}

func render(t *testing.T, values map[string]any) map[string]*unstructured.Unstructured {
	t.Helper()
	ms, err := Render(context.Background(), Options{Values: values})
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]*unstructured.Unstructured{}
	for _, m := range ms {
		os, err := m.Objects()
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range os {
			key := o.GetKind() + "/" + o.GetName()
			if _, dup := objs[key]; dup {
				t.Fatalf("%s rendered twice", key)
			}
			objs[key] = o
		}
	}
	return objs
}

func keys(objs map[string]*unstructured.Unstructured) []string {
	var ks []string
	for k := range objs {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func container(t *testing.T, objs map[string]*unstructured.Unstructured, deployment string) map[string]any {
	t.Helper()
	d := objs["Deployment/"+deployment]
	if d == nil {
		t.Fatalf("no Deployment %s in %v", deployment, keys(objs))
	}
	cs, _, _ := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	return cs[0].(map[string]any)
}

func args(c map[string]any) []string {
	var out []string
	for _, a := range c["args"].([]any) {
		out = append(out, a.(string))
	}
	return out
}

// TestRender is `helm template` with each value set: what each switch
// renders.
func TestRender(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		objs := render(t, nil)
		want := []string{
			"ClusterRole/ballast-control", "ClusterRoleBinding/ballast-control",
			"CustomResourceDefinition/grpcroutes.gateway.networking.k8s.io",
			"CustomResourceDefinition/referencegrants.gateway.networking.k8s.io",
			"CustomResourceDefinition/trafficpolicies.ballast.dev",
			"Deployment/ballast-control", "Deployment/ballast-inject",
			"MutatingWebhookConfiguration/ballast-inject",
			"PodDisruptionBudget/ballast-control", "PodDisruptionBudget/ballast-inject",
			"Role/ballast-control", "RoleBinding/ballast-control",
			"Secret/ballast-inject-tls",
			"Service/ballast-control", "Service/ballast-inject",
			"ServiceAccount/ballast-control", "ServiceAccount/ballast-inject",
		}
		if got := keys(objs); !slices.Equal(got, want) {
			t.Fatalf("objects\n got %v\nwant %v", got, want)
		}
		if img := container(t, objs, "ballast-control")["image"]; img != "ghcr.io/ballast-dev/ballast-control:0.1.0" {
			t.Errorf("control image %v, want the registry's at the chart's appVersion", img)
		}
		inj := args(container(t, objs, "ballast-inject"))
		if !slices.Contains(inj, "--image=ghcr.io/ballast-dev/ballast-proxy:0.1.0") || !slices.Contains(inj, "--cert-dir=/etc/ballast/inject-tls") {
			t.Errorf("injector args %v", inj)
		}
		checkCertificate(t, objs, []string{"ballast-inject.ballast-system.svc"}, nil)
	})
	t.Run("deploy", func(t *testing.T) {
		objs := render(t, valueSets[1].values)
		if objs["Namespace/ballast-system"] == nil || objs["Secret/ballast-inject-tls"] != nil || objs["PodDisruptionBudget/ballast-inject"] != nil {
			t.Fatalf("want the Namespace, no Secret, no injector PDB: %v", keys(objs))
		}
		if objs["ClusterRole/ballast-inject"] == nil {
			t.Error("a self-signed injector needs its ClusterRole to patch the caBundle")
		}
		if img := container(t, objs, "ballast-control")["image"]; img != "ballast-control:dev" {
			t.Errorf("control image %v", img)
		}
		inj := args(container(t, objs, "ballast-inject"))
		for _, a := range []string{"--self-signed=ballast-inject", "--dns-names=ballast-inject.ballast-system.svc", "--image=ballast-proxy:dev"} {
			if !slices.Contains(inj, a) {
				t.Errorf("injector args %v lack %s", inj, a)
			}
		}
		hooks, _, _ := unstructured.NestedSlice(objs["MutatingWebhookConfiguration/ballast-inject"].Object, "webhooks")
		if _, ok := hooks[0].(map[string]any)["clientConfig"].(map[string]any)["caBundle"]; ok {
			t.Error("a self-signed injector's registration has a caBundle before it starts")
		}
	})
	t.Run("gateway, one replica each, webhook by url", func(t *testing.T) {
		objs := render(t, valueSets[2].values)
		for _, k := range []string{"Deployment/ballast-gateway", "Service/ballast-gateway", "ServiceAccount/ballast-gateway", "PodDisruptionBudget/ballast-gateway"} {
			if objs[k] == nil {
				t.Errorf("no %s", k)
			}
		}
		for _, k := range []string{"PodDisruptionBudget/ballast-control", "PodDisruptionBudget/ballast-inject"} {
			if objs[k] != nil {
				t.Errorf("%s with one replica blocks every drain", k)
			}
		}
		if sel, _, _ := unstructured.NestedStringMap(objs["Deployment/ballast-control"].Object, "spec", "template", "spec", "nodeSelector"); sel["kubernetes.io/os"] != "linux" {
			t.Errorf("control nodeSelector %v", sel)
		}
		hooks, _, _ := unstructured.NestedSlice(objs["MutatingWebhookConfiguration/ballast-inject"].Object, "webhooks")
		if url := hooks[0].(map[string]any)["clientConfig"].(map[string]any)["url"]; url != "https://127.0.0.1:8443/inject" {
			t.Errorf("webhook url %v", url)
		}
		checkCertificate(t, objs, []string{"ballast-inject.ballast-system.svc"}, []string{"127.0.0.1"})
	})
	t.Run("no injector", func(t *testing.T) {
		for k := range render(t, valueSets[3].values) {
			if strings.Contains(k, "inject") {
				t.Errorf("%s rendered with inject.enabled false", k)
			}
		}
	})
}

// checkCertificate: the Secret's certificate is signed by the CA the
// registration trusts and names the Service (and dnsNames, ips).
func checkCertificate(t *testing.T, objs map[string]*unstructured.Unstructured, dnsNames, ips []string) {
	t.Helper()
	data, _, _ := unstructured.NestedStringMap(objs["Secret/ballast-inject-tls"].Object, "data")
	hooks, _, _ := unstructured.NestedSlice(objs["MutatingWebhookConfiguration/ballast-inject"].Object, "webhooks")
	caBundle := hooks[0].(map[string]any)["clientConfig"].(map[string]any)["caBundle"]
	if caBundle != data["ca.crt"] {
		t.Fatal("the registration's caBundle is not the Secret's ca.crt")
	}
	parse := func(b64 string) *x509.Certificate {
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(raw)
		if block == nil {
			t.Fatal("no PEM block")
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ca, cert := parse(data["ca.crt"]), parse(data["tls.crt"])
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, host := range append(slices.Clone(dnsNames), ips...) {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("certificate for %s: %v", host, err)
		}
	}
	var gotIPs []string
	for _, ip := range cert.IPAddresses {
		gotIPs = append(gotIPs, ip.String())
	}
	if fmt.Sprint(gotIPs) != fmt.Sprint(ips) && !(len(ips) == 0 && len(gotIPs) == 0) {
		t.Errorf("certificate IPs %v, want %v", gotIPs, ips)
	}
}

// TestRenderRefuses: values that cannot work fail the render naming the
// value.
func TestRenderRefuses(t *testing.T) {
	tests := []struct {
		name    string
		values  map[string]any
		wantErr string
	}{
		{"unknown certificate source", map[string]any{"inject": map[string]any{"certificate": map[string]any{"source": "vault"}}}, `inject.certificate.source "vault"`},
		{"self-signed with two replicas", map[string]any{"inject": map[string]any{"replicas": 2, "certificate": map[string]any{"source": "self-signed"}}}, "inject.replicas > 1 needs inject.certificate.source helm"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Render(context.Background(), Options{Values: tt.values})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to say %q", err, tt.wantErr)
			}
		})
	}
}
