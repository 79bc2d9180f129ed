// Package qemu runs banger VMs under QEMU's microvm machine, with KVM when the
// host offers it and TCG (pure emulation) when it does not, so banger works on
// hosts without /dev/kvm. QEMU is controlled through its QMP monitor socket;
// qemu-rig.md in the design notes records the measurements behind the choices
// made here.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

const (
	defaultBinary     = "qemu-system-x86_64"
	defaultQMPTimeout = 5 * time.Second
	// qmpOpTimeout bounds one QMP conversation after startup (dial, greeting,
	// command). QMP is served by QEMU's main loop, not the vCPU threads, so it
	// answers in milliseconds even while a TCG guest is busy.
	qmpOpTimeout = 2 * time.Second
	// powerdownInterval: a powerdown sent before the guest's acpid runs is
	// silently lost (qemu-rig.md, step 6), so Shutdown repeats it this often.
	powerdownInterval = time.Second
	// quitWait is how long Shutdown waits after QMP quit (QEMU exits in <10 ms)
	// before SIGKILL, and how long it waits for SIGKILL to take effect.
	quitWait = 2 * time.Second
	killWait = 5 * time.Second
)

// ErrAlreadyRunning is returned by Launch when a live process already claims
// the machine's QMP socket in its argv: launching again would run the same VM
// twice, and removing that socket would cut the running one off.
var ErrAlreadyRunning = errors.New("qemu already running for this qmp socket")

// Driver launches and controls QEMU processes. The zero value is ready to
// use, and it is safe for concurrent use. The only state it keeps between
// calls is a cache of split state files for clone restores (template.go).
type Driver struct {
	Binary     string        // "" = vmm.Machine.Binary, else "qemu-system-x86_64" on PATH
	Logger     *slog.Logger  // nil = discard
	QMPTimeout time.Duration // how long Launch waits for the QMP socket; default 5s
	// SaveTimeout bounds the migration into a state file in Save; default
	// a minute plus a second per 32 MiB of guest RAM.
	SaveTimeout time.Duration
	// RestoreTimeout bounds a restoring Launch from QEMU's start to the
	// guest running; default a minute.
	RestoreTimeout time.Duration

	templates templateCache
}

func (d *Driver) logger() *slog.Logger {
	if d.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return d.Logger
}

func (d *Driver) binary(m vmm.Machine) string {
	// Same precedence as the Firecracker driver: the daemon's setting wins.
	switch {
	case d.Binary != "":
		return d.Binary
	case m.Binary != "":
		return m.Binary
	}
	return defaultBinary
}

func (d *Driver) qmpTimeout() time.Duration {
	if d.QMPTimeout > 0 {
		return d.QMPTimeout
	}
	return defaultQMPTimeout
}

// Device ids that saved state refers to: they must not change.
const (
	netdevID = "n0"
	// AgentPortName is the name of the guest agent's virtio-serial port;
	// the guest finds it in /sys/class/virtio-ports/*/name.
	AgentPortName = "org.banger.agent"
)

// agentSock is the host end of m's guest agent channel.
func agentSock(m vmm.Machine) string {
	if m.AgentSock != "" {
		return m.AgentSock
	}
	return filepath.Join(filepath.Dir(m.APISock), "agent.sock")
}

// AgentSocket returns the path of m's guest agent socket, for Agent.
func AgentSocket(m vmm.Machine) string { return agentSock(m) }

// qmpToken is the value that follows -qmp in QEMU's argv. Identify and
// FindProcess compare it exactly, so it must never change shape.
func qmpToken(sock string) string { return "unix:" + sock + ",server=on,wait=off" }

// guestName is QEMU's -name for VM id, which QMP query-name reports back.
func guestName(id string) string { return "banger-" + id }

// servesSocket reports whether argv is a QEMU command line whose QMP monitor
// is sock.
func servesSocket(argv []string, sock string) bool {
	return sock != "" && system.ArgvHasPair(argv, "-qmp", qmpToken(sock))
}

