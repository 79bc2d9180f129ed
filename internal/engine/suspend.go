package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// Suspend and resume: the VMM saves the guest's memory and device state
// into the VM's directory and exits (its RAM freed); the VM keeps its tap,
// network policy, root disk activation, IP, DNS name and forwards. Resume
// runs the plan forward again with the saved state as the VMM's incoming
// state (nothing is written into the guest's disks), then corrects the
// guest clock. docs/snapshots.md has the VMM side.

// Suspender is what the engine needs of a VMM to suspend and resume.
type Suspender interface {
	Suspend(ctx context.Context, m vmm.Machine, p system.Process, dir string) (vmm.Incoming, error)
	SetGuestTime(ctx context.Context, m vmm.Machine, t time.Time) error
	// Resume continues a paused guest (one a suspend left behind).
	Resume(ctx context.Context, m vmm.Machine, p system.Process) error
}

func suspendDir(vm model.VMRecord) string { return filepath.Join(vm.Runtime.VMDir, "suspend") }

func incomingPath(vm model.VMRecord) string { return filepath.Join(suspendDir(vm), "incoming.json") }

// readIncoming loads a suspended VM's saved state, checking its files.
func readIncoming(vm model.VMRecord) (vmm.Incoming, error) {
	var in vmm.Incoming
	b, err := os.ReadFile(incomingPath(vm))
	if err != nil {
		return in, err
	}
	if err := json.Unmarshal(b, &in); err != nil {
		return in, fmt.Errorf("%s: %w", incomingPath(vm), err)
	}
	for _, f := range []string{in.File, in.MemFile} {
		if f == "" {
			continue
		}
		if filepath.Dir(f) != suspendDir(vm) {
			return in, fmt.Errorf("saved state %s is not in the vm's directory", f)
		}
		if st, err := os.Stat(f); err != nil || st.Size() == 0 {
			return in, fmt.Errorf("saved state %s is missing or empty", f)
		}
	}
	return in, nil
}

// SuspendVM saves a running VM's state and ends its VMM.
func (e *Engine) SuspendVM(ctx context.Context, name string) (model.VMRecord, error) {
	return e.locked(ctx, name, func(vm *model.VMRecord) error { return e.suspendLocked(ctx, vm) })
}

