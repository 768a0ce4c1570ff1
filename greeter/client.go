package greeter

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
)

// Client is the article's HTTP front end: GET /grpc_client?name=<service>
// dials the service once and sends every later call over that one
// connection, which is exactly what makes an L4 Service pin it to one pod.
type Client struct {
	// Target maps the service named in the request to a gRPC target. Nil
	// means the article's "<service>:50051"; a fixed --target ignores it.
	Target func(service string) string
	// DialOptions are added to insecure transport credentials.
	DialOptions []grpc.DialOption
	// Timeout bounds each call; zero means one second, as in the article.
	Timeout time.Duration

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// ServeHTTP answers "Greeting: <message>", or a 502 naming the failure.
func (c *Client) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	service := r.URL.Query().Get("name")
	if service == "" {
		http.Error(w, "missing query parameter name=<service>", http.StatusBadRequest)
		return
	}
	msg, err := c.Greet(r.Context(), service, "world")
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	fmt.Fprintf(w, "Greeting: %s", msg)
}

// Greet sends one SayHello to service over its long-lived connection.
func (c *Client) Greet(ctx context.Context, service, name string) (string, error) {
	conn, err := c.conn(service)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(c.Timeout, time.Second))
	defer cancel()
	reply, err := pb.NewGreeterClient(conn).SayHello(ctx, &pb.HelloRequest{Name: name})
	if err != nil {
		return "", fmt.Errorf("greet %s: %w", conn.Target(), err)
	}
	return reply.GetMessage(), nil
}

// Close closes every connection the client opened.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		conn.Close()
	}
	c.conns = nil
	return nil
}

func (c *Client) conn(service string) (*grpc.ClientConn, error) {
	target := service + ":50051"
	if c.Target != nil {
		target = c.Target(service)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if conn, ok := c.conns[target]; ok {
		return conn, nil
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, c.DialOptions...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", target, err)
	}
	if c.conns == nil {
		c.conns = map[string]*grpc.ClientConn{}
	}
	c.conns[target] = conn
	return conn, nil
}

// Tally is the outcome of a run of calls: how many each pod answered.
type Tally struct {
	Calls  int
	Errors int
	// LastError is the last failure seen, for reporting.
	LastError error
	Pods      map[string]int
}

// Call makes n SayHello calls over conn, one after another, and counts the
// pod that answered each. progress, if not nil, is called after every call.
func Call(ctx context.Context, conn grpc.ClientConnInterface, n int, timeout time.Duration, progress func(done int)) Tally {
	t := Tally{Pods: map[string]int{}}
	client := pb.NewGreeterClient(conn)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		callCtx, cancel := context.WithTimeout(ctx, cmp.Or(timeout, time.Second))
		reply, err := client.SayHello(callCtx, &pb.HelloRequest{Name: "world"})
		cancel()
		t.Calls++
		if err != nil {
			t.Errors++
			t.LastError = err
		} else {
			t.Pods[PodOf(reply.GetMessage())]++
		}
		if progress != nil {
			progress(i + 1)
		}
	}
	return t
}

// MaxOverMean is the busiest pod's count over the mean count across pods
// (pods of them, counting those that got no call): 1 is a perfect spread,
// pods means one pod took every call, and 0 says nothing was counted.
func MaxOverMean(counts map[string]int, pods int) float64 {
	total, most := 0, 0
	for _, n := range counts {
		total += n
		most = max(most, n)
	}
	if total == 0 {
		return 0
	}
	return float64(most) * float64(pods) / float64(total)
}

// PodOf extracts the pod name from a greeter reply ("hostname:<pod>, in:<name>").
func PodOf(message string) string {
	pod, _, _ := strings.Cut(strings.TrimPrefix(message, "hostname:"), ", in:")
	return pod
}
