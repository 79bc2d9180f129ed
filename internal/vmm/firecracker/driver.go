// Package firecracker drives the Firecracker VMM for one VM: it spawns the
// process detached, configures the microVM through its API socket, boots it,
// stops it (Ctrl-Alt-Del, then SIGKILL) and proves that a recorded process is
// still the VMM it launched. The daemon consumes Driver through an interface
// of its own. Firecracker's observed behaviour is in docs/firecracker.md.
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// Driver launches and controls Firecracker processes. The zero value is
// usable: it runs "firecracker" from PATH and waits 5s for the API socket.
type Driver struct {
	Binary        string        // firecracker executable path; "" = m.Binary, else "firecracker" on PATH
	Logger        *slog.Logger  // optional
	SocketTimeout time.Duration // wait for API socket; default 5s
}

// Timeouts that are not worth a knob.
const (
	killWait       = 3 * time.Second       // for the process to go after SIGKILL
	callTimeout    = 10 * time.Second      // one API call (InstanceStart is synchronous)
	pollInterval   = 5 * time.Millisecond  // socket readiness polling
	exitPoll       = 10 * time.Millisecond // graceful-exit polling
	identifyCall   = 2 * time.Second       // GET / during Identify
	consoleTailLen = 2048                  // bytes of console log quoted in errors
	defaultSockTO  = 5 * time.Second
)

