package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/network"
	"github.com/banger-dev/banger/internal/storage"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
)

// commitState is the only place that assigns a VM's State. It stores the
// row with the new state and last error.
func (d *Daemon) commitState(ctx context.Context, vm *model.VMRecord, state model.VMState, lastErr string) error {
	vm.Runtime.State = state
	vm.Runtime.LastError = lastErr
	// A state change must be recorded even when the request was cancelled.
	if err := d.store.UpdateVM(context.WithoutCancel(ctx), vm); err != nil {
		return fmt.Errorf("recording state %s of vm %q: %w", state, vm.Name, err)
	}
	d.putVM(*vm)
	return nil
}

// step is one named, idempotent action of an ordered plan, with its undo.
type step struct {
	name string
	do   func(ctx context.Context) error
	undo func(ctx context.Context) error
}

// runSteps runs steps in order; when one fails, it undoes the steps done so
// far in reverse order and returns the failure, naming the step.
func runSteps(ctx context.Context, steps []step) error {
	for i, s := range steps {
		if err := s.do(ctx); err != nil {
			uctx := context.WithoutCancel(ctx)
			var undoErrs []error
			for j := i - 1; j >= 0; j-- {
				if steps[j].undo != nil {
					if uerr := steps[j].undo(uctx); uerr != nil {
						undoErrs = append(undoErrs, fmt.Errorf("undo %s: %w", steps[j].name, uerr))
					}
				}
			}
			return errors.Join(append([]error{fmt.Errorf("%s: %w", s.name, err)}, undoErrs...)...)
		}
	}
	return nil
}

// getVM loads a VM by name, mapping absence to not_found.
func (d *Daemon) getVM(ctx context.Context, name string) (model.VMRecord, error) {
	vm, err := d.store.GetVM(ctx, name)
	if err != nil {
		return vm, toAPIError(err)
	}
	if g, ok := d.gates[vm.ID]; ok {
		select {
		case <-g:
		default:
			// Reconcile has not processed it yet: wait, then read what it decided.
			d.awaitReconciled(ctx, vm.ID)
			if vm, err = d.store.GetVMByID(ctx, vm.ID); err != nil {
				return vm, toAPIError(err)
			}
		}
	}
	return vm, nil
}

// startVM starts a VM (a no-op when it is alive already).
func (d *Daemon) startVM(ctx context.Context, name string) (model.VMRecord, error) {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return vm, err
	}
	unlock := d.lockVM(ctx, vm.ID)
	defer unlock()
	if vm, err = d.store.GetVMByID(ctx, vm.ID); err != nil {
		return vm, toAPIError(err)
	}
	return vm, d.startLocked(ctx, &vm)
}

