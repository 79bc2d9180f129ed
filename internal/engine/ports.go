package engine

import (
	"context"
	"errors"
	"net"
	"sort"
	"strconv"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/network/forward"
	"github.com/banger-dev/banger/internal/store"
)

// PortBinder binds and closes the host side of port forwards. The
// forwarding publisher implements it; the engine records forwards in the
// store and tells the binder, which follows VM events for the rest.
type PortBinder interface {
	Bind(vmID string, s forward.Spec) error
	Unbind(vmID, spec string)
}

// SetPortBinder installs the binder of port forwards (wiring, before Start).
func (e *Engine) SetPortBinder(b PortBinder) { e.ports = b }

// hostKey is the host side of a forward, unique across VMs.
func hostKey(s forward.Spec) string {
	addr := s.HostAddr
	if addr == "" {
		addr = forward.DefaultHostAddr
	}
	proto := s.Proto
	if proto == "" {
		proto = forward.TCP
	}
	return net.JoinHostPort(addr, strconv.Itoa(s.HostPort)) + "/" + string(proto)
}

// validatePorts parses specs and checks them against each other, the store
// (another VM's forward) and the host (a port already taken).
func (e *Engine) validatePorts(ctx context.Context, raw []string) ([]forward.Spec, error) {
	var specs []forward.Spec
	for _, s := range raw {
		spec, err := forward.ParseSpec(s)
		if err != nil {
			return nil, errdefs.Invalid("%w", err)
		}
		specs = append(specs, spec)
	}
	if len(specs) == 0 {
		return nil, nil
	}
	if err := forward.ValidateSpecs(specs); err != nil {
		return nil, errdefs.Invalid("%w", err)
	}
	existing, err := e.store.ListPorts(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, s := range specs {
		for _, p := range existing {
			if p.HostKey == hostKey(s) {
				return nil, errdefs.AlreadyExists("host port %s is already forwarded by another vm", p.HostKey)
			}
		}
		if err := forward.CheckHostPortFree(s); err != nil {
			return nil, errdefs.Conflict("%w", err)
		}
	}
	return specs, nil
}

// addPorts records and binds forwards for vm; on failure nothing remains.
func (e *Engine) addPorts(ctx context.Context, vm model.VMRecord, specs []forward.Spec) error {
	var done []forward.Spec
	undo := func() {
		for _, s := range done {
			e.store.RemovePort(context.WithoutCancel(ctx), vm.ID, s.String())
			e.unbind(vm.ID, s.String())
		}
	}
	for _, s := range specs {
		if err := e.store.AddPort(ctx, store.Port{VMID: vm.ID, Spec: s.String(), HostKey: hostKey(s)}); err != nil {
			undo()
			return err
		}
		if e.ports != nil {
			if err := e.ports.Bind(vm.ID, s); err != nil {
				e.store.RemovePort(context.WithoutCancel(ctx), vm.ID, s.String())
				undo()
				return errdefs.Conflict("%w", err)
			}
		}
		done = append(done, s)
	}
	return nil
}

func (e *Engine) unbind(vmID, spec string) {
	if e.ports != nil {
		e.ports.Unbind(vmID, spec)
	}
}

// ListPorts returns the forward specs of a VM, sorted.
func (e *Engine) ListPorts(ctx context.Context, name string) ([]string, error) {
	vm, err := e.GetVM(ctx, name)
	if err != nil {
		return nil, err
	}
	ports, err := e.store.ListPorts(ctx, vm.ID)
	if err != nil {
		return nil, err
	}
	out := []string{}
	for _, p := range ports {
		out = append(out, p.Spec)
	}
	sort.Strings(out)
	return out, nil
}

// AddPort adds one forward to a VM and returns its normalised spec.
func (e *Engine) AddPort(ctx context.Context, name, raw string) (string, error) {
	vm, err := e.GetVM(ctx, name)
	if err != nil {
		return "", err
	}
	unlock := e.lockVM(ctx, vm.ID)
	defer unlock()
	specs, err := e.validatePorts(ctx, []string{raw})
	if err != nil {
		return "", err
	}
	if err := e.addPorts(ctx, vm, specs); err != nil {
		return "", err
	}
	return specs[0].String(), nil
}

// RemovePort removes one forward of a VM.
func (e *Engine) RemovePort(ctx context.Context, name, raw string) error {
	vm, err := e.GetVM(ctx, name)
	if err != nil {
		return err
	}
	spec, err := forward.ParseSpec(raw)
	if err != nil {
		return errdefs.Invalid("%w", err)
	}
	unlock := e.lockVM(ctx, vm.ID)
	defer unlock()
	if err := e.store.RemovePort(ctx, vm.ID, spec.String()); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return errdefs.NotFound("vm %q has no port forward %s", vm.Name, spec)
		}
		return err
	}
	e.unbind(vm.ID, spec.String())
	return nil
}

// StoredPorts lists every recorded forward (vm id, spec), for the
// forwarding publisher to bind at startup.
func (e *Engine) StoredPorts(ctx context.Context) ([]store.Port, error) {
	return e.store.ListPorts(ctx, "")
}
