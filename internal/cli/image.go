package cli

import (
	"fmt"
	"path/filepath"

	"github.com/banger-dev/banger/client"

	"github.com/spf13/cobra"
)

func (a *app) imageCmd() *cobra.Command {
	var imp client.ImportImageRequest
	importCmd := &cobra.Command{
		Use:   "import --name N --kernel PATH --rootfs PATH [--initrd PATH] [--boot-args ARGS]",
		Short: "Register an image from existing files (the first image becomes the default)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
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
	return group(&cobra.Command{Use: "image", Short: "Manage guest images"}, importCmd, listCmd, showCmd, deleteCmd, buildCmd)
}
