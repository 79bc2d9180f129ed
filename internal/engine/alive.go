package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
)

// vmAlive is the single source of truth for "is this VM alive": recorded
// running, handles with a process, the process proven to be this VM's VMM
// (proveVMM: start time, executable, argv), and the VMM answering on its
// API as this VM. Nothing else decides liveness.
func (e *Engine) vmAlive(ctx context.Context, vm model.VMRecord) (bool, string) {
	e.awaitReconciled(ctx, vm.ID)
	if vm.Runtime.State != model.StateRunning {
		return false, "state is " + string(vm.Runtime.State)
	}
	h, ok := e.handles.get(vm.ID)
	if !ok || h.PID == 0 {
		return false, "no VMM process recorded"
	}
	return e.processIsVMM(ctx, vm, h)
}

// Alive reports whether vm is alive and, if not, why.
func (e *Engine) Alive(ctx context.Context, vm model.VMRecord) (bool, string) {
	return e.vmAlive(ctx, vm)
}

// errProcessGone marks a recorded VMM process that no longer exists.
var errProcessGone = errors.New("process is gone")

// proveVMM proves from what the kernel says now that the process in h is
// this VM's VMM: the same PID and start time (PIDs are reused), the
// configured VMM executable, and an argv holding this VM's own identity
// tokens, compared exactly (the driver's FindProcess match). A PID read from
// the scratch file is a hint; only this proof allows a signal.
func (e *Engine) proveVMM(vm model.VMRecord, h model.VMHandles) error {
	p := system.Process{PID: h.PID, Start: h.PIDStart}
	if !p.Alive() {
		return fmt.Errorf("pid %d: %w", h.PID, errProcessGone)
	}
	argv, err := system.ProcCmdline(p.PID)
	if err != nil {
		return fmt.Errorf("pid %d: %w", h.PID, errProcessGone)
	}
	drv, err := e.driverFor(vm.Runtime.VMM)
	if err != nil {
		return err
	}
	m := e.machine(vm, model.Image{}, "", h)
	if !drv.MatchesArgv(m, argv) {
		return fmt.Errorf("pid %d does not carry vm %s's identity in its argv (%s)", p.PID, vm.ID, shortArgv(argv))
	}
	want := e.vmmExecutable(vm)
	if j := m.Jailer; j != nil {
		// The jailer runs its own copy of the binary, in the VM's chroot.
		want = j.HostPath(vm.ID, j.ExecName())
	}
	if want != "" {
		// Compared as files (device and inode), not as paths: a jailed
		// VMM's executable has another path in its mount namespace.
		got, err := os.Stat(fmt.Sprintf("/proc/%d/exe", p.PID))
		if err != nil {
			return fmt.Errorf("pid %d: reading its executable: %w", p.PID, err)
		}
		wst, err := os.Stat(want)
		if err != nil || !os.SameFile(got, wst) {
			// A binary replaced on disk (an upgrade) reads "<path> (deleted)".
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.PID))
			if !strings.HasSuffix(exe, " (deleted)") || strings.TrimSuffix(exe, " (deleted)") != want {
				return fmt.Errorf("pid %d runs %s, not the vmm %s", p.PID, exe, want)
			}
		}
	}
	if e.confined(vm) && e.deps.Cgroups != nil {
		// The strongest proof: membership of the VM's own cgroup.
		if in, err := system.ProcInCgroup(p.PID, e.deps.Cgroups.Ref(vm.ID)); err != nil || !in {
			return fmt.Errorf("pid %d is not in vm %s's cgroup %s", p.PID, vm.ID, e.deps.Cgroups.Ref(vm.ID))
		}
	}
	if !p.Alive() { // re-check: the PID could have been reused while we read
		return fmt.Errorf("pid %d: %w", h.PID, errProcessGone)
	}
	return nil
}

// vmmExecutable is the resolved path of the VM's VMM binary, or "" when it
// cannot be resolved (then the executable is not part of the proof).
func (e *Engine) vmmExecutable(vm model.VMRecord) string {
	bin := e.cfg.QEMUBin
	if vm.Runtime.VMM == "firecracker" {
		bin = e.cfg.FirecrackerBin
	}
	p, err := system.LookPath(bin)
	if err != nil {
		return ""
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

func shortArgv(argv []string) string {
	s := strings.Join(argv, " ")
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// processIsVMM checks that the process in h is proven this VM's VMM and
// answers on its API as this VM.
func (e *Engine) processIsVMM(ctx context.Context, vm model.VMRecord, h model.VMHandles) (bool, string) {
	if err := e.proveVMM(vm, h); err != nil {
		return false, err.Error()
	}
	drv, err := e.driverFor(vm.Runtime.VMM)
	if err != nil {
		return false, err.Error()
	}
	// One identification at a time per VM: QEMU's QMP socket serves one
	// client with a listen backlog of one, so concurrent dials (parallel
	// execs on one VM) failed with EAGAIN and a live VM read as not running.
	unlock := e.identifying.lock(vm.ID)
	defer unlock()
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	p := system.Process{PID: h.PID, Start: h.PIDStart}
	if err := drv.Identify(ictx, e.machine(vm, model.Image{}, "", h), p); err != nil {
		return false, fmt.Sprintf("process %d is not answering as this VM's VMM: %v", h.PID, err)
	}
	return true, ""
}

// findVMM looks for the VM's VMM among all processes by its exact argv.
func (e *Engine) findVMM(vm model.VMRecord) (system.Process, bool) {
	drv, err := e.driverFor(vm.Runtime.VMM)
	if err != nil {
		return system.Process{}, false
	}
	return drv.FindProcess(e.machine(vm, model.Image{}, "", model.VMHandles{}))
}

// vmLocks serialises operations on one VM; different VMs proceed in parallel.
type vmLocks struct {
	mu sync.Mutex
	m  map[string]*sync.Mutex
}

func (l *vmLocks) get(id string) *sync.Mutex {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[string]*sync.Mutex)
	}
	m, ok := l.m[id]
	if !ok {
		m = &sync.Mutex{}
		l.m[id] = m
	}
	return m
}

func (l *vmLocks) lock(id string) func() {
	m := l.get(id)
	m.Lock()
	return m.Unlock
}

func (l *vmLocks) tryLock(id string) (func(), bool) {
	m := l.get(id)
	if !m.TryLock() {
		return nil, false
	}
	return m.Unlock, true
}

// lockVM takes vm's operation lock for a request, after startup reconcile
// has processed it (reconcile itself holds the lock while it does).
func (e *Engine) lockVM(ctx context.Context, id string) func() {
	e.awaitReconciled(ctx, id)
	return e.locks.lock(id)
}

// TryLockVM takes a VM's operation lock only if no operation holds it, for
// host-wide sweeps (gc) that must never act on a VM something is changing.
func (e *Engine) TryLockVM(id string) (unlock func(), ok bool) {
	return e.locks.tryLock(id)
}
