package engine

import (
	"context"
	"fmt"

	"sync"
	"time"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
)

// awaitReconciled blocks until startup reconcile has processed vm (VMs
// created after startup have no gate).
func (e *Engine) awaitReconciled(ctx context.Context, id string) {
	if g, ok := e.gates[id]; ok {
		select {
		case <-g:
		case <-ctx.Done():
		}
	}
}

// reconcile rebuilds the handles cache at startup. For each VM it gathers
// the facts (scratch file as a hint, the kernel as proof), asks nextState,
// and keeps a live VM (cache seeded) or tears down what a dead or
// half-operated one holds. The API answers meanwhile; each VM is locked
// while it is reconciled.
func (e *Engine) reconcile(ctx context.Context, vms []model.VMRecord) {
	start := time.Now()
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[Action]int{}
	for _, vm := range vms {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			act := e.reconcileVM(ctx, vm)
			close(e.gates[vm.ID])
			mu.Lock()
			counts[act]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	e.reconcileTook.Store(int64(time.Since(start)))
	e.log.Info("reconcile done", "vms", len(vms), "kept", counts[ActKeep], "torn_down", counts[ActTeardown],
		"deleted", counts[ActFinishDelete], "took", time.Since(start))
}

func (e *Engine) reconcileVM(ctx context.Context, vm model.VMRecord) Action {
	if vm.Runtime.State == model.StateCreated || vm.Runtime.State == model.StateStopped || vm.Runtime.State == model.StateError {
		// Fast path for the common case: nothing recorded on the host.
		if h, err := readHandlesFile(handlesPath(vm)); err == nil && h.IsZero() {
			return ActNothing
		}
	}
	unlock := e.locks.lock(vm.ID)
	defer unlock()
	vm, err := e.store.GetVMByID(ctx, vm.ID)
	if err != nil {
		return ActNothing
	}
	// The scratch PID first (cheap: one process to prove); scan /proc for
	// the VM's exact argv only when that fails.
	h, herr := readHandlesFile(handlesPath(vm))
	if h.PID == 0 || e.proveVMM(vm, h) != nil {
		h.PID, h.PIDStart = 0, 0
		if p, ok := e.findVMM(vm); ok {
			h.PID, h.PIDStart = p.PID, p.Start
		}
	}
	if herr != nil {
		e.log.Warn("reconcile: scratch file unreadable; using the kernel and derived names", "vm", vm.Name, "err", herr)
	}
	alive := false
	if h.PID != 0 {
		alive, _ = e.processIsVMM(ctx, vm, h)
	}
	present := h.PID != 0 && e.proveVMM(vm, h) == nil
	_, savedErr := readIncoming(vm)
	dec := nextState(vm.Runtime.State, Facts{Alive: alive, HostObjects: !h.IsZero() || herr != nil, Startup: true,
		Present: present, Saved: savedErr == nil})
	switch dec.Action {
	case ActKeep:
		e.handles.set(vm.ID, h)
		writeHandlesFile(handlesPath(vm), h)
		if vm.Runtime.State != dec.State {
			// A resume interrupted once its VMM was restored: the VM runs,
			// its saved state is spent, its clock is set as a resume would.
			if vm.Runtime.State == model.StateResuming {
				emptyDir(suspendDir(vm))
				if drv, err := e.driverFor(vm.Runtime.VMM); err == nil {
					if err := correctClock(ctx, drv, e.machine(vm, model.Image{}, "", h)); err != nil {
						e.log.Warn("reconcile: correcting a resumed guest's clock", "vm", vm.Name, "err", err)
					}
				}
			}
			e.commitState(ctx, &vm, dec.State, dec.Reason)
		}
		// The rules may have gone with a host reboot or a flushed ruleset:
		// put the live VM's policy back (idempotent).
		if err := e.applyNetPolicy(ctx, &run{vm: &vm, h: h}); err != nil {
			e.log.Error("reconcile: re-applying the network policy", "vm", vm.Name, "err", err)
		}
		e.emitEvent(Event{Kind: EventStarted, VM: vm, Replay: true})
		e.emitEvent(Event{Kind: EventReconciled, VM: vm, Cause: fmt.Sprintf("kept: vmm pid %d alive", h.PID)})
	case ActTeardown:
		if err := e.teardown(ctx, &run{vm: &vm, h: h, force: true}); err != nil {
			e.commitState(ctx, &vm, model.StateError, "reconcile: "+err.Error())
			e.emitEvent(Event{Kind: EventReconciled, VM: vm, Cause: "demoted to error: " + err.Error()})
			break
		}
		e.commitState(ctx, &vm, dec.State, dec.Reason)
		e.emitEvent(Event{Kind: EventReconciled, VM: vm, Cause: "demoted: " + dec.Reason})
	case ActKeepSuspended:
		r := &run{vm: &vm, h: h, force: true}
		var steps []step
		for _, s := range e.plan() {
			if s.key == "vmm" || s.key == "confine" {
				steps = append(steps, s)
			}
		}
		e.undoSome(ctx, r, steps)
		e.handles.set(vm.ID, r.h)
		if err := e.applyNetPolicy(ctx, r); err != nil {
			e.log.Error("reconcile: re-applying the network policy", "vm", vm.Name, "err", err)
		}
		if vm.Runtime.State != model.StateSuspended {
			e.commitState(ctx, &vm, model.StateSuspended, dec.Reason)
		}
		e.emit(EventStarted, vm) // its DNS name stays published
	case ActContinue:
		if drv, err := e.driverFor(vm.Runtime.VMM); err == nil {
			if sus, ok := drv.(Suspender); ok {
				if err := sus.Resume(ctx, e.machine(vm, model.Image{}, "", h), system.Process{PID: h.PID, Start: h.PIDStart}); err != nil {
					e.log.Error("reconcile: resuming a vm a suspend left paused", "vm", vm.Name, "err", err)
				}
			}
		}
		emptyDir(suspendDir(vm)) // the running VMM's jail binds it
		e.handles.set(vm.ID, h)
		writeHandlesFile(handlesPath(vm), h)
		e.commitState(ctx, &vm, model.StateRunning, dec.Reason)
		e.emit(EventStarted, vm)
	case ActFinishDelete:
		if err := e.deleteLocked(withCause(ctx, "reconcile finished an interrupted delete"), &vm, true); err != nil {
			e.log.Error("reconcile: finishing delete", "vm", vm.Name, "err", err)
		}
	}
	if dec.Action != ActNothing {
		e.log.Info("reconciled vm", "vm", vm.Name, "action", dec.Action)
	}
	return dec.Action
}
