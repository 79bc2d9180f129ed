package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// Saving and restoring a VM's memory and device state (suspend, resume,
// forks). QEMU 7.2 has no file: migration URI and banger's seccomp sandbox
// forbids exec:, so the state travels through file descriptors: Save hands
// QEMU the open state file over QMP (getfd, SCM_RIGHTS) and migrates to
// "fd:NAME"; a restore starts QEMU with the file inherited as a descriptor
// and "-incoming fd:N". See docs/snapshots.md.
//
// A state file is a 4 KiB header written by banger (magic line, JSON
// metadata, zero padding) followed by QEMU's migration stream. QEMU reads
// and writes an fd: stream from the descriptor's current offset, so the
// header needs nothing from QEMU; the driver seeks past it.

const (
	stateHeaderSize = 4096
	stateMagic      = "BANGER-QEMU-STATE 1\n"
	saveFDName      = "banger-save"
	// migratePoll is how often Save asks for the migration's progress.
	migratePoll = 20 * time.Millisecond
	// defaultRestoreTimeout bounds a restore from QEMU's start to running;
	// loading 112 MB took 0.17 s under TCG.
	defaultRestoreTimeout = time.Minute
)

// ErrStateMismatch is returned when saved state cannot be restored by this
// QEMU on this machine: another QEMU version (microvm state does not move
// between versions) or other memory, vCPUs or devices.
var ErrStateMismatch = errors.New("saved state does not match")

// StateInfo is what a state file records about the VM it holds.
type StateInfo struct {
	VMID        string    `json:"vm_id"`
	QEMUVersion string    `json:"qemu_version"` // from QMP query-version, e.g. "7.2.22"
	Machine     string    `json:"machine"`      // machine fingerprint: memory, vCPUs, devices in order
	MemoryMiB   int       `json:"memory_mib"`
	VCPUs       int       `json:"vcpus"`
	SavedAt     time.Time `json:"saved_at"`
}

// SaveInfo describes one Save.
type SaveInfo struct {
	StateInfo
	Size int64 // bytes of the state file, header included
	// Duration runs from the guest's stop to the state file synced: the
	// time the guest stood still (for a fork's source) or the save took.
	Duration time.Duration
	// Resumed reports whether the guest runs again after Save (keepRunning
	// and it ran before).
	Resumed bool
}

// Save writes the memory and device state of m's running QEMU p to
// stateFile: it stops the guest, migrates into the file, and syncs it.
// Then, with keepRunning, QEMU stays up and returns to the run state it
// had (a guest that ran resumes; one the caller paused stays paused, so a
// fork can copy the disks while nothing writes them and then Resume); with
// keepRunning false, QEMU exits and its RAM is freed (suspend). The disks
// are flushed by QEMU when the migration completes and synced here.
//
// stateFile is written through a temporary file in its directory and
// renamed at the end, so it is either complete or absent. On failure the
// guest keeps running (or stays paused) and no file is left.
func (d *Driver) Save(ctx context.Context, m vmm.Machine, p system.Process, stateFile string, keepRunning bool) (SaveInfo, error) {
	info, err := d.save(ctx, m, p, stateFile, keepRunning)
	if err != nil {
		return SaveInfo{}, fmt.Errorf("saving vm %s: %w", m.ID, err)
	}
	return info, nil
}

