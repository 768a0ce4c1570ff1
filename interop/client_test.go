package interop

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/resolver"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/ballast-dev/ballast/greeter"
	"github.com/ballast-dev/ballast/internal/toolcache"
)

// batch is what a client answers for one command: calls per pod, failures.
type batch struct {
	Pods       map[string]int
	Errors     int
	FirstError string
}

func (b batch) total() int {
	n := b.Errors
	for _, c := range b.Pods {
		n += c
	}
	return n
}

// client is one language's proxyless gRPC client, bootstrapped once.
type client interface {
	// calls makes n sequential calls to target.
	calls(t *testing.T, target string, n int) batch
}

// language is a column of the matrix: how to start its client.
type language struct {
	name string
	// sidecar runs the client without a bootstrap, dialling ballast-proxy's
	// explicit listeners, which take the xDS config in its place.
	sidecar bool
	// start runs a client with the bootstrap file; it returns the versions
	// the client reports (for the matrix header).
	start func(t *testing.T, bootstrap string) (client, map[string]string)
}

func interopDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// need fails the test when a tool the matrix needs is missing in CI, and
// skips it elsewhere.
func need(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal(err)
	}
	t.Skip(err)
}

// nodeModules is the folder tools/node.sh installed the pinned grpc-js
// packages into.
func nodeModules(t *testing.T) string {
	t.Helper()
	_, err := exec.LookPath("node")
	need(t, err)
	dir, err := toolcache.Path("BALLAST_NODE_MODULES", "node.sh")
	need(t, err)
	return filepath.Join(dir, "node_modules")
}

// debianPython is Debian's python3, for which python3-grpcio is packaged
// (tools/deps.sh installs it); a python3 earlier on PATH (pyenv) lacks it.
const debianPython = "/usr/bin/python3"

func checkPython(t *testing.T) {
	t.Helper()
	out, err := exec.Command(debianPython, "-c", "import grpc").CombinedOutput()
	if err != nil {
		err = fmt.Errorf("%s cannot import grpc (tools/deps.sh installs python3-grpcio): %v: %s", debianPython, err, out)
	}
	need(t, err)
}

var languages = []language{
	{name: "grpc-go", start: startGo},
	{name: "node", start: startNode},
	{name: "python", start: startPython},
	{name: "node-sidecar", sidecar: true, start: startNode},
	{name: "python-sidecar", sidecar: true, start: startPython},
}

func startNode(t *testing.T, bootstrap string) (client, map[string]string) {
	mods := nodeModules(t)
	return startScript(t, bootstrap, []string{"NODE_PATH=" + mods}, "node", filepath.Join(interopDir(), "node", "client.js"))
}

func startPython(t *testing.T, bootstrap string) (client, map[string]string) {
	checkPython(t)
	return startScript(t, bootstrap, nil, debianPython, filepath.Join(interopDir(), "python", "client.py"))
}

// scriptClient drives a client script over its stdin and stdout (see
// node/client.js for the protocol).
type scriptClient struct {
	mu  sync.Mutex
	in  io.Writer
	out *bufio.Scanner
}

func startScript(t *testing.T, bootstrap string, env []string, name string, args ...string) (client, map[string]string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	if bootstrap != "" {
		cmd.Env = append(cmd.Env, "GRPC_XDS_BOOTSTRAP="+bootstrap)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v\n%s", name, err, stderr.String())
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not exit when its stdin closed\n%s", name, stderr.String())
		}
		if t.Failed() {
			t.Logf("%s stderr:\n%s", name, stderr.String())
		}
	})
	c := &scriptClient{in: stdin, out: bufio.NewScanner(stdout)}
	c.out.Buffer(make([]byte, 1<<16), 1<<20)
	var versions map[string]string
	if !c.out.Scan() {
		t.Fatalf("%s printed no versions: %v\n%s", name, c.out.Err(), stderr.String())
	}
	if err := json.Unmarshal(c.out.Bytes(), &versions); err != nil {
		t.Fatalf("%s versions %q: %v", name, c.out.Text(), err)
	}
	return c, versions
}

func (c *scriptClient) calls(t *testing.T, target string, n int) batch {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	cmd, _ := json.Marshal(map[string]any{"target": target, "calls": n, "timeout_ms": 5000})
	if _, err := fmt.Fprintf(c.in, "%s\n", cmd); err != nil {
		t.Fatalf("client stdin: %v", err)
	}
	if !c.out.Scan() {
		t.Fatalf("client ended: %v", c.out.Err())
	}
	var r struct {
		Replies    map[string]int `json:"replies"`
		Errors     int            `json:"errors"`
		FirstError string         `json:"first_error"`
	}
	if err := json.Unmarshal(c.out.Bytes(), &r); err != nil {
		t.Fatalf("client answer %q: %v", c.out.Text(), err)
	}
	b := batch{Pods: map[string]int{}, Errors: r.Errors, FirstError: r.FirstError}
	for msg, n := range r.Replies {
		b.Pods[greeter.PodOf(msg)] += n
	}
	return b
}

// goClient is grpc-go's own xDS client, in process, as a grpc-go app gets
// it with the xds import and no Ballast package.
type goClient struct {
	rb    resolver.Builder
	conns map[string]*grpc.ClientConn
}

func startGo(t *testing.T, bootstrap string) (client, map[string]string) {
	t.Helper()
	data, err := os.ReadFile(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(data)
	if err != nil {
		t.Fatalf("grpc-go refuses the bootstrap: %v", err)
	}
	c := &goClient{rb: rb, conns: map[string]*grpc.ClientConn{}}
	t.Cleanup(func() {
		for _, cc := range c.conns {
			cc.Close()
		}
	})
	return c, map[string]string{"grpc": grpc.Version, "go": runtime.Version()}
}

func (c *goClient) calls(t *testing.T, target string, n int) batch {
	t.Helper()
	cc, ok := c.conns[target]
	if !ok {
		var err error
		cc, err = grpc.NewClient(target, grpc.WithResolvers(c.rb), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		c.conns[target] = cc
	}
	b := batch{Pods: map[string]int{}}
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := pb.NewGreeterClient(cc).SayHello(ctx, &pb.HelloRequest{Name: "go"})
		cancel()
		if err != nil {
			b.Errors++
			if b.FirstError == "" {
				b.FirstError = err.Error()
			}
			continue
		}
		b.Pods[greeter.PodOf(r.GetMessage())]++
	}
	return b
}

// syncBuffer is a bytes.Buffer a child process writes while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