// runsMachine reports whether argv is the QEMU command line of m: its QMP
// monitor is m's socket and its -name is m's id, both compared exactly.
func runsMachine(argv []string, m vmm.Machine) bool {
	return m.ID != "" && servesSocket(argv, m.APISock) && system.ArgvHasPair(argv, "-name", guestName(m.ID))
}

// qemuLogPath is where QEMU's own stdout and stderr go.
func qemuLogPath(m vmm.Machine) string {
	if m.LogPath != "" {
		return m.LogPath
	}
	return m.ConsoleLog + ".qemu"
}

// Launch starts QEMU for m in its own session (it outlives the daemon) and
// returns once QMP reports the guest running. It does not wait for the guest
// to boot. On failure nothing is left behind: the process is killed, the
// socket removed, and the error carries the tail of QEMU's log and of the
// serial console.
func (d *Driver) Launch(ctx context.Context, m vmm.Machine) (system.Process, error) {
	log := d.logger().With("vm", m.ID)
	// Any process claiming the socket counts, whatever its -name: the stale
	// socket removal below would cut it off.
	if p, ok := system.FindProcess(func(argv []string) bool { return servesSocket(argv, m.APISock) }); ok {
		return system.Process{}, fmt.Errorf("launching qemu for vm %s: %w (pid %d)", m.ID, ErrAlreadyRunning, p.PID)
	}
	var tscKHz int
	if m.Accel == "tcg" {
		khz, err := HostTSCkHz()
		if err != nil {
			// Boots may still work on an idle host; the daemon's boot timeout catches a hang.
			log.Warn("launching qemu without tsc_early_khz; the guest may hang while calibrating its clock", "err", err)
		}
		tscKHz = khz
	}
	argv, err := buildArgv(m, d.binary(m), tscKHz)
	if err != nil {
		return system.Process{}, fmt.Errorf("launching qemu for vm %s: %w", m.ID, err)
	}
	if m.Incoming != nil {
		// The state goes in as an inherited descriptor: QEMU's sandbox
		// and jail need no access to the file's path.
		f, err := openIncoming(ctx, m, d.binary(m), argv)
		if err != nil {
			return system.Process{}, fmt.Errorf("restoring vm %s: %w", m.ID, err)
		}
		defer f.Close() // QEMU has its own copy once started
		m.ExtraFiles = m.ExtraFiles[:len(m.ExtraFiles):len(m.ExtraFiles)]
		if m.Incoming.ShareMemory {
			if t, stream, err := d.sharedMemory(m, f); err != nil {
				log.Warn("restoring without shared memory", "state", m.Incoming.File, "err", err)
			} else {
				defer d.templates.release(t)
				defer stream.Close()
				// QEMU maps the memfd privately as the guest's RAM and
				// loads the rest of the stream (template.go).
				m.ExtraFiles = append(m.ExtraFiles, t.mem)
				argv = append(argv,
					"-object", fmt.Sprintf("memory-backend-file,id=%s,size=%dM,mem-path=/proc/self/fd/%d,share=off", mainRAMBlock, m.MemoryMiB, 2+len(m.ExtraFiles)),
					"-machine", "memory-backend="+mainRAMBlock)
				f = stream
			}
		}
		m.ExtraFiles = append(m.ExtraFiles, f)
		argv = append(argv, "-incoming", "fd:"+strconv.Itoa(2+len(m.ExtraFiles)))
	}
	if err := removeSocket(m.APISock); err != nil {
		return system.Process{}, fmt.Errorf("launching qemu for vm %s: removing stale qmp socket: %w", m.ID, err)
	}
	if err := removeSocket(agentSock(m)); err != nil {
		return system.Process{}, fmt.Errorf("launching qemu for vm %s: removing stale agent socket: %w", m.ID, err)
	}
	logPath := qemuLogPath(m)
	logOffset := fileSize(logPath)
	start := time.Now()
	p, err := vmm.Start(m, argv, logPath)
	if err != nil {
		return system.Process{}, fmt.Errorf("launching qemu for vm %s: %w", m.ID, err)
	}
	if p.Start == 0 {
		// Gone before its start time could be read: its PID proves nothing, never signal it.
		_ = removeSocket(m.APISock)
		_ = removeSocket(agentSock(m))
		return system.Process{}, fmt.Errorf("launching qemu for vm %s: qemu exited at once%s", m.ID, diagnostics(logPath, logOffset, m.ConsoleLog))
	}
	wait := d.waitRunning
	if m.Incoming != nil {
		wait = d.waitRestored
	}
	if err := wait(ctx, m, p); err != nil {
		if kerr := p.Kill(killWait); kerr != nil {
			log.Error("killing qemu after failed launch", "pid", p.PID, "err", kerr)
		}
		_ = removeSocket(m.APISock)
		_ = removeSocket(agentSock(m))
		return system.Process{}, fmt.Errorf("launching qemu for vm %s: %w%s", m.ID, err, diagnostics(logPath, logOffset, m.ConsoleLog))
	}
	log.Info("qemu running", "pid", p.PID, "accel", m.Accel, "restored", m.Incoming != nil, "after", time.Since(start).Round(time.Millisecond))
	return p, nil
}

