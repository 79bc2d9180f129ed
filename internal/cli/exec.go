package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// execOptions describes one guest command run through the daemon.
type execOptions struct {
	argv   []string
	stdin  io.Reader // nil: the command gets an empty stdin
	stdout io.Writer
	stderr io.Writer
	tty    bool
}

// execIn runs a command in a guest and returns its exit code. Ctrl-C is
// passed to the guest command; banger's own failures are errors.
func (a *app) execIn(c *api.Client, name string, o execOptions) (int, error) {
	req := api.ExecRequest{Argv: o.argv, Stdin: o.stdin != nil, TTY: o.tty}
	var restore func()
	var inFile *os.File
	if o.tty {
		req.Term = os.Getenv("TERM")
		if f, ok := o.stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			inFile = f
			if w, h, err := term.GetSize(int(f.Fd())); err == nil {
				req.Cols, req.Rows = w, h
			}
		}
	}
	conn, br, err := c.Exec(a.ctx, name, req)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	a.checkVersion(c)
	fw := api.NewFrameWriter(conn)

	if inFile != nil {
		state, err := term.MakeRaw(int(inFile.Fd()))
		if err == nil {
			restore = func() { term.Restore(int(inFile.Fd()), state) }
			defer restore()
		}
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if w, h, err := term.GetSize(int(inFile.Fd())); err == nil {
					fw.WriteFrame(api.FrameResize, api.ResizePayload(w, h))
				}
			}
		}()
	}
	if o.stdin != nil {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := o.stdin.Read(buf)
				if n > 0 {
					if fw.WriteFrame(api.FrameStdin, buf[:n]) != nil {
						return
					}
				}
				if err != nil {
					fw.WriteFrame(api.FrameStdinEOF, nil)
					return
				}
			}
		}()
	}
	// Ctrl-C goes to the guest command, not to banger.
	sigs := make(chan os.Signal, 1)
	if !o.tty {
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		defer signal.Stop(sigs)
		go func() {
			for s := range sigs {
				name := "INT"
				if s == syscall.SIGTERM {
					name = "TERM"
				}
				fw.WriteFrame(api.FrameSignal, []byte(name))
			}
		}()
	}
	for {
		t, p, err := api.ReadFrame(br)
		if err != nil {
			return 0, fmt.Errorf("connection to bangerd lost during exec: %w", err)
		}
		switch t {
		case api.FrameStdout:
			o.stdout.Write(p)
		case api.FrameStderr:
			o.stderr.Write(p)
		case api.FrameExit:
			return api.ParseExit(p)
		case api.FrameError:
			var e api.Error
			if json.Unmarshal(p, &e) == nil {
				return 0, &e
			}
			return 0, errors.New(string(p))
		}
	}
}

// stdinForCommand forwards the CLI's stdin when it is not a terminal (a
// pipe or a file), or when asked with -i.
func (a *app) stdinForCommand(interactive bool) io.Reader {
	if interactive {
		return a.stdin
	}
	if f, ok := a.stdin.(*os.File); ok {
		if term.IsTerminal(int(f.Fd())) {
			return nil
		}
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			return nil // e.g. /dev/null
		}
		return f
	}
	return a.stdin
}

func (a *app) runExec(name string, argv []string, interactive bool) error {
	return a.runGuest(name, execOptions{argv: argv, stdin: a.stdinForCommand(interactive), stdout: a.stdout, stderr: a.stderr})
}

// runGuest runs a guest command and turns its outcome into banger's exit:
// the command's own code, or ExitExecFailed when banger failed.
func (a *app) runGuest(name string, o execOptions) error {
	c, err := a.api()
	if err != nil {
		return err
	}
	code, err := a.execIn(c, name, o)
	if err != nil {
		fmt.Fprintln(a.stderr, "banger: "+err.Error())
		return exitError{ExitExecFailed}
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}

func (a *app) vmExecCmd() *cobra.Command {
	var interactive bool
	cmd := &cobra.Command{
		Use:   "exec NAME -- CMD [ARGS...]",
		Short: "Run a command in a running VM; exits with its exit code",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runExec(args[0], args[1:], interactive)
		},
	}
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "forward stdin even when it is a terminal")
	return cmd
}

func (a *app) vmSSHCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "ssh NAME [-- CMD [ARGS...]]",
		Short: "Open a shell in a VM, or run one command like vm exec",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return a.runExec(args[0], args[1:], false)
			}
			return a.runGuest(args[0], execOptions{stdin: a.stdin, stdout: a.stdout, stderr: a.stderr, tty: true})
		},
	}
}

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
				} else if !api.IsNotFound(err) {
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
			if err := c.WaitSSH(a.ctx, name, api.WaitSSHRequest{TimeoutSeconds: int64(wait.Seconds())}); err != nil {
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