func (d *Driver) save(ctx context.Context, m vmm.Machine, p system.Process, stateFile string, keepRunning bool) (SaveInfo, error) {
	log := d.logger().With("vm", m.ID, "pid", p.PID)
	argv, err := d.provenArgv(m, p)
	if err != nil {
		return SaveInfo{}, err
	}
	info := SaveInfo{StateInfo: StateInfo{VMID: m.ID, Machine: machineFingerprint(argv)}}
	info.MemoryMiB, info.VCPUs = argvSizes(argv)

	tmp, err := os.CreateTemp(filepath.Dir(stateFile), "."+filepath.Base(stateFile)+".tmp-")
	if err != nil {
		return SaveInfo{}, err
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()

	c, err := dialQMP(ctx, m.APISock, qmpOpTimeout)
	if err != nil {
		return SaveInfo{}, err
	}
	if info.QEMUVersion, err = c.version(); err != nil {
		c.Close()
		return SaveInfo{}, err
	}
	before, err := c.status()
	if err != nil {
		c.Close()
		return SaveInfo{}, err
	}
	switch before {
	case "running", "paused", "postmigrate":
	default:
		c.Close()
		return SaveInfo{}, fmt.Errorf("qemu status is %q: only a running or paused guest can be saved", before)
	}
	wasRunning := before == "running"
	info.SavedAt = time.Now().UTC()
	if err := writeStateHeader(tmp, info.StateInfo); err != nil {
		c.Close()
		return SaveInfo{}, err
	}

	start := time.Now()
	// From here on a failure must leave the guest as it was.
	restore := func() {
		if !wasRunning {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), qmpOpTimeout)
		defer cancel()
		if err := resumeGuest(rctx, m.APISock); err != nil {
			log.Error("resuming the guest after a failed save", "err", err)
		}
	}
	if err := startMigration(c, tmp, wasRunning); err != nil {
		c.Close()
		restore()
		return SaveInfo{}, err
	}
	c.Close()
	if err := d.waitMigration(ctx, m, p, log); err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), qmpOpTimeout)
		if cerr := cancelMigration(cctx, m.APISock); cerr != nil {
			log.Warn("qmp migrate_cancel", "err", cerr)
		}
		cancel()
		restore()
		return SaveInfo{}, err
	}
	// QEMU has written everything and flushed the disks (migration
	// completion inactivates them); make both durable before QEMU may go.
	if err := tmp.Sync(); err != nil {
		restore()
		return SaveInfo{}, err
	}
	fi, err := tmp.Stat()
	if err != nil {
		restore()
		return SaveInfo{}, err
	}
	info.Size = fi.Size()
	if err := tmp.Close(); err != nil {
		restore()
		return SaveInfo{}, err
	}
	if err := os.Rename(tmp.Name(), stateFile); err != nil {
		restore()
		return SaveInfo{}, err
	}
	committed = true
	if err := syncDir(filepath.Dir(stateFile)); err != nil {
		log.Warn("syncing the state file's directory", "err", err)
	}
	for _, disk := range []string{m.RootDisk, m.WorkDisk} {
		if err := syncFile(disk); err != nil {
			log.Warn("syncing disk after save", "disk", disk, "err", err)
		}
	}
	info.Duration = time.Since(start)

	if keepRunning {
		if wasRunning {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), qmpOpTimeout)
			err := resumeGuest(rctx, m.APISock)
			cancel()
			if err != nil {
				return info, fmt.Errorf("state saved to %s, but resuming the guest failed: %w", stateFile, err)
			}
			info.Resumed = true
		}
		log.Info("vm state saved", "file", stateFile, "bytes", info.Size, "took", info.Duration.Round(time.Millisecond), "resumed", info.Resumed)
		return info, nil
	}
	// Suspend: QEMU exits and frees the guest's RAM.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), qmpOpTimeout)
	if err := quit(qctx, m.APISock); err != nil {
		log.Debug("qmp quit after save", "err", err)
	}
	cancel()
	waitGone(ctx, p, quitWait)
	if err := d.kill(m, p); err != nil {
		return info, fmt.Errorf("state saved to %s, but stopping qemu failed: %w", stateFile, err)
	}
	log.Info("vm state saved, qemu exited", "file", stateFile, "bytes", info.Size, "took", info.Duration.Round(time.Millisecond))
	return info, nil
}

// startMigration stops a running guest and starts migrating into f, all in
// one QMP session (getfd keeps the descriptor in the monitor, which the
// migrate that follows consumes).
func startMigration(c *qmpClient, f *os.File, stop bool) error {
	// The default bandwidth cap (32 MiB/s) paces a live migration; the
	// guest is stopped, so there is nothing to pace.
	if _, err := c.execute("migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}); err != nil {
		return err
	}
	if stop {
		if _, err := c.execute("stop", nil); err != nil {
			return err
		}
	}
	if _, err := c.executeWithFile("getfd", map[string]string{"fdname": saveFDName}, f); err != nil {
		return err
	}
	if _, err := c.execute("migrate", map[string]string{"uri": "fd:" + saveFDName}); err != nil {
		// An unused named descriptor would stay open in QEMU.
		_, _ = c.execute("closefd", map[string]string{"fdname": saveFDName})
		return err
	}
	return nil
}

// migrationStatus is query-migrate's answer, as far as Save reads it.
type migrationStatus struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	RAM       *struct {
		Transferred int64 `json:"transferred"`
		Remaining   int64 `json:"remaining"`
		Total       int64 `json:"total"`
	} `json:"ram"`
}

