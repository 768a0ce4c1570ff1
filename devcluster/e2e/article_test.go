package e2e

import (
	"context"
	"testing"
	"time"
)

// TestArticleImbalance reproduces the article on real Kubernetes objects:
// three greeters behind a ClusterIP Service, and every call of a client
// that keeps one connection lands on the same pod.
func TestArticleImbalance(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// The client dials native-tools-2:50051: cluster DNS, then the ClusterIP.
	counts, err := cluster.RunArticle(ctx, image, 3, 30)
	if err != nil {
		t.Fatalf("article run: %v (counts so far %v)", err, counts)
	}
	total := 0
	for _, n := range counts {
		total += n
	}
	if total != 30 || len(counts) != 1 {
		t.Fatalf("want all 30 calls answered by one pod, got %v", counts)
	}
	t.Logf("30 calls, one connection, per pod: %v", counts)
}
