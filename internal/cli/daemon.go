package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/system"

	"github.com/spf13/cobra"
)

func (a *app) daemonCmd() *cobra.Command {
	status := &cobra.Command{
		Use: "status", Short: "Say whether bangerd answers", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := a.socketClient().Version(a.ctx)
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
			c := a.socketClient()
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
	return group(&cobra.Command{Use: "daemon", Short: "Control bangerd"}, status, start, stop)
}

// socketClient is a client for the configured socket that starts nothing.
func (a *app) socketClient() *client.Client { return &client.Client{Socket: a.cfg.Socket} }

// api returns a client for a daemon that answers, starting bangerd when
// none does.
func (a *app) api() (*client.Client, error) {
	if a.client != nil {
		return a.client, nil
	}
	c := a.socketClient()
	ctx, cancel := context.WithTimeout(a.ctx, 2*time.Second)
	_, err := c.Version(ctx)
	cancel()
	if err != nil {
		if !errors.Is(err, client.ErrDaemonUnreachable) {
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

func (a *app) checkVersion(c *client.Client) {
	dv, mine := c.DaemonVersion(), client.ClientVersion()
	if a.warned || dv == "" || dv == mine {
		return
	}
	a.warned = true
	rel := "newer"
	if dv < mine {
		rel = "older"
	}
	fmt.Fprintf(a.stderr, "warning: bangerd is %s (%s) than this banger (%s); restart it with banger daemon stop\n", rel, dv, mine)
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
func (a *app) startDaemon(c *client.Client) error {
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
	return fmt.Errorf("%w: bangerd (%s) did not start answering on %s; see its log %s%s", client.ErrDaemonUnreachable, bin, a.cfg.Socket, logPath, tail)
}