func (d *Driver) log() *slog.Logger {
	if d.Logger != nil {
		return d.Logger
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func (d *Driver) binary(m vmm.Machine) string {
	switch {
	case d.Binary != "":
		return d.Binary
	case m.Binary != "":
		return m.Binary
	}
	return "firecracker"
}

// Launch starts Firecracker for m, configures the microVM and boots it, or,
// with m.Incoming, loads that snapshot into the fresh process and resumes
// it (see loadCalls). On any failure after the spawn the process is killed
// and its sockets removed, so a failed launch leaves nothing behind.
func (d *Driver) Launch(ctx context.Context, m vmm.Machine) (system.Process, error) {
	if m.ID == "" || m.APISock == "" {
		return system.Process{}, fmt.Errorf("launch firecracker: machine needs an id and an api socket path")
	}
	if m.Jailer != nil {
		return d.launchJailed(ctx, m)
	}
	// Firecracker never unlinks its sockets and refuses an existing path.
	if err := removeSockets(m); err != nil {
		return system.Process{}, fmt.Errorf("launch firecracker for vm %s: %w", m.ID, err)
	}
	bin := d.binary(m)
	argv := []string{bin, "--api-sock", m.APISock, "--id", m.ID}
	p, err := vmm.Start(m, argv, m.ConsoleLog)
	if err != nil {
		return system.Process{}, fmt.Errorf("launch firecracker for vm %s: %w", m.ID, err)
	}
	d.log().Debug("firecracker spawned", "vm", m.ID, "pid", p.PID, "argv", argv)
	if err := d.configure(ctx, m, p); err != nil {
		if kerr := p.Kill(killWait); kerr != nil {
			d.log().Warn("kill firecracker after failed launch", "vm", m.ID, "pid", p.PID, "err", kerr)
		}
		if rerr := removeSockets(m); rerr != nil {
			d.log().Warn("remove firecracker sockets", "vm", m.ID, "err", rerr)
		}
		return system.Process{}, fmt.Errorf("launch firecracker for vm %s: %w", m.ID, err)
	}
	return p, nil
}

func (d *Driver) configure(ctx context.Context, m vmm.Machine, p system.Process) error {
	c := newAPIClient(m.APISock)
	defer c.close()
	if err := d.waitAPI(ctx, c, m, p); err != nil {
		return err
	}
	if m.Incoming != nil {
		return d.restore(ctx, c, m, p)
	}
	for _, call := range bootCalls(m) {
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		err := c.do(cctx, http.MethodPut, call.path, call.body, nil)
		cancel()
		if err != nil {
			if !p.Alive() {
				return fmt.Errorf("%w (firecracker exited; console: %s)", err, consoleTail(m.ConsoleLog))
			}
			return err
		}
	}
	return nil
}

// waitAPI polls until the socket answers GET /. The file can appear before
// the socket accepts, so "connection refused" is retried too. An early exit
// of the process ends the wait with the tail of its console log.
func (d *Driver) waitAPI(ctx context.Context, c *apiClient, m vmm.Machine, p system.Process) error {
	timeout := d.SocketTimeout
	if timeout <= 0 {
		timeout = defaultSockTO
	}
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		if !p.Alive() {
			return fmt.Errorf("firecracker exited before its api socket %s was ready; console: %s", m.APISock, consoleTail(m.ConsoleLog))
		}
		if _, err := os.Stat(m.APISock); err == nil {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			_, err := c.describe(cctx)
			cancel()
			if err == nil {
				return nil
			}
			lastErr = err
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for firecracker api socket %s: timed out after %s: %w", m.APISock, timeout, lastErr)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for firecracker api socket %s: %w", m.APISock, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

type apiCall struct {
	path string
	body any
}

// bootArgs renders the kernel command line the driver gives Firecracker.
// boot_args replaces Firecracker's default entirely, hence console and
// reboot=k panic=1 here; root= is added by Firecracker itself.
func bootArgs(m vmm.Machine) string {
	parts := []string{"console=ttyS0 reboot=k panic=1"}
	for _, s := range []string{m.KernelIPArg(), m.BootArgs} {
		if s = strings.TrimSpace(s); s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, " ")
}

// bootCalls is the configuration sequence for m, in the order
// firecracker-go-sdk uses, ending with InstanceStart.
func bootCalls(m vmm.Machine) []apiCall {
	var calls []apiCall
	if m.LogPath != "" {
		calls = append(calls, apiCall{"/logger", map[string]any{"log_path": m.LogPath, "level": "Info"}})
	}
	if m.MetricsPath != "" {
		calls = append(calls, apiCall{"/metrics", map[string]any{"metrics_path": m.MetricsPath}})
	}
	calls = append(calls, apiCall{"/machine-config", map[string]any{"vcpu_count": m.VCPUs, "mem_size_mib": m.MemoryMiB}})
	boot := map[string]any{"kernel_image_path": m.Kernel, "boot_args": bootArgs(m)}
	if m.Initrd != "" {
		boot["initrd_path"] = m.Initrd
	}
	calls = append(calls, apiCall{"/boot-source", boot})
	if m.RootDisk != "" {
		calls = append(calls, apiCall{"/drives/rootfs", map[string]any{
			"drive_id": "rootfs", "path_on_host": m.RootDisk, "is_root_device": true, "is_read_only": false,
		}})
	}
	if m.WorkDisk != "" {
		calls = append(calls, apiCall{"/drives/work", map[string]any{
			"drive_id": "work", "path_on_host": m.WorkDisk, "is_root_device": false, "is_read_only": false,
		}})
	}
	if m.TapDevice != "" {
		nic := map[string]any{"iface_id": "eth0", "host_dev_name": m.TapDevice}
		if m.GuestMAC != "" {
			nic["guest_mac"] = m.GuestMAC
		}
		calls = append(calls, apiCall{"/network-interfaces/eth0", nic})
	}
	if m.VSockPath != "" {
		calls = append(calls, apiCall{"/vsock", map[string]any{"guest_cid": m.VSockCID, "uds_path": m.VSockPath}})
	}
	return append(calls, apiCall{"/actions", map[string]any{"action_type": "InstanceStart"}})
}

// Shutdown stops the VMM p of m. With force it sends SIGKILL at once;
// otherwise it asks the guest to reboot (Ctrl-Alt-Del; with reboot=k
// Firecracker then exits 0), waits up to timeout, and SIGKILLs a VMM still
// there (a guest without i8042 ignores the keys). A process already gone is
// success, so Shutdown is idempotent. If ctx ends during the wait, the wait
// is cut short and the VMM killed. Sockets are removed once the process is gone.
func (d *Driver) Shutdown(ctx context.Context, m vmm.Machine, p system.Process, timeout time.Duration, force bool) error {
	if p.PID > 0 && p.Alive() && !force {
		if err := d.requestReboot(ctx, m); err != nil {
			d.log().Info("ctrl-alt-del not delivered; killing firecracker", "vm", m.ID, "pid", p.PID, "err", err)
		} else if d.waitGone(ctx, p, timeout) {
			d.log().Debug("firecracker exited after ctrl-alt-del", "vm", m.ID, "pid", p.PID)
		}
	}
	if p.PID > 0 && p.Alive() {
		if err := p.Kill(killWait); err != nil && !errors.Is(err, system.ErrNotSameProcess) {
			return fmt.Errorf("stop firecracker for vm %s (pid %d): %w", m.ID, p.PID, err)
		}
	}
	if m.Jailer != nil {
		// The jail goes with its VMM; another process still running
		// there (a second launch) keeps it.
		if other, ok := d.FindProcess(m); ok {
			return fmt.Errorf("stop firecracker for vm %s: pid %d still runs in its jail", m.ID, other.PID)
		}
		if err := removeJail(m); err != nil {
			return fmt.Errorf("stop firecracker for vm %s: %w", m.ID, err)
		}
		return nil
	}
	if err := removeSockets(m); err != nil {
		return fmt.Errorf("stop firecracker for vm %s: %w", m.ID, err)
	}
	return nil
}

func (d *Driver) requestReboot(ctx context.Context, m vmm.Machine) error {
	sock := m.APISock
	if m.Jailer != nil {
		var err error
		if sock, err = jailedAPISock(m); err != nil {
			return err
		}
	}
	c := newAPIClient(sock)
	defer c.close()
	cctx, cancel := context.WithTimeout(ctx, identifyCall)
	defer cancel()
	return c.do(cctx, http.MethodPut, "/actions", map[string]any{"action_type": "SendCtrlAltDel"}, nil)
}

// waitGone polls until p exits, timeout passes or ctx ends; it reports
// whether p exited.
func (d *Driver) waitGone(ctx context.Context, p system.Process, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(exitPoll)
	defer tick.Stop()
	for {
		if !p.Alive() {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return !p.Alive()
		case <-tick.C:
		}
	}
}

// Identify proves that p is the Firecracker serving m: p is alive, its argv
// holds the exact pair "--api-sock <m.APISock>", and the API on that socket
// answers GET / with id m.ID. A PID reused by another program, or another
// VMM, fails with an error saying which check failed.
//
// For a jailed Firecracker the proof is proveJailed (argv, and the
// executable being the copy in m's own chroot) and the answer of the
// socket in that chroot.
func (d *Driver) Identify(ctx context.Context, m vmm.Machine, p system.Process) error {
	if m.Jailer != nil {
		return d.identifyJailed(ctx, m, p)
	}
	if !p.Alive() {
		return fmt.Errorf("identify firecracker for vm %s: process %d is not running", m.ID, p.PID)
	}
	argv, err := system.ProcCmdline(p.PID)
	if err != nil {
		return fmt.Errorf("identify firecracker for vm %s: read argv of %d: %w", m.ID, p.PID, err)
	}
	if !system.ArgvHasPair(argv, "--api-sock", m.APISock) {
		return fmt.Errorf("identify firecracker for vm %s: process %d has no \"--api-sock %s\" in its argv", m.ID, p.PID, m.APISock)
	}
	return d.identifyAPI(ctx, m, p, m.APISock)
}

// identifyAPI checks that the API on sock answers GET / with id m.ID.
func (d *Driver) identifyAPI(ctx context.Context, m vmm.Machine, p system.Process, sock string) error {
	c := newAPIClient(sock)
	defer c.close()
	cctx, cancel := context.WithTimeout(ctx, identifyCall)
	defer cancel()
	info, err := c.describe(cctx)
	if err != nil {
		return fmt.Errorf("identify firecracker for vm %s (pid %d): %w", m.ID, p.PID, err)
	}
	if info.ID != m.ID {
		return fmt.Errorf("identify firecracker for vm %s (pid %d): api socket %s answers for instance %q", m.ID, p.PID, sock, info.ID)
	}
	return nil
}

func (d *Driver) identifyJailed(ctx context.Context, m vmm.Machine, p system.Process) error {
	if err := proveJailed(m, p); err != nil {
		return fmt.Errorf("identify firecracker for vm %s: %w", m.ID, err)
	}
	sock, err := jailedAPISock(m)
	if err != nil {
		return fmt.Errorf("identify firecracker for vm %s (pid %d): %w", m.ID, p.PID, err)
	}
	return d.identifyAPI(ctx, m, p, sock)
}

// FindProcess finds the running Firecracker of m by its exact argv pairs
// "--api-sock <m.APISock>" and "--id <m.ID>", for rediscovery after a
// daemon restart.
//
// A jailed Firecracker is found by its in-chroot argv and then proven to
// run the binary's copy in m's own chroot (proveJailed).
func (d *Driver) FindProcess(m vmm.Machine) (system.Process, bool) {
	if m.APISock == "" || m.ID == "" {
		return system.Process{}, false
	}
	p, ok := system.FindProcess(func(argv []string) bool { return d.MatchesArgv(m, argv) })
	if ok && m.Jailer != nil && proveJailed(m, p) != nil {
		return system.Process{}, false
	}
	return p, ok
}

// MatchesArgv reports whether argv is that of the Firecracker of m: it holds
// the exact pairs "--api-sock <m.APISock>" and "--id <m.ID>" (never a
// substring match).
//
// A jailed Firecracker's argv is matchesJailedArgv's.
func (d *Driver) MatchesArgv(m vmm.Machine, argv []string) bool {
	if m.Jailer != nil {
		return matchesJailedArgv(m, argv)
	}
	return m.APISock != "" && m.ID != "" && system.ArgvHasPair(argv, "--api-sock", m.APISock) && system.ArgvHasPair(argv, "--id", m.ID)
}

// Version runs "binary --version" and returns the version token, e.g.
// "v1.16.1" for "Firecracker v1.16.1".
func Version(ctx context.Context, binary string) (string, error) {
	out, err := system.ExecRunner{}.Run(ctx, binary, "--version")
	if err != nil {
		return "", fmt.Errorf("firecracker version of %s: %w", binary, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	fields := strings.Fields(line)
	if len(fields) < 2 || fields[0] != "Firecracker" {
		return "", fmt.Errorf("firecracker version of %s: unexpected output %q", binary, line)
	}
	return fields[1], nil
}

func removeSockets(m vmm.Machine) error {
	for _, p := range []string{m.APISock, m.VSockPath} {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale socket: %w", err)
		}
	}
	return nil
}

// consoleTail returns the last bytes of the console log, for error messages
// about a VMM that died early.
func consoleTail(path string) string {
	if path == "" {
		return "(no console log)"
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(console log unreadable: %v)", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err == nil && st.Size() > consoleTailLen {
		_, _ = f.Seek(st.Size()-consoleTailLen, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "(empty)"
	}
	return s
}
