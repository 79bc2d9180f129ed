package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// Snapshots: pause, resume, create (VM state + guest memory) and a Launch
// that loads a snapshot into a fresh process instead of booting. What a
// snapshot needs besides these two files (the disks, the same drive paths)
// is the caller's; see docs/firecracker.md and docs/snapshots.md.

// ErrSnapshotMismatch is returned when a snapshot cannot be loaded by this
// Firecracker: each release reads one snapshot format version.
var ErrSnapshotMismatch = errors.New("snapshot does not match this firecracker")

// SnapshotInfo describes one CreateSnapshot.
type SnapshotInfo struct {
	Version   string        // Firecracker's version (GET /version), to record with the files
	StateSize int64         // bytes of the VM-state file
	MemSize   int64         // bytes of the memory file (the VM's memory size; sparse where untouched)
	Duration  time.Duration // of the snapshot call and the syncs
}

// Pause freezes m's guest (PATCH /vm Paused): vCPUs and device emulation
// stop, the API keeps answering. Pausing a paused VM is fine.
func (d *Driver) Pause(ctx context.Context, m vmm.Machine, p system.Process) error {
	if err := d.setVMState(ctx, m, p, "Paused"); err != nil {
		return fmt.Errorf("pause firecracker vm %s: %w", m.ID, err)
	}
	return nil
}

// Resume lets a paused guest run again (PATCH /vm Resumed).
func (d *Driver) Resume(ctx context.Context, m vmm.Machine, p system.Process) error {
	if err := d.setVMState(ctx, m, p, "Resumed"); err != nil {
		return fmt.Errorf("resume firecracker vm %s: %w", m.ID, err)
	}
	return nil
}

func (d *Driver) setVMState(ctx context.Context, m vmm.Machine, p system.Process, state string) error {
	if err := proveArgv(m, p); err != nil {
		return err
	}
	c := newAPIClient(m.APISock)
	defer c.close()
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return c.do(cctx, http.MethodPatch, "/vm", map[string]any{"state": state}, nil)
}

// CreateSnapshot writes a full snapshot of m's paused guest: its VM state
// to statePath and its memory to memPath (PUT /snapshot/create), then
// syncs both files and the disks. Firecracker requires the guest Paused
// (Pause first); it stays paused, so a fork can copy the disks before
// Resume, and a suspend ends the process (Shutdown with force).
// Firecracker opens the two paths itself: they must be reachable by it.
func (d *Driver) CreateSnapshot(ctx context.Context, m vmm.Machine, p system.Process, statePath, memPath string) (SnapshotInfo, error) {
	info, err := d.createSnapshot(ctx, m, p, statePath, memPath)
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot firecracker vm %s: %w", m.ID, err)
	}
	return info, nil
}

func (d *Driver) createSnapshot(ctx context.Context, m vmm.Machine, p system.Process, statePath, memPath string) (SnapshotInfo, error) {
	if err := proveArgv(m, p); err != nil {
		return SnapshotInfo{}, err
	}
	c := newAPIClient(m.APISock)
	defer c.close()
	var info SnapshotInfo
	version, err := c.version(ctx)
	if err != nil {
		return info, err
	}
	info.Version = version
	start := time.Now()
	// Writing the memory file takes as long as the guest's RAM is large:
	// no short call timeout, only the caller's context.
	err = c.do(ctx, http.MethodPut, "/snapshot/create", map[string]any{
		"snapshot_type": "Full", "snapshot_path": statePath, "mem_file_path": memPath,
	}, nil)
	if err != nil {
		return info, err
	}
	for _, f := range []string{statePath, memPath, m.RootDisk, m.WorkDisk} {
		if err := syncFile(f); err != nil {
			return info, fmt.Errorf("syncing %s: %w", f, err)
		}
	}
	for _, dir := range []string{filepath.Dir(statePath), filepath.Dir(memPath)} {
		if err := syncFile(dir); err != nil {
			return info, fmt.Errorf("syncing %s: %w", dir, err)
		}
	}
	info.Duration = time.Since(start)
	if fi, err := os.Stat(statePath); err == nil {
		info.StateSize = fi.Size()
	}
	if fi, err := os.Stat(memPath); err == nil {
		info.MemSize = fi.Size()
	}
	d.log().Info("firecracker snapshot created", "vm", m.ID, "state", statePath, "mem", memPath, "took", info.Duration.Round(time.Millisecond))
	return info, nil
}

