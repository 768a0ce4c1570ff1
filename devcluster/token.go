package devcluster

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// tokenSource hands out ServiceAccount tokens bound to a pod.
type tokenSource interface {
	token(ctx context.Context, pod *corev1.Pod, audience string, expirationSeconds int64) (string, error)
	forget(podUID string)
}

// tokenManager requests tokens with the TokenRequest API and caches them,
// as the kubelet's token manager does: a token is requested again once 80%
// of its lifetime has passed (or after 24h), so the file a pod reads is
// rotated well before it expires.
type tokenManager struct {
	client kubernetes.Interface
	now    func() time.Time

	mu    sync.Mutex
	cache map[string]cachedToken
}

type cachedToken struct {
	token              string
	issued, expiration time.Time
}

func newTokenManager(client kubernetes.Interface, now func() time.Time) *tokenManager {
	if now == nil {
		now = time.Now
	}
	return &tokenManager{client: client, now: now, cache: map[string]cachedToken{}}
}

func (m *tokenManager) token(ctx context.Context, pod *corev1.Pod, audience string, exp int64) (string, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	key := strings.Join([]string{pod.Namespace, sa, string(pod.UID), audience, fmt.Sprint(exp)}, "/")
	m.mu.Lock()
	c, ok := m.cache[key]
	m.mu.Unlock()
	if ok && !m.needsRefresh(c) {
		return c.token, nil
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if audience != "" {
		req.Spec.Audiences = []string{audience}
	}
	resp, err := m.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		if ok && m.now().Before(c.expiration) {
			return c.token, nil // still valid: try again at the next sync
		}
		return "", fmt.Errorf("token for serviceaccount %s/%s: %w", pod.Namespace, sa, err)
	}
	// The lifetime is the server's (it may extend it), measured from now
	// on the manager's clock.
	issued := m.now()
	c = cachedToken{token: resp.Status.Token, issued: issued, expiration: issued.Add(time.Until(resp.Status.ExpirationTimestamp.Time))}
	m.mu.Lock()
	m.cache[key] = c
	m.mu.Unlock()
	return c.token, nil
}

// needsRefresh is the kubelet's rule: past 80% of the lifetime, or older
// than a day.
func (m *tokenManager) needsRefresh(c cachedToken) bool {
	now := m.now()
	life := c.expiration.Sub(c.issued)
	return now.After(c.issued.Add(life*8/10)) || now.After(c.issued.Add(24*time.Hour))
}

// forget drops the tokens of a pod that is gone.
func (m *tokenManager) forget(uid string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.cache {
		if strings.Contains(k, "/"+uid+"/") {
			delete(m.cache, k)
		}
	}
}

func (v *podVolumes) tokenFile(files map[string]volumeFile, pod *corev1.Pod, p corev1.ServiceAccountTokenProjection, def os.FileMode) error {
	if v.src.tokens == nil {
		return fmt.Errorf("serviceAccountToken: no token source")
	}
	exp := int64(3600)
	if p.ExpirationSeconds != nil {
		exp = *p.ExpirationSeconds
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := v.src.tokens.token(ctx, pod, p.Audience, exp)
	if err != nil {
		return err
	}
	files[p.Path] = volumeFile{data: []byte(tok), mode: def}
	return nil
}
