package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/system"

	"github.com/spf13/cobra"
)

func (a *app) imageCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "image", Short: "Manage guest images"}
	var imp api.ImportImageRequest
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
			if output == "json" {
				return a.printJSON(ims)
			}
			tw := a.table()
			fmt.Fprintln(tw, "NAME\tDEFAULT\tQEMU\tFIRECRACKER\tUSED BY\tKERNEL")
			for _, im := range ims {
				fmt.Fprintf(tw, "%s\t%v\t%v\t%v\t%d\t%s\n", im.Name, im.Default, im.QEMUBootable, im.FirecrackerBootable, len(im.UsedBy), im.KernelPath)
			}
			return tw.Flush()
		},
	}
	listCmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")

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
	var build api.BuildImageRequest
	buildCmd := &cobra.Command{
		Use:   "build [--name default] [--base minimal|debian] [--packages a,b]",
		Short: "Build a bootable image from Debian packages",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			body, err := c.Stream(a.ctx, "POST", "/v1/images/build", build)
			if err != nil {
				return err
			}
			defer body.Close()
			sc := bufio.NewScanner(body)
			last := ""
			for sc.Scan() {
				last = sc.Text()
				fmt.Fprintln(a.stdout, last)
			}
			if strings.HasPrefix(last, "ok ") {
				return nil
			}
			if last == "" {
				last = "build ended without a result"
			}
			return errors.New(strings.TrimPrefix(last, "error: "))
		},
	}
	buildCmd.Flags().StringVar(&build.Name, "name", "default", "image name")
	buildCmd.Flags().StringVar(&build.Base, "base", "minimal", "minimal (busybox + dropbear) or debian (debootstrap)")
	buildCmd.Flags().StringSliceVar(&build.Packages, "packages", nil, "extra Debian packages")
	cmd.AddCommand(importCmd, listCmd, showCmd, deleteCmd, buildCmd)
	return cmd
}

func (a *app) daemonCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "daemon", Short: "Control bangerd"}
	status := &cobra.Command{
		Use: "status", Short: "Say whether bangerd answers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c := &api.Client{Socket: a.cfg.Socket}
			v, err := c.Version(a.ctx)
			if err != nil {
				fmt.Fprintf(a.stdout, "bangerd is not running (socket %s)\n", a.cfg.Socket)
				return exitError{ExitUnreachable}
			}
			fmt.Fprintf(a.stdout, "bangerd %s running, pid %d, socket %s, ready %v\n", v.Version, v.PID, v.Socket, v.Ready)
			return nil
		},
	}
	start := &cobra.Command{
		Use: "start", Short: "Start bangerd if it is not running", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			v, err := c.Version(a.ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "bangerd %s running, pid %d\n", v.Version, v.PID)
			return nil
		},
	}
	stop := &cobra.Command{
		Use: "stop", Short: "Stop bangerd (VMs keep running)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c := &api.Client{Socket: a.cfg.Socket}
			v, err := c.Version(a.ctx)
			if err != nil {
				fmt.Fprintln(a.stdout, "bangerd is not running")
				return nil
			}
			// The socket goes quiet before the process has closed its store and
			// released the state-dir lock: wait for the process too, so that a
			// daemon started right after this does not find the lock held. A
			// pid not visible here (another pid namespace) is not waited for.
			proc := system.Process{PID: v.PID}
			if st, err := system.ProcStartTime(v.PID); err == nil {
				proc.Start = st
			} else {
				proc.PID = 0
			}
			if err := c.Shutdown(a.ctx); err != nil {
				return err
			}
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(a.ctx, 200*time.Millisecond)
				_, err := c.Version(ctx)
				cancel()
				if err != nil && (proc.PID == 0 || !proc.Alive()) {
					fmt.Fprintf(a.stdout, "bangerd (pid %d) stopped\n", v.PID)
					return nil
				}
				time.Sleep(50 * time.Millisecond)
			}
			return fmt.Errorf("bangerd (pid %d) still runs 10s after being asked to stop", v.PID)
		},
	}
	cmd.AddCommand(status, start, stop)
	return cmd
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use: "version", Short: "Print CLI and daemon versions", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintf(a.stdout, "banger  %s\n", api.Version)
			c, err := a.api()
			if err != nil {
				return err
			}
			v, err := c.Version(a.ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "bangerd %s (pid %d)\n", v.Version, v.PID)
			return nil
		},
	}
}

func (a *app) doctorCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use: "doctor", Short: "Check the host and list every host object banger owns", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			rep, err := c.Doctor(a.ctx)
			if err != nil {
				return err
			}
			if output == "json" {
				return a.printJSON(rep)
			}
			tw := a.table()
			for _, ch := range rep.Checks {
				mark := "ok"
				if !ch.OK {
					mark = "!!"
				}
				fmt.Fprintf(tw, "[%s]\t%s\t%s\n", mark, ch.Name, ch.Detail)
			}
			tw.Flush()
			fmt.Fprintf(a.stdout, "\nroot disk method: %s\ndefault vmm:      %s\n", rep.RootDiskMethod, dash(rep.DefaultVMM))
			orphans := 0
			if len(rep.Objects) > 0 {
				fmt.Fprintln(a.stdout, "\nhost objects:")
				tw = a.table()
				fmt.Fprintln(tw, "KIND\tNAME\tVM\tDETAIL")
				for _, o := range rep.Objects {
					owner := o.VM
					if o.Orphan {
						owner = "ORPHAN"
						orphans++
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", o.Kind, o.Name, owner, o.Detail)
				}
				tw.Flush()
			}
			if orphans > 0 {
				fmt.Fprintf(a.stdout, "\n%d orphaned object(s): banger gc removes them\n", orphans)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func (a *app) gcCmd() *cobra.Command {
	var dry bool
	cmd := &cobra.Command{
		Use: "gc", Short: "Remove host objects no VM accounts for", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			resp, err := c.GC(a.ctx, dry)
			if err != nil {
				return err
			}
			verb := "removed"
			if dry {
				verb = "would remove"
			}
			for _, o := range resp.Removed {
				fmt.Fprintf(a.stdout, "%s %s %s\n", verb, o.Kind, o.Name)
			}
			if len(resp.Errors) > 0 {
				return errors.New(strings.Join(resp.Errors, "; "))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dry, "dry-run", false, "only list what would be removed")
	return cmd
}

func (a *app) completionCmd(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use: "completion bash|zsh|fish", Short: "Print a shell completion script", Args: cobra.ExactArgs(1),
		ValidArgs: []string{"bash", "zsh", "fish"},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch args[0] {
			case "bash":
				return root.GenBashCompletionV2(a.stdout, true)
			case "zsh":
				return root.GenZshCompletion(a.stdout)
			case "fish":
				return root.GenFishCompletion(a.stdout, true)
			}
			return usageError{fmt.Errorf("unknown shell %q: want bash, zsh or fish", args[0])}
		},
	}
}
