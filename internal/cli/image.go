package cli

import (
	"fmt"
	"path/filepath"

	"github.com/banger-dev/banger/client"

	"github.com/spf13/cobra"
)

func (a *app) imageCmd() *cobra.Command {
	var imp client.ImportImageRequest
	var ociPath string
	importCmd := &cobra.Command{
		Use:   "import --name N --kernel PATH --rootfs PATH [--initrd PATH] [--boot-args ARGS] | import --oci PATH [--name N]",
		Short: "Register an image from existing files (the first image becomes the default), or from an OCI layout, OCI archive or docker save tarball",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ociPath != "" {
				if imp.Kernel != "" || imp.Rootfs != "" || imp.Initrd != "" || imp.VMLinux != "" || imp.BootArgs != "" {
					return usageError{fmt.Errorf("--oci makes the whole image: it takes no --kernel, --rootfs, --initrd, --vmlinux or --boot-args")}
				}
				abs, err := filepath.Abs(ociPath)
				if err != nil {
					return err
				}
				return a.pullImage(client.PullImageRequest{Name: imp.Name, Path: abs})
			}
			for _, p := range []*string{&imp.Kernel, &imp.Rootfs, &imp.Initrd, &imp.VMLinux} {
				if *p != "" {
					abs, err := filepath.Abs(*p)
					if err != nil {
						return err
					}
					*p = abs
				}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			im, err := c.ImportImage(a.ctx, imp)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, im.Name)
			return nil
		},
	}
	importCmd.Flags().StringVar(&imp.Name, "name", "", "image name")
	importCmd.Flags().StringVar(&imp.Kernel, "kernel", "", "kernel image (bzImage or ELF vmlinux)")
	importCmd.Flags().StringVar(&imp.Rootfs, "rootfs", "", "ext4 root filesystem image")
	importCmd.Flags().StringVar(&imp.Initrd, "initrd", "", "initrd (optional)")
	importCmd.Flags().StringVar(&imp.VMLinux, "vmlinux", "", "uncompressed ELF kernel for Firecracker (optional)")
	importCmd.Flags().StringVar(&imp.BootArgs, "boot-args", "", "extra kernel arguments")
	importCmd.Flags().StringVar(&ociPath, "oci", "", "an OCI image layout directory, OCI archive or docker save tarball")

	var pull client.PullImageRequest
	pullCmd := &cobra.Command{
		Use:   "pull REF [--name N] [--insecure]",
		Short: "Make an image from a container image in a registry (credentials from your docker config)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pull.Ref = args[0]
			return a.pullImage(pull)
		},
	}
	pullCmd.Flags().StringVar(&pull.Name, "name", "", "image name (default: from the reference)")
	pullCmd.Flags().BoolVar(&pull.Insecure, "insecure", false, "plain HTTP to the registry (a local registry without TLS)")

	var output string
	listCmd := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List images", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			ims, err := c.ListImages(a.ctx)
			if err != nil {
				return err
			}
			var rows [][]string
			for _, im := range ims {
				rows = append(rows, []string{im.Name, fmt.Sprint(im.Default), fmt.Sprint(im.QEMUBootable), fmt.Sprint(im.FirecrackerBootable),
					fmt.Sprint(len(im.UsedBy)), im.KernelPath})
			}
			return a.render(output, ims, []string{"NAME", "DEFAULT", "QEMU", "FIRECRACKER", "USED BY", "KERNEL"}, rows)
		},
	}
	outputFlag(listCmd, &output)

	showCmd := &cobra.Command{
		Use: "show NAME", Short: "Show an image and which VMM can boot it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			im, err := c.GetImage(a.ctx, args[0])
			if err != nil {
				return err
			}
			return a.printJSON(im)
		},
	}
	deleteCmd := &cobra.Command{
		Use: "delete NAME", Aliases: []string{"rm"}, Short: "Delete an image (refused while a VM uses it)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			return c.DeleteImage(a.ctx, args[0])
		},
	}
	var build client.BuildImageRequest
	buildCmd := &cobra.Command{
		Use:   "build [--name default] [--base minimal|debian] [--packages a,b]",
		Short: "Build a bootable image from Debian packages",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			return c.BuildImage(a.ctx, build, func(line string) { fmt.Fprintln(a.stdout, line) })
		},
	}
	buildCmd.Flags().StringVar(&build.Name, "name", "default", "image name")
	buildCmd.Flags().StringVar(&build.Base, "base", "minimal", "minimal (busybox + dropbear) or debian (debootstrap)")
	buildCmd.Flags().StringSliceVar(&build.Packages, "packages", nil, "extra Debian packages")
	var prune client.PruneImagesRequest
	var pruneOutput string
	pruneCmd := &cobra.Command{
		Use:   "prune [--all]",
		Short: "Remove cached container image layers and root filesystems no image was made from (all with --all)",
		Long: "Remove cached container image layers and root filesystems no image was made from (all\n" +
			"with --all), and downloads left by a crash. What a pull in progress uses is kept. A pull\n" +
			"of an image whose layers were removed downloads them again.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(pruneOutput); err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			res, err := c.PruneImages(a.ctx, prune)
			if err != nil {
				return err
			}
			usage := func(u client.CacheUsage) string { return fmt.Sprintf("%d (%s)", u.Count, human(u.Bytes)) }
			return a.render(pruneOutput, res, []string{"CACHE", "REMOVED", "KEPT"}, [][]string{
				{"layers", usage(res.RemovedLayers), usage(res.KeptLayers)},
				{"rootfs", usage(res.RemovedRootfs), usage(res.KeptRootfs)},
			})
		},
	}
	pruneCmd.Flags().BoolVar(&prune.All, "all", false, "remove every cached layer and root filesystem, also those of registered images")
	outputFlag(pruneCmd, &pruneOutput)
	return group(&cobra.Command{Use: "image", Short: "Manage guest images"}, importCmd, pullCmd, listCmd, showCmd, deleteCmd, buildCmd, pruneCmd)
}

// pullImage makes an image from a container image, printing the daemon's
// progress lines.
func (a *app) pullImage(req client.PullImageRequest) error {
	c, err := a.api()
	if err != nil {
		return err
	}
	return c.PullImage(a.ctx, req, func(line string) { fmt.Fprintln(a.stdout, line) })
}
