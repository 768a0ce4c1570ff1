package inject

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// SelfSigned makes a serving certificate for hosts (DNS names or IP
// addresses) that is its own CA,
// and the PEM the webhook configuration's caBundle must hold to trust it.
// It lets the injector run without a certificate manager: one replica
// makes its certificate at start and publishes the CA with PatchCABundle.
func SelfSigned(hosts []string, validFor time.Duration) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("webhook key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("webhook serial: %w", err)
	}
	if len(hosts) == 0 {
		return tls.Certificate{}, nil, fmt.Errorf("webhook certificate: no host names")
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hosts[0]},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validFor),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("webhook certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// PatchCABundle sets the caBundle of every webhook in the named
// MutatingWebhookConfiguration.
func PatchCABundle(ctx context.Context, client kubernetes.Interface, name string, caPEM []byte) error {
	api := client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	cfg, err := api.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("webhook configuration %s: %w", name, err)
	}
	type clientConfig struct {
		CABundle []byte `json:"caBundle"`
	}
	type webhook struct {
		Name         string       `json:"name"`
		ClientConfig clientConfig `json:"clientConfig"`
	}
	var patch struct {
		Webhooks []webhook `json:"webhooks"`
	}
	for _, w := range cfg.Webhooks {
		patch.Webhooks = append(patch.Webhooks, webhook{Name: w.Name, ClientConfig: clientConfig{CABundle: caPEM}})
	}
	body, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	// Webhooks merge by name in a strategic merge patch.
	if _, err := api.Patch(ctx, name, types.StrategicMergePatchType, body, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("webhook configuration %s: set caBundle: %w", name, err)
	}
	return nil
}