// loadCalls configures a fresh process for m.Incoming: logger and metrics
// (the only resources allowed before a load), then PUT /snapshot/load with
// the machine's tap and vsock socket as overrides and resume_vm.
// clock_realtime (advance the guest's clock by the time since the
// snapshot) is sent only when version has it.
func loadCalls(m vmm.Machine, version string) []apiCall {
	var calls []apiCall
	if m.LogPath != "" {
		calls = append(calls, apiCall{"/logger", map[string]any{"log_path": m.LogPath, "level": "Info"}})
	}
	if m.MetricsPath != "" {
		calls = append(calls, apiCall{"/metrics", map[string]any{"metrics_path": m.MetricsPath}})
	}
	load := map[string]any{
		"snapshot_path": m.Incoming.File,
		"mem_backend":   map[string]any{"backend_type": "File", "backend_path": m.Incoming.MemFile},
		"resume_vm":     true,
	}
	if m.TapDevice != "" && versionAtLeast(version, 1, 12) {
		load["network_overrides"] = []map[string]any{{"iface_id": "eth0", "host_dev_name": m.TapDevice}}
	}
	if m.VSockPath != "" && versionAtLeast(version, 1, 16) {
		load["vsock_override"] = map[string]any{"uds_path": m.VSockPath}
	}
	if versionAtLeast(version, 1, 16) {
		load["clock_realtime"] = true
	}
	return append(calls, apiCall{"/snapshot/load", load})
}

// restore loads m.Incoming into the fresh process p, which answers on its
// API socket.
func (d *Driver) restore(ctx context.Context, c *apiClient, m vmm.Machine, p system.Process) error {
	if m.Incoming.File == "" || m.Incoming.MemFile == "" {
		return errors.New("restoring needs the snapshot's state file and memory file")
	}
	version, err := c.version(ctx)
	if err != nil {
		return err
	}
	if want := m.Incoming.VMMVersion; want != "" && strings.TrimPrefix(want, "v") != strings.TrimPrefix(version, "v") {
		return fmt.Errorf("%w: the snapshot was made by Firecracker %s, this is %s (one snapshot format per release)",
			ErrSnapshotMismatch, want, version)
	}
	for _, call := range loadCalls(m, version) {
		// A load reads the memory file: bounded by ctx only.
		timeout := callTimeout
		if call.path == "/snapshot/load" {
			timeout = 10 * time.Minute
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		err := c.do(cctx, http.MethodPut, call.path, call.body, nil)
		cancel()
		if err != nil {
			if !p.Alive() || waitExit(p, 200*time.Millisecond) {
				return fmt.Errorf("%w (firecracker exited; console: %s)", err, consoleTail(m.ConsoleLog))
			}
			return err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	info, err := c.describe(cctx)
	if err != nil {
		return err
	}
	if info.State != "Running" {
		return fmt.Errorf("firecracker state %q after loading the snapshot, want Running", info.State)
	}
	return nil
}

// waitExit reports whether p exits within wait (a failed load makes
// Firecracker exit just after its answer).
func waitExit(p system.Process, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if !p.Alive() {
			return true
		}
		time.Sleep(exitPoll)
	}
	return !p.Alive()
}

// version asks GET /version ("1.16.1").
func (c *apiClient) version(ctx context.Context) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, identifyCall)
	defer cancel()
	var v struct {
		FirecrackerVersion string `json:"firecracker_version"`
	}
	if err := c.do(cctx, http.MethodGet, "/version", nil, &v); err != nil {
		return "", err
	}
	if v.FirecrackerVersion == "" {
		return "", errors.New("firecracker GET /version: no version in the answer")
	}
	return v.FirecrackerVersion, nil
}

// versionAtLeast reports whether version ("1.16.1", "v1.12.0-dev") is at
// least major.minor.
func versionAtLeast(version string, major, minor int) bool {
	parts := strings.SplitN(strings.TrimPrefix(version, "v"), ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(leadingDigits(parts[1]))
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}

func leadingDigits(s string) string {
	for i, r := range s {
		if r < '0' || r > '9' {
			return s[:i]
		}
	}
	return s
}

// proveArgv checks that p is alive and is the Firecracker of m (exact
// "--api-sock" and "--id" pairs), so no request reaches another VM.
func proveArgv(m vmm.Machine, p system.Process) error {
	if m.Jailer != nil {
		// Its snapshot files would have to be placed in the chroot too.
		return errors.New("pause, resume and snapshots of a firecracker run through the jailer are not supported")
	}
	if !p.Alive() {
		return fmt.Errorf("process %d is not running", p.PID)
	}
	argv, err := system.ProcCmdline(p.PID)
	if err != nil {
		return err
	}
	if !system.ArgvHasPair(argv, "--api-sock", m.APISock) || !system.ArgvHasPair(argv, "--id", m.ID) {
		return fmt.Errorf("process %d has no \"--api-sock %s --id %s\" in its argv", p.PID, m.APISock, m.ID)
	}
	return nil
}

func syncFile(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
