package e2e

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestArticleImbalance reproduces the article on real Kubernetes objects:
// three greeters behind a ClusterIP Service, and every call of a client
// that keeps one connection lands on the same pod.
func TestArticleImbalance(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := cluster.Apply(ctx, articleService); err != nil {
		t.Fatal(err)
	}
	svc, err := cluster.Client.CoreV1().Services("default").Get(ctx, "native-tools-2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	counts, err := cluster.RunArticle(ctx, image, 3, 30, "--target", svc.Spec.ClusterIP+":50051")
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

const articleService = `apiVersion: v1
kind: Service
metadata:
  name: native-tools-2
  namespace: default
spec:
  selector:
    app: native-tools-2
  ports:
  - name: http
    port: 8081
  - name: grpc
    port: 50051
`
