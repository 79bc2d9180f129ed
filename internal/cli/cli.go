// Package cli is the banger command line. Run is the whole CLI as a function
// call: cmd/banger only builds a context and exits with Run's code.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/system"

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
	client         *api.Client
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
	if errors.Is(err, api.ErrDaemonUnreachable) {
		return ExitUnreachable
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case api.CodeNotFound:
			return ExitNotFound
		case api.CodeAlreadyExists:
			return ExitExists
		case api.CodeConflict:
			return ExitConflict
		case api.CodeInvalidArgument:
			return ExitUsage
		}
	}
	if strings.HasPrefix(err.Error(), "unknown command") || strings.HasPrefix(err.Error(), "unknown flag") ||
		strings.Contains(err.Error(), "invalid argument") || strings.Contains(err.Error(), "accepts ") ||
		strings.Contains(err.Error(), "requires at least") || strings.Contains(err.Error(), "flag needs an argument") {
		return ExitUsage
	}
	return ExitError
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "banger",
		Short:         "banger manages Firecracker (and QEMU) microVMs on this host",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return a.cfgErr
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(a.vmCmd(), a.imageCmd(), a.daemonCmd(), a.versionCmd(), a.doctorCmd(), a.gcCmd(), a.completionCmd(root))
	return root
}

// api returns a client for a daemon that answers, starting bangerd when
// none does.
func (a *app) api() (*api.Client, error) {
	if a.client != nil {
		return a.client, nil
	}
	c := &api.Client{Socket: a.cfg.Socket}
	ctx, cancel := context.WithTimeout(a.ctx, 2*time.Second)
	_, err := c.Version(ctx)
	cancel()
	if err != nil {
		if !errors.Is(err, api.ErrDaemonUnreachable) {
			return nil, err
		}
		if err := a.startDaemon(c); err != nil {
			return nil, err
		}
	}
	a.client = c
	a.checkVersion(c)
	return c, nil
}

func (a *app) checkVersion(c *api.Client) {
	if a.warned || c.DaemonVersion == "" || c.DaemonVersion == api.Version {
		return
	}
	a.warned = true
	rel := "newer"
	if c.DaemonVersion < api.Version {
		rel = "older"
	}
	fmt.Fprintf(a.stderr, "warning: bangerd is %s (%s) than this banger (%s); restart it with banger daemon stop\n", rel, c.DaemonVersion, api.Version)
}

// findBangerd looks for bangerd next to this executable, then on PATH.
func findBangerd() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "bangerd")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	p, err := system.LookPath("bangerd")
	if err != nil {
		return "", fmt.Errorf("bangerd not found next to banger or on PATH")
	}
	return p, nil
}

// startDaemon starts bangerd detached in its own session (so it outlives
// this CLI) and waits, bounded, for its socket to answer.
func (a *app) startDaemon(c *api.Client) error {
	bin, err := findBangerd()
	if err != nil {
		return fmt.Errorf("no daemon answers on %s and it cannot be started: %w", a.cfg.Socket, err)
	}
	logPath := filepath.Join(a.cfg.StateDir, "bangerd.log")
	outPath := filepath.Join(a.cfg.StateDir, "bangerd.out")
	if err := os.MkdirAll(a.cfg.StateDir, 0o750); err != nil {
		outPath = ""
	}
	env := append(os.Environ(), a.cfg.Env()...)
	p, err := system.StartDetached(system.DetachedSpec{Argv: []string{bin}, Env: env, LogPath: outPath, Dir: "/"})
	if err != nil {
		return fmt.Errorf("starting bangerd: %w", err)
	}
	// Wait for startup reconcile too (Ready), so that the command that
	// started the daemon sees VM states as reconciled, not as recorded
	// before a crash. A daemon that answers but is still reconciling at the
	// deadline is used anyway.
	deadline := time.Now().Add(15 * time.Second)
	answered := false
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(a.ctx, 500*time.Millisecond)
		v, err := c.Version(ctx)
		cancel()
		if err == nil && v.Ready {
			return nil
		}
		answered = answered || err == nil
		if !p.Alive() {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if answered && p.Alive() {
		return nil
	}
	tail := ""
	if b, err := os.ReadFile(outPath); err == nil && len(b) > 0 {
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > 5 {
			lines = lines[len(lines)-5:]
		}
		tail = "\n  " + strings.Join(lines, "\n  ")
	}
	return fmt.Errorf("%w: bangerd (%s) did not start answering on %s; see its log %s%s", api.ErrDaemonUnreachable, bin, a.cfg.Socket, logPath, tail)
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (a *app) table() *tabwriter.Writer { return tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0) }

func checkOutput(o string) error {
	if o != "" && o != "table" && o != "json" {
		return usageError{fmt.Errorf("invalid output format %q: want table or json", o)}
	}
	return nil
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}
