package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ballast-dev/ballast/demo"
)

func newDemoCmd() *cobra.Command {
	var (
		opts   demo.Options
		output string
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Replay the article's experiment: one connection, plain Service vs per-call balancing",
		Long: `Starts 3 greeter pods on 127.0.0.x, a per-connection L4 balancer standing in for a
ClusterIP Service, and makes the same calls over one gRPC connection in each mode,
printing how many calls each pod answered.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: want text or json", output)
			}
			if opts.Calls < 1 || opts.Pods < 1 || opts.Pods > 8 {
				return fmt.Errorf("--calls must be ≥ 1 and --pods between 1 and 8 (got %d, %d)", opts.Calls, opts.Pods)
			}
			opts.Progress = progressBar(cmd.ErrOrStderr())
			res, err := demo.Run(cmd.Context(), opts)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			res.WriteText(out)
			return nil
		},
	}
	cmd.Flags().IntVar(&opts.Calls, "calls", 300, "calls per mode")
	cmd.Flags().IntVar(&opts.Pods, "pods", 3, "greeter pods")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// progressBar draws one bar per mode on a terminal, redrawn in place; on
// anything else it prints one line when a mode finishes.
func progressBar(w io.Writer) func(mode string, done, total int) {
	f, ok := w.(*os.File)
	tty := ok && term.IsTerminal(int(f.Fd()))
	return func(mode string, done, total int) {
		if !tty {
			if done == total {
				fmt.Fprintf(w, "%s: %d calls done\n", mode, total)
			}
			return
		}
		const width = 30
		filled := width * done / total
		fmt.Fprintf(w, "\r%-14s [%s%s] %d/%d", mode, strings.Repeat("=", filled), strings.Repeat(" ", width-filled), done, total)
		if done == total {
			fmt.Fprintln(w)
		}
	}
}
