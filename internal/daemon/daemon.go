// Package daemon wires one bangerd together: the store, the VM engine, the
// publishers (DNS names, port forwards), the inventory (doctor, gc) and the
// local API on its unix socket. It runs no VM and serves no route itself.
package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/cgroup"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/events"
	"github.com/banger-dev/banger/internal/inventory"
	"github.com/banger-dev/banger/internal/localapi"
	"github.com/banger-dev/banger/internal/metrics"
	"github.com/banger-dev/banger/internal/network"
	"github.com/banger-dev/banger/internal/network/policy"
	"github.com/banger-dev/banger/internal/publish"
	"github.com/banger-dev/banger/internal/storage"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
	"github.com/banger-dev/banger/internal/vmm/qemu"
	"golang.org/x/sys/unix"
)

// Disks is a disk manager serving the engine's root disks and disk files
// and the inventory's host disks (storage.Manager in production).
type Disks interface {
	engine.RootDisks
	engine.DiskFiles
	ListDMDevices(ctx context.Context) ([]string, error)
}

// Deps are the daemon's collaborators. Tests substitute fakes; New fills
// the real ones for anything left nil.
type Deps struct {
	engine.Deps
	// Disks, when set, serves every disk need (engine and inventory).
	Disks Disks
	// Recover rebuilds the records of VMs the store lacks from their
	// directories (bangerd --recover) instead of refusing to start.
	Recover bool
}

// Daemon is one bangerd.
type Daemon struct {
	Engine    *engine.Engine
	Store     *store.Store
	API       *localapi.Server
	Events    *events.Log
	Metrics   *metrics.Metrics
	publisher *publish.Publisher
	cfg       config.Config
	log       *slog.Logger
	lockFile  *os.File

	metricsNet, metricsAddr string       // the optional metrics listener (metrics.Listen)
	metricsListener         net.Listener // opened by Listen
}

// New opens the store under the state-dir lock and wires a daemon; Serve
// starts it.
func New(ctx context.Context, cfg config.Config, deps Deps, logger *slog.Logger) (*Daemon, error) {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	for _, dir := range []string{cfg.StateDir, cfg.RunDir, filepath.Join(cfg.StateDir, "vms"), filepath.Join(cfg.StateDir, "images")} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	lf, err := lockStateDir(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	dbPath := filepath.Join(cfg.StateDir, "banger.db")
	_, statErr := os.Stat(dbPath)
	st, err := store.Open(ctx, dbPath)
	if err != nil {
		lf.Close()
		return nil, fmt.Errorf("the store %s cannot be read: %w (restore it from a backup, or move it aside and run bangerd --recover to rebuild the records from the VM directories; nothing was changed)", dbPath, err)
	}
	d := &Daemon{Store: st, cfg: cfg, log: logger, lockFile: lf}
	fail := func(err error) (*Daemon, error) {
		st.Close()
		lf.Close()
		return nil, err
	}
	if err := checkStoreAccounts(ctx, cfg, st, deps.Recover, logger); err != nil {
		st.Close()
		if os.IsNotExist(statErr) {
			// The store did not exist: leave no empty one behind.
			for _, p := range []string{dbPath, dbPath + "-wal", dbPath + "-shm"} {
				os.Remove(p)
			}
		}
		lf.Close()
		return nil, err
	}
	ed := fillDeps(cfg, deps, logger)
	if d.Engine, err = engine.New(cfg, st, ed, logger); err != nil {
		return fail(err)
	}
	if d.metricsNet, d.metricsAddr, err = metrics.Listen(cfg); err != nil {
		return fail(err)
	}
	keep, err := eventsKeep(cfg)
	if err != nil {
		return fail(err)
	}
	if d.Events, err = events.New(ctx, st, keep, logger); err != nil {
		return fail(fmt.Errorf("opening the event log: %w", err))
	}
	d.Engine.Subscribe(d.Events.Handle)
	d.Metrics = metrics.New(d.Engine)
	d.Engine.Subscribe(d.Metrics.Handle)
	d.publisher = publish.New(publish.Config{
		Zone: cfg.DNSZone, Upstream: cfg.DNSUpstream, Listen: cfg.DNSListen, Bridge: cfg.Bridge,
		Gateway: gatewayIf(ed.Network != nil, d.Engine.Gateway()), Runner: ed.Runner, Logger: logger, Resolvctl: true,
		Activity: d.Engine.Touch,
	})
	d.Engine.Subscribe(d.publisher.Handle)
	d.Engine.SetPortBinder(d.publisher)
	var net inventory.Networker
	if n, ok := ed.Network.(inventory.Networker); ok {
		net = n
	}
	inv := &inventory.Inventory{Engine: d.Engine, Config: cfg, Disks: inventoryDisks(deps, ed), Network: net, Runner: ed.Runner, Log: logger}
	if p, ok := ed.NetPolicy.(inventory.Policies); ok {
		inv.Policies = p
	}
	d.API = localapi.New(cfg, d.Engine, inv, logger)
	d.API.SetEventLog(d.Events)
	d.API.SetRequestObserver(d.Metrics)
	d.Engine.SetBusyCheck(d.publisher.Busy)
	return d, nil
}

// eventsKeep is how many events the log keeps (events_keep).
func eventsKeep(cfg config.Config) (int, error) {
	if cfg.EventsKeep == "" {
		return events.DefaultKeep, nil
	}
	n, err := strconv.Atoi(cfg.EventsKeep)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("events_keep %q: want a number of events, at least 1", cfg.EventsKeep)
	}
	return n, nil
}

