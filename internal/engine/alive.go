package daemon

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
)

// vmAlive is the single source of truth for "is this VM alive": recorded
// running, handles with a process, the process still the same one (PID plus
// start time: PIDs are reused), and the VMM driver confirming it serves this
// VM (argv holds this VM's API socket, the API answers with its id). Nothing
// else checks PIDs.
func (d *Daemon) vmAlive(ctx context.Context, vm model.VMRecord) (bool, string) {
	d.awaitReconciled(ctx, vm.ID)
	if vm.Runtime.State != model.StateRunning {
		return false, "state is " + string(vm.Runtime.State)
	}
	h, ok := d.handles.get(vm.ID)
	if !ok || h.PID == 0 {
		return false, "no VMM process recorded"
	}
	return d.processIsVMM(ctx, vm, h)
}

// processIsVMM checks the identity of the process in h against vm.
func (d *Daemon) processIsVMM(ctx context.Context, vm model.VMRecord, h model.VMHandles) (bool, string) {
	p := system.Process{PID: h.PID, Start: h.PIDStart}
	if !p.Alive() {
		return false, fmt.Sprintf("process %d is gone", h.PID)
	}
	drv, err := d.driverFor(vm.Runtime.VMM)
	if err != nil {
		return false, err.Error()
	}
	// One identification at a time per VM: QEMU's QMP socket serves one
	// client with a listen backlog of one, so concurrent dials (parallel
	// execs on one VM) failed with EAGAIN and a live VM read as not running.
	unlock := d.identifying.lock(vm.ID)
	defer unlock()
	ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := drv.Identify(ictx, d.machine(vm, model.Image{}, "", h), p); err != nil {
		return false, fmt.Sprintf("process %d is not this VM's VMM: %v", h.PID, err)
	}
	return true, ""
}

// FindProcessFor implements processFinder with the VM's driver.
func (d *Daemon) FindProcessFor(vm model.VMRecord) (system.Process, bool) {
	drv, err := d.driverFor(vm.Runtime.VMM)
	if err != nil {
		return system.Process{}, false
	}
	return drv.FindProcess(d.machine(vm, model.Image{}, "", model.VMHandles{}))
}

// vmLocks serialises operations on one VM; different VMs proceed in parallel.
type vmLocks struct {
	mu sync.Mutex
	m  map[string]*sync.Mutex
}

func (l *vmLocks) lock(id string) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[string]*sync.Mutex)
	}
	m, ok := l.m[id]
	if !ok {
		m = &sync.Mutex{}
		l.m[id] = m
	}
	l.mu.Unlock()
	m.Lock()
	return m.Unlock
}

// lockVM takes vm's operation lock for a request, after startup reconcile
// has processed it (reconcile itself holds the lock while it does).
func (d *Daemon) lockVM(ctx context.Context, id string) func() {
	d.awaitReconciled(ctx, id)
	return d.locks.lock(id)
}