// waitRunning waits for p's QMP socket, then checks that the VM runs.
func (d *Driver) waitRunning(ctx context.Context, m vmm.Machine, p system.Process) error {
	deadline := time.Now().Add(d.qmpTimeout())
	var lastErr error
	for {
		if !p.Alive() {
			return errors.New("qemu exited during startup")
		}
		if _, err := os.Stat(m.APISock); err == nil {
			c, err := dialQMP(ctx, m.APISock, max(time.Until(deadline), 100*time.Millisecond))
			if err == nil {
				st, err := c.status()
				c.Close()
				if err != nil {
					return err
				}
				if st != "running" {
					return fmt.Errorf("qemu status is %q, want running", st)
				}
				return nil
			}
			// The socket file exists a moment before it accepts; retry.
			lastErr = err
		}
		if time.Now().After(deadline) {
			if lastErr != nil {
				return fmt.Errorf("qmp socket %s not answering after %s: %w", m.APISock, d.qmpTimeout(), lastErr)
			}
			return fmt.Errorf("qmp socket %s did not appear within %s", m.APISock, d.qmpTimeout())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Shutdown stops the VM run by p. With force it kills QEMU at once. Otherwise
// it presses the ACPI power button (QMP system_powerdown), again every second
// because a press before the guest's acpid runs is lost, and waits up to
// timeout for QEMU to exit; then it sends QMP quit, then SIGKILL. A process
// already gone is success, so Shutdown is idempotent. If ctx ends during the
// wait, the wait is cut short and QEMU killed (as the Firecracker driver
// does). The QMP socket is removed once QEMU is gone.
func (d *Driver) Shutdown(ctx context.Context, m vmm.Machine, p system.Process, timeout time.Duration, force bool) error {
	log := d.logger().With("vm", m.ID, "pid", p.PID)
	if force {
		return d.kill(m, p)
	}
	deadline := time.Now().Add(timeout)
	for p.Alive() && time.Now().Before(deadline) && ctx.Err() == nil {
		pctx, cancel := context.WithDeadline(ctx, deadline)
		if err := powerdown(pctx, m.APISock); err != nil {
			log.Debug("qmp system_powerdown", "err", err)
		}
		cancel()
		waitGone(ctx, p, min(powerdownInterval, time.Until(deadline)))
	}
	if p.Alive() && ctx.Err() == nil {
		log.Warn("guest did not power off; sending qmp quit", "timeout", timeout)
		if err := quit(ctx, m.APISock); err != nil {
			log.Debug("qmp quit", "err", err)
		}
		waitGone(ctx, p, quitWait)
	}
	if p.Alive() {
		log.Warn("killing qemu", "ctx_err", ctx.Err())
	}
	return d.kill(m, p)
}

// kill SIGKILLs p if it still runs and removes the QMP socket it leaves,
// unless another live process claims that socket: with stale handles, p may
// not be the QEMU that serves it, and removing the socket of a live QEMU
// would leave it reachable by SIGKILL only.
func (d *Driver) kill(m vmm.Machine, p system.Process) error {
	if p.PID > 0 && p.Alive() {
		if err := p.Kill(killWait); err != nil && !errors.Is(err, system.ErrNotSameProcess) {
			return fmt.Errorf("killing qemu for vm %s: %w", m.ID, err)
		}
	}
	if q, ok := system.FindProcess(func(argv []string) bool { return servesSocket(argv, m.APISock) }); ok {
		d.logger().Warn("qmp socket kept: another process claims it", "vm", m.ID, "sock", m.APISock, "pid", q.PID)
		return nil
	}
	if err := removeSocket(m.APISock); err != nil {
		return fmt.Errorf("removing qmp socket of vm %s: %w", m.ID, err)
	}
	// QEMU removes its agent socket when it exits cleanly, not when killed.
	if err := removeSocket(agentSock(m)); err != nil {
		return fmt.Errorf("removing agent socket of vm %s: %w", m.ID, err)
	}
	return nil
}

// Identify checks that p is the QEMU running m: it is alive, its argv holds
// the exact pairs "-qmp unix:<m.APISock>,server=on,wait=off" and
// "-name banger-<m.ID>", and QMP on that socket answers query-name with that
// name and query-status with "running" or "paused". A PID reused by another program, or
// another VM's QEMU, fails with an error naming the check that failed.
func (d *Driver) Identify(ctx context.Context, m vmm.Machine, p system.Process) error {
	if !p.Alive() {
		return fmt.Errorf("identifying qemu for vm %s: pid %d: %w", m.ID, p.PID, os.ErrProcessDone)
	}
	argv, err := system.ProcCmdline(p.PID)
	if err != nil {
		return fmt.Errorf("identifying qemu for vm %s: %w", m.ID, err)
	}
	// Re-check after reading argv: the PID could have been reused in between.
	if !p.Alive() {
		return fmt.Errorf("identifying qemu for vm %s: pid %d: %w", m.ID, p.PID, os.ErrProcessDone)
	}
	if !runsMachine(argv, m) {
		return fmt.Errorf("identifying qemu for vm %s: pid %d has no \"-qmp %s\" and \"-name %s\" in its argv",
			m.ID, p.PID, qmpToken(m.APISock), guestName(m.ID))
	}
	c, err := dialQMP(ctx, m.APISock, qmpOpTimeout)
	if err != nil {
		return fmt.Errorf("identifying qemu for vm %s: %w", m.ID, err)
	}
	defer c.Close()
	name, err := c.name()
	if err != nil {
		return fmt.Errorf("identifying qemu for vm %s: %w", m.ID, err)
	}
	if name != guestName(m.ID) {
		return fmt.Errorf("identifying qemu for vm %s: qmp socket %s answers for %q", m.ID, m.APISock, name)
	}
	st, err := c.status()
	if err != nil {
		return fmt.Errorf("identifying qemu for vm %s: %w", m.ID, err)
	}
	// A paused guest (a warm pool's member, a fork's source for a moment)
	// is alive; one restoring, saved or shut down is not.
	if st != "running" && st != "paused" {
		return fmt.Errorf("identifying qemu for vm %s: status %q, want running or paused", m.ID, st)
	}
	return nil
}

// FindProcess finds the QEMU of m by the exact argv pairs "-qmp
// unix:<m.APISock>,server=on,wait=off" and "-name banger-<m.ID>", so the
// daemon can pick up a VM it lost track of after a restart.
func (d *Driver) FindProcess(m vmm.Machine) (system.Process, bool) {
	if m.APISock == "" || m.ID == "" {
		return system.Process{}, false
	}
	return system.FindProcess(func(argv []string) bool { return runsMachine(argv, m) })
}

// MatchesArgv reports whether argv is that of the QEMU of m (the exact
// "-qmp" and "-name" pairs of m; never a substring match).
func (d *Driver) MatchesArgv(m vmm.Machine, argv []string) bool {
	return m.APISock != "" && m.ID != "" && runsMachine(argv, m)
}

// powerdown presses the guest's ACPI power button in one short QMP session.
func powerdown(ctx context.Context, sock string) error {
	c, err := dialQMP(ctx, sock, qmpOpTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.execute("system_powerdown", nil)
	return err
}

// quit tells QEMU to exit at once in one short QMP session.
func quit(ctx context.Context, sock string) error {
	c, err := dialQMP(ctx, sock, qmpOpTimeout)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.quit()
}

// waitGone polls until p exits, wait passes or ctx ends; it reports whether
// p exited.
func waitGone(ctx context.Context, p system.Process, wait time.Duration) bool {
	deadline := time.Now().Add(wait)
	for {
		if !p.Alive() {
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return !p.Alive()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// removeSocket removes a QMP socket path; a missing one is fine. It refuses
// to remove anything that is not a socket, so a wrong path cannot cost a file.
func removeSocket(path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// buildArgv renders QEMU's command line for m. tscKHz > 0 adds tsc_early_khz
// to the kernel arguments (only meaningful under TCG).
func buildArgv(m vmm.Machine, binary string, tscKHz int) ([]string, error) {
	if err := validate(m); err != nil {
		return nil, err
	}
	cpu := "host"
	if m.Accel == "tcg" {
		// -cpu max exposes RDRAND under TCG: the guest CRNG is ready at once (qemu-rig.md, Gotcha 2).
		cpu = "max"
	}
	argv := []string{
		binary,
		"-name", guestName(m.ID),
		"-M", "microvm",
		"-accel", m.Accel,
		"-cpu", cpu,
		"-m", strconv.Itoa(m.MemoryMiB),
		"-smp", strconv.Itoa(m.VCPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		// seccomp: the guest is untrusted and, under TCG, runs inside QEMU's own code.
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		// append=on: the daemon may trim the log from outside (it caps
		// guest-driven output); QEMU then keeps writing at the end.
		"-chardev", "file,id=console,path=" + m.ConsoleLog + ",append=on",
		"-serial", "chardev:console",
		"-qmp", qmpToken(m.APISock),
		"-kernel", bootKernel(m, m.Incoming != nil && statePVH(m.Incoming.File)),
	}
	if m.Initrd != "" {
		argv = append(argv, "-initrd", m.Initrd)
	}
	argv = append(argv, "-append", kernelCmdline(m, tscKHz))
	// Disks appear in command-line order: root is vda, work is vdb.
	argv = append(argv,
		"-drive", "id=root,file="+m.RootDisk+",format=raw,if=none,cache=writeback,discard=unmap",
		"-device", "virtio-blk-device,drive=root")
	if m.WorkDisk != "" {
		argv = append(argv,
			"-drive", "id=work,file="+m.WorkDisk+",format=raw,if=none,cache=writeback,discard=unmap",
			"-device", "virtio-blk-device,drive=work")
	}
	if m.TapDevice != "" {
		argv = append(argv,
			"-netdev", "tap,id="+netdevID+",ifname="+m.TapDevice+",script=no,downscript=no",
			"-device", "virtio-net-device,netdev="+netdevID+",mac="+m.GuestMAC)
	}
	// The guest agent's channel (docs/snapshots.md), on every VM so that a
	// booted VM and a restored one have the same devices. Last, so the
	// disks and the NIC keep their places.
	argv = append(argv,
		"-chardev", "socket,id=agent,path="+agentSock(m)+",server=on,wait=off",
		"-device", "virtio-serial-device",
		"-device", "virtserialport,chardev=agent,name="+AgentPortName)
	return argv, nil
}

// kernelCmdline renders the guest kernel's arguments. reboot=t makes a guest
// reboot reach QEMU (which -no-reboot turns into an exit), panic=-1 turns a
// panic into a reboot, and tsc_early_khz avoids the TCG clock hang
// (qemu-rig.md, Gotchas 1 and 3).
func kernelCmdline(m vmm.Machine, tscKHz int) string {
	parts := []string{"console=ttyS0", m.BootArgs, "reboot=t", "panic=-1"}
	if tscKHz > 0 {
		parts = append(parts, "tsc_early_khz="+strconv.Itoa(tscKHz))
	}
	parts = append(parts, m.KernelIPArg())
	return strings.Join(strings.Fields(strings.Join(parts, " ")), " ")
}

// validate rejects a Machine QEMU would misread. Commas separate QEMU
// sub-options, so no value that lands inside an option list may hold one.
func validate(m vmm.Machine) error {
	switch m.Accel {
	case "kvm", "tcg":
	default:
		return fmt.Errorf("accelerator %q: want kvm or tcg", m.Accel)
	}
	if m.ID == "" || strings.ContainsFunc(m.ID, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) {
		return fmt.Errorf("vm id %q: want lowercase letters, digits, - or _", m.ID)
	}
	if m.VCPUs < 1 || m.MemoryMiB < 1 {
		return fmt.Errorf("vcpus %d, memory %d MiB: both must be positive", m.VCPUs, m.MemoryMiB)
	}
	required := []struct{ name, val string }{
		{"kernel", m.Kernel}, {"root disk", m.RootDisk}, {"qmp socket", m.APISock}, {"console log", m.ConsoleLog},
	}
	for _, f := range required {
		if f.val == "" {
			return fmt.Errorf("%s path is empty", f.name)
		}
	}
	if m.TapDevice != "" && m.GuestMAC == "" {
		return fmt.Errorf("tap %s without a guest mac", m.TapDevice)
	}
	noCommas := []struct{ name, val string }{
		{"kernel", m.Kernel}, {"initrd", m.Initrd}, {"root disk", m.RootDisk}, {"work disk", m.WorkDisk},
		{"qmp socket", m.APISock}, {"console log", m.ConsoleLog}, {"tap device", m.TapDevice}, {"guest mac", m.GuestMAC},
		{"agent socket", agentSock(m)},
	}
	for _, f := range noCommas {
		if strings.ContainsAny(f.val, ",\n") {
			return fmt.Errorf("%s %q: commas and newlines are not allowed", f.name, f.val)
		}
	}
	return nil
}

// fileSize returns the size of path, or 0 when it cannot be read.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// diagnostics renders the last lines QEMU and the guest wrote, for a launch
// error: QEMU's own log from offset on, then the serial console.
func diagnostics(qemuLog string, offset int64, consoleLog string) string {
	var b strings.Builder
	if t := tailLines(qemuLog, offset, 8); t != "" {
		fmt.Fprintf(&b, "; qemu log %s: %s", qemuLog, t)
	}
	if t := tailLines(consoleLog, 0, 8); t != "" {
		fmt.Fprintf(&b, "; console %s: %s", consoleLog, t)
	}
	return b.String()
}

// tailLines returns up to n last non-empty lines of path from offset on,
// joined by " | ", reading at most the last 4 KiB.
func tailLines(path string, offset int64, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const maxTail = 4096
	size := fileSize(path)
	if offset > size { // truncated since: read it all
		offset = 0
	}
	if size-offset > maxTail {
		offset = size - maxTail
	}
	buf := make([]byte, max(size-offset, 0))
	k, _ := f.ReadAt(buf, offset)
	var lines []string
	for _, l := range strings.Split(string(buf[:k]), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
