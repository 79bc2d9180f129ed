package engine

import (
	"context"
	"time"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/network"
	"github.com/banger-dev/banger/internal/system"
)

// Live is what is currently true about a VM on the host.
type Live struct {
	Alive   bool
	Handles model.VMHandles
	Reason  string // why not alive, when recorded running
}

// Live returns a VM's live facts, or nil for a VM with nothing on the host.
// full proves identity and asks the VMM (vmAlive); otherwise only the
// recorded process is checked, to keep listing cheap.
func (e *Engine) Live(ctx context.Context, vm model.VMRecord, full bool) *Live {
	h, ok := e.handles.get(vm.ID)
	if !ok && vm.Runtime.State != model.StateRunning {
		return nil
	}
	l := &Live{Handles: h}
	if full {
		l.Alive, l.Reason = e.vmAlive(ctx, vm)
		if !l.Alive && vm.Runtime.State == model.StateRunning {
			// What reconcile or the exit watcher will make of it.
			if d := nextState(vm.Runtime.State, Facts{Alive: false, HostObjects: !h.IsZero()}); d.Reason != "" {
				l.Reason += "; " + d.Reason
			}
		}
	} else {
		l.Alive = vm.Runtime.State == model.StateRunning && h.PID != 0 && (system.Process{PID: h.PID, Start: h.PIDStart}).Alive()
	}
	return l
}

// HasRuntime reports whether the engine holds handles for a VM.
func (e *Engine) HasRuntime(id string) bool {
	_, ok := e.handles.get(id)
	return ok
}

// ListVMs lists every VM record.
func (e *Engine) ListVMs(ctx context.Context) ([]model.VMRecord, error) { return e.store.ListVMs(ctx) }

// GetVMByID loads a VM by id.
func (e *Engine) GetVMByID(ctx context.Context, id string) (model.VMRecord, error) {
	return e.store.GetVMByID(ctx, id)
}

// Guest returns a connected SSH client for a running VM, waiting up to
// wait for its SSH server.
func (e *Engine) Guest(ctx context.Context, name string, wait time.Duration) (*guest.Client, model.VMRecord, error) {
	vm, err := e.GetVM(ctx, name)
	if err != nil {
		return nil, vm, err
	}
	if vm.Runtime.State == model.StateSuspended {
		// exec, ssh, cp and sessions on a suspended VM resume it first.
		if vm, err = e.ResumeVM(ctx, name); err != nil {
			return nil, vm, err
		}
	}
	c, err := e.guests.get(ctx, vm, wait)
	return c, vm, err
}

// HandlesHint returns a VM's handles from the cache, else its scratch file:
// a hint of what it holds, for listing; nothing is destroyed on its word.
func (e *Engine) HandlesHint(vm model.VMRecord) model.VMHandles {
	if h, ok := e.handles.get(vm.ID); ok {
		return h
	}
	h, _ := readHandlesFile(handlesPath(vm))
	return h
}

// TapName is the tap a VM with this id gets (the prefix alone for "").
func (e *Engine) TapName(id string) string { return network.TapName(id) }

// ProvesVMM reports whether pid is proven to be vm's VMM (proveVMM).
func (e *Engine) ProvesVMM(vm model.VMRecord, pid int) bool {
	st, err := system.ProcStartTime(pid)
	if err != nil {
		return false
	}
	return e.proveVMM(vm, model.VMHandles{PID: pid, PIDStart: st}) == nil
}

// ImageFiles is the set of every image's root filesystem file.
func (e *Engine) ImageFiles(ctx context.Context) map[string]bool {
	out := map[string]bool{}
	ims, _ := e.store.ListImages(ctx)
	for _, im := range ims {
		out[im.RootfsPath] = true
	}
	return out
}
