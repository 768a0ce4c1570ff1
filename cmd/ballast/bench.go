package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/grpclog"

	"github.com/ballast-dev/ballast/bench"
)

func newBenchCmd() *cobra.Command {
	var (
		quick, install, jsonOut bool
		short                   bool
		soak                    time.Duration
		runs                    int
		out                     string
		only, faults            []string
		modesBinary, proxyBin   string
		controlBin, gatewayBin  string
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure balance, data-path cost and the control plane next to nginx, haproxy and istiod; write docs/benchmarks.md",
		Long: `Runs every scenario on 127.0.0.0/8 (greeter pods as processes on 127.0.0.20+, each peer as its
own process with a configuration in a temporary directory), prints a table per scenario, and
writes PNG charts and benchmarks.md into --out. nginx and haproxy are installed with apt-get
when missing (unless --install-peers=false); istiod (pilot-discovery) is built from the Go module
pinned in tools/istio on first use (tools/build-istiod.sh, cached in ~/.cache/ballast; set
BALLAST_ISTIOD to use another build), and the control planes watch a kube-apiserver and etcd
from tools/build.sh. A peer that cannot run is reported with the reason.

--only reliability (as root) runs the faults of docs/reliability.md instead, on a dev
cluster of its own, and writes reliability.md into --out.
Progress goes to stderr. --quick finishes in a few minutes on a 2-core machine.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runs < 1 || runs > 100 {
				return fmt.Errorf("--runs %d: want 1 to 100", runs)
			}
			for _, id := range only {
				if !slices.Contains(bench.ScenarioIDs, id) && id != bench.ReliabilityID {
					return fmt.Errorf("--only %q: want one of %s, %s", id, strings.Join(bench.ScenarioIDs, ", "), bench.ReliabilityID)
				}
			}
			if soak < 0 || (soak > 0 && len(only) > 0) {
				return fmt.Errorf("--soak %s: want a duration above zero, without --only", soak)
			}
			reliability := slices.Contains(only, bench.ReliabilityID)
			if reliability && len(only) > 1 {
				return fmt.Errorf("--only %s runs on a dev cluster of its own: give it alone", bench.ReliabilityID)
			}
			for _, id := range faults {
				if !reliability {
					return fmt.Errorf("--faults: only with --only %s", bench.ReliabilityID)
				}
				if !slices.Contains(bench.FaultIDs(), id) {
					return fmt.Errorf("--faults: no fault %q (faults: %s)", id, strings.Join(bench.FaultIDs(), ", "))
				}
			}
			// The benchmark dials pods and peers before they listen, and
			// its dev cluster probes them: grpc-go's connection warnings
			// would bury the progress lines.
			grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, cmd.ErrOrStderr()))
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the ballast binary to run greeter pods: %w", err)
			}
			proxyPath, cleanupProxy := slimBinary(cmd.Context(), "ballast-proxy", "the sidecar rows", proxyBin, cmd.ErrOrStderr())
			defer cleanupProxy()
			controlPath, cleanupControl := slimBinary(cmd.Context(), "ballast-control", "the control-plane rows", controlBin, cmd.ErrOrStderr())
			defer cleanupControl()
			gatewayPath, cleanupGateway := slimBinary(cmd.Context(), "ballast-gateway", "the gateway rows", gatewayBin, cmd.ErrOrStderr())
			defer cleanupGateway()
			b, err := bench.New(bench.Options{
				Quick:         quick,
				Runs:          runs,
				Binary:        cmp.Or(modesBinary, exe),
				ProxyBinary:   proxyPath,
				ControlBinary: controlPath,
				GatewayBinary: gatewayPath,
				Greeter:       bench.BinaryGreeter(exe),
				InstallPeers:  install,
				Progress:      cmd.ErrOrStderr(),
			})
			if err != nil {
				return err
			}
			defer b.Close()
			start := time.Now()
			// emit prints a report (JSON or text) and writes its files
			// into --out, saying what it wrote.
			emit := func(report benchReport, wrote string) error {
				if jsonOut {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					if err := enc.Encode(report); err != nil {
						return err
					}
				} else {
					report.WriteText(cmd.OutOrStdout())
				}
				if out == "" {
					return nil
				}
				if err := report.Write(out); err != nil {
					return fmt.Errorf("write report to %s: %w", out, err)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "bench: wrote %s/%s in %s\n", out, wrote, time.Since(start).Round(time.Second))
				return nil
			}
			if soak > 0 {
				report := b.Soak(cmd.Context(), bench.DefaultSoak(soak))
				if err := emit(report, "soak.md"); err != nil {
					return err
				}
				if report.Failed != "" {
					return fmt.Errorf("soak: %s", report.Failed)
				}
				return nil
			}
			if reliability {
				config := bench.DefaultReliability(short)
				if len(faults) > 0 {
					config.Faults = faults
				}
				report := b.Reliability(cmd.Context(), config, short)
				if err := emit(report, "reliability.md"); err != nil {
					return err
				}
				if report.Failed != "" {
					return fmt.Errorf("reliability: %s", report.Failed)
				}
				return cmd.Context().Err()
			}
			scenarios := bench.DefaultScenarios(quick)
			scenarios.Only = only
			if err := emit(b.Run(cmd.Context(), scenarios), "benchmarks.md and charts"); err != nil {
				return err
			}
			return cmd.Context().Err()
		},
	}
	cmd.Flags().BoolVar(&quick, "quick", false, "fewer calls per measurement: a few minutes on a 2-core machine")
	cmd.Flags().IntVar(&runs, "runs", 3, "repeat each measurement this many times (min/median/max are reported)")
	cmd.Flags().StringVar(&out, "out", "docs", "directory for benchmarks.md and the charts; empty to write nothing")
	cmd.Flags().BoolVar(&install, "install-peers", true, "apt-get install nginx and haproxy when they are missing")
	cmd.Flags().StringSliceVar(&only, "only", nil, "run only these scenarios: "+strings.Join(bench.ScenarioIDs, ", "))
	cmd.Flags().StringVar(&modesBinary, "modes-binary", "", "ballast binary to run `control` and `proxy` from (default: this one)")
	cmd.Flags().MarkHidden("modes-binary")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the report as JSON instead of tables")
	cmd.Flags().DurationVar(&soak, "soak", 0, "run the soak instead for this long (say 1h): load through the sidecar with endpoint churn, RSS and goroutines of the control plane and the sidecar sampled; writes soak.md into --out")
	cmd.Flags().StringSliceVar(&faults, "faults", nil, "reliability: run only these faults, in the scenario's order: "+strings.Join(bench.FaultIDs(), ", "))
	cmd.Flags().BoolVar(&short, "short", false, "reliability: the CI-sized scenario (short outages, a smaller scale-out)")
	cmd.Flags().StringVar(&controlBin, "control-binary", "", "the ballast-control binary the control-plane rows run (default: next to this binary, on $PATH, or built from this checkout)")
	cmd.Flags().StringVar(&gatewayBin, "gateway-binary", "", "the ballast-gateway binary the gateway rows run (default: next to this binary, on $PATH, or built from this checkout)")
	cmd.Flags().StringVar(&proxyBin, "proxy-binary", "", "the ballast-proxy binary the sidecar rows run (default: next to this binary, on $PATH, or built from this checkout)")
	return cmd
}

// benchReport is what each kind of run reports.
type benchReport interface {
	WriteText(io.Writer)
	Write(dir string) error
}

// slimBinary finds the binary name (ballast-proxy, ballast-control,
// ballast-gateway) that
// the rows of what run, as a pod would: the flag's, one next to this binary
// or on $PATH, or one built (static, as its image holds it) from the
// checkout in the working directory, removed by cleanup. Empty means none:
// the rows run the same command from this binary instead.
func slimBinary(ctx context.Context, name, what, flag string, progress io.Writer) (path string, cleanup func()) {
	none := func() {}
	if flag != "" {
		return flag, none
	}
	if exe, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(exe), name); isExecutable(p) {
			return p, none
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, none
	}
	if _, err := os.Stat(filepath.Join("cmd", name, "main.go")); err != nil {
		return "", none
	}
	dir, err := os.MkdirTemp("", "ballast-bench-"+name+"-")
	if err != nil {
		return "", none
	}
	cleanup = func() { os.RemoveAll(dir) }
	out := filepath.Join(dir, name)
	fmt.Fprintf(progress, "bench: building %s (static) for %s\n", name, what)
	build := exec.CommandContext(ctx, "go", "build", "-tags", slimBuildTags, "-o", out, "./cmd/"+name)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = progress
	if err := build.Run(); err != nil {
		fmt.Fprintf(progress, "bench: %s did not build; %s run this binary's command: %v\n", name, what, err)
		cleanup()
		return "", none
	}
	return out, cleanup
}

// slimBuildTags are the tags the slim binaries are built with, as their
// images are (image.go). grpcnotrace leaves out golang.org/x/net/trace (off unless
// grpc.EnableTracing is set); through html/template it links reflection
// that keeps every exported method of every reachable type, so without it
// the binaries, and their idle RSS, are larger.
const slimBuildTags = "grpcnotrace"

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
