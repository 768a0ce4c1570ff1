package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"github.com/ballast-dev/ballast/image"
)

func newImageCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Build Ballast's OCI images from this checkout"}
	cmd.AddCommand(newImageBuildCmd())
	return cmd
}

func newImageBuildCmd() *cobra.Command {
	var (
		module, push, out, prefix, tag string
		names, platforms               []string
	)
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build every pod's image (static binaries, empty base, non-root, linux/amd64+arm64) and write or push them",
		Long: `Build one OCI image index per binary that runs in a pod (` + specNames(image.Ballast()) + `),
each holding linux/amd64 and linux/arm64, labelled with the checkout's source, revision and version.
The sidecar's image holds this machine's iptables, so only this machine's platform gets it (the
other platform's ballast-proxy image cannot run ` + "`ballast-proxy init`" + `; a warning says so).

--out FILE.tar writes them as one OCI layout archive (kind load image-archive, ctr import, docker load),
named PREFIX/<image>:TAG; --push REGISTRY/PREFIX pushes each index to REGISTRY/PREFIX/<image>:TAG.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if push == "" && out == "" {
				return fmt.Errorf("image build: nothing to do: give --out FILE.tar and/or --push REGISTRY/PREFIX")
			}
			specs, err := selectSpecs(names)
			if err != nil {
				return err
			}
			plats, err := parsePlatforms(platforms)
			if err != nil {
				return err
			}
			vcs := image.ReadVCS(cmd.Context(), module)
			if tag == "" {
				tag = vcs.Version
			}
			built, err := image.Build(cmd.Context(), image.Options{Module: module, Specs: specs, Platforms: plats})
			if err != nil {
				return err
			}
			if out != "" {
				if err := image.WriteArchive(out, prefix, tag, built); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "wrote %s\n", out)
			}
			if push != "" {
				if err := image.Push(cmd.Context(), push, tag, built); err != nil {
					return err
				}
			}
			for _, b := range built {
				dg, err := b.Index.Digest()
				if err != nil {
					return err
				}
				p := prefix
				if push != "" {
					p = push
				}
				ref, err := image.Reference(p, b.Spec.Name, tag)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s@%s\n", ref, dg)
				for _, w := range b.Warnings {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s %s\n", b.Spec.Name, w)
				}
			}
			return nil
		},
	}
	wd, _ := os.Getwd()
	f := cmd.Flags()
	f.StringVar(&module, "module", wd, "the checkout to build (where go.mod is)")
	f.StringVar(&out, "out", "", "write every image into this OCI layout archive (.tar)")
	f.StringVar(&push, "push", "", "push to REGISTRY/PREFIX (loopback registries over plain HTTP)")
	f.StringVar(&prefix, "prefix", "ghcr.io/ballast-dev", "name the archive's images PREFIX/<image>:TAG")
	f.StringVar(&tag, "tag", "", "image tag (default: git describe --tags --always --dirty)")
	f.StringSliceVar(&names, "images", nil, "build only these images (default: all)")
	f.StringSliceVar(&platforms, "platforms", nil, "os/arch list (default: linux/amd64,linux/arm64)")
	return cmd
}

func specNames(specs []image.Spec) string {
	var n []string
	for _, s := range specs {
		n = append(n, s.Name)
	}
	return strings.Join(n, ", ")
}

func selectSpecs(names []string) ([]image.Spec, error) {
	all := image.Ballast()
	if len(names) == 0 {
		return all, nil
	}
	var out []image.Spec
	for _, n := range names {
		i := slices.IndexFunc(all, func(s image.Spec) bool { return s.Name == n })
		if i < 0 {
			return nil, fmt.Errorf("--images: no image %q (have %s)", n, specNames(all))
		}
		out = append(out, all[i])
	}
	return out, nil
}

func parsePlatforms(ps []string) ([]v1.Platform, error) {
	var out []v1.Platform
	for _, s := range ps {
		p, err := v1.ParsePlatform(s)
		if err != nil || p.OS == "" || p.Architecture == "" {
			return nil, fmt.Errorf("--platforms: %q is not os/arch", s)
		}
		out = append(out, *p)
	}
	return out, nil
}
