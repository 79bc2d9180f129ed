// Package cli is the banger command line. Run is the whole CLI as a function
// call: cmd/banger only builds a context and exits with Run's code. It talks
// to the daemon only through the public client package, one file per command
// group (vm.go, run.go with runlife.go, vmlife.go for vm ttl and vm stats,
// exec.go, cp.go, session.go, port.go, image.go, events.go, daemon.go,
// doctor.go, version.go, completion.go), with output through render.go.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/config"

	"github.com/spf13/cobra"
)

// Exit codes, stable for scripts. vm run/exec/ssh exit with the guest
// command's own code; when banger itself fails there, it exits 125.
const (
	ExitOK          = 0
	ExitError       = 1
	ExitUsage       = 2
	ExitNotFound    = 3
	ExitExists      = 4
	ExitConflict    = 5
	ExitUnreachable = 6
	ExitExecFailed  = 125
)

// exitError carries an exit code without a message of its own.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// usageError marks bad command-line input.
type usageError struct{ error }

type app struct {
	ctx            context.Context
	stdin          io.Reader
	stdout, stderr io.Writer
	cfg            config.Config
	cfgErr         error
	client         *client.Client
	warned         bool
}

// Run runs the banger CLI with args (without the program name) and returns
// the exit code.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr}
	a.cfg, a.cfgErr = config.Load(nil)
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintln(stderr, "banger: "+err.Error())
	return exitCode(err)
}

func exitCode(err error) int {
	var ue usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	if errors.Is(err, client.ErrDaemonUnreachable) {
		return ExitUnreachable
	}
	switch client.CodeOf(err) {
	case client.CodeNotFound:
		return ExitNotFound
	case client.CodeAlreadyExists:
		return ExitExists
	case client.CodeConflict:
		return ExitConflict
	case client.CodeInvalidArgument:
		return ExitUsage
	}
	// Cobra's own argument and flag errors carry no type.
	if strings.HasPrefix(err.Error(), "unknown command") || strings.HasPrefix(err.Error(), "unknown flag") ||
		strings.Contains(err.Error(), "invalid argument") || strings.Contains(err.Error(), "accepts ") ||
		strings.Contains(err.Error(), "requires at least") || strings.Contains(err.Error(), "flag needs an argument") {
		return ExitUsage
	}
	return ExitError
}

func (a *app) rootCmd() *cobra.Command {
	root := group(&cobra.Command{
		Use:           "banger",
		Short:         "banger manages Firecracker (and QEMU) microVMs on this host",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return a.cfgErr
		},
	}, a.vmCmd(), a.imageCmd(), a.snapshotCmd(), a.poolCmd(), a.daemonCmd(), a.versionCmd(), a.doctorCmd(), a.gcCmd(), a.completionCmd(), a.eventsCmd())
	root.AddCommand(a.manCmd()) // hidden: man pages for make man (man.go)
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	return root
}

// group makes cmd a command that only holds subcommands. Cobra would print
// the help and succeed when such a command gets no subcommand, or one it
// does not know; here both are usage errors that name what exists.
func group(cmd *cobra.Command, subs ...*cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			var names []string
			for _, c := range cmd.Commands() {
				if c.IsAvailableCommand() {
					names = append(names, c.Name())
				}
			}
			return usageError{fmt.Errorf("missing command for %q: want one of %s", cmd.CommandPath(), strings.Join(names, ", "))}
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		cmd.SuggestionsMinimumDistance = 2 // cobra's own default, applied only where it suggests itself
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += fmt.Sprintf("; did you mean %q?", s[0])
			for _, more := range s[1:] {
				msg = strings.TrimSuffix(msg, "?") + fmt.Sprintf(" or %q?", more)
			}
		}
		return usageError{errors.New(msg)}
	}
	cmd.AddCommand(subs...)
	return cmd
}