// checkStoreAccounts refuses to start over a store that is missing or
// empty while the state dir holds VM directories or banger's VMMs run: the
// daemon would otherwise forget them, and gc would offer to remove a
// running VM's process and disks. With recover, the records are rebuilt
// from the VM directories instead.
func checkStoreAccounts(ctx context.Context, cfg config.Config, st *store.Store, recover bool, log *slog.Logger) error {
	if recover {
		names, bad, err := engine.Recover(ctx, cfg, st)
		if err != nil {
			return fmt.Errorf("recovering vm records: %w", err)
		}
		log.Warn("recovered vm records from their directories", "vms", names, "unreadable", bad)
		if len(bad) > 0 {
			return fmt.Errorf("recovered %d vm records; these directories could not be read (move them aside to go on): %s", len(names), strings.Join(bad, "; "))
		}
		return nil
	}
	vms, err := st.ListVMs(ctx)
	if err != nil {
		return fmt.Errorf("the store cannot be read: %w", err)
	}
	if len(vms) > 0 {
		return nil
	}
	f, err := engine.InspectStateDir(cfg)
	if err != nil {
		return err
	}
	vmms := bangerVMMs(cfg)
	if len(f.VMDirs) == 0 && len(vmms) == 0 {
		return nil
	}
	return fmt.Errorf("the store %s has no VMs, but %s holds %d VM directories and %d VMM processes banger launched are running (pids %v): "+
		"the store is missing or was replaced. Restore banger.db from a backup, or run bangerd --recover to rebuild the records from the VM directories. Nothing was stopped or removed",
		filepath.Join(cfg.StateDir, "banger.db"), cfg.StateDir, len(f.VMDirs), len(vmms), vmms)
}