func (d *Daemon) startLocked(ctx context.Context, vm *model.VMRecord) error {
	if alive, _ := d.vmAlive(ctx, *vm); alive {
		return nil
	}
	if vm.Runtime.State == model.StateDeleting {
		return api.Errorf(api.CodeConflict, "vm %q is being deleted", vm.Name)
	}
	// Recorded running but dead (guest powered off, VMM crashed): clean up first.
	if h, ok := d.handles.get(vm.ID); ok || vm.Runtime.State == model.StateRunning {
		if !ok {
			h, _ = rediscoverHandles(*vm, d)
		}
		if err := d.cleanupRuntime(ctx, *vm, h); err != nil {
			return fmt.Errorf("cleaning up dead vm %q before start: %w", vm.Name, err)
		}
	}
	im, err := d.store.GetImage(ctx, vm.Image)
	if err != nil {
		if vm.Image == "" {
			return api.Errorf(api.CodeConflict, "vm %q has no image: import one (banger image import) or build one (banger image build), then recreate the vm", vm.Name)
		}
		return api.Errorf(api.CodeNotFound, "image %q of vm %q: %v", vm.Image, vm.Name, err)
	}
	if vm.Runtime.VMM == "" {
		name, accel, warning, err := d.chooseVMM("")
		if err != nil {
			return api.Errorf(api.CodeConflict, "starting vm %q: %v", vm.Name, err)
		}
		if warning != "" {
			d.log.Warn(warning, "vm", vm.Name)
		}
		vm.Runtime.VMM, vm.Runtime.Accel = name, accel
	}
	drv, err := d.driverFor(vm.Runtime.VMM)
	if err != nil {
		return err
	}
	if b := inspectImage(im); (vm.Runtime.VMM == "qemu" && !b.QEMU) || (vm.Runtime.VMM == "firecracker" && !b.Firecracker) {
		err := api.Errorf(api.CodeConflict, "image %q cannot be booted by %s: %s", im.Name, vm.Runtime.VMM, strings.Join(b.Reasons, "; "))
		d.commitState(ctx, vm, model.StateError, err.Error())
		return err
	}
	if err := d.commitState(ctx, vm, model.StateStarting, ""); err != nil {
		return err
	}

	var h model.VMHandles
	var rootDev string
	saveHandles := func() error {
		d.handles.set(vm.ID, h)
		return writeHandlesFile(handlesPath(*vm), h)
	}
	steps := []step{
		{name: "preparing vm directories", do: func(ctx context.Context) error {
			if err := os.MkdirAll(vm.Runtime.VMDir, 0o750); err != nil {
				return err
			}
			return os.MkdirAll(vmRunDir(d.cfg, vm.ID), 0o750)
		}},
		{name: "making root disk", do: func(ctx context.Context) error {
			if _, err := os.Stat(rootDiskPath(*vm)); err == nil {
				return nil
			}
			_, err := d.deps.Disks.CreateRootDisk(ctx, vm.ID, im.RootfsPath, vm.Runtime.VMDir, vm.Spec.DiskSizeBytes)
			return err
		}},
		{name: "making work disk", do: func(ctx context.Context) error {
			if _, err := os.Stat(vm.Runtime.WorkDiskPath); err == nil {
				return nil
			}
			seed := filepath.Join(vm.Runtime.VMDir, "work-seed")
			if err := os.MkdirAll(filepath.Join(seed, ".banger", "sessions"), 0o755); err != nil {
				return err
			}
			defer os.RemoveAll(seed)
			return d.deps.Disks.CreateWorkDisk(ctx, vm.Runtime.WorkDiskPath, vm.Spec.WorkDiskBytes, seed)
		}},
		{name: "activating root disk", do: func(ctx context.Context) error {
			dev, rh, err := d.deps.Disks.ActivateRootDisk(ctx, vm.ID, im.RootfsPath, rootDiskPath(*vm))
			if err != nil {
				return err
			}
			rootDev = dev
			h.BaseLoop, h.COWLoop, h.DMName, h.DMDev = rh.BaseLoop, rh.COWLoop, rh.DMName, rh.DMDev
			return saveHandles()
		}, undo: func(ctx context.Context) error {
			if err := d.deps.Disks.DeactivateRootDisk(ctx, rootHandles(h)); err != nil {
				return err
			}
			h.BaseLoop, h.COWLoop, h.DMName, h.DMDev = "", "", "", ""
			return saveHandles()
		}},
		{name: "writing guest configuration", do: func(ctx context.Context) error {
			return d.injectGuestConfig(ctx, *vm, rootDev)
		}},
		{name: "creating tap", do: func(ctx context.Context) error {
			if d.deps.Network == nil {
				return nil
			}
			tap := network.TapName(vm.ID)
			h.TapDevice = tap
			if err := saveHandles(); err != nil {
				return err
			}
			if err := d.deps.Network.CreateTap(ctx, tap); err != nil {
				// Undo this step's own half-work: the next steps' undos won't run.
				d.deps.Network.DeleteTap(context.WithoutCancel(ctx), tap)
				d.deps.Network.ReleaseBridgeIfUnused(context.WithoutCancel(ctx))
				h.TapDevice = ""
				saveHandles()
				return err
			}
			return nil
		}, undo: func(ctx context.Context) error {
			if h.TapDevice == "" {
				return nil
			}
			if err := d.deps.Network.DeleteTap(ctx, h.TapDevice); err != nil {
				return err
			}
			h.TapDevice = ""
			d.deps.Network.ReleaseBridgeIfUnused(ctx)
			return saveHandles()
		}},
		{name: "starting " + vm.Runtime.VMM, do: func(ctx context.Context) error {
			os.Remove(vm.Runtime.LogPath) // a fresh console log per boot
			p, err := drv.Launch(ctx, d.machine(*vm, im, rootDev, h))
			if err != nil {
				return err
			}
			h.PID, h.PIDStart = p.PID, p.Start
			return saveHandles()
		}, undo: func(ctx context.Context) error {
			p := system.Process{PID: h.PID, Start: h.PIDStart}
			if alive, _ := d.processIsVMM(ctx, *vm, h); alive {
				if err := drv.Shutdown(ctx, d.machine(*vm, im, rootDev, h), p, 0, true); err != nil {
					return err
				}
			}
			h.PID, h.PIDStart = 0, 0
			return saveHandles()
		}},
	}
	if err := runSteps(ctx, steps); err != nil {
		err = fmt.Errorf("starting vm %q: %w", vm.Name, err)
		d.removeRuntimeFiles(*vm)
		if h.IsZero() {
			d.handles.delete(vm.ID)
			removeHandlesFile(handlesPath(*vm))
		}
		d.commitState(ctx, vm, model.StateError, err.Error())
		d.log.Error("vm start failed", "vm", vm.Name, "err", err)
		return err
	}
	if err := d.commitState(ctx, vm, model.StateRunning, ""); err != nil {
		return err
	}
	d.extras.vmStarted(*vm)
	d.log.Info("vm started", "vm", vm.Name, "vmm", vm.Runtime.VMM, "pid", h.PID, "tap", h.TapDevice)
	return nil
}

