// Package engine runs VMs: create, start, stop, delete, startup reconcile,
// the handles of what is currently true on the host, liveness, per-VM locks,
// guest access (SSH, sessions) and images. It speaks engine and model types
// only: no HTTP, no wire format. Errors carry errdefs kinds, wrapped with %w
// all the way down, so the local API above maps them to status codes.
//
// What a VM IS comes from the store; what is CURRENTLY TRUE comes from the
// handles cache, rebuilt at startup from handles.json scratch files and the
// OS (docs/handles-and-reconcile.md).
package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/oci"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/units"
	"github.com/banger-dev/banger/internal/vmm"
)

// Engine is the VM engine of one bangerd.
type Engine struct {
	cfg   config.Config
	deps  Deps
	log   *slog.Logger
	store *store.Store

	locks    vmLocks
	createMu sync.Mutex // guards name, address and CID allocation
	addrs    addrBook   // guarded by createMu
	// identifying serialises VMM identification per VM (see processIsVMM).
	identifying vmLocks
	handles     *handleCache
	guests      *guestPool
	events      eventBus
	cgroupErr   string
	ports       PortBinder
	lives       lifeIndex       // TTLs, idle timeouts and activity (lifetimes.go)
	pools       poolSet         // warm pools (pool.go)
	maxTTL      time.Duration   // max_ttl
	ociMaxSize  int64           // oci_max_size; 0: no cap
	layers      *oci.LayerCache // shared by all pulls: its pins keep their blobs
	pulling     pullSet         // images being pulled (their cached rootfs is kept)
	// agents: VMs whose guest agent answered, by VM id, with the start
	// time of the VMM process it answered in (a new boot asks again).
	agents sync.Map
	// reconcileTook is how long startup reconcile took (nanoseconds).
	reconcileTook atomic.Int64

	ready  chan struct{}            // closed when startup reconcile finished
	gates  map[string]chan struct{} // per VM, closed once reconcile processed it; fixed before Start returns
	stopCh chan struct{}
	stopMu sync.Once
}

// New prepares an engine over an open store. Run starts it.
func New(cfg config.Config, st *store.Store, deps Deps, logger *slog.Logger) (*Engine, error) {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if l := len(apiSockPath(cfg, "0123456789abcdef0123456789abcdef")); l > 107 {
		return nil, fmt.Errorf("run dir %s is too long: VM API socket paths would be %d bytes, over the 107-byte unix socket limit", cfg.RunDir, l)
	}
	var err error
	e := &Engine{
		cfg:     cfg,
		deps:    deps,
		log:     logger,
		store:   st,
		handles: newHandleCache(),
		ready:   make(chan struct{}),
		stopCh:  make(chan struct{}),
	}
	switch cfg.Confine {
	case "", "on", "off":
	default:
		return nil, fmt.Errorf("confine = %q: want on or off", cfg.Confine)
	}
	if cfg.Confine != "off" {
		if _, _, err := parseUIDRange(cfg.UIDRange); err != nil {
			return nil, err
		}
		if _, err := units.ParseSize(cfg.MemoryOverhead); err != nil {
			return nil, fmt.Errorf("memory_overhead %q: %w", cfg.MemoryOverhead, err)
		}
	}
	if deps.RootDisks == nil || deps.DiskFiles == nil || deps.Runner == nil || deps.Now == nil || deps.KVMUsable == nil || deps.Firecracker == nil || deps.QEMU == nil {
		return nil, fmt.Errorf("engine: missing dependencies (the daemon fills them)")
	}
	if e.maxTTL, err = MaxTTL(cfg); err != nil {
		return nil, err
	}
	if e.ociMaxSize, err = OCIMaxSize(cfg); err != nil {
		return nil, err
	}
	cacheMax, err := OCICacheMax(cfg)
	if err != nil {
		return nil, err
	}
	e.layers = &oci.LayerCache{Dir: e.ociCache(), MaxBytes: cacheMax}
	e.cgroupErr = deps.CgroupErr
	e.guests = newGuestPool(e)
	return e, nil
}

