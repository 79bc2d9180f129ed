package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
)

// watchVMs notices VMs whose VMM exited on its own (the guest powered off,
// the VMM crashed) while the daemon runs, and stops them for real: their
// tap, loops and sockets are released at once instead of when someone next
// touches the VM.
func (e *Engine) watchVMs(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.stopCh:
			return
		case <-t.C:
		}
		e.handles.mu.RLock()
		var gone []string
		for id, h := range e.handles.m {
			if h.PID != 0 && !(system.Process{PID: h.PID, Start: h.PIDStart}).Alive() {
				gone = append(gone, id)
			}
		}
		e.handles.mu.RUnlock()
		for _, id := range gone {
			e.demoteExited(ctx, id)
		}
	}
}

// demoteExited stops a running VM whose VMM process is gone: nextState
// with the facts of a dead VMM says tear down and record stopped.
func (e *Engine) demoteExited(ctx context.Context, id string) {
	unlock := e.lockVM(ctx, id)
	defer unlock()
	vm, err := e.store.GetVMByID(ctx, id)
	if err != nil || vm.Runtime.State != model.StateRunning {
		return // deleted, or an operation on it is under way or done
	}
	h, ok := e.handles.get(id)
	if !ok || h.PID == 0 || (system.Process{PID: h.PID, Start: h.PIDStart}).Alive() {
		return
	}
	dec := nextState(vm.Runtime.State, Facts{Alive: false, HostObjects: true})
	e.log.Info("vm process exited on its own; stopping the vm", "vm", vm.Name, "pid", h.PID)
	e.emitEvent(Event{Kind: EventVMMExited, VM: vm, Cause: fmt.Sprintf("pid %d exited on its own", h.PID)})
	e.guests.drop(vm.ID)
	if err := e.teardown(ctx, &run{vm: &vm, h: h, force: true}); err != nil {
		e.log.Error("cleaning up a vm whose process exited", "vm", vm.Name, "err", err)
		e.commitState(ctx, &vm, model.StateError, "cleaning up after the vmm exited: "+err.Error())
		return
	}
	e.emitEvent(Event{Kind: EventStopped, VM: vm, Cause: "vmm exited"})
	e.commitState(ctx, &vm, dec.State, dec.Reason)
}