// injectGuestConfig writes banger's SSH key, the hostname and the resolver
// into the VM's own root disk before boot, so access never depends on what
// the image already contains. The files are also kept in the VM's system
// overlay directory for inspection.
func (d *Daemon) injectGuestConfig(ctx context.Context, vm model.VMRecord, rootDev string) error {
	pub, err := d.sshPublicKey()
	if err != nil {
		return err
	}
	files := []storage.File{
		{Path: "/root/.ssh/authorized_keys", Mode: 0o600, Data: pub},
		{Path: "/etc/hostname", Mode: 0o644, Data: []byte(vm.Name + "\n")},
		{Path: "/etc/resolv.conf", Mode: 0o644, Data: []byte(fmt.Sprintf("nameserver %s\nsearch %s\n", d.gateway(), d.cfg.DNSZone))},
	}
	if err := os.MkdirAll(vm.Runtime.SystemOverlay, 0o750); err == nil {
		for _, f := range files {
			p := filepath.Join(vm.Runtime.SystemOverlay, strings.TrimPrefix(f.Path, "/"))
			os.MkdirAll(filepath.Dir(p), 0o750)
			os.WriteFile(p, f.Data, f.Mode)
		}
	}
	return d.deps.Disks.InjectFiles(ctx, rootDev, files)
}

// stopVM stops a VM; stopping a stopped VM succeeds.
func (d *Daemon) stopVM(ctx context.Context, name string, force bool, timeout time.Duration) (model.VMRecord, error) {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return vm, err
	}
	unlock := d.lockVM(ctx, vm.ID)
	defer unlock()
	if vm, err = d.store.GetVMByID(ctx, vm.ID); err != nil {
		return vm, toAPIError(err)
	}
	return vm, d.stopLocked(ctx, &vm, force, timeout)
}

