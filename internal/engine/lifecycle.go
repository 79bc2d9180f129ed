package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/store"
)

// commitState is the only place that assigns a VM's State. It stores the
// row with the new state and last error.
func (e *Engine) commitState(ctx context.Context, vm *model.VMRecord, state model.VMState, lastErr string) error {
	vm.Runtime.State = state
	vm.Runtime.LastError = lastErr
	// A state change must be recorded even when the request was cancelled.
	ctx = context.WithoutCancel(ctx)
	if err := hit(ctx, fpCommitBefore); err != nil {
		return err
	}
	if err := e.store.UpdateVM(ctx, vm); err != nil {
		return fmt.Errorf("recording state %s of vm %q: %w", state, vm.Name, err)
	}
	e.emit(EventUpdated, *vm)
	return hit(ctx, fpCommitAfter)
}

// GetVM loads a VM by name, after startup reconcile has processed it.
func (e *Engine) GetVM(ctx context.Context, name string) (model.VMRecord, error) {
	vm, err := e.store.GetVM(ctx, name)
	if err != nil {
		return vm, err
	}
	if g, ok := e.gates[vm.ID]; ok {
		select {
		case <-g:
		default:
			// Reconcile has not processed it yet: wait, then read what it decided.
			e.awaitReconciled(ctx, vm.ID)
			if vm, err = e.store.GetVMByID(ctx, vm.ID); err != nil {
				return vm, err
			}
		}
	}
	return vm, nil
}

// locked runs fn with name's VM loaded fresh under its lock.
func (e *Engine) locked(ctx context.Context, name string, fn func(vm *model.VMRecord) error) (model.VMRecord, error) {
	vm, err := e.GetVM(ctx, name)
	if err != nil {
		return vm, err
	}
	unlock := e.lockVM(ctx, vm.ID)
	defer unlock()
	if vm, err = e.store.GetVMByID(ctx, vm.ID); err != nil {
		return vm, err
	}
	return vm, fn(&vm)
}

// StartVM starts a VM (a no-op when it is alive already).
func (e *Engine) StartVM(ctx context.Context, name string) (model.VMRecord, error) {
	return e.locked(ctx, name, func(vm *model.VMRecord) error { return e.startLocked(ctx, vm) })
}

