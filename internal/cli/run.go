package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/banger-dev/banger/client"

	"github.com/spf13/cobra"
)

func (a *app) vmRunCmd() *cobra.Command {
	var f createFlags
	var rm, keep, interactive bool
	var pool, user string
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "run [--name N] [--rm|--keep] [--ttl D] [--user U] [--pool P | create flags] -- CMD [ARGS...]",
		Short: "Create (or reuse) a VM, start it, wait for SSH, run CMD, exit with its code",
		Long: "Create (or reuse) a VM, start it, wait for SSH, run CMD, exit with its code.\n\n" +
			"--image may name a container image (e.g. docker.io/library/python:3.12-slim, or\n" +
			"localhost:5000/app:1): it is pulled on first use, as docker run does, and with no\n" +
			"CMD the image's ENTRYPOINT and CMD run. On a host with no image, the default image is\n" +
			"built first (its progress on stderr).\n\n" +
			"--pool P claims a VM from warm pool P (banger pool create): a paused member resumed\n" +
			"in about the time of a resume, renamed to --name when given.\n\n" +
			"Without --name (and without --keep) the VM is deleted when the command ends, as with\n" +
			"--rm. A run that fails before its command ran leaves no VM behind; an existing VM\n" +
			"named with --name is left as it was.",
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request()
			if err != nil {
				return err
			}
			if err := checkUser(user); err != nil {
				return err
			}
			if rm && keep {
				return usageError{fmt.Errorf("--rm and --keep contradict each other")}
			}
			if err := a.checkMaxTTL(req); err != nil {
				return err
			}
			if pool != "" {
				return a.runFromPool(cmd, pool, f.name, req, runPlan{created: true, named: f.name != "", keep: keep, rm: rm}, args, interactive, wait, user)
			}
			if len(args) == 0 && req.Image == "" {
				return usageError{fmt.Errorf("no command: give -- CMD [ARGS...] (an image made from a container image runs its ENTRYPOINT and CMD when given none)")}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			if err := a.ensureDefaultImage(c, req.Image); err != nil {
				return err
			}
			if req.Image != "" && looksLikeImageRef(req.Image) {
				name, err := a.ensurePulled(c, req.Image)
				if err != nil {
					return err
				}
				req.Image = name
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
			plan := runPlan{created: !reused, named: f.name != "", keep: keep, rm: rm, wasRunning: wasRunning}
			commandRan := false
			defer func() { a.cleanupRun(c, name, plan, commandRan) }()
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
			commandRan = true
			return a.runExec(name, args, interactive, user)
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&rm, "rm", false, "delete the VM afterwards, also when the command fails (the default for a VM run without --name)")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep a VM run without --name (by default it is deleted when the command ends)")
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "forward stdin even when it is a terminal")
	cmd.Flags().DurationVar(&wait, "wait", 120*time.Second, "how long to wait for the guest's SSH")
	cmd.Flags().StringVar(&pool, "pool", "", "claim the VM from this warm pool (banger pool create)")
	userFlag(cmd, &user)
	return cmd
}

// looksLikeImageRef tells a container image reference (with a registry,
// a repository path, a tag or a digest) from a banger image name, which is
// only lowercase letters, digits and hyphens.
func looksLikeImageRef(s string) bool { return strings.ContainsAny(s, "/:@.") }

// ensurePulled returns the banger image made from ref, pulling it first
// when there is none (its name comes from the reference, as image pull
// derives it).
func (a *app) ensurePulled(c *client.Client, ref string) (string, error) {
	name := client.ImageNameFromRef(ref)
	if im, err := c.GetImage(a.ctx, name); err == nil {
		if im.OCI == nil {
			return "", fmt.Errorf("image %q exists and was not made from %s: pull it under another name (banger image pull %s --name N) and run with --image N", name, ref, ref)
		}
		return name, nil
	} else if !client.IsNotFound(err) {
		return "", err
	}
	err := c.PullImage(a.ctx, client.PullImageRequest{Name: name, Ref: ref, Insecure: insecureRegistry(ref)}, func(line string) {
		fmt.Fprintln(a.stderr, line)
	})
	return name, err
}

// insecureRegistry: a registry on loopback speaks plain HTTP (as docker
// treats localhost).
func insecureRegistry(ref string) bool {
	host, _, _ := strings.Cut(ref, "/")
	h, _, _ := strings.Cut(host, ":")
	return h == "localhost" || strings.HasPrefix(h, "127.") || h == "[::1]"
}

// runFromPool is vm run --pool: claim a member, run the command in it.
func (a *app) runFromPool(cmd *cobra.Command, pool, name string, req client.CreateVMRequest, plan runPlan, args []string, interactive bool, wait time.Duration, user string) error {
	for _, fl := range []string{"image", "vmm", "vcpus", "memory", "disk-size", "work-disk-size", "from", "unconfined", "cpu-quota", "isolated", "allow-host", "egress-allow", "egress-deny", "publish", "idle-timeout"} {
		if f := cmd.Flags().Lookup(fl); f != nil && f.Changed {
			return usageError{fmt.Errorf("--%s does not go with --pool: a pool's VMs are made from its snapshot", fl)}
		}
	}
	if len(args) == 0 {
		return usageError{fmt.Errorf("no command: give -- CMD [ARGS...]")}
	}
	c, err := a.api()
	if err != nil {
		return err
	}
	vm, err := c.ClaimFromPool(a.ctx, pool, client.ClaimRequest{Name: name})
	if err != nil {
		return err
	}
	name = vm.Name
	commandRan := false
	defer func() { a.cleanupRun(c, name, plan, commandRan) }()
	if req.TTLSeconds > 0 {
		if _, err := c.SetTTL(a.ctx, name, client.TTLRequest{TTLSeconds: req.TTLSeconds, Action: req.TTLAction}); err != nil {
			return err
		}
	}
	if err := c.WaitSSH(a.ctx, name, client.WaitSSHRequest{TimeoutSeconds: int64(wait.Seconds())}); err != nil {
		return err
	}
	commandRan = true
	return a.runExec(name, args, interactive, user)
}
