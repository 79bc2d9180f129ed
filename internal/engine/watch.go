package daemon

import (
	"context"
	"time"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
)

// watchVMs notices VMs whose VMM exited on its own (the guest powered off,
// the VMM crashed) while the daemon runs, and stops them for real: their
// tap, loops and sockets are released at once instead of when someone next
// touches the VM.
func (d *Daemon) watchVMs(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.shutdownCh:
			return
		case <-t.C:
		}
		d.handles.mu.RLock()
		var gone []string
		for id, h := range d.handles.m {
			if h.PID != 0 && !(system.Process{PID: h.PID, Start: h.PIDStart}).Alive() {
				gone = append(gone, id)
			}
		}
		d.handles.mu.RUnlock()
		for _, id := range gone {
			d.demoteExited(ctx, id)
		}
	}
}

// demoteExited stops a running VM whose VMM process is gone.
func (d *Daemon) demoteExited(ctx context.Context, id string) {
	unlock := d.lockVM(ctx, id)
	defer unlock()
	vm, err := d.store.GetVMByID(ctx, id)
	if err != nil || vm.Runtime.State != model.StateRunning {
		return // deleted, or an operation on it is under way or done
	}
	h, ok := d.handles.get(id)
	if !ok || h.PID == 0 || (system.Process{PID: h.PID, Start: h.PIDStart}).Alive() {
		return
	}
	d.log.Info("vm process exited on its own; stopping the vm", "vm", vm.Name, "pid", h.PID)
	if err := d.stopLocked(ctx, &vm, true, 0); err != nil {
		d.log.Error("cleaning up a vm whose process exited", "vm", vm.Name, "err", err)
		return
	}
	d.commitState(ctx, &vm, model.StateStopped, "vm process exited (guest powered off or the vmm died)")
}
