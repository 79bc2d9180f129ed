package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/units"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func (a *app) vmCmd() *cobra.Command {
	return group(&cobra.Command{Use: "vm", Short: "Create, run and manage VMs"},
		a.vmCreateCmd(), a.vmListCmd(), a.vmShowCmd(), a.vmStartCmd(), a.vmStopCmd(), a.vmRestartCmd(), a.vmSuspendCmd(), a.vmResumeCmd(), a.vmSnapshotCmd(), a.vmForkCmd(),
		a.vmDeleteCmd(), a.vmLogsCmd(), a.vmPortCmd(), a.vmRunCmd(), a.vmExecCmd(), a.vmSSHCmd(), a.vmCpCmd(), a.sessionCmd(),
		a.vmTTLCmd(), a.vmStatsCmd())
}

// createFlags are shared by vm create and vm run.
type createFlags struct {
	name, image, vmm, disk, work string
	vcpus, memory                int
	ports                        []string
	flags                        *pflag.FlagSet // to tell --name "" from no --name
	// confinement and network policy
	from                  string
	unconfined, isolated  bool
	cpuQuota              int
	allowHost             []uint
	egressAllow, egressDn []string
	// lifetime (runlife.go)
	ttl, ttlAction, idleTimeout string
}

func (f *createFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	f.flags = fl
	fl.StringVar(&f.name, "name", "", "VM name (lowercase letters, digits, inner hyphens; generated when empty)")
	fl.StringVar(&f.image, "image", "", "image name (default: the default image)")
	fl.StringVar(&f.vmm, "vmm", "", "VMM: auto, firecracker or qemu (default: config vmm)")
	fl.IntVar(&f.vcpus, "vcpus", 2, "virtual CPUs (1 to 32)")
	fl.IntVar(&f.memory, "memory", 1024, "memory in MiB")
	fl.StringVar(&f.disk, "disk-size", "8G", "root disk size")
	fl.StringVar(&f.work, "work-disk-size", "4G", "work disk size")
	fl.StringArrayVarP(&f.ports, "publish", "p", nil, "forward a host port: [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp] (repeatable)")
	fl.StringVar(&f.from, "from", "", "make the VM from a snapshot: its machine, image and disks; its first start restores the snapshot")
	fl.BoolVar(&f.unconfined, "unconfined", false, "run the VMM as root with no jail or cgroup (not recommended; logged and shown)")
	fl.IntVar(&f.cpuQuota, "cpu-quota", 0, "cap the VMM at this percent of one CPU (0: no cap)")
	fl.BoolVar(&f.isolated, "isolated", false, "no traffic between this VM and the other VMs, both ways")
	fl.UintSliceVar(&f.allowHost, "allow-host", nil, "host TCP port the guest may connect to (repeatable; DNS on the bridge is always allowed)")
	fl.StringArrayVar(&f.egressAllow, "egress-allow", nil, "CIDR the guest may reach beyond the host, with egress NAT (repeatable)")
	fl.StringArrayVar(&f.egressDn, "egress-deny", nil, "CIDR the guest may never reach (repeatable)")
	fl.StringVar(&f.ttl, "ttl", "", "delete the VM (or --ttl-action) this long after it is created, e.g. 30m, 12h, 7d (at most the daemon's max_ttl)")
	fl.StringVar(&f.ttlAction, "ttl-action", "", "what --ttl does when it expires: delete (default) or stop")
	fl.StringVar(&f.idleTimeout, "idle-timeout", "", "stop the VM after this long with no exec, ssh, session output or forwarded connection (at least 30s)")
}

