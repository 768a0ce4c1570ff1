package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ballast-dev/ballast/image"
	"github.com/ballast-dev/ballast/internal/version"
)

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version [IMAGE-REFERENCE | ARCHIVE | OCI-LAYOUT-DIR]",
		Short: "Print this binary's version and revision, or what an image's labels say",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			w := cmd.OutOrStdout()
			if len(args) == 0 {
				v := version.Get()
				fmt.Fprintf(w, "ballast %s (revision %s)\n", v.Version, v.Revision)
				return nil
			}
			cs, err := image.Inspect(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IMAGE\tPLATFORM\tVERSION\tREVISION\tSOURCE\tUSER\tENTRYPOINT")
			for _, c := range cs {
				l := c.Config.Labels
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%q\n", c.Name, c.Platform, l[image.LabelVersion], l[image.LabelRevision], l[image.LabelSource], c.Config.User, c.Config.Entrypoint)
			}
			return tw.Flush()
		},
	}
}
