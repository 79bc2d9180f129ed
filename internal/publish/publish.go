package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/network/dns"
	"github.com/banger-dev/banger/internal/network/forward"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
)

// extras serves what makes VMs reachable by name and port: DNS records for
// running VMs and userspace port forwards. Both are in memory; forwards are
// rebuilt from the store at startup, so a dead daemon leaves nothing behind.
type extras struct {
	d   *Daemon
	dns *dns.Server

	mu        sync.Mutex
	running   map[string]string                        // vm id -> guest IP, running VMs only
	forwards  map[string]map[string]*forward.Forwarder // vm id -> spec -> forwarder
	dnsBound  map[string]bool
	ctx       context.Context
	cancelAll context.CancelFunc
}

func newExtras(d *Daemon) *extras {
	ctx, cancel := context.WithCancel(context.Background())
	return &extras{
		d:         d,
		dns:       dns.New(d.cfg.DNSZone, d.cfg.DNSUpstream, d.log),
		running:   map[string]string{},
		forwards:  map[string]map[string]*forward.Forwarder{},
		dnsBound:  map[string]bool{},
		ctx:       ctx,
		cancelAll: cancel,
	}
}

// start binds the configured DNS address and the stored port forwards.
func (e *extras) start(ctx context.Context) {
	if e.d.cfg.DNSListen != "" {
		e.listenDNS(e.d.cfg.DNSListen)
	}
	ports, err := e.d.store.ListPorts(ctx, "")
	if err != nil {
		e.d.log.Error("loading port forwards", "err", err)
		return
	}
	for _, p := range ports {
		spec, err := forward.ParseSpec(p.Spec)
		if err != nil {
			continue
		}
		if err := e.startForward(p.VMID, spec); err != nil {
			e.d.log.Error("restoring port forward", "spec", p.Spec, "err", err)
		}
	}
}

func (e *extras) stop() {
	e.cancelAll()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, m := range e.forwards {
		for _, f := range m {
			f.Close()
		}
	}
	e.forwards = map[string]map[string]*forward.Forwarder{}
}

// listenDNS serves DNS on addr once; it reports whether it newly bound.
func (e *extras) listenDNS(addr string) bool {
	e.mu.Lock()
	if e.dnsBound[addr] {
		e.mu.Unlock()
		return false
	}
	e.dnsBound[addr] = true
	e.mu.Unlock()
	if err := e.dns.ListenAndServe(e.ctx, addr); err != nil {
		e.d.log.Warn("dns: cannot listen", "addr", addr, "err", err)
		e.mu.Lock()
		delete(e.dnsBound, addr)
		e.mu.Unlock()
		return false
	}
	return true
}

// vmStarted publishes a running VM's name and opens its forwards' target.
func (e *extras) vmStarted(vm model.VMRecord) {
	ip, err := netip.ParseAddr(vm.Runtime.GuestIP)
	if err != nil {
		return
	}
	e.mu.Lock()
	e.running[vm.ID] = vm.Runtime.GuestIP
	e.mu.Unlock()
	e.dns.Set(vm.Name, ip)
	if e.d.deps.Network != nil {
		// The guests' resolver is the daemon on the bridge address, which
		// exists once a VM's tap made the bridge.
		go func() {
			if e.listenDNS(net.JoinHostPort(e.d.gateway(), "53")) {
				e.registerResolved()
			}
		}()
	}
}

// vmStopped withdraws a VM's name; its forwards refuse connections.
func (e *extras) vmStopped(vm model.VMRecord) {
	e.mu.Lock()
	delete(e.running, vm.ID)
	fw := e.forwards[vm.ID]
	e.mu.Unlock()
	e.dns.Remove(vm.Name)
	for _, f := range fw {
		f.DropConns()
	}
}

// vmDeleted closes a VM's forwards (the store rows go with the VM's row).
func (e *extras) vmDeleted(ctx context.Context, vm model.VMRecord) {
	e.vmStopped(vm)
	e.mu.Lock()
	fw := e.forwards[vm.ID]
	delete(e.forwards, vm.ID)
	e.mu.Unlock()
	for _, f := range fw {
		f.Close()
	}
}

func (e *extras) target(vmID string, guestPort int) forward.Target {
	return func() (string, bool) {
		e.mu.Lock()
		ip, ok := e.running[vmID]
		e.mu.Unlock()
		return ip, ok
	}
}

func hostKey(s forward.Spec) string {
	addr := s.HostAddr
	if addr == "" {
		addr = forward.DefaultHostAddr
	}
	proto := s.Proto
	if proto == "" {
		proto = forward.TCP
	}
	return net.JoinHostPort(addr, itoa(s.HostPort)) + "/" + string(proto)
}