func (e *Engine) startLocked(ctx context.Context, vm *model.VMRecord) error {
	began := time.Now()
	if vm.Runtime.State == model.StateSuspended {
		return e.resumeLocked(ctx, vm)
	}
	if alive, _ := e.vmAlive(ctx, *vm); alive {
		return nil
	}
	if vm.Runtime.State == model.StateDeleting {
		return errdefs.Conflict("vm %q is being deleted", vm.Name)
	}
	// Recorded running but dead (guest powered off, VMM crashed), or a
	// failed start's leftovers: tear down first.
	if h, ok := e.handles.get(vm.ID); ok || vm.Runtime.State == model.StateRunning {
		if !ok {
			h, _ = e.rediscoverHandles(*vm)
		}
		r := &run{vm: vm, h: h, force: true}
		if err := e.teardown(ctx, r); err != nil {
			return fmt.Errorf("cleaning up dead vm %q before start: %w", vm.Name, err)
		}
	}
	im, err := e.store.GetImage(ctx, vm.Image)
	if err != nil {
		if vm.Image == "" {
			return errdefs.Conflict("vm %q has no image: import one (banger image import) or build one (banger image build), then recreate the vm", vm.Name)
		}
		return errdefs.NotFound("image %q of vm %q: %w", vm.Image, vm.Name, err)
	}
	if vm.Runtime.VMM == "" {
		name, accel, warning, err := e.ChooseVMM("")
		if err != nil {
			return errdefs.Conflict("starting vm %q: %w", vm.Name, err)
		}
		if warning != "" {
			e.log.Warn(warning, "vm", vm.Name)
		}
		vm.Runtime.VMM, vm.Runtime.Accel = name, accel
	}
	drv, err := e.driverFor(vm.Runtime.VMM)
	if err != nil {
		return err
	}
	if b := inspectImage(im); (vm.Runtime.VMM == "qemu" && !b.QEMU) || (vm.Runtime.VMM == "firecracker" && !b.Firecracker) {
		err := errdefs.Conflict("image %q cannot be booted by %s: %s", im.Name, vm.Runtime.VMM, strings.Join(b.Reasons, "; "))
		e.commitState(ctx, vm, model.StateError, err.Error())
		return err
	}
	if err := e.commitState(ctx, vm, model.StateStarting, ""); err != nil {
		return err
	}
	if err := writeRecordFile(*vm); err != nil {
		e.commitState(ctx, vm, model.StateError, err.Error())
		return fmt.Errorf("starting vm %q: %w", vm.Name, err)
	}
	r := &run{vm: vm, im: im, drv: drv, force: true}
	in, snap, err := e.cloneIncoming(*vm)
	if err != nil {
		e.commitState(ctx, vm, model.StateError, err.Error())
		return err
	}
	r.incoming, r.clone = in, snap
	err = e.forward(ctx, r)
	if err == nil && r.clone != nil {
		// Restored from a snapshot: its own identity before anyone sees it.
		began := time.Now()
		err = e.identifyClone(ctx, r)
		if err == nil && e.deps.Network != nil && r.h.TapDevice != "" {
			err = e.deps.Network.SetTapUp(ctx, r.h.TapDevice, true)
		}
		r.took = append(r.took, stepTime{"identify", time.Since(began)})
		if err != nil {
			err = errors.Join(fmt.Errorf("giving the clone its identity: %w", err), e.teardown(ctx, r))
			// Its disks are the snapshot's copies with the guest's state in
			// flight: redo them at the next start.
			os.Remove(rootDiskPath(*vm))
			os.Remove(vm.Runtime.WorkDiskPath)
		}
	}
	if err != nil {
		err = fmt.Errorf("starting vm %q: %w", vm.Name, err)
		e.commitState(ctx, vm, model.StateError, err.Error())
		e.log.Error("vm start failed", "vm", vm.Name, "err", err)
		return err
	}
	if err := e.commitState(ctx, vm, model.StateRunning, ""); err != nil {
		return err
	}
	if r.clone != nil {
		// The source's sessions go on only in the source (its guest must be
		// running to end them).
		if err := e.forkSessions(ctx, *vm, r.clone); err != nil {
			err = fmt.Errorf("starting vm %q: %w", vm.Name, errors.Join(err, e.teardown(ctx, r)))
			os.Remove(rootDiskPath(*vm))
			os.Remove(vm.Runtime.WorkDiskPath)
			e.commitState(ctx, vm, model.StateError, err.Error())
			return err
		}
	}
	e.lives.touch(vm.ID, e.deps.Now())
	e.emitEvent(Event{Kind: EventStarted, VM: *vm, Cause: causeOf(ctx), Took: time.Since(began)})
	e.log.Info("vm started", "vm", vm.Name, "vmm", vm.Runtime.VMM, "pid", r.h.PID, "tap", r.h.TapDevice,
		"confined", r.confinement != nil || r.jailer != nil, "took", time.Since(began).Round(100*time.Microsecond), "steps", r.stepTimes())
	return nil
}

// StopVM stops a VM; stopping a stopped VM succeeds. Without force the
// guest is asked to shut down within timeout; a VMM still there then is
// killed and the timeout is reported as an error.
func (e *Engine) StopVM(ctx context.Context, name string, force bool, timeout time.Duration) (model.VMRecord, error) {
	return e.locked(ctx, name, func(vm *model.VMRecord) error { return e.stopLocked(ctx, vm, force, timeout) })
}

// RestartVM stops and starts a VM under one lock.
func (e *Engine) RestartVM(ctx context.Context, name string, force bool, timeout time.Duration) (model.VMRecord, error) {
	ctx = withCause(ctx, "restart")
	return e.locked(ctx, name, func(vm *model.VMRecord) error {
		if err := e.stopLocked(ctx, vm, force, timeout); err != nil {
			return err
		}
		return e.startLocked(ctx, vm)
	})
}