// waitMigration polls query-migrate until the migration completes, fails,
// the save timeout passes or ctx ends. It logs progress every second.
func (d *Driver) waitMigration(ctx context.Context, m vmm.Machine, p system.Process, log *slog.Logger) error {
	timeout := d.SaveTimeout
	if timeout <= 0 {
		timeout = defaultSaveTimeout(m.MemoryMiB)
	}
	deadline := time.Now().Add(timeout)
	lastLog := time.Now()
	for {
		if !p.Alive() {
			return errors.New("qemu exited during the save")
		}
		st, err := queryMigrate(ctx, m.APISock)
		if err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration to the state file %s: %s", st.Status, st.ErrorDesc)
		}
		if time.Since(lastLog) >= time.Second && st.RAM != nil {
			log.Info("saving vm state", "status", st.Status, "transferred_bytes", st.RAM.Transferred, "remaining_bytes", st.RAM.Remaining)
			lastLog = time.Now()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("migration to the state file not completed after %s (status %q)", timeout, st.Status)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(migratePoll):
		}
	}
}

// defaultSaveTimeout allows a minute plus a second per 32 MiB of guest RAM:
// a 1 GiB guest saved in 2.3 s under TCG on an idle host.
func defaultSaveTimeout(memMiB int) time.Duration {
	return time.Minute + time.Duration(max(memMiB, 0)/32)*time.Second
}

func queryMigrate(ctx context.Context, sock string) (migrationStatus, error) {
	c, err := dialQMP(ctx, sock, qmpOpTimeout)
	if err != nil {
		return migrationStatus{}, err
	}
	defer c.Close()
	raw, err := c.execute("query-migrate", nil)
	if err != nil {
		return migrationStatus{}, err
	}
	var st migrationStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		return migrationStatus{}, fmt.Errorf("qmp query-migrate: %w", err)
	}
	return st, nil
}

