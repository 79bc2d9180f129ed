package cli

import (
	"fmt"
	"time"

	"github.com/banger-dev/banger/client"

	"github.com/spf13/cobra"
)

func (a *app) vmRunCmd() *cobra.Command {
	var f createFlags
	var rm, interactive bool
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "run [--name N] [--rm] [create flags] -- CMD [ARGS...]",
		Short: "Create (or reuse) a VM, start it, wait for SSH, run CMD, exit with its code",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request()
			if err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			name := f.name
			reused, wasRunning := false, false
			if name != "" {
				if vm, err := c.GetVM(a.ctx, name); err == nil {
					reused = true
					wasRunning = vm.Live != nil && vm.Live.Alive
					for _, fl := range []string{"image", "vmm", "vcpus", "memory", "disk-size", "work-disk-size", "publish"} {
						if cmd.Flags().Changed(fl) {
							fmt.Fprintf(a.stderr, "warning: vm %s exists; --%s applies only when vm run creates the vm\n", name, fl)
						}
					}
				} else if !client.IsNotFound(err) {
					return err
				}
			}
			if !reused {
				vm, err := c.CreateVM(a.ctx, req)
				if err != nil {
					return err
				}
				name = vm.Name
			}
			if rm {
				defer func() {
					if err := c.DeleteVM(a.ctx, name, true); err != nil {
						fmt.Fprintf(a.stderr, "banger: removing vm %s: %v\n", name, err)
					}
				}()
			}
			vm, err := c.StartVM(a.ctx, name)
			if err != nil {
				return err
			}
			if !wasRunning {
				a.warn(vm.Warnings)
			}
			if err := c.WaitSSH(a.ctx, name, client.WaitSSHRequest{TimeoutSeconds: int64(wait.Seconds())}); err != nil {
				return err
			}
			return a.runExec(name, args, interactive)
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&rm, "rm", false, "delete the VM afterwards, also when the command fails")
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "forward stdin even when it is a terminal")
	cmd.Flags().DurationVar(&wait, "wait", 120*time.Second, "how long to wait for the guest's SSH")
	return cmd
}