func (f *createFlags) request() (client.CreateVMRequest, error) {
	req := client.CreateVMRequest{Name: f.name, Image: f.image, VMM: f.vmm, VCPUs: f.vcpus, MemoryMiB: f.memory, Ports: f.ports,
		Unconfined: f.unconfined, CPUQuota: f.cpuQuota, Isolated: f.isolated, EgressAllow: f.egressAllow, EgressDeny: f.egressDn, From: f.from}
	for _, p := range f.allowHost {
		if p < 1 || p > 65535 {
			return req, usageError{fmt.Errorf("invalid --allow-host %d: want a port from 1 to 65535", p)}
		}
		req.AllowHost = append(req.AllowHost, uint16(p))
	}
	if f.cpuQuota < 0 {
		return req, usageError{fmt.Errorf("invalid --cpu-quota %d: want a percent of one CPU, or 0", f.cpuQuota)}
	}
	// An explicit empty name is most likely an unset shell variable, not a
	// request for a generated name.
	if f.name == "" && f.flags != nil && f.flags.Changed("name") {
		return req, usageError{fmt.Errorf("invalid name: empty (use lowercase letters, digits and inner hyphens, 1 to 32 characters; omit --name for a generated name)")}
	}
	if f.vcpus < 1 || f.vcpus > 32 {
		return req, usageError{fmt.Errorf("invalid --vcpus %d: want 1 to 32", f.vcpus)}
	}
	if f.memory < 64 {
		return req, usageError{fmt.Errorf("invalid --memory %d: want at least 64 (MiB)", f.memory)}
	}
	if err := f.lifetime(&req); err != nil {
		return req, err
	}
	var err error
	if req.DiskSizeBytes, err = units.ParseSize(f.disk); err != nil {
		return req, usageError{fmt.Errorf("invalid --disk-size: %w", err)}
	}
	if req.WorkDiskBytes, err = units.ParseSize(f.work); err != nil {
		return req, usageError{fmt.Errorf("invalid --work-disk-size: %w", err)}
	}
	return req, nil
}

func (a *app) vmCreateCmd() *cobra.Command {
	var f createFlags
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Record a new VM (disks are made at first start)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request()
			if err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			vm, err := c.CreateVM(a.ctx, req)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, vm.Name)
			return nil
		},
	}
	f.add(cmd)
	return cmd
}

func (a *app) vmListCmd() *cobra.Command {
	var output string
	var quiet bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			if output == "json" {
				// The daemon's JSON is the output: stream it as is.
				body, err := c.ListVMsJSON(a.ctx)
				if err != nil {
					return err
				}
				defer body.Close()
				_, err = io.Copy(a.stdout, body)
				return err
			}
			vms, err := c.ListVMs(a.ctx)
			if err != nil {
				return err
			}
			if quiet {
				for _, vm := range vms {
					fmt.Fprintln(a.stdout, vm.Name)
				}
				return nil
			}
			var rows [][]string
			now := time.Now()
			for _, vm := range vms {
				state := string(vm.Runtime.State)
				if vm.Runtime.State == client.StateRunning && vm.Live != nil && !vm.Live.Alive {
					state = "running (dead)"
				} else if vm.Runtime.State == client.StateRunning && vm.Spec.Options.Pool != "" {
					state = "pool " + vm.Spec.Options.Pool // a warm member: paused once ready
				}
				rows = append(rows, []string{vm.Name, state, dash(vm.Runtime.VMM), dash(vm.Runtime.GuestIP),
					dash(vm.Image), fmt.Sprint(vm.Spec.VCPUs), fmt.Sprintf("%dMiB", vm.Spec.MemoryMiB), ago(vm.CreatedAt),
					expiresColumn(vm.Spec.Options, now), idleColumn(vm.Spec.Options)})
			}
			return a.printTable([]string{"NAME", "STATE", "VMM", "IP", "IMAGE", "VCPUS", "MEMORY", "CREATED", "EXPIRES", "IDLE"}, rows)
		},
	}
	outputFlag(cmd, &output)
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print names only")
	return cmd
}

// warn prints the daemon's one-line notes to stderr, once each per run.
func (a *app) warn(ws []string) {
	for _, w := range ws {
		fmt.Fprintln(a.stderr, "warning: "+w)
	}
}

