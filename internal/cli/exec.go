package cli

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/banger-dev/banger/client"

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
	user   string // "": the image's default
}

// execIn runs a command in a guest and returns its exit code. Ctrl-C is
// passed to the guest command; banger's own failures are errors.
func (a *app) execIn(c *client.Client, name string, o execOptions) (int, error) {
	req := client.ExecRequest{Argv: o.argv, Stdin: o.stdin != nil, TTY: o.tty, User: o.user}
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
	s, err := c.Exec(a.ctx, name, req)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	a.checkVersion(c)

	if inFile != nil {
		if state, err := term.MakeRaw(int(inFile.Fd())); err == nil {
			defer term.Restore(int(inFile.Fd()), state)
		}
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if w, h, err := term.GetSize(int(inFile.Fd())); err == nil {
					s.Resize(w, h)
				}
			}
		}()
	}
	if o.stdin != nil {
		go s.CopyStdin(o.stdin)
	}
	// Ctrl-C goes to the guest command, not to banger.
	if !o.tty {
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		defer signal.Stop(sigs)
		go func() {
			for sig := range sigs {
				name := "INT"
				if sig == syscall.SIGTERM {
					name = "TERM"
				}
				s.Signal(name)
			}
		}()
	}
	return s.Wait(o.stdout, o.stderr)
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

func (a *app) runExec(name string, argv []string, interactive bool, user string) error {
	return a.runGuest(name, execOptions{argv: argv, stdin: a.stdinForCommand(interactive), stdout: a.stdout, stderr: a.stderr, user: user})
}

// userFlag adds --user to a command that runs guest commands.
func userFlag(cmd *cobra.Command, user *string) {
	cmd.Flags().StringVarP(user, "user", "u", "", "run as this guest user, a name or uid (default: the image's USER, else root)")
}

// checkUser refuses a --user value the daemon would refuse, before
// anything is made.
func checkUser(user string) error {
	if err := client.ValidateUser(user); err != nil {
		return usageError{fmt.Errorf("--user: %w", err)}
	}
	return nil
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
	var user string
	cmd := &cobra.Command{
		Use:   "exec NAME [--user U] -- CMD [ARGS...]",
		Short: "Run a command in a running VM; exits with its exit code",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkUser(user); err != nil {
				return err
			}
			return a.runExec(args[0], args[1:], interactive, user)
		},
	}
	cmd.Flags().BoolVarP(&interactive, "interactive", "i", false, "forward stdin even when it is a terminal")
	userFlag(cmd, &user)
	return cmd
}

func (a *app) vmSSHCmd() *cobra.Command {
	var user string
	cmd := &cobra.Command{
		Use:   "ssh NAME [--user U] [-- CMD [ARGS...]]",
		Short: "Open a shell in a VM, or run one command like vm exec",
		Long: "Open a shell in a VM, or run one command like vm exec.\n\n" +
			"The shell is root's login shell; with --user, that user's login shell (from the\n" +
			"guest's /etc/passwd), with an image's ENV and WORKDIR for an image made from a\n" +
			"container image.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkUser(user); err != nil {
				return err
			}
			if len(args) > 1 {
				return a.runExec(args[0], args[1:], false, user)
			}
			return a.runGuest(args[0], execOptions{stdin: a.stdin, stdout: a.stdout, stderr: a.stderr, tty: true, user: user})
		},
	}
	userFlag(cmd, &user)
	return cmd
}
