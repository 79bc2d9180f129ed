// Package publish makes running VMs reachable: DNS names for their guest
// addresses and userspace port forwards to their guests. It is fed by the
// engine's events (started, stopped, deleted) and binds forwards for the
// engine (engine.PortBinder); both are in memory, and forwards are bound
// again from the store at startup, so a dead daemon leaves nothing behind.
package publish

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/network/dns"
	"github.com/banger-dev/banger/internal/network/forward"
	"github.com/banger-dev/banger/internal/system"
)

// Runner runs host tools (resolvectl).
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Config is what the publishers need to know of the host.
type Config struct {
	Zone      string // DNS zone, e.g. banger.internal
	Upstream  string // DNS upstream for names outside the zone ("" = refuse)
	Listen    string // extra DNS listen address ("" = none)
	Bridge    string // bridge name, for systemd-resolved registration
	Gateway   string // the host's address on the bridge ("" = no network)
	Runner    Runner
	Logger    *slog.Logger
	Resolvctl bool // register the zone with systemd-resolved where it runs
	// Activity, when set, is told of every forwarded TCP connection and
	// UDP datagram to a running VM (it resets the VM's idle timeout).
	Activity func(vmID string)
}

// Publisher serves DNS names and port forwards of running VMs.
type Publisher struct {
	cfg Config
	log *slog.Logger
	dns *dns.Server

	mu        sync.Mutex
	running   map[string]string                        // vm id -> guest IP, running VMs only
	forwards  map[string]map[string]*forward.Forwarder // vm id -> spec -> forwarder
	dnsBound  map[string]bool
	ctx       context.Context
	cancelAll context.CancelFunc
}

// New makes a publisher; Start binds what is configured.
func New(cfg Config) *Publisher {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Publisher{
		cfg:       cfg,
		log:       cfg.Logger,
		dns:       dns.New(cfg.Zone, cfg.Upstream, cfg.Logger),
		running:   map[string]string{},
		forwards:  map[string]map[string]*forward.Forwarder{},
		dnsBound:  map[string]bool{},
		ctx:       ctx,
		cancelAll: cancel,
	}
}

// StoredPort is a forward recorded for a VM.
type StoredPort struct{ VMID, Spec string }

// Start binds the configured DNS address and the stored port forwards.
func (p *Publisher) Start(ports []StoredPort) {
	if p.cfg.Listen != "" {
		p.listenDNS(p.cfg.Listen)
	}
	for _, sp := range ports {
		spec, err := forward.ParseSpec(sp.Spec)
		if err != nil {
			continue
		}
		if err := p.Bind(sp.VMID, spec); err != nil {
			p.log.Error("restoring port forward", "spec", sp.Spec, "err", err)
		}
	}
}

// Close closes every forward and DNS listener.
func (p *Publisher) Close() {
	p.cancelAll()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.forwards {
		for _, f := range m {
			f.Close()
		}
	}
	p.forwards = map[string]map[string]*forward.Forwarder{}
}

// Handle follows an engine event.
func (p *Publisher) Handle(ev engine.Event) {
	switch ev.Kind {
	case engine.EventStarted:
		p.vmStarted(ev.VM.ID, ev.VM.Name, ev.VM.Runtime.GuestIP)
	case engine.EventStopped:
		p.vmStopped(ev.VM.ID, ev.VM.Name)
	case engine.EventDeleted:
		p.vmDeleted(ev.VM.ID, ev.VM.Name)
	case engine.EventClaimed:
		if ev.Prev != "" && ev.Prev != ev.VM.Name {
			// A pool member claimed under the caller's name: the new
			// name replaces the member's.
			p.dns.Remove(ev.Prev)
			p.vmStarted(ev.VM.ID, ev.VM.Name, ev.VM.Runtime.GuestIP)
		}
	}
}

// listenDNS serves DNS on addr once; it reports whether it newly bound.
func (p *Publisher) listenDNS(addr string) bool {
	p.mu.Lock()
	if p.dnsBound[addr] {
		p.mu.Unlock()
		return false
	}
	p.dnsBound[addr] = true
	p.mu.Unlock()
	if err := p.dns.ListenAndServe(p.ctx, addr); err != nil {
		p.log.Warn("dns: cannot listen", "addr", addr, "err", err)
		p.mu.Lock()
		delete(p.dnsBound, addr)
		p.mu.Unlock()
		return false
	}
	return true
}