func (a *app) vmShowCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a VM: its record and what is live on the host",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			vm, err := c.GetVM(a.ctx, args[0])
			if err != nil {
				return err
			}
			r := vm.Runtime
			var rows [][]string
			row := func(k, v string) { rows = append(rows, []string{k + ":", v}) }
			row("Name", vm.Name)
			row("ID", vm.ID)
			row("State", string(r.State))
			if r.LastError != "" {
				row("Last error", r.LastError)
			}
			row("Image", dash(vm.Image))
			vmm := dash(r.VMM)
			if r.Accel != "" {
				vmm += " (" + r.Accel + ")"
			}
			row("VMM", vmm)
			row("Spec", fmt.Sprintf("%d vCPU, %d MiB, disk %s, work disk %s", vm.Spec.VCPUs, vm.Spec.MemoryMiB, human(vm.Spec.DiskSizeBytes), human(vm.Spec.WorkDiskBytes)))
			row("Root disk method", r.RootDiskMethod)
			row("Guest IP", r.GuestIP)
			row("DNS name", r.DNSName)
			row("MAC", r.GuestMAC)
			row("Vsock", fmt.Sprintf("cid %d, %s", r.VSockCID, r.VSockPath))
			row("API socket", r.APISockPath)
			row("VM dir", r.VMDir)
			row("Console log", r.LogPath)
			row("Work disk", r.WorkDiskPath)
			row("Created", vm.CreatedAt.Format(time.RFC3339))
			row("Lifetime", lifetime(vm.Spec.Options, time.Now()))
			if c := vm.Confinement; c != nil {
				if !c.Confined {
					row("Confinement", "NONE: "+c.Reason)
				} else {
					row("Confinement", fmt.Sprintf("uid %d, no capabilities, no_new_privs; %s", c.UID, c.Jail))
					row("Cgroup", fmt.Sprintf("%s: memory %s, pids %d, cpu weight %d, cpu quota %s, io weight %d",
						c.Cgroup, human(c.MemoryLimitBytes), c.PidsLimit, c.CPUWeight, quota(c.CPUQuota), c.IOWeight))
					row("Seccomp", dash(c.Seccomp))
				}
				n := c.Network
				pol := "guest cannot reach the host (DNS on the bridge excepted)"
				if len(n.AllowHost) > 0 {
					pol += fmt.Sprintf("; host ports allowed %v", n.AllowHost)
				}
				if n.Isolated {
					pol += "; isolated from other VMs"
				}
				if len(n.EgressAllow) > 0 {
					pol += "; egress only to " + strings.Join(n.EgressAllow, ",")
				}
				if len(n.EgressDeny) > 0 {
					pol += "; egress never to " + strings.Join(n.EgressDeny, ",")
				}
				row("Network policy", pol)
			}
			if vm.Live != nil {
				h := vm.Live.Handles
				alive := "yes"
				if !vm.Live.Alive {
					alive = "no (" + vm.Live.Reason + ")"
				}
				row("Alive", alive)
				row("PID", fmt.Sprint(h.PID))
				row("Tap", dash(h.TapDevice))
				row("Loops", dash(strings.Trim(h.BaseLoop+" "+h.COWLoop, " ")))
				row("DM device", dash(h.DMDev))
			}
			return a.render(output, vm, nil, rows)
		},
	}
	outputFlag(cmd, &output)
	return cmd
}

func (a *app) vmStartCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "start NAME...",
		Short: "Start VMs",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			var errs []error
			for _, n := range args {
				vm, err := c.StartVM(a.ctx, n)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				a.warn(vm.Warnings)
				fmt.Fprintln(a.stdout, n)
			}
			return errors.Join(errs...)
		},
	}
}

func (a *app) vmSuspendCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "suspend NAME...",
		Short: "Suspend VMs: memory and device state saved, VMM ended (RAM freed); tap, IP, DNS name and forwards kept",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.eachVM(args, func(c *client.Client, n string) error { _, err := c.SuspendVM(a.ctx, n); return err })
		},
	}
}

func (a *app) vmResumeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "resume NAME...",
		Short: "Resume suspended VMs (start, exec, ssh and run resume one too)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.eachVM(args, func(c *client.Client, n string) error { _, err := c.ResumeVM(a.ctx, n); return err })
		},
	}
}

// eachVM runs fn for each named VM, printing the names that succeeded.
func (a *app) eachVM(names []string, fn func(c *client.Client, name string) error) error {
	c, err := a.api()
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		if err := fn(c, n); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintln(a.stdout, n)
	}
	return errors.Join(errs...)
}

