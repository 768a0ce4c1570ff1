package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newDemoCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Replay the article's experiment: one connection, plain Service vs per-call balancing",
		RunE:  func(*cobra.Command, []string) error { return errors.New("not yet") },
	}
}
