// Package e2e tests the dev cluster end to end: real control plane, pods as
// processes in their own network namespaces, ClusterIP by iptables, DNS.
// One cluster serves the whole package (TestMain); it needs root.
package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/grpclog"

	"github.com/ballast-dev/ballast/devcluster"
	ociimage "github.com/ballast-dev/ballast/image"
	"github.com/ballast-dev/ballast/internal/toolcache"
)

var cluster *devcluster.Cluster

const (
	image      = devcluster.BallastImage
	proxyImage = devcluster.ProxyImage
	// controlImage is what deploy/control runs.
	controlImage = devcluster.ControlImage
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "devcluster e2e: needs root (network namespaces); run as root, as scripts/test does in CI")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	// The images CI tests are the images a user pulls: built by the image
	// package, pushed to the cluster's registry, pulled by its Nodes.
	images, err := devcluster.BuildImages(ctx, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Istio's echo server and client: the conformance suite's echo image.
	echoDir, err := toolcache.Path("BALLAST_ISTIO_ECHO", "build-istio-echo.sh")
	if err != nil {
		fmt.Fprintln(os.Stderr, "build the echo image:", err)
		return 1
	}
	echo, err := ociimage.Directory(echoDir, []string{"/usr/local/bin/server"}, ociimage.HostPlatform())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The gateway suite's echo server (echo-basic, from the suite's module)
	// and its DNS server image (the dev cluster's CoreDNS build).
	tmp, err := os.MkdirTemp("", "ballast-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	more, err := conformanceImages(ctx, tmp)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	more[echoImage] = echo
	// Readiness probes dial pods before they listen; that is not news.
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))
	level := slog.LevelInfo
	if os.Getenv("BALLAST_DEVCLUSTER_DEBUG") != "" {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	start := time.Now()
	cluster, err = devcluster.Start(ctx, devcluster.Options{Images: images, Log: log,
		TokenClock: func() time.Time { return time.Now().Add(time.Duration(tokenClockAhead.Load())) }})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start dev cluster:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "devcluster e2e: cluster up in %s\n", time.Since(start).Round(time.Millisecond))
	defer func() {
		if err := cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop dev cluster:", err)
		}
	}()
	for ref, img := range more {
		if err := cluster.PushImage(ctx, ref, img); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	// Ctrl-C or a CI cancel: tear down before dying. (A SIGKILL or a test
	// timeout panic leaves leftovers that the next Start sweeps.)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		if _, ok := <-sigs; ok {
			fmt.Fprintln(os.Stderr, "devcluster e2e: interrupted, tearing down")
			cluster.Stop()
			os.Exit(2)
		}
	}()
	return m.Run()
}