func (a *app) vmStopCmd() *cobra.Command {
	var force bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop NAME...",
		Short: "Stop VMs (Ctrl-Alt-Del or power button, then kill after --timeout)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout < 0 {
				return usageError{fmt.Errorf("invalid --timeout %s", timeout)}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			var errs []error
			for _, n := range args {
				if _, err := c.StopVM(a.ctx, n, client.StopRequest{Force: force, TimeoutSeconds: int64(timeout.Seconds())}); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintln(a.stdout, n)
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "kill the VMM at once")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the guest to shut down")
	return cmd
}

func (a *app) vmRestartCmd() *cobra.Command {
	var force bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "restart NAME",
		Short: "Stop then start a VM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			if _, err := c.RestartVM(a.ctx, args[0], client.StopRequest{Force: force, TimeoutSeconds: int64(timeout.Seconds())}); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "kill the VMM at once")
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the guest to shut down")
	return cmd
}

func (a *app) vmDeleteCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "delete NAME...",
		Aliases: []string{"rm"},
		Short:   "Delete VMs (a running VM is stopped first; --force kills it and ignores unknown names)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			var errs []error
			for _, n := range args {
				if err := c.DeleteVM(a.ctx, n, force); err != nil {
					if force && client.IsNotFound(err) {
						continue
					}
					errs = append(errs, err)
					continue
				}
				fmt.Fprintln(a.stdout, n)
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill a running VM at once; unknown names are not an error")
	return cmd
}

func (a *app) vmLogsCmd() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print the guest console log",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			body, err := c.VMLogs(a.ctx, args[0], follow)
			if err != nil {
				return err
			}
			defer body.Close()
			_, err = io.Copy(a.stdout, body)
			if a.ctx.Err() != nil {
				return nil
			}
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	return cmd
}

func quota(q int) string {
	if q == 0 {
		return "none"
	}
	return fmt.Sprintf("%d%% of a CPU", q)
}

func (a *app) vmSnapshotCmd() *cobra.Command {
	var as string
	cmd := &cobra.Command{
		Use:   "snapshot NAME [--as SNAP]",
		Short: "Take a snapshot of a running or suspended VM (memory, devices, disks); a running VM pauses briefly",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			s, err := c.SnapshotVM(a.ctx, args[0], client.SnapshotRequest{As: as})
			if err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, s.Name)
			return nil
		},
	}
	cmd.Flags().StringVar(&as, "as", "", "snapshot name (default: the VM's name and the time)")
	return cmd
}

func (a *app) vmForkCmd() *cobra.Command {
	var count int
	cmd := &cobra.Command{
		Use:   "fork NAME [--count N]",
		Short: "Make new running VMs from a running VM, each with its own name, IP, MAC, hostname and host key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 1 {
				return usageError{fmt.Errorf("invalid --count %d: want at least 1", count)}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			vms, err := c.ForkVM(a.ctx, args[0], client.ForkRequest{Count: count})
			for _, vm := range vms {
				fmt.Fprintln(a.stdout, vm.Name)
			}
			return err
		},
	}
	cmd.Flags().IntVar(&count, "count", 1, "how many")
	return cmd
}

func (a *app) snapshotCmd() *cobra.Command {
	var output string
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List snapshots", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			snaps, err := c.ListSnapshots(a.ctx)
			if err != nil {
				return err
			}
			var rows [][]string
			for _, s := range snaps {
				rows = append(rows, []string{s.Name, s.SourceVM, s.VMM, human(s.Size), s.CreatedAt})
			}
			return a.render(output, snaps, []string{"NAME", "FROM VM", "VMM", "SIZE", "CREATED"}, rows)
		},
	}
	outputFlag(list, &output)
	show := &cobra.Command{
		Use: "show SNAP", Short: "Show a snapshot and the VMs that still need it", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			s, err := c.GetSnapshot(a.ctx, args[0])
			if err != nil {
				return err
			}
			return a.printJSON(s)
		},
	}
	del := &cobra.Command{
		Use: "delete SNAP", Aliases: []string{"rm"}, Short: "Delete a snapshot (refused while a VM made from it has not started)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			return c.DeleteSnapshot(a.ctx, args[0])
		},
	}
	return group(&cobra.Command{Use: "snapshot", Short: "Manage VM snapshots"}, list, show, del)
}