// validatePorts parses specs and checks them against each other, the store
// (another VM's forward) and the host (a port already taken).
func (e *extras) validatePorts(raw []string, vmID string) ([]forward.Spec, error) {
	var specs []forward.Spec
	for _, s := range raw {
		spec, err := forward.ParseSpec(s)
		if err != nil {
			return nil, api.Errorf(api.CodeInvalidArgument, "%v", err)
		}
		specs = append(specs, spec)
	}
	if len(specs) == 0 {
		return nil, nil
	}
	if err := forward.ValidateSpecs(specs); err != nil {
		return nil, api.Errorf(api.CodeInvalidArgument, "%v", err)
	}
	existing, err := e.d.store.ListPorts(context.Background(), "")
	if err != nil {
		return nil, err
	}
	for _, s := range specs {
		for _, p := range existing {
			if p.HostKey == hostKey(s) {
				return nil, api.Errorf(api.CodeAlreadyExists, "host port %s is already forwarded by another vm", p.HostKey)
			}
		}
		if err := forward.CheckHostPortFree(s); err != nil {
			return nil, api.Errorf(api.CodeConflict, "%v", err)
		}
	}
	return specs, nil
}

// addPorts records and binds forwards for vm; on failure nothing remains.
func (e *extras) addPorts(ctx context.Context, vm model.VMRecord, specs []forward.Spec) error {
	var done []forward.Spec
	undo := func() {
		for _, s := range done {
			e.d.store.RemovePort(context.WithoutCancel(ctx), vm.ID, s.String())
			e.closeForward(vm.ID, s.String())
		}
	}
	for _, s := range specs {
		if err := e.d.store.AddPort(ctx, store.Port{VMID: vm.ID, Spec: s.String(), HostKey: hostKey(s)}); err != nil {
			undo()
			if errors.Is(err, store.ErrExists) {
				return api.Errorf(api.CodeAlreadyExists, "%v", err)
			}
			return err
		}
		if err := e.startForward(vm.ID, s); err != nil {
			e.d.store.RemovePort(context.WithoutCancel(ctx), vm.ID, s.String())
			undo()
			return api.Errorf(api.CodeConflict, "%v", err)
		}
		done = append(done, s)
	}
	return nil
}

func (e *extras) startForward(vmID string, s forward.Spec) error {
	f, err := forward.Start(e.ctx, s, e.target(vmID, s.GuestPort), e.d.log)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.forwards[vmID] == nil {
		e.forwards[vmID] = map[string]*forward.Forwarder{}
	}
	e.forwards[vmID][s.String()] = f
	return nil
}

func (e *extras) closeForward(vmID, spec string) {
	e.mu.Lock()
	f := e.forwards[vmID][spec]
	delete(e.forwards[vmID], spec)
	e.mu.Unlock()
	if f != nil {
		f.Close()
	}
}

func (d *Daemon) handlePortList(w http.ResponseWriter, r *http.Request) error {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	ports, err := d.store.ListPorts(r.Context(), vm.ID)
	if err != nil {
		return err
	}
	out := []string{}
	for _, p := range ports {
		out = append(out, p.Spec)
	}
	sort.Strings(out)
	return writeJSON(w, out)
}

func (d *Daemon) handlePortAdd(w http.ResponseWriter, r *http.Request) error {
	var req api.PortRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	unlock := d.lockVM(r.Context(), vm.ID)
	defer unlock()
	specs, err := d.extras.validatePorts([]string{req.Spec}, vm.ID)
	if err != nil {
		return err
	}
	if err := d.extras.addPorts(r.Context(), vm, specs); err != nil {
		return err
	}
	return writeJSON(w, []string{specs[0].String()})
}

func (d *Daemon) handlePortRemove(w http.ResponseWriter, r *http.Request) error {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	raw, err := url.PathUnescape(r.PathValue("spec"))
	if err != nil {
		return api.Errorf(api.CodeInvalidArgument, "bad port spec")
	}
	spec, err := forward.ParseSpec(raw)
	if err != nil {
		return api.Errorf(api.CodeInvalidArgument, "%v", err)
	}
	unlock := d.lockVM(r.Context(), vm.ID)
	defer unlock()
	if err := d.store.RemovePort(r.Context(), vm.ID, spec.String()); err != nil {
		return toAPIError(err)
	}
	d.extras.closeForward(vm.ID, spec.String())
	return writeJSON(w, struct{}{})
}

// registerResolved tells systemd-resolved, where it runs, to send lookups
// for the zone to the daemon on the bridge, so NAME.zone resolves on the
// host. The registration lives on the bridge link and goes with it.
func (e *extras) registerResolved() {
	if _, err := os.Stat("/run/systemd/resolve/stub-resolv.conf"); err != nil {
		return
	}
	if _, err := system.LookPath("resolvectl"); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	br := e.d.cfg.Bridge
	if _, err := e.d.deps.Runner.Run(ctx, "resolvectl", "dns", br, e.d.gateway()); err != nil {
		e.d.log.Warn("registering dns with systemd-resolved", "err", err)
		return
	}
	if _, err := e.d.deps.Runner.Run(ctx, "resolvectl", "domain", br, "~"+e.d.cfg.DNSZone); err != nil {
		e.d.log.Warn("registering dns zone with systemd-resolved", "err", err)
	}
}
