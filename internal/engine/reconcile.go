package daemon

import (
	"context"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
)

// awaitReconciled blocks until startup reconcile has processed vm (VMs
// created after startup have no gate).
func (d *Daemon) awaitReconciled(ctx context.Context, id string) {
	if g, ok := d.gates[id]; ok {
		select {
		case <-g:
		case <-ctx.Done():
		}
	}
}

// reconcileAction is what startup reconcile does with one VM.
type reconcileAction string

const (
	actNothing       reconcileAction = "nothing"       // not recorded as having a runtime
	actKeep          reconcileAction = "keep"          // alive: seed the cache from the scratch file
	actDemote        reconcileAction = "demote"        // dead: tear down with the scratch handles, record stopped
	actKillAndDemote reconcileAction = "kill-demote"   // half-started or half-stopped but alive: stop it for real
	actFinishDelete  reconcileAction = "finish-delete" // interrupted delete: finish it
)

// decideReconcile is the pure part of reconcile: the next action from the
// recorded state and the facts found on the host.
func decideReconcile(state model.VMState, alive bool, hasHandles bool) reconcileAction {
	switch state {
	case model.StateDeleting:
		return actFinishDelete
	case model.StateRunning:
		if alive {
			return actKeep
		}
		return actDemote
	case model.StateStarting, model.StateStopping:
		// Finish or roll back: a half-started VM is not trusted to be complete.
		if alive {
			return actKillAndDemote
		}
		return actDemote
	default:
		if hasHandles || alive {
			return actKillAndDemote
		}
		return actNothing
	}
}

// reconcile rebuilds the handles cache at startup. For each VM recorded with
// a runtime, it reads the scratch file and looks for the process; it keeps a
// live VM (cache seeded) or demotes a dead one to stopped after tearing down
// its dm, loops and tap with the scratch handles. The API answers meanwhile;
// each VM is locked while it is reconciled.
func (d *Daemon) reconcile(ctx context.Context, vms []model.VMRecord) {
	start := time.Now()
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[reconcileAction]int{}
	for _, vm := range vms {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			act := d.reconcileVM(ctx, vm)
			close(d.gates[vm.ID])
			mu.Lock()
			counts[act]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	d.log.Info("reconcile done", "vms", len(vms), "kept", counts[actKeep], "demoted", counts[actDemote]+counts[actKillAndDemote],
		"deleted", counts[actFinishDelete], "took", time.Since(start))
}

func (d *Daemon) reconcileVM(ctx context.Context, vm model.VMRecord) reconcileAction {
	if vm.Runtime.State == model.StateCreated || vm.Runtime.State == model.StateStopped || vm.Runtime.State == model.StateError {
		// Fast path for the common case: nothing recorded on the host.
		if h, err := readHandlesFile(handlesPath(vm)); err == nil && h.IsZero() {
			return actNothing
		}
	}
	unlock := d.locks.lock(vm.ID)
	defer unlock()
	vm, err := d.store.GetVMByID(ctx, vm.ID)
	if err != nil {
		return actNothing
	}
	// Cheap check first: the scratch PID with its start time; scan /proc only
	// when that process is gone.
	h, herr := readHandlesFile(handlesPath(vm))
	if herr != nil {
		d.log.Warn("reconcile: scratch file unreadable, asking the OS", "vm", vm.Name, "err", herr)
	}
	alive := false
	if h.PID != 0 {
		alive, _ = d.processIsVMM(ctx, vm, h)
	}
	if !alive && vm.Runtime.VMM != "" {
		if p, ok := d.FindProcessFor(vm); ok {
			h.PID, h.PIDStart = p.PID, p.Start
			alive, _ = d.processIsVMM(ctx, vm, h)
		}
	}
	if !alive {
		h.PID, h.PIDStart = 0, 0
	}
	act := decideReconcile(vm.Runtime.State, alive, !h.IsZero())
	switch act {
	case actKeep:
		d.handles.set(vm.ID, h)
		writeHandlesFile(handlesPath(vm), h)
		d.extras.vmStarted(vm)
	case actDemote:
		if err := d.cleanupRuntime(ctx, vm, h); err != nil {
			d.commitState(ctx, &vm, model.StateError, "reconcile: "+err.Error())
			break
		}
		last := ""
		if vm.Runtime.State == model.StateRunning {
			last = "vm process was gone at daemon startup"
		} else if vm.Runtime.State == model.StateStarting {
			last = "start was interrupted by a daemon restart"
		}
		d.commitState(ctx, &vm, model.StateStopped, last)
	case actKillAndDemote:
		if h.PID != 0 {
			drv, _ := d.driverFor(vm.Runtime.VMM)
			drv.Shutdown(ctx, d.machine(vm, model.Image{}, "", h), system.Process{PID: h.PID, Start: h.PIDStart}, 0, true)
			h.PID, h.PIDStart = 0, 0
		}
		if err := d.cleanupRuntime(ctx, vm, h); err != nil {
			d.commitState(ctx, &vm, model.StateError, "reconcile: "+err.Error())
			break
		}
		d.commitState(ctx, &vm, model.StateStopped, "operation was interrupted by a daemon restart")
	case actFinishDelete:
		if err := d.deleteLocked(ctx, &vm, true); err != nil {
			d.log.Error("reconcile: finishing delete", "vm", vm.Name, "err", err)
		}
	}
	if act != actNothing {
		d.log.Info("reconciled vm", "vm", vm.Name, "action", act)
	}
	return act
}