func (e *Engine) suspendLocked(ctx context.Context, vm *model.VMRecord) error {
	if vm.Runtime.State == model.StateSuspended {
		return nil
	}
	if vm.Spec.Options.Pool != "" {
		return errPoolMember(*vm)
	}
	if alive, reason := e.vmAlive(ctx, *vm); !alive {
		return errdefs.Conflict("vm %q is not running (%s): only a running vm can be suspended", vm.Name, reason)
	}
	drv, err := e.driverFor(vm.Runtime.VMM)
	if err != nil {
		return err
	}
	sus, ok := drv.(Suspender)
	if !ok {
		return errdefs.Conflict("vm %q: %s cannot suspend", vm.Name, vm.Runtime.VMM)
	}
	h, _ := e.handles.get(vm.ID)
	if err := e.commitState(ctx, vm, model.StateSuspending, ""); err != nil {
		return err
	}
	dir := suspendDir(*vm)
	// Emptied, never replaced: a jailed VMM sees this directory through a
	// bind mount made when it started, which a new directory would miss.
	emptyDir(dir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if e.confined(*vm) {
		os.Chown(dir, vm.Runtime.UID, vm.Runtime.UID)
	}
	// The daemon's SSH connection is kept: the guest's side of it is in
	// the saved state, so it answers again after the resume and the first
	// exec needs no new handshake (a dead or stuck one is replaced then).
	start := time.Now()
	in, err := sus.Suspend(ctx, e.machine(*vm, model.Image{}, "", h), system.Process{PID: h.PID, Start: h.PIDStart}, dir)
	if err != nil {
		emptyDir(dir)
		// The VMM resumes its guest when a save fails: still running.
		if alive, _ := e.processIsVMM(ctx, *vm, h); alive {
			e.commitState(ctx, vm, model.StateRunning, "suspend failed: "+err.Error())
		} else {
			e.teardown(ctx, &run{vm: vm, h: h, force: true})
			e.commitState(ctx, vm, model.StateError, "suspend failed: "+err.Error())
		}
		return fmt.Errorf("suspending vm %q: %w", vm.Name, err)
	}
	saved := time.Since(start)
	b, _ := json.Marshal(in)
	if err := writeFileAtomic(incomingPath(*vm), b, 0o600); err != nil {
		return err
	}
	if err := hit(ctx, fpSuspendSaved); err != nil {
		return err
	}
	// The VMM is gone: release what only a running VMM needs (its jail and
	// cgroup, its sockets); keep the tap, policy and root disk.
	r := &run{vm: vm, h: h, force: true}
	steps := []step{}
	for _, s := range e.plan() {
		if s.key == "vmm" || s.key == "confine" {
			steps = append(steps, s)
		}
	}
	if err := e.undoSome(ctx, r, steps); err != nil {
		e.log.Warn("releasing a suspended vm's vmm resources", "vm", vm.Name, "err", err)
	}
	e.removeSockets(ctx, r)
	if err := e.commitState(ctx, vm, model.StateSuspended, ""); err != nil {
		return err
	}
	e.emit(EventSuspended, *vm)
	e.log.Info("vm suspended", "vm", vm.Name, "took", time.Since(start), "saved", saved)
	return nil
}

// ResumeVM restores a suspended VM.
func (e *Engine) ResumeVM(ctx context.Context, name string) (model.VMRecord, error) {
	return e.locked(ctx, name, func(vm *model.VMRecord) error { return e.resumeLocked(ctx, vm) })
}

func (e *Engine) resumeLocked(ctx context.Context, vm *model.VMRecord) error {
	if vm.Runtime.State != model.StateSuspended {
		return errdefs.Conflict("vm %q is %s, not suspended", vm.Name, vm.Runtime.State)
	}
	in, err := readIncoming(*vm)
	if err != nil {
		return errdefs.Conflict("vm %q cannot be resumed: %w (banger vm stop discards the saved state)", vm.Name, err)
	}
	im, err := e.store.GetImage(ctx, vm.Image)
	if err != nil {
		return errdefs.NotFound("image %q of vm %q: %w", vm.Image, vm.Name, err)
	}
	drv, err := e.driverFor(vm.Runtime.VMM)
	if err != nil {
		return err
	}
	h, _ := e.handles.get(vm.ID)
	if err := e.commitState(ctx, vm, model.StateResuming, ""); err != nil {
		return err
	}
	start := time.Now()
	r := &run{vm: vm, im: im, drv: drv, h: h, force: true, incoming: &in}
	if err := e.forward(ctx, r); err != nil {
		err = fmt.Errorf("resuming vm %q: %w", vm.Name, err)
		// The saved state is kept: the VM stays suspended and can be
		// resumed again or stopped (which discards it).
		e.commitState(ctx, vm, model.StateSuspended, err.Error())
		return err
	}
	if err := hit(ctx, fpResumeRestored); err != nil {
		return err
	}
	if err := correctClock(ctx, drv, e.machine(*vm, im, r.rootDev, r.h)); err != nil {
		e.log.Warn("correcting the resumed guest's clock", "vm", vm.Name, "err", err)
	}
	emptyDir(suspendDir(*vm)) // the new VMM's jail binds it: keep the directory
	if err := e.commitState(ctx, vm, model.StateRunning, ""); err != nil {
		return err
	}
	e.emit(EventResumed, *vm)
	e.emit(EventStarted, *vm)
	e.log.Info("vm resumed", "vm", vm.Name, "took", time.Since(start), "steps", r.stepTimes())
	return nil
}

// undoSome runs the undos of the given steps in reverse, like undo, but
// keeps the handles of the steps not undone.
func (e *Engine) undoSome(ctx context.Context, r *run, steps []step) error {
	ctx = context.WithoutCancel(ctx)
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if steps[i].undo == nil {
			continue
		}
		if err := steps[i].undo(ctx, r); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", steps[i].name, err))
		}
	}
	e.noteHandles(r)
	return errors.Join(errs...)
}

// emptyDir removes what dir holds, keeping dir itself.
func emptyDir(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, ent := range ents {
		os.RemoveAll(filepath.Join(dir, ent.Name()))
	}
}

// correctClock steps a restored guest's clock to the host's, when its VMM
// can (drv is a Suspender).
func correctClock(ctx context.Context, drv any, m vmm.Machine) error {
	sus, ok := drv.(Suspender)
	if !ok {
		return nil
	}
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return sus.SetGuestTime(tctx, m, time.Now())
}