// vmStarted publishes a running VM's name and opens its forwards' target.
func (p *Publisher) vmStarted(id, name, guestIP string) {
	ip, err := netip.ParseAddr(guestIP)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.running[id] = guestIP
	p.mu.Unlock()
	p.dns.Set(name, ip)
	if p.cfg.Gateway != "" {
		// The guests' resolver is the daemon on the bridge address, which
		// exists once a VM's tap made the bridge.
		go func() {
			if p.listenDNS(net.JoinHostPort(p.cfg.Gateway, "53")) {
				p.registerResolved()
			}
		}()
	}
}

// vmStopped withdraws a VM's name; its forwards refuse connections.
func (p *Publisher) vmStopped(id, name string) {
	p.mu.Lock()
	delete(p.running, id)
	fw := p.forwards[id]
	p.mu.Unlock()
	p.dns.Remove(name)
	for _, f := range fw {
		f.DropConns()
	}
}

// vmDeleted closes a VM's forwards (the store rows go with the VM's row).
func (p *Publisher) vmDeleted(id, name string) {
	p.vmStopped(id, name)
	p.mu.Lock()
	fw := p.forwards[id]
	delete(p.forwards, id)
	p.mu.Unlock()
	for _, f := range fw {
		f.Close()
	}
}

func (p *Publisher) target(vmID string) forward.Target {
	return func() (string, bool) {
		p.mu.Lock()
		ip, ok := p.running[vmID]
		p.mu.Unlock()
		if ok && p.cfg.Activity != nil {
			p.cfg.Activity(vmID)
		}
		return ip, ok
	}
}

// Busy reports whether a VM has a forwarded connection (or a live UDP
// session) open: it is in use, whatever its idle timeout says.
func (p *Publisher) Busy(vmID string) bool {
	p.mu.Lock()
	fws := make([]*forward.Forwarder, 0, len(p.forwards[vmID]))
	for _, f := range p.forwards[vmID] {
		fws = append(fws, f)
	}
	p.mu.Unlock()
	for _, f := range fws {
		if f.Open() > 0 {
			return true
		}
	}
	return false
}

// Bind opens the host side of a forward for a VM (engine.PortBinder).
func (p *Publisher) Bind(vmID string, s forward.Spec) error {
	f, err := forward.Start(p.ctx, s, p.target(vmID), p.log)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.forwards[vmID] == nil {
		p.forwards[vmID] = map[string]*forward.Forwarder{}
	}
	p.forwards[vmID][s.String()] = f
	return nil
}

// Unbind closes the host side of a forward (engine.PortBinder).
func (p *Publisher) Unbind(vmID, spec string) {
	p.mu.Lock()
	f := p.forwards[vmID][spec]
	delete(p.forwards[vmID], spec)
	p.mu.Unlock()
	if f != nil {
		f.Close()
	}
}

// registerResolved tells systemd-resolved, where it runs, to send lookups
// for the zone to the daemon on the bridge, so NAME.zone resolves on the
// host. The registration lives on the bridge link and goes with it.
func (p *Publisher) registerResolved() {
	if !p.cfg.Resolvctl || p.cfg.Runner == nil {
		return
	}
	if _, err := os.Stat("/run/systemd/resolve/stub-resolv.conf"); err != nil {
		return
	}
	if _, err := system.LookPath("resolvectl"); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	br := p.cfg.Bridge
	if _, err := p.cfg.Runner.Run(ctx, "resolvectl", "dns", br, p.cfg.Gateway); err != nil {
		p.log.Warn("registering dns with systemd-resolved", "err", err)
		return
	}
	if _, err := p.cfg.Runner.Run(ctx, "resolvectl", "domain", br, "~"+p.cfg.Zone); err != nil {
		p.log.Warn("registering dns zone with systemd-resolved", "err", err)
	}
}
