// Package cli is what Ballast's binaries share around their commands: the
// --log-level flag and how a command runs until SIGTERM.
package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Main runs root until it returns or the process is told to stop (SIGINT,
// SIGTERM: the command's context ends), and exits non-zero on error.
func Main(root *cobra.Command) {
	root.SilenceUsage = true
	root.SilenceErrors = true
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, root.Name()+":", err)
		os.Exit(1)
	}
}

// AddLogLevel gives root a persistent --log-level flag (warn by default:
// quiet) that sets slog's default logger before any command runs.
func AddLogLevel(root *cobra.Command) {
	level := new(slog.Level)
	*level = slog.LevelWarn
	root.PersistentPreRun = func(cmd *cobra.Command, _ []string) {
		slog.SetDefault(slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: *level})))
	}
	root.PersistentFlags().Var(levelFlag{level}, "log-level", "log level: debug, info, warn or error")
}

// levelFlag lets cobra parse an slog level.
type levelFlag struct{ l *slog.Level }

func (f levelFlag) String() string     { return f.l.String() }
func (f levelFlag) Set(s string) error { return f.l.UnmarshalText([]byte(s)) }
func (f levelFlag) Type() string       { return "level" }