func (d *Daemon) stopLocked(ctx context.Context, vm *model.VMRecord, force bool, timeout time.Duration) error {
	h, cached := d.handles.get(vm.ID)
	if !cached {
		h, _ = rediscoverHandles(*vm, d)
	}
	if h.IsZero() && !vm.Runtime.State.Transitional() && vm.Runtime.State != model.StateRunning {
		return nil
	}
	if err := d.commitState(ctx, vm, model.StateStopping, ""); err != nil {
		return err
	}
	d.guests.drop(vm.ID)
	if h.PID != 0 {
		// Only a process whose identity holds is ever signalled.
		if alive, reason := d.processIsVMM(ctx, *vm, h); alive {
			drv, _ := d.driverFor(vm.Runtime.VMM)
			p := system.Process{PID: h.PID, Start: h.PIDStart}
			if err := drv.Shutdown(ctx, d.machine(*vm, model.Image{}, "", h), p, timeout, force); err != nil {
				err = fmt.Errorf("stopping vm %q: %w", vm.Name, err)
				d.commitState(ctx, vm, model.StateError, err.Error())
				return err
			}
		} else {
			d.log.Info("vm process not signalled", "vm", vm.Name, "reason", reason)
		}
		h.PID, h.PIDStart = 0, 0
	}
	if err := d.cleanupRuntime(ctx, *vm, h); err != nil {
		err = fmt.Errorf("stopping vm %q: %w", vm.Name, err)
		d.commitState(ctx, vm, model.StateError, err.Error())
		return err
	}
	d.extras.vmStopped(*vm)
	d.log.Info("vm stopped", "vm", vm.Name)
	return d.commitState(ctx, vm, model.StateStopped, "")
}

// cleanupRuntime tears down what h records (dm, loops, tap) and the VM's
// sockets, tolerating objects that are already gone. The process must be
// gone already. On success the handles are forgotten; on failure the
// scratch file keeps what remains so a retry or gc can finish.
func (d *Daemon) cleanupRuntime(ctx context.Context, vm model.VMRecord, h model.VMHandles) error {
	ctx = context.WithoutCancel(ctx)
	var errs []error
	rh := d.verifiedRootHandles(ctx, vm, rootHandles(h))
	if !rh.IsZero() {
		if err := d.deps.Disks.DeactivateRootDisk(ctx, rh); err != nil {
			errs = append(errs, fmt.Errorf("root disk: %w", err))
		} else {
			h.BaseLoop, h.COWLoop, h.DMName, h.DMDev = "", "", "", ""
		}
	}
	if h.TapDevice != "" && d.deps.Network != nil {
		if err := d.deps.Network.DeleteTap(ctx, h.TapDevice); err != nil {
			errs = append(errs, fmt.Errorf("tap %s: %w", h.TapDevice, err))
		} else {
			h.TapDevice = ""
			if err := d.deps.Network.ReleaseBridgeIfUnused(ctx); err != nil {
				d.log.Warn("releasing bridge", "err", err)
			}
		}
	}
	d.removeRuntimeFiles(vm)
	if len(errs) > 0 {
		h.PID, h.PIDStart = 0, 0
		d.handles.set(vm.ID, h)
		writeHandlesFile(handlesPath(vm), h)
		return errors.Join(errs...)
	}
	d.handles.delete(vm.ID)
	if err := removeHandlesFile(handlesPath(vm)); err != nil {
		return err
	}
	return nil
}

// removeRuntimeFiles removes the VM's sockets (Firecracker never unlinks them).
func (d *Daemon) removeRuntimeFiles(vm model.VMRecord) {
	for _, p := range []string{vm.Runtime.APISockPath, vm.Runtime.VSockPath} {
		if p != "" {
			os.Remove(p)
		}
	}
	if matches, _ := filepath.Glob(vm.Runtime.VSockPath + "_*"); matches != nil {
		for _, m := range matches {
			os.Remove(m)
		}
	}
}