// bangerVMMs lists processes whose argv names an API socket in this run
// dir's per-VM directories: a hint, enough to refuse to start.
func bangerVMMs(cfg config.Config) []int {
	prefix := filepath.Join(cfg.RunDir, "vm") + "/"
	pids, _ := system.ListPIDs()
	var out []int
	for _, pid := range pids {
		argv, err := system.ProcCmdline(pid)
		if err != nil || pid == os.Getpid() {
			continue
		}
		for _, a := range argv {
			if strings.Contains(a, prefix) && strings.Contains(a, "api.sock") {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

func gatewayIf(on bool, gw string) string {
	if on {
		return gw
	}
	return ""
}

// inventoryDisks is the disk manager the inventory lists and removes with.
func inventoryDisks(deps Deps, ed engine.Deps) inventory.HostDisks {
	if deps.Disks != nil {
		return deps.Disks
	}
	if hd, ok := ed.RootDisks.(inventory.HostDisks); ok {
		return hd
	}
	return &storage.Manager{Runner: ed.Runner, Method: ed.RootMethod}
}

// fillDeps sets real implementations for every dependency left nil.
func fillDeps(cfg config.Config, deps Deps, log *slog.Logger) engine.Deps {
	ed := deps.Deps
	if deps.Disks != nil {
		if ed.RootDisks == nil {
			ed.RootDisks = deps.Disks
		}
		if ed.DiskFiles == nil {
			ed.DiskFiles = deps.Disks
		}
	}
	if ed.Runner == nil {
		ed.Runner = system.ExecRunner{Logger: log}
	}
	if ed.Now == nil {
		ed.Now = time.Now
	}
	if ed.KVMUsable == nil {
		ed.KVMUsable = qemu.KVMUsable
	}
	if ed.Firecracker == nil {
		ed.Firecracker = &firecracker.Driver{Binary: cfg.FirecrackerBin, Logger: log}
	}
	if ed.QEMU == nil {
		ed.QEMU = &qemu.Driver{Binary: cfg.QEMUBin, Logger: log}
	}
	if ed.RootDisks == nil || ed.DiskFiles == nil {
		method := storage.Method(cfg.RootDiskMethod)
		if method == "" || method == "auto" {
			method = storage.DetectMethod(context.Background(), ed.Runner)
		}
		m := &storage.Manager{Runner: ed.Runner, Method: method, Logger: log, LockDir: cfg.RunDir}
		if ed.RootDisks == nil {
			ed.RootDisks = m
			ed.RootMethod = method
		}
		if ed.DiskFiles == nil {
			ed.DiskFiles = m
		}
	}
	if ed.RootMethod == "" {
		ed.RootMethod = storage.MethodCopy
	}
	if ed.Cgroups == nil && cfg.Confine != "off" && os.Geteuid() == 0 {
		if m, err := cgroup.Detect(cfg.CgroupRoot, cfg.CgroupParent); err != nil {
			ed.CgroupErr = err.Error()
		} else {
			ed.Cgroups = m
		}
	}
	if ed.Network == nil && cfg.Network != "off" && cfg.Network != "false" && os.Geteuid() == 0 {
		nc := engine.NetConfigOf(cfg)
		ed.Network = &network.Manager{Config: nc, Logger: log}
		if ed.NetPolicy == nil {
			ed.NetPolicy = &policy.Manager{Config: policy.Config{Bridge: nc.Bridge, Gateway: nc.Gateway(), Subnet: nc.Subnet, EgressNAT: cfg.EgressNAT}, Logger: log}
		}
	}
	return ed
}

// lockStateDir takes the one-daemon-per-state-dir lock. The lock file is
// opened without following a symlink: a link planted at its path is refused.
func lockStateDir(stateDir string) (*os.File, error) {
	path := filepath.Join(stateDir, "bangerd.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		return nil, fmt.Errorf("another bangerd (pid %s) holds %s: %w", string(b), path, err)
	}
	f.Truncate(0)
	f.WriteString(strconv.Itoa(os.Getpid()))
	return f, nil
}

// Listen opens the API socket, and the metrics listener when one is
// configured.
func (d *Daemon) Listen() error {
	if err := d.API.Listen(); err != nil {
		return err
	}
	if d.metricsNet == "" || d.metricsListener != nil {
		return nil
	}
	l, err := listenMetrics(d.cfg, d.metricsNet, d.metricsAddr)
	if err != nil {
		return fmt.Errorf("metrics_listen: %w", err)
	}
	d.metricsListener = l
	return nil
}

// listenMetrics opens the metrics listener. A unix socket is made like the
// API's: never world-connectable, the banger group's when it exists; a
// stale one (nothing answers) is replaced.
func listenMetrics(cfg config.Config, network, addr string) (net.Listener, error) {
	if network != "unix" {
		return net.Listen(network, addr)
	}
	if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(addr); err == nil {
		if c, err := net.DialTimeout("unix", addr, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("something already answers on %s", addr)
		}
		if err := os.Remove(addr); err != nil {
			return nil, err
		}
	}
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", addr)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	l.(*net.UnixListener).SetUnlinkOnClose(true)
	if gid, ok := localapi.LookupGroup(cfg.Group); ok {
		if err := os.Chown(addr, os.Getuid(), gid); err == nil {
			os.Chmod(addr, 0o660)
		}
	}
	return l, nil
}

// Serve starts the engine (reconcile in the background, then the
// publishers) and serves the API until ctx is done or a client asks the
// daemon to stop. The API answers while reconcile runs.
func (d *Daemon) Serve(ctx context.Context) error {
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	err := d.Engine.Start(ectx, func() {
		ports, err := d.Engine.StoredPorts(ectx)
		if err != nil {
			d.log.Error("loading port forwards", "err", err)
		}
		var sp []publish.StoredPort
		for _, p := range ports {
			sp = append(sp, publish.StoredPort{VMID: p.VMID, Spec: p.Spec})
		}
		d.publisher.Start(sp)
	})
	if err != nil {
		return err
	}
	if d.metricsListener != nil {
		l := d.metricsListener
		go func() {
			if err := d.API.ServeMetrics(ectx, l, d.Metrics.Gatherer()); err != nil {
				d.log.Error("serving metrics", "addr", l.Addr().String(), "err", err)
			}
		}()
		d.log.Info("serving metrics", "addr", l.Addr().String())
	}
	d.log.Info("bangerd serving", "socket", d.cfg.Socket, "state_dir", d.cfg.StateDir, "version", api.Version, "pid", os.Getpid())
	err = d.API.Serve(ectx)
	d.log.Info("bangerd shutting down")
	return err
}

// Ready is closed once startup reconcile finished.
func (d *Daemon) Ready() <-chan struct{} { return d.Engine.Ready() }

// Close releases the publishers, the engine's guest connections, the store
// and the state-dir lock. VMs keep running: they outlive the daemon.
func (d *Daemon) Close() error {
	d.publisher.Close()
	d.Engine.Close()
	d.Events.Close() // stores what is queued, before the store closes
	if d.metricsListener != nil {
		d.metricsListener.Close()
	}
	err := d.Store.Close()
	if d.lockFile != nil {
		d.lockFile.Close()
	}
	return err
}

// What the engine finds by type assertion on the drivers, checked at
// compile time: losing a method would otherwise only show as a refusal
// ("qemu cannot keep paused VMs") at run time.
var (
	_ engine.Suspender     = (*qemu.Driver)(nil)
	_ engine.SnapshotSaver = (*qemu.Driver)(nil)
	_ engine.Pauser        = (*qemu.Driver)(nil)
	_ engine.Suspender     = (*firecracker.Driver)(nil)
)
