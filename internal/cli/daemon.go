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
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/system"

	"github.com/spf13/cobra"
)

func (a *app) daemonCmd() *cobra.Command {
	var wait time.Duration
	status := &cobra.Command{
		Use: "status", Short: "Say whether bangerd answers, and whether systemd manages it", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := a.waitVersion(wait)
			if err != nil {
				fmt.Fprintf(a.stdout, "bangerd is not running (socket %s)\n", a.cfg.Socket)
				if a.serviceMode() {
					fmt.Fprintf(a.stdout, "%s is installed: start it with systemctl start bangerd (banger does not start a daemon of its own beside it)\n", serviceUnit)
				} else {
					fmt.Fprintln(a.stdout, "no bangerd.service here: any banger command starts bangerd on demand")
				}
				return exitError{ExitUnreachable}
			}
			fmt.Fprintf(a.stdout, "bangerd %s running, pid %d, socket %s, ready %v\n", v.Version, v.PID, v.Socket, v.Ready)
			unit, known := daemonUnit(v.PID)
			for _, l := range managementLines(v.PID, unit, known, a.serviceMode()) {
				fmt.Fprintln(a.stdout, l)
			}
			return nil
		},
	}
	status.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for bangerd to answer and finish starting (scripts, the systemd unit)")
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
			unit, _ := daemonUnit(v.PID)
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
					if isServiceUnit(unit) {
						// A clean exit: Restart=on-failure does not bring it back.
						fmt.Fprintf(a.stdout, "%s is stopped with it: systemctl start bangerd starts it again\n", unit)
					}
					return nil
				}
				time.Sleep(50 * time.Millisecond)
			}
			return fmt.Errorf("bangerd (pid %d) still runs 10s after being asked to stop", v.PID)
		},
	}
	return group(&cobra.Command{Use: "daemon", Short: "Control bangerd"}, status, start, stop)
}

