// Package tokenreview authenticates xDS clients by their Kubernetes
// ServiceAccount tokens: the API server's TokenReview says whether a token
// is valid for the control plane's audience and whose it is. Verdicts are
// cached for a while, so that thousands of sidecars reconnecting at once
// after a control plane restart cost the API server one review per token,
// not one per stream.
package tokenreview

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	"k8s.io/utils/clock"

	"github.com/ballast-dev/ballast/internal/kubeclient"
	"github.com/ballast-dev/ballast/xds"
)

// DefaultAudience is the audience a client's projected token must be for.
// A token for another audience (the API server's own, say) is refused, so
// a token the control plane sees could not be replayed against the API
// server, nor the pod's API token used here.
const DefaultAudience = "ballast-control"

// Config is what an Authenticator needs.
type Config struct {
	// Client reviews tokens. Required; it needs create on
	// authentication.k8s.io tokenreviews (the system:auth-delegator role).
	Client Reviewer
	// Audience the tokens must be for; empty means DefaultAudience.
	Audience string
	// TTL is how long a valid token's verdict is kept; never past the
	// token's own expiry. Zero means a minute: a revoked token (its pod
	// deleted) is refused on the next stream after at most that long.
	TTL time.Duration
	// NegativeTTL is how long a refusal is kept, so a client retrying a bad
	// token does not cost a review per attempt. Zero means 10 seconds.
	NegativeTTL time.Duration
	// MaxEntries bounds the cache; zero means 10,000 (one per client pod).
	MaxEntries int
	// Clock is the cache's time; nil means the real one.
	Clock clock.PassiveClock
}

// Reviewer creates TokenReviews (cluster-scoped: namespace ""), as
// kubeclient's handle on tokenreviews does.
type Reviewer interface {
	Create(ctx context.Context, namespace string, tr *authenticationv1.TokenReview) (*authenticationv1.TokenReview, error)
}

// APIReviewer is the API server's TokenReview, through c.
func APIReviewer(c *kubeclient.Client) (Reviewer, error) {
	auth, err := c.Group(authenticationv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	return kubeclient.NewResource(auth, "tokenreviews", func() *authenticationv1.TokenReview { return &authenticationv1.TokenReview{} }), nil
}

// Authenticator reviews bearer tokens through the API server.
type Authenticator struct {
	cfg    Config
	flight singleflight.Group

	mu    sync.Mutex
	cache map[[sha256.Size]byte]verdict
}

type verdict struct {
	id      xds.Identity
	err     error
	expires time.Time
}

var _ xds.Authenticator = (*Authenticator)(nil)

// New makes an Authenticator.
func New(cfg Config) (*Authenticator, error) {
	if cfg.Client == nil {
		return nil, fmt.Errorf("tokenreview: no Kubernetes client")
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if cfg.TTL == 0 {
		cfg.TTL = time.Minute
	}
	if cfg.NegativeTTL == 0 {
		cfg.NegativeTTL = 10 * time.Second
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = 10_000
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Authenticator{cfg: cfg, cache: map[[sha256.Size]byte]verdict{}}, nil
}

// Authenticate returns the ServiceAccount a token belongs to. A refused
// token is an Unauthenticated status saying why; a review that could not
// be made is Unavailable, and is not cached.
func (a *Authenticator) Authenticate(ctx context.Context, token string) (xds.Identity, error) {
	key := sha256.Sum256([]byte(token))
	now := a.cfg.Clock.Now()
	a.mu.Lock()
	v, ok := a.cache[key]
	a.mu.Unlock()
	if ok && now.Before(v.expires) {
		return v.id, v.err
	}
	// Concurrent streams with one token (a sidecar reconnecting) share one
	// review; it runs on its own context, so one caller giving up does not
	// fail the others.
	res, err, _ := a.flight.Do(string(key[:]), func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		return a.review(rctx, token, key)
	})
	if err != nil {
		return xds.Identity{}, err
	}
	v = res.(verdict)
	return v.id, v.err
}

// review asks the API server, and caches the verdict.
func (a *Authenticator) review(ctx context.Context, token string, key [sha256.Size]byte) (verdict, error) {
	tr, err := a.cfg.Client.Create(ctx, "", &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{a.cfg.Audience}},
	})
	if err != nil {
		return verdict{}, status.Errorf(codes.Unavailable, "could not review the token with the Kubernetes API: %v", err)
	}
	now := a.cfg.Clock.Now()
	v := verdict{expires: now.Add(a.cfg.NegativeTTL)}
	switch st := tr.Status; {
	case !st.Authenticated:
		why := st.Error
		if why == "" {
			why = "not valid"
		}
		v.err = status.Errorf(codes.Unauthenticated, "token refused by the Kubernetes API for audience %q: %s", a.cfg.Audience, why)
	case !slices.Contains(st.Audiences, a.cfg.Audience):
		v.err = status.Errorf(codes.Unauthenticated, "token is not for audience %q (it is for %q)", a.cfg.Audience, st.Audiences)
	default:
		id, ok := serviceAccount(st.User.Username)
		if !ok {
			v.err = status.Errorf(codes.Unauthenticated, "token of %q, which is not a ServiceAccount: xDS clients are identified by their pod's ServiceAccount", st.User.Username)
			break
		}
		v.id = id
		v.expires = now.Add(a.cfg.TTL)
		if exp, ok := expiry(token); ok && exp.Before(v.expires) {
			v.expires = exp
		}
	}
	a.store(key, v, now)
	return v, nil
}

// store caches a verdict, keeping the cache within MaxEntries: expired
// entries go first, then arbitrary ones (a map's order), which only costs
// their clients a review on their next stream.
func (a *Authenticator) store(key [sha256.Size]byte, v verdict, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.cache) >= a.cfg.MaxEntries {
		for k, old := range a.cache {
			if !now.Before(old.expires) {
				delete(a.cache, k)
			}
		}
		for k := range a.cache {
			if len(a.cache) < a.cfg.MaxEntries {
				break
			}
			delete(a.cache, k)
		}
	}
	a.cache[key] = v
}

// Len is the number of verdicts cached.
func (a *Authenticator) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.cache)
}

// serviceAccount parses a ServiceAccount's user name,
// system:serviceaccount:<namespace>:<name>.
func serviceAccount(user string) (xds.Identity, bool) {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return xds.Identity{}, false
	}
	ns, name, ok := strings.Cut(rest, ":")
	if !ok || ns == "" || name == "" {
		return xds.Identity{}, false
	}
	return xds.Identity{Namespace: ns, ServiceAccount: name}, true
}

// expiry reads a JWT's exp claim without checking the signature: the API
// server has checked the token; this only keeps its verdict from outliving
// the token.
func expiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == 0 {
		return time.Time{}, false
	}
	return time.Unix(claims.Exp, 0), true
}
