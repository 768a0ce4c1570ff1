package control_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ballast-dev/ballast/control/servingcert"
)

// TestServingCertificate, against a real API server: two replicas
// starting share one CA (the Secret the first made); each serves a
// certificate of it for the Service's names; the CA is published as a
// ConfigMap in every namespace, a new one too, and put back when deleted
// or changed.
func TestServingCertificate(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sys := "servingcert-system"
	for _, ns := range []string{sys, "servingcert-a"} {
		if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := servingcert.Config{Client: apiClient(t), Namespace: sys, Secret: "ballast-control-ca", ConfigMap: "ballast-control-ca.crt",
		Hosts: []string{"ballast-control." + sys + ".svc"}, Log: quiet()}
	one, err := servingcert.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	two, err := servingcert.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if string(one.CAPEM()) != string(two.CAPEM()) {
		t.Fatal("two replicas made two CAs")
	}
	roots := pool(one.CAPEM())
	for _, is := range []*servingcert.Issuer{one, two} {
		c, _ := is.GetCertificate(&tls.ClientHelloInfo{})
		if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "ballast-control." + sys + ".svc"}); err != nil {
			t.Fatalf("serving certificate: %v", err)
		}
	}

	done := make(chan error, 2)
	go func() { done <- one.Run(ctx) }()
	go func() { done <- two.Run(ctx) }()
	defer func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
	}()
	published := func(ns string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			cm, err := env.Client.CoreV1().ConfigMaps(ns).Get(ctx, cfg.ConfigMap, metav1.GetOptions{})
			if err == nil && cm.Data[servingcert.CAFile] == string(one.CAPEM()) {
				return
			}
			if err != nil && !apierrors.IsNotFound(err) {
				t.Fatal(err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("namespace %s has no ConfigMap %s with the CA: %v", ns, cfg.ConfigMap, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	published("servingcert-a")
	published("default")
	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "servingcert-new"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	published("servingcert-new")
	if err := env.Client.CoreV1().ConfigMaps("servingcert-a").Delete(ctx, cfg.ConfigMap, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	published("servingcert-a")
	cm, err := env.Client.CoreV1().ConfigMaps("servingcert-new").Get(ctx, cfg.ConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[servingcert.CAFile] = "not a CA"
	if _, err := env.Client.CoreV1().ConfigMaps("servingcert-new").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	published("servingcert-new")

	// A certificate is renewed in place before it expires.
	short := cfg
	short.Validity = 10 * time.Second
	three, err := servingcert.New(ctx, short)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := three.GetCertificate(&tls.ClientHelloInfo{})
	rctx, rcancel := context.WithCancel(ctx)
	rdone := make(chan error, 1)
	go func() { rdone <- three.Run(rctx) }()
	defer func() { rcancel(); <-rdone }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, _ := three.GetCertificate(&tls.ClientHelloInfo{})
		if c.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0 {
			if c.Leaf.NotAfter.Before(first.Leaf.NotAfter) {
				t.Fatalf("renewed certificate expires %v, before the first's %v", c.Leaf.NotAfter, first.Leaf.NotAfter)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the serving certificate was never renewed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