// deleteVM stops a VM if needed (killing it at once with force) and removes
// everything it owns. A VM left half-deleted is finished by a retry.
func (d *Daemon) deleteVM(ctx context.Context, name string, force bool) error {
	vm, err := d.getVM(ctx, name)
	if err != nil {
		return err
	}
	unlock := d.lockVM(ctx, vm.ID)
	defer unlock()
	if vm, err = d.store.GetVMByID(ctx, vm.ID); err != nil {
		return toAPIError(err)
	}
	return d.deleteLocked(ctx, &vm, force)
}

func (d *Daemon) deleteLocked(ctx context.Context, vm *model.VMRecord, force bool) error {
	cur, err := d.store.GetVMByID(ctx, vm.ID)
	if errors.Is(err, store.ErrNotFound) {
		return nil // already deleted: delete is idempotent
	} else if err != nil {
		return err
	}
	*vm = cur
	if vm.Runtime.State != model.StateDeleting {
		if err := d.stopLocked(ctx, vm, force, 10*time.Second); err != nil {
			return fmt.Errorf("deleting vm %q: %w", vm.Name, err)
		}
		if err := d.commitState(ctx, vm, model.StateDeleting, ""); err != nil {
			return err
		}
	} else {
		// Finishing an interrupted delete: make sure nothing runs.
		h, _ := rediscoverHandles(*vm, d)
		if h.PID != 0 {
			if alive, _ := d.processIsVMM(ctx, *vm, h); alive {
				drv, _ := d.driverFor(vm.Runtime.VMM)
				drv.Shutdown(ctx, d.machine(*vm, model.Image{}, "", h), system.Process{PID: h.PID, Start: h.PIDStart}, 0, true)
			}
		}
		if err := d.cleanupRuntime(ctx, *vm, h); err != nil {
			return fmt.Errorf("deleting vm %q: %w", vm.Name, err)
		}
	}
	d.extras.vmDeleted(ctx, *vm)
	if err := d.removeVMFiles(*vm); err != nil {
		err = fmt.Errorf("deleting vm %q: removing files: %w", vm.Name, err)
		d.commitState(ctx, vm, model.StateDeleting, err.Error())
		return err
	}
	d.handles.delete(vm.ID)
	if err := d.store.DeleteVM(context.WithoutCancel(ctx), vm.ID); err != nil {
		return err
	}
	d.dropVM(vm.ID)
	d.createMu.Lock()
	d.addrs.releaseLocked(*vm)
	d.createMu.Unlock()
	d.log.Info("vm deleted", "vm", vm.Name)
	return nil
}

// verifiedRootHandles drops loop devices that no longer hold this VM's
// files: after a host reboot, a loop number in an old scratch file may
// belong to someone else now, and must never be detached. dm names come
// from the VM's id and cannot collide.
func (d *Daemon) verifiedRootHandles(ctx context.Context, vm model.VMRecord, rh storage.RootHandles) storage.RootHandles {
	if rh.BaseLoop == "" && rh.COWLoop == "" {
		return rh
	}
	loops, err := d.deps.Disks.ListLoopDevices(ctx)
	if err != nil {
		return rh // cannot check: keep them, teardown tolerates "already gone"
	}
	base := ""
	if im, err := d.store.GetImage(ctx, vm.Image); err == nil {
		base = im.RootfsPath
	}
	cow := rootDiskPath(vm)
	check := func(dev *string, want string) {
		if *dev == "" {
			return
		}
		if file, ok := loops[*dev]; ok && file != want && strings.TrimSuffix(file, " (deleted)") != want {
			d.log.Warn("loop device now backs another file: leaving it alone", "vm", vm.Name, "loop", *dev, "file", file, "want", want)
			*dev = ""
		}
	}
	check(&rh.BaseLoop, base)
	check(&rh.COWLoop, cow)
	return rh
}