// waitVersion asks the daemon for its version; with a wait, it keeps asking
// until the daemon answers and has finished its startup reconcile, or the
// wait is over (then a daemon that answers but still reconciles is taken).
func (a *app) waitVersion(wait time.Duration) (client.VersionResponse, error) {
	c := a.socketClient()
	if wait <= 0 {
		return c.Version(a.ctx)
	}
	deadline := time.Now().Add(wait)
	for {
		ctx, cancel := context.WithTimeout(a.ctx, 2*time.Second)
		v, err := c.Version(ctx)
		cancel()
		if err == nil && v.Ready || !time.Now().Before(deadline) || a.ctx.Err() != nil {
			return v, err
		}
		time.Sleep(100 * time.Millisecond)
	}
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
		if a.serviceMode() {
			if err := a.waitForService(c); err != nil {
				return nil, err
			}
		} else if err := a.startDaemon(c); err != nil {
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
	how := "banger daemon stop"
	if a.serviceMode() {
		how = "systemctl restart bangerd"
	}
	fmt.Fprintf(a.stderr, "warning: bangerd is %s (%s) than this banger (%s); restart it with %s\n", rel, dv, mine, how)
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

// serviceUnit is bangerd's systemd unit (packaging/bangerd.service).
const serviceUnit = "bangerd.service"

// serviceHost is where the CLI looks for bangerd.service; tests point it
// at a temporary tree.
type serviceHost struct {
	systemdDir string   // exists while systemd is PID 1
	unitDirs   []string // systemd's unit search path, most local first
	cgroupDirs []string // the system slice's directory in each cgroup hierarchy
	procDir    string
	configFile string // the config file the unit's bangerd reads
}

var hostPaths = serviceHost{
	systemdDir: "/run/systemd/system",
	unitDirs:   []string{"/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"},
	cgroupDirs: []string{"/sys/fs/cgroup/system.slice", "/sys/fs/cgroup/unified/system.slice", "/sys/fs/cgroup/systemd/system.slice"},
	procDir:    "/proc",
	configFile: config.DefaultFile,
}

// unitInstalled reports whether systemd runs here and bangerd.service is
// installed and not masked (a mask is a link to /dev/null, or an empty
// file, found first on the search path). It only looks at files, so every
// command can afford it.
func (h serviceHost) unitInstalled() bool {
	if st, err := os.Stat(h.systemdDir); err != nil || !st.IsDir() {
		return false
	}
	for _, dir := range h.unitDirs {
		p := filepath.Join(dir, serviceUnit)
		lst, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if lst.Mode()&os.ModeSymlink != 0 {
			if t, err := os.Readlink(p); err == nil && t == os.DevNull {
				return false
			}
		}
		st, err := os.Stat(p)
		if err != nil {
			continue // a dangling link
		}
		return st.Mode().IsRegular() && st.Size() > 0
	}
	return false
}

// unitRunsBangerd reports whether a bangerd process is in the unit's
// cgroup: the service is starting or running. VMMs left in the cgroup
// (KillMode=process) do not count.
func (h serviceHost) unitRunsBangerd() bool {
	for _, dir := range h.cgroupDirs {
		b, err := os.ReadFile(filepath.Join(dir, serviceUnit, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, pid := range strings.Fields(string(b)) {
			comm, err := os.ReadFile(filepath.Join(h.procDir, pid, "comm"))
			if err == nil && strings.TrimSpace(string(comm)) == "bangerd" {
				return true
			}
		}
	}
	return false
}

// serviceMode reports whether this CLI's daemon is bangerd.service's:
// systemd runs, the unit is installed, and the CLI uses the socket the
// service listens on (that of the config file, without BANGER_ overrides
// from the environment). Then banger never starts a daemon of its own.
// Other sockets (tests, side-by-side daemons) keep the on-demand start.
func (a *app) serviceMode() bool {
	return hostPaths.unitInstalled() && a.cfg.Socket == hostPaths.serviceSocket()
}

// serviceSocket is the socket bangerd.service listens on: the one of the
// config file, else the default (the unit sets no environment).
func (h serviceHost) serviceSocket() string {
	c, err := config.Load(func(k string) string {
		if k == "BANGER_CONFIG" {
			return h.configFile
		}
		return ""
	})
	if err != nil {
		c = config.Defaults()
		c.Finish()
	}
	return c.Socket
}

// waitForService waits, bounded, for the service's daemon when one is
// starting in the unit's cgroup; otherwise it fails at once, saying how to
// start the service. It never starts a daemon.
func (a *app) waitForService(c *client.Client) error {
	deadline := time.Now().Add(15 * time.Second)
	for hostPaths.unitRunsBangerd() && time.Now().Before(deadline) && a.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(a.ctx, 500*time.Millisecond)
		_, err := c.Version(ctx)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%w: %s is not running (socket %s): start it with systemctl start bangerd (journalctl -u bangerd says why it stopped); banger does not start a daemon of its own while the service is installed",
		client.ErrDaemonUnreachable, serviceUnit, a.cfg.Socket)
}

// daemonUnit returns the systemd service whose cgroup holds pid ("" when
// none does), from /proc/PID/cgroup; known is false when the process
// cannot be seen (another PID namespace).
func daemonUnit(pid int) (unit string, known bool) {
	m, err := system.ProcCgroup(pid)
	if err != nil {
		return "", false
	}
	return cgroupUnit(m), true
}

// cgroupUnit is the innermost *.service element of the systemd cgroup path
// (v2, else the v1 name=systemd hierarchy), or "".
func cgroupUnit(m system.CgroupMembership) string {
	path := m.Unified
	if p, ok := m.V1["name=systemd"]; ok && p != "" {
		path = p
	}
	elems := strings.Split(path, "/")
	for i := len(elems) - 1; i >= 0; i-- {
		if strings.HasSuffix(elems[i], ".service") {
			return elems[i]
		}
	}
	return ""
}

// managementLines say who manages the daemon with pid, whose cgroup is in
// unit (known false: pid not visible), for banger daemon status; service
// is whether bangerd.service is installed for this socket.
func managementLines(pid int, unit string, known, service bool) []string {
	switch {
	case !known:
		return []string{fmt.Sprintf("managed by: unknown (pid %d is not visible here)", pid)}
	case isServiceUnit(unit):
		return []string{fmt.Sprintf("managed by systemd as %s: systemctl restart|stop bangerd", unit)}
	case service:
		return []string{"not managed by systemd: started on demand by banger, or by hand",
			serviceUnit + " is installed but is not this daemon: banger daemon stop, then systemctl start bangerd"}
	}
	return []string{"not managed by systemd: started on demand by banger, or by hand"}
}

// isServiceUnit reports whether unit is bangerd's own (or an instance,
// bangerd@NAME.service), rather than, say, a CI runner's service that
// started banger.
func isServiceUnit(unit string) bool {
	return unit == serviceUnit || strings.HasPrefix(unit, "bangerd@") && strings.HasSuffix(unit, ".service")
}
