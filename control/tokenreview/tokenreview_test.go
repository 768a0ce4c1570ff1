package tokenreview

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	authenticationv1 "k8s.io/api/authentication/v1"
	testclock "k8s.io/utils/clock/testing"

	"github.com/ballast-dev/ballast/xds"
)

// reviewer is a fake API server's TokenReview: tokens starting "ok-" are
// shop/cart's for the audience asked, "user" is a person's, "down" fails
// the call, anything else is refused. The API server itself is tested in
// control's TestAuthenticatedXDS; this is the cache's logic.
func reviewer(calls *int) Reviewer {
	return reviewFunc(func(tr *authenticationv1.TokenReview) (*authenticationv1.TokenReview, error) {
		*calls++
		tr = tr.DeepCopy()
		switch tok := tr.Spec.Token; {
		case tok == "down":
			return nil, fmt.Errorf("connection refused")
		case tok == "user":
			tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: tr.Spec.Audiences, User: authenticationv1.UserInfo{Username: "alice"}}
		case strings.HasPrefix(tok, "ok-"):
			tr.Status = authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: tr.Spec.Audiences,
				User: authenticationv1.UserInfo{Username: "system:serviceaccount:shop:cart"}}
		}
		return tr, nil
	})
}

type reviewFunc func(*authenticationv1.TokenReview) (*authenticationv1.TokenReview, error)

func (f reviewFunc) Create(_ context.Context, _ string, tr *authenticationv1.TokenReview) (*authenticationv1.TokenReview, error) {
	return f(tr)
}

func TestAuthenticateCaches(t *testing.T) {
	calls := 0
	clk := testclock.NewFakePassiveClock(time.Unix(1_000_000, 0))
	a, err := New(Config{Client: reviewer(&calls), TTL: time.Minute, NegativeTTL: 10 * time.Second, MaxEntries: 3, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	steps := []struct {
		name      string
		advance   time.Duration
		token     string
		wantID    xds.Identity
		wantCode  codes.Code
		wantCalls int
	}{
		{"first review", 0, "ok-1", xds.Identity{Namespace: "shop", ServiceAccount: "cart"}, codes.OK, 1},
		{"cached", 30 * time.Second, "ok-1", xds.Identity{Namespace: "shop", ServiceAccount: "cart"}, codes.OK, 1},
		{"expired after the TTL", 31 * time.Second, "ok-1", xds.Identity{Namespace: "shop", ServiceAccount: "cart"}, codes.OK, 2},
		{"a person's token", 0, "user", xds.Identity{}, codes.Unauthenticated, 3},
		{"refusal cached", 5 * time.Second, "user", xds.Identity{}, codes.Unauthenticated, 3},
		{"refusal kept less long", 6 * time.Second, "user", xds.Identity{}, codes.Unauthenticated, 4},
		{"API down", 0, "down", xds.Identity{}, codes.Unavailable, 5},
		{"API down is not cached", 0, "down", xds.Identity{}, codes.Unavailable, 6},
	}
	for _, s := range steps {
		clk.SetTime(clk.Now().Add(s.advance))
		id, err := a.Authenticate(ctx, s.token)
		if id != s.wantID || status.Code(err) != s.wantCode || calls != s.wantCalls {
			t.Fatalf("%s: %v, %v after %d reviews; want %v, %v after %d", s.name, id, err, calls, s.wantID, s.wantCode, s.wantCalls)
		}
	}
	for i := range 10 {
		a.Authenticate(ctx, fmt.Sprintf("ok-%d", i+2))
	}
	if n := a.Len(); n > 3 {
		t.Fatalf("cache holds %d verdicts; bound is 3", n)
	}
}

// A valid token's verdict does not outlive the token.
func TestAuthenticateKeepsNoVerdictPastExpiry(t *testing.T) {
	calls := 0
	clk := testclock.NewFakePassiveClock(time.Unix(1_000_000, 0))
	a, _ := New(Config{Client: reviewer(&calls), TTL: time.Hour, Clock: clk})
	payload := base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, `{"exp":%d}`, clk.Now().Add(time.Minute).Unix()))
	tok := "ok-h." + payload + ".s"
	for i, advance := range []time.Duration{0, 30 * time.Second, 31 * time.Second} {
		clk.SetTime(clk.Now().Add(advance))
		a.Authenticate(context.Background(), tok)
		if want := []int{1, 1, 2}[i]; calls != want {
			t.Fatalf("after %d lookups, %d reviews; want %d", i+1, calls, want)
		}
	}
}

func TestServiceAccount(t *testing.T) {
	for user, want := range map[string]bool{
		"system:serviceaccount:shop:cart": true,
		"system:serviceaccount:shop":      false,
		"system:serviceaccount::cart":     false,
		"alice":                           false,
	} {
		if _, ok := serviceAccount(user); ok != want {
			t.Errorf("serviceAccount(%q) ok = %v; want %v", user, ok, want)
		}
	}
}