func cancelMigration(ctx context.Context, sock string) error {
	c, err := dialQMP(ctx, sock, qmpOpTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.execute("migrate_cancel", nil)
	return err
}

// resumeGuest runs QMP cont in a short session.
func resumeGuest(ctx context.Context, sock string) error {
	c, err := dialQMP(ctx, sock, qmpOpTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.execute("cont", nil)
	return err
}

// Pause stops m's guest (QMP stop): its vCPUs halt, its clock stands still,
// QEMU stays up. A fork pauses its source, saves with keepRunning, copies
// the disks, then resumes it.
func (d *Driver) Pause(ctx context.Context, m vmm.Machine, p system.Process) error {
	if _, err := d.provenArgv(m, p); err != nil {
		return fmt.Errorf("pausing vm %s: %w", m.ID, err)
	}
	c, err := dialQMP(ctx, m.APISock, qmpOpTimeout)
	if err != nil {
		return fmt.Errorf("pausing vm %s: %w", m.ID, err)
	}
	defer c.Close()
	if _, err := c.execute("stop", nil); err != nil {
		return fmt.Errorf("pausing vm %s: %w", m.ID, err)
	}
	return nil
}

// Resume lets a paused guest run again (QMP cont), also after a Save that
// kept QEMU up (status postmigrate, whose disks cont reactivates).
func (d *Driver) Resume(ctx context.Context, m vmm.Machine, p system.Process) error {
	if _, err := d.provenArgv(m, p); err != nil {
		return fmt.Errorf("resuming vm %s: %w", m.ID, err)
	}
	if err := resumeGuest(ctx, m.APISock); err != nil {
		return fmt.Errorf("resuming vm %s: %w", m.ID, err)
	}
	return nil
}

// RunState proves p is m's QEMU (argv and QMP query-name, as Identify) and
// returns its QMP run status: "running", "paused", "postmigrate" (saved,
// kept up), "inmigrate" (restoring)... Identify accepts only "running";
// a suspended-in-place or restoring VM is identified here.
func (d *Driver) RunState(ctx context.Context, m vmm.Machine, p system.Process) (string, error) {
	if _, err := d.provenArgv(m, p); err != nil {
		return "", fmt.Errorf("identifying qemu for vm %s: %w", m.ID, err)
	}
	c, err := dialQMP(ctx, m.APISock, qmpOpTimeout)
	if err != nil {
		return "", fmt.Errorf("identifying qemu for vm %s: %w", m.ID, err)
	}
	defer c.Close()
	name, err := c.name()
	if err != nil {
		return "", fmt.Errorf("identifying qemu for vm %s: %w", m.ID, err)
	}
	if name != guestName(m.ID) {
		return "", fmt.Errorf("identifying qemu for vm %s: qmp socket %s answers for %q", m.ID, m.APISock, name)
	}
	return c.status()
}

// provenArgv returns p's argv after checking that p is alive and runs m
// (exact -qmp and -name pairs), so no command reaches another VM's QEMU.
func (d *Driver) provenArgv(m vmm.Machine, p system.Process) ([]string, error) {
	if !p.Alive() {
		return nil, fmt.Errorf("pid %d: %w", p.PID, os.ErrProcessDone)
	}
	argv, err := system.ProcCmdline(p.PID)
	if err != nil {
		return nil, err
	}
	if !p.Alive() {
		return nil, fmt.Errorf("pid %d: %w", p.PID, os.ErrProcessDone)
	}
	if !runsMachine(argv, m) {
		return nil, fmt.Errorf("pid %d has no \"-qmp %s\" and \"-name %s\" in its argv", p.PID, qmpToken(m.APISock), guestName(m.ID))
	}
	return argv, nil
}

// version runs query-version and renders "major.minor.micro".
func (c *qmpClient) version() (string, error) {
	raw, err := c.execute("query-version", nil)
	if err != nil {
		return "", err
	}
	var v struct {
		QEMU struct {
			Major, Minor, Micro int
		} `json:"qemu"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", fmt.Errorf("qmp query-version: %w", err)
	}
	return fmt.Sprintf("%d.%d.%d", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro), nil
}

// machineFingerprint renders what a restore must reproduce from a QEMU
// argv: machine, accelerator, CPU model, memory, vCPUs, and the devices
// with their backends in order, and whether the kernel was booted through
// PVH (an ELF kernel), without anything that may differ between the saved
// VM and the restored one (paths, the tap's name, the MAC, the VM's name,
// sockets, kernel arguments, -incoming).
func machineFingerprint(argv []string) string {
	var parts []string
	for i := 1; i+1 < len(argv); i++ {
		flag, val := argv[i], argv[i+1]
		switch flag {
		case "-M", "-accel", "-cpu", "-m", "-smp":
			parts = append(parts, flag+" "+val)
		case "-device":
			parts = append(parts, flag+" "+dropOptions(val, "mac"))
		case "-drive":
			parts = append(parts, flag+" "+keepOptions(val, "id", "format", "if"))
		case "-netdev", "-chardev":
			kind, _, _ := strings.Cut(val, ",")
			parts = append(parts, flag+" "+kind+","+keepOptions(val, "id"))
		case "-kernel":
			if k := fingerprintKernel(val); k != "" {
				parts = append(parts, k)
			}
		default:
			continue
		}
		i++
	}
	return strings.Join(parts, " ")
}

// keepOptions returns the key=value options of a QEMU option list that
// have one of keys, in order.
func keepOptions(list string, keys ...string) string {
	var out []string
	for _, o := range strings.Split(list, ",") {
		k, _, ok := strings.Cut(o, "=")
		if !ok {
			continue
		}
		for _, want := range keys {
			if k == want {
				out = append(out, o)
			}
		}
	}
	return strings.Join(out, ",")
}

// dropOptions returns a QEMU option list without the options named keys.
func dropOptions(list string, keys ...string) string {
	var out []string
outer:
	for _, o := range strings.Split(list, ",") {
		k, _, _ := strings.Cut(o, "=")
		for _, drop := range keys {
			if k == drop {
				continue outer
			}
		}
		out = append(out, o)
	}
	return strings.Join(out, ",")
}

// argvSizes returns -m and -smp of a QEMU argv.
func argvSizes(argv []string) (memMiB, vcpus int) {
	for i := 1; i+1 < len(argv); i++ {
		switch argv[i] {
		case "-m":
			memMiB, _ = strconv.Atoi(argv[i+1])
		case "-smp":
			vcpus, _ = strconv.Atoi(argv[i+1])
		}
	}
	return memMiB, vcpus
}

// writeStateHeader writes the header block at the start of f and leaves
// the offset at its end, where QEMU's stream begins.
func writeStateHeader(f *os.File, info StateInfo) error {
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	block := make([]byte, stateHeaderSize)
	n := copy(block, stateMagic)
	if n+len(b)+1 > stateHeaderSize {
		return errors.New("state header too large")
	}
	n += copy(block[n:], b)
	block[n] = '\n'
	if _, err := f.WriteAt(block, 0); err != nil {
		return err
	}
	_, err = f.Seek(stateHeaderSize, io.SeekStart)
	return err
}

// ReadStateInfo reads the header of a state file written by Save.
func ReadStateInfo(path string) (StateInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return StateInfo{}, err
	}
	defer f.Close()
	return readStateHeader(f)
}

func readStateHeader(f *os.File) (StateInfo, error) {
	block := make([]byte, stateHeaderSize)
	if _, err := io.ReadFull(f, block); err != nil {
		return StateInfo{}, fmt.Errorf("state file %s: reading its header: %w", f.Name(), err)
	}
	rest, ok := bytes.CutPrefix(block, []byte(stateMagic))
	if !ok {
		return StateInfo{}, fmt.Errorf("state file %s: not a banger QEMU state file", f.Name())
	}
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	var info StateInfo
	if err := json.Unmarshal(line, &info); err != nil {
		return StateInfo{}, fmt.Errorf("state file %s: header: %w", f.Name(), err)
	}
	return info, nil
}

// openIncoming opens m.Incoming's state file for a restore with argv and
// checks it against this QEMU and machine: the version the state was saved
// with (also Incoming.VMMVersion when set) must be the binary's, and the
// machine fingerprint argv's. It returns the file positioned at QEMU's
// stream.
func openIncoming(ctx context.Context, m vmm.Machine, binary string, argv []string) (*os.File, error) {
	f, err := os.Open(m.Incoming.File)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*os.File, error) {
		f.Close()
		return nil, err
	}
	info, err := readStateHeader(f)
	if err != nil {
		return fail(err)
	}
	if fi, err := f.Stat(); err != nil {
		return fail(err)
	} else if fi.Size() <= stateHeaderSize {
		return fail(fmt.Errorf("state file %s holds no state (%d bytes)", m.Incoming.File, fi.Size()))
	}
	if v := m.Incoming.VMMVersion; v != "" && v != info.QEMUVersion {
		return fail(fmt.Errorf("%w: state file %s says QEMU %s, the caller recorded %s", ErrStateMismatch, m.Incoming.File, info.QEMUVersion, v))
	}
	have, err := Version(ctx, binary)
	if err != nil {
		return fail(err)
	}
	if have != info.QEMUVersion {
		return fail(fmt.Errorf("%w: state saved by QEMU %s cannot be restored by QEMU %s (%s): microvm state does not move between QEMU versions",
			ErrStateMismatch, info.QEMUVersion, have, binary))
	}
	if want := machineFingerprint(argv); want != info.Machine {
		return fail(fmt.Errorf("%w: state saved from machine %q, restoring into %q: memory, vCPUs and devices must be the same",
			ErrStateMismatch, info.Machine, want))
	}
	if _, err := f.Seek(stateHeaderSize, io.SeekStart); err != nil {
		return fail(err)
	}
	return f, nil
}

// waitRestored waits until QEMU has loaded the incoming state (status
// inmigrate, then paused), optionally takes the network link down, and
// lets the guest run.
func (d *Driver) waitRestored(ctx context.Context, m vmm.Machine, p system.Process) error {
	timeout := d.RestoreTimeout
	if timeout <= 0 {
		timeout = defaultRestoreTimeout
	}
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		if !p.Alive() {
			return errors.New("qemu exited while loading the saved state")
		}
		if _, err := os.Stat(m.APISock); err == nil {
			c, err := dialQMP(ctx, m.APISock, max(time.Until(deadline), 100*time.Millisecond))
			if err == nil {
				var st string
				st, err = c.status()
				if err == nil && st != "inmigrate" {
					err = startRestored(c, m, st)
					c.Close()
					return exitedOr(p, err)
				}
				c.Close()
				if err != nil {
					return exitedOr(p, err)
				}
			}
			lastErr = err
		}
		if time.Now().After(deadline) {
			if lastErr != nil {
				return fmt.Errorf("saved state not loaded after %s: %w", timeout, lastErr)
			}
			return fmt.Errorf("saved state not loaded after %s", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// exitedOr turns a QMP error into "qemu exited" when QEMU is gone: a
// state QEMU cannot load makes it exit, cutting the session.
func exitedOr(p system.Process, err error) error {
	if err != nil && waitGone(context.Background(), p, 200*time.Millisecond) {
		return fmt.Errorf("qemu exited while loading the saved state (%w)", err)
	}
	return err
}

// startRestored takes a loaded QEMU (status st) to running.
func startRestored(c *qmpClient, m vmm.Machine, st string) error {
	switch st {
	case "paused", "postmigrate", "running":
	default:
		return fmt.Errorf("qemu status is %q after loading the saved state", st)
	}
	if st != "running" {
		if _, err := c.execute("cont", nil); err != nil {
			return err
		}
	}
	st, err := c.status()
	if err != nil {
		return err
	}
	if st != "running" {
		return fmt.Errorf("qemu status is %q after cont, want running", st)
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

func syncDir(dir string) error { return syncFile(dir) }
