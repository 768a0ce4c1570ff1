package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ballast-dev/ballast/discovery"
	"github.com/ballast-dev/ballast/discovery/kube"
	"github.com/ballast-dev/ballast/discovery/source"
	"github.com/ballast-dev/ballast/greeter"
	"github.com/ballast-dev/ballast/policy"
	"github.com/ballast-dev/ballast/resolver/kubernetes"
)

func newGreeterCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "greeter", Short: "The article's greeter service and client"}
	cmd.AddCommand(newGreeterServeCmd(), newGreeterClientCmd())
	return cmd
}

func newGreeterServeCmd() *cobra.Command {
	var (
		addr  string
		delay time.Duration
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve helloworld.Greeter, replying with this pod's name",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lis, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			if delay < 0 {
				return fmt.Errorf("--delay %s: must not be negative", delay)
			}
			s := &greeter.Server{Pod: greeter.PodName(), Delay: delay}
			return s.Serve(cmd.Context(), lis)
		},
	}
	cmd.Flags().StringVar(&addr, "address", ":50051", "address to serve gRPC on")
	cmd.Flags().DurationVar(&delay, "delay", 0, "wait this long before answering each call (plays a slow pod)")
	return cmd
}

func newGreeterClientCmd() *cobra.Command {
	var (
		listen, target, service string
		calls                   int
		disc                    clientDiscovery
	)
	cmd := &cobra.Command{
		Use:   "client",
		Short: "Call the greeter over one connection: HTTP /grpc_client?name=<service>, or --calls N",
		Long: `Without --calls, serves the article's HTTP endpoint: GET /grpc_client?name=<service>
dials <service>:50051 (or --target) once and reuses that connection for every call.
With --calls N, makes N calls over one connection to --target and prints the count per pod.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dialOpts, err := disc.dialOptions(cmd.Context(), target)
			if err != nil {
				return err
			}
			// A dns:/// target balances with --lb-policy when it is given
			// (grpc-go's default there is pick_first): the usual
			// do-it-yourself fix, a headless Service and round_robin.
			if strings.HasPrefix(target, "dns:") && cmd.Flags().Changed("lb-policy") {
				dialOpts = append(dialOpts, grpc.WithDefaultServiceConfig(disc.LBPolicy.ServiceConfig()))
			}
			if calls > 0 {
				return countCalls(cmd, cmp.Or(target, service+":50051"), calls, dialOpts)
			}
			client := &greeter.Client{DialOptions: dialOpts}
			if target != "" {
				client.Target = func(string) string { return target }
			}
			defer client.Close()
			mux := http.NewServeMux()
			mux.Handle("/grpc_client", client)
			srv := &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			go func() {
				<-cmd.Context().Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				srv.Shutdown(ctx)
			}()
			if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":8081", "address of the HTTP endpoint")
	cmd.Flags().StringVar(&target, "target", "", "gRPC target to dial instead of <service>:50051 (dns:///, kubernetes:///, xds:///)")
	cmd.Flags().StringVar(&service, "service", "native-tools-2", "service to call with --calls when no --target is given")
	cmd.Flags().IntVar(&calls, "calls", 0, "make this many calls, print the count per pod and exit")
	cmd.Flags().StringVar(&disc.Kubeconfig, "kubeconfig", "", "kubeconfig for kubernetes:/// targets (default: $KUBECONFIG, ~/.kube/config, then in-cluster)")
	cmd.Flags().StringVar(&disc.Files, "files", "", "resolve kubernetes:/// targets from this folder of Service and EndpointSlice YAML instead of a cluster")
	disc.LBPolicy = policy.RoundRobin
	cmd.Flags().Var(&disc.LBPolicy, "lb-policy", "LB policy for kubernetes:/// targets, and for dns:/// targets when given, as the annotation names them: round_robin, least_request, peak_ewma (a Service annotated ballast.dev/lb-policy gets its own instead)")
	return cmd
}

func countCalls(cmd *cobra.Command, target string, n int, dialOpts []grpc.DialOption) error {
	conn, err := grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, dialOpts...)...)
	if err != nil {
		return fmt.Errorf("dial %s: %w", target, err)
	}
	defer conn.Close()
	t := greeter.Call(cmd.Context(), conn, n, 0, nil)
	out := cmd.OutOrStdout()
	for _, pod := range slices.Sorted(maps.Keys(t.Pods)) {
		fmt.Fprintf(out, "%s\t%d\n", pod, t.Pods[pod])
	}
	if t.Errors > 0 {
		return fmt.Errorf("%d of %d calls failed; last: %v", t.Errors, t.Calls, t.LastError)
	}
	return nil
}

// clientDiscovery says where a greeter client's kubernetes:/// targets are
// resolved from.
type clientDiscovery struct {
	Kubeconfig string
	Files      string
	LBPolicy   policy.LB
}

// dialOptions makes kubernetes:/// targets resolvable (from the cluster, or
// from --files) and picks the LB policy; xds:/// targets need nothing here:
// the xDS resolver and Ballast's balancers register when this binary starts.
func (d clientDiscovery) dialOptions(ctx context.Context, target string) ([]grpc.DialOption, error) {
	if !strings.HasPrefix(target, kubernetes.Scheme+":") {
		return nil, nil
	}
	opts := []grpc.DialOption{grpc.WithDefaultServiceConfig(d.LBPolicy.ServiceConfig())}
	if d.Files != "" {
		reg := discovery.NewRegistry()
		sources, err := source.Open(source.Config{Files: d.Files}, reg)
		if err != nil {
			return nil, err
		}
		go sources.Run(ctx)
		// DialOptions: the files' GRPCRoutes route the calls, filters and all.
		return append(opts, kubernetes.DialOptions(reg)...), nil
	}
	restCfg, err := source.RESTConfig(d.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes:/// target needs a cluster (--kubeconfig, or in-cluster) or --files: %w", err)
	}
	cluster, err := kubernetes.StartCluster(ctx, restCfg, kube.Options{})
	if err != nil {
		return nil, err
	}
	return append(opts, cluster.DialOptions()...), nil
}