// Start gates every VM known now, then reconciles them in the background;
// requests for a VM wait until reconcile has processed it. afterReconcile
// (may be nil) runs once reconcile finished, before Ready is closed. Start
// also makes the SSH key every VM trusts and starts the exit watcher and the
// console trimmer, which run until ctx ends or Close.
func (e *Engine) Start(ctx context.Context, afterReconcile func()) error {
	vms, err := e.store.ListVMs(ctx)
	if err != nil {
		return fmt.Errorf("listing vms for reconcile: %w", err)
	}
	e.gates = make(map[string]chan struct{}, len(vms))
	for _, vm := range vms {
		e.gates[vm.ID] = make(chan struct{})
	}
	if _, err := e.guests.signerKey(); err != nil {
		return fmt.Errorf("ssh key %s: %w", e.cfg.SSHKeyPath, err)
	}
	e.lives.init(e.deps.Now())
	for _, vm := range vms {
		e.lives.note(vm, false)
	}
	go func() {
		e.reconcile(ctx, vms)
		if afterReconcile != nil {
			afterReconcile()
		}
		close(e.ready)
	}()
	go e.keepConsoles(ctx, 5*time.Second)
	watchEvery := e.deps.WatchEvery
	if watchEvery <= 0 {
		watchEvery = 2 * time.Second
	}
	go func() {
		<-e.ready // reconcile seeds the handles first
		e.watchVMs(ctx, watchEvery)
	}()
	lifeEvery := e.deps.LifetimeEvery
	if lifeEvery <= 0 {
		lifeEvery = time.Second
	}
	go func() {
		<-e.ready // what expired while the daemon was down is applied first
		e.reapLifetimes(ctx, lifeEvery)
	}()
	// The sweep removes only what is older than this daemon, by the file
	// system's own clock (coarser than time.Now, and possibly behind it).
	began := time.Now().Add(-time.Second)
	marker := filepath.Join(e.cfg.StateDir, ".daemon-started")
	if err := os.WriteFile(marker, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err == nil {
		if st, err := os.Stat(marker); err == nil {
			began = st.ModTime()
		}
	}
	go func() {
		<-e.ready // members are sorted once reconcile kept or demoted them
		e.sweepLeftovers(ctx, began)
		e.startPools(ctx)
	}()
	return nil
}

// Ready is closed once startup reconcile finished.
func (e *Engine) Ready() <-chan struct{} { return e.ready }

// ReconcileTook is how long startup reconcile took (zero before it finished).
func (e *Engine) ReconcileTook() time.Duration { return time.Duration(e.reconcileTook.Load()) }

// Close stops the engine's background work and closes guest connections.
// VMs keep running: they outlive the daemon by design.
func (e *Engine) Close() {
	e.stopMu.Do(func() { close(e.stopCh) })
	e.guests.closeAll()
}

// Config is the engine's configuration.
func (e *Engine) Config() config.Config { return e.cfg }

// Paths derived deterministically from a VM's id.

// VMDir is the directory of a VM's disks and scratch files.
func VMDir(cfg config.Config, id string) string { return filepath.Join(cfg.StateDir, "vms", id) }

// VMRunDir holds a VM's sockets; kept short for the 108-byte unix socket limit.
func VMRunDir(cfg config.Config, id string) string {
	return filepath.Join(cfg.RunDir, "vm", id[:16])
}

func apiSockPath(cfg config.Config, id string) string {
	return filepath.Join(VMRunDir(cfg, id), "api.sock")
}

func vsockPath(cfg config.Config, id string) string {
	return filepath.Join(VMRunDir(cfg, id), "vsock.sock")
}

func handlesPath(vm model.VMRecord) string { return filepath.Join(vm.Runtime.VMDir, "handles.json") }

func knownHostsPath(vm model.VMRecord) string { return filepath.Join(vm.Runtime.VMDir, "known_hosts") }

func rootDiskPath(vm model.VMRecord) string {
	if vm.Runtime.RootDiskMethod == "dm-snapshot" {
		return filepath.Join(vm.Runtime.VMDir, "root.cow")
	}
	return filepath.Join(vm.Runtime.VMDir, "root.img")
}

// machine describes vm to a VMM driver.
func (e *Engine) machine(vm model.VMRecord, im model.Image, rootDev string, h model.VMHandles) vmm.Machine {
	m := vmm.Machine{
		ID: vm.ID, Name: vm.Name, VCPUs: vm.Spec.VCPUs, MemoryMiB: vm.Spec.MemoryMiB,
		Accel:    vm.Runtime.Accel,
		Kernel:   im.KernelPath,
		Initrd:   im.InitrdPath,
		BootArgs: im.BootArgs,
		RootDisk: rootDev, WorkDisk: vm.Runtime.WorkDiskPath,
		TapDevice: h.TapDevice, GuestMAC: vm.Runtime.GuestMAC,
		APISock: vm.Runtime.APISockPath, VSockPath: vm.Runtime.VSockPath, VSockCID: vm.Runtime.VSockCID,
		ConsoleLog: vm.Runtime.LogPath, MetricsPath: vm.Runtime.MetricsPath,
		LogPath: filepath.Join(vm.Runtime.VMDir, "vmm.log"),
	}
	if vm.Runtime.VMM == "firecracker" {
		m.Binary = e.cfg.FirecrackerBin
		m.Jailer = e.jailerFor(vm)
		if im.VMLinux != "" {
			m.Kernel = im.VMLinux
		}
	} else {
		m.Binary = e.cfg.QEMUBin
		m.VMLinux = im.VMLinux
	}
	if h.TapDevice != "" {
		m.GuestIP = vm.Runtime.GuestIP
		m.GatewayIP = e.Gateway()
		m.Netmask = e.netmask()
	}
	return m
}

// removeVMFiles deletes a VM's directories. The paths come from the VM's id
// and the configured dirs, never from its name or its record; refuse anything else.
func (e *Engine) removeVMFiles(vm model.VMRecord) error {
	want := VMDir(e.cfg, vm.ID)
	if vm.Runtime.VMDir != want || len(vm.ID) != 32 {
		return fmt.Errorf("refusing to remove %q: not the derived directory of vm %s", vm.Runtime.VMDir, vm.ID)
	}
	if err := os.RemoveAll(want); err != nil {
		return err
	}
	return os.RemoveAll(VMRunDir(e.cfg, vm.ID))
}
