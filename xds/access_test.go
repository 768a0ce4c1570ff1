package xds

import (
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
)

func TestIdentityFromCertificate(t *testing.T) {
	tests := []struct {
		name    string
		uris    []string
		want    Identity
		wantErr string
	}{
		{"SPIFFE ID", []string{"spiffe://cluster.local/ns/shop/sa/cart"}, Identity{Namespace: "shop", ServiceAccount: "cart"}, ""},
		{"first matching of several", []string{"https://example.com/x", "spiffe://other/ns/a/sa/b", "spiffe://cluster.local/ns/shop/sa/cart"},
			Identity{Namespace: "shop", ServiceAccount: "cart"}, ""},
		{"no URI", nil, Identity{}, "has no SPIFFE ID"},
		{"another trust domain", []string{"spiffe://other.example/ns/shop/sa/cart"}, Identity{}, "is not spiffe://cluster.local/ns/<namespace>/sa/<serviceaccount>"},
		{"not the ns/sa form", []string{"spiffe://cluster.local/workload/cart"}, Identity{}, "is not spiffe://cluster.local"},
		{"empty namespace", []string{"spiffe://cluster.local/ns//sa/cart"}, Identity{}, "is not"},
		{"extra path", []string{"spiffe://cluster.local/ns/shop/sa/cart/x"}, Identity{}, "is not"},
		{"query", []string{"spiffe://cluster.local/ns/shop/sa/cart?ns=kube-system"}, Identity{}, "is not"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cert := &x509.Certificate{}
			for _, u := range tc.uris {
				pu, err := url.Parse(u)
				if err != nil {
					t.Fatal(err)
				}
				cert.URIs = append(cert.URIs, pu)
			}
			got, err := IdentityFromCertificate(cert, "cluster.local")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("= %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