func (e *Engine) stopLocked(ctx context.Context, vm *model.VMRecord, force bool, timeout time.Duration) error {
	began := time.Now()
	h, cached := e.handles.get(vm.ID)
	if !cached {
		h, _ = e.rediscoverHandles(*vm)
	}
	if h.IsZero() && !vm.Runtime.State.Transitional() && vm.Runtime.State != model.StateRunning && vm.Runtime.State != model.StateSuspended {
		return nil
	}
	// Stopping a suspended VM discards its saved state.
	defer os.RemoveAll(suspendDir(*vm))
	// A full state disk must not keep a VM running that was asked to stop:
	// the VMM is stopped anyway, and the state settles on a retry or at
	// the next daemon start (reconcile finds the VMM gone).
	noSpace := false
	if err := e.commitState(ctx, vm, model.StateStopping, ""); err != nil {
		if !errors.Is(err, errdefs.ErrNoSpace) {
			return err
		}
		noSpace = true
		e.log.Error("state disk full: stopping the vm without recording it first", "vm", vm.Name, "err", err)
	}
	e.guests.drop(vm.ID)
	r := &run{vm: vm, h: h, force: force, timeout: timeout}
	if err := e.teardown(ctx, r); err != nil {
		err = fmt.Errorf("stopping vm %q: %w", vm.Name, err)
		e.commitState(ctx, vm, model.StateError, err.Error())
		return err
	}
	e.emitEvent(Event{Kind: EventStopped, VM: *vm, Cause: causeOf(ctx), Took: time.Since(began)})
	e.log.Info("vm stopped", "vm", vm.Name, "killed", r.killed)
	last := ""
	if r.killed {
		last = errStopTimedOut(*vm, timeout).Error()
	}
	if err := e.commitState(ctx, vm, model.StateStopped, last); err != nil {
		if errors.Is(err, errdefs.ErrNoSpace) || noSpace {
			return errdefs.New(errdefs.ErrNoSpace, "vm %q is stopped, but its state could not be recorded: the state disk is full (free space; the next stop or daemon start records it): %w", vm.Name, err)
		}
		return err
	}
	if r.killed {
		return errStopTimedOut(*vm, timeout)
	}
	return nil
}

// DeleteVM stops a VM if needed (killing it at once with force) and removes
// everything it owns. A VM left half-deleted is finished by a retry.
func (e *Engine) DeleteVM(ctx context.Context, name string, force bool) error {
	_, err := e.locked(ctx, name, func(vm *model.VMRecord) error { return e.deleteLocked(ctx, vm, force) })
	return err
}

func (e *Engine) deleteLocked(ctx context.Context, vm *model.VMRecord, force bool) error {
	began := time.Now()
	cur, err := e.store.GetVMByID(ctx, vm.ID)
	if errors.Is(err, store.ErrNotFound) {
		return nil // already deleted: delete is idempotent
	} else if err != nil {
		return err
	}
	*vm = cur
	if vm.Runtime.State != model.StateDeleting {
		if err := e.stopLocked(ctx, vm, force, 10*time.Second); err != nil && vm.Runtime.State != model.StateStopped {
			return fmt.Errorf("deleting vm %q: %w", vm.Name, err)
		}
		if err := e.commitState(ctx, vm, model.StateDeleting, ""); err != nil {
			return err
		}
	} else {
		// Finishing an interrupted delete: make sure nothing runs.
		h, _ := e.rediscoverHandles(*vm)
		if err := e.teardown(ctx, &run{vm: vm, h: h, force: true}); err != nil {
			return fmt.Errorf("deleting vm %q: %w", vm.Name, err)
		}
	}
	if err := hit(ctx, fpDeleteFilesBefore); err != nil {
		return err
	}
	if err := e.removeVMFiles(*vm); err != nil {
		err = fmt.Errorf("deleting vm %q: removing files: %w", vm.Name, err)
		e.commitState(ctx, vm, model.StateDeleting, err.Error())
		return err
	}
	if err := hit(ctx, fpDeleteFilesAfter); err != nil {
		return err
	}
	e.handles.delete(vm.ID)
	e.agents.Delete(vm.ID)
	if err := hit(ctx, fpDeleteRowBefore); err != nil {
		return err
	}
	if err := e.store.DeleteVM(context.WithoutCancel(ctx), vm.ID); err != nil {
		return err
	}
	if err := hit(ctx, fpDeleteRowAfter); err != nil {
		return err
	}
	e.emitEvent(Event{Kind: EventDeleted, VM: *vm, Cause: causeOf(ctx), Took: time.Since(began)})
	e.createMu.Lock()
	e.addrs.releaseLocked(*vm)
	e.createMu.Unlock()
	e.log.Info("vm deleted", "vm", vm.Name)
	return nil
}
