// Package daemon is bangerd: it owns the store, the per-VM locks, the
// in-memory handles cache, and the orchestration of disks, network and VMMs.
// What a VM IS comes from the store; what is CURRENTLY TRUE comes from the
// handles cache, rebuilt at startup from handles.json scratch files and the OS.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/storage"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/vmm"
	"golang.org/x/sys/unix"
)

// Deps are the daemon's collaborators. Tests substitute fakes; New fills
// the real ones for anything left nil.
type Deps struct {
	Firecracker VMMDriver
	QEMU        VMMDriver
	Disks       DiskManager
	Network     Networker // nil: VMs get no network device
	Runner      Runner
	Now         func() time.Time
	// KVMUsable reports whether /dev/kvm works; used by VMM auto-selection.
	KVMUsable func() bool
	// WatchEvery is how often the daemon looks for VMs whose VMM exited on
	// its own (default 2s).
	WatchEvery time.Duration
	// GuestAddr overrides where a VM's SSH server answers (tests with a fake guest).
	GuestAddr func(vm model.VMRecord) string
	// GuestSessionsRoot overrides the guest directory of sessions (tests
	// whose stand-in guest runs on the host).
	GuestSessionsRoot string
	// RootMethod is the root-disk method Disks implements (detected when Disks is nil).
	RootMethod storage.Method
}

// Daemon is one bangerd.
type Daemon struct {
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
	list        listCache
	guests      *guestPool
	extras      *extras // DNS, port forwards (network.go)

	ready      chan struct{}            // closed when startup reconcile finished
	gates      map[string]chan struct{} // per VM, closed once reconcile processed it; fixed after Serve starts
	lockFile   *os.File
	listener   net.Listener
	server     *http.Server
	shutdownCh chan struct{}
	shutOnce   sync.Once
}

// New opens the store and prepares a daemon; Serve starts it.
func New(ctx context.Context, cfg config.Config, deps Deps, logger *slog.Logger) (*Daemon, error) {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	for _, dir := range []string{cfg.StateDir, cfg.RunDir, filepath.Join(cfg.StateDir, "vms"), filepath.Join(cfg.StateDir, "images")} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	if l := len(apiSockPath(cfg, "0123456789abcdef0123456789abcdef")); l > 107 {
		return nil, fmt.Errorf("run dir %s is too long: VM API socket paths would be %d bytes, over the 107-byte unix socket limit", cfg.RunDir, l)
	}
	lf, err := lockStateDir(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, filepath.Join(cfg.StateDir, "banger.db"))
	if err != nil {
		lf.Close()
		return nil, err
	}
	d := &Daemon{
		cfg:        cfg,
		deps:       deps,
		log:        logger,
		store:      st,
		handles:    newHandleCache(),
		ready:      make(chan struct{}),
		lockFile:   lf,
		shutdownCh: make(chan struct{}),
	}
	d.fillDeps()
	d.guests = newGuestPool(d)
	d.extras = newExtras(d)
	return d, nil
}

// lockStateDir takes the one-daemon-per-state-dir lock.
func lockStateDir(stateDir string) (*os.File, error) {
	path := filepath.Join(stateDir, "bangerd.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
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

// Listen opens the API socket. A leftover socket is dialed first: an answer
// means a daemon already serves it; silence means it is stale and removed.
func (d *Daemon) Listen() error {
	path := d.cfg.Socket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if _, err := os.Lstat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("a daemon already answers on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	// Create the socket with no access, then set owner and mode: there is no
	// window in which it is world-connectable.
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(true)
	mode := os.FileMode(0o600)
	if gid, ok := lookupGroup(d.cfg.Group); ok {
		if err := os.Chown(path, os.Getuid(), gid); err == nil {
			mode = 0o660
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return err
	}
	d.listener = l
	return nil
}

func lookupGroup(name string) (int, bool) {
	if name == "" {
		return 0, false
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, false
	}
	gid, err := strconv.Atoi(g.Gid)
	return gid, err == nil
}

// Serve runs startup reconcile in the background and serves the API until
// ctx is done or a shutdown is requested. The API answers while reconcile runs.
func (d *Daemon) Serve(ctx context.Context) error {
	if d.listener == nil {
		if err := d.Listen(); err != nil {
			return err
		}
	}
	d.server = &http.Server{
		Handler:     d.routes(),
		ConnContext: peerCredContext,
		ErrorLog:    slog.NewLogLogger(d.log.Handler(), slog.LevelDebug),
	}
	// Every VM known now gets a gate before the first request is served, so
	// no request sees a VM that reconcile has not looked at yet.
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return fmt.Errorf("listing vms for reconcile: %w", err)
	}
	d.gates = make(map[string]chan struct{}, len(vms))
	for _, vm := range vms {
		d.gates[vm.ID] = make(chan struct{})
	}
	go func() {
		d.reconcile(ctx, vms)
		d.extras.start(ctx)
		close(d.ready)
		if len(vms) >= bigListVMs {
			releaseMemory()
		}
	}()
	// The SSH key every VM will trust, made on first start (0600).
	if _, err := d.guests.signerKey(); err != nil {
		return fmt.Errorf("ssh key %s: %w", d.cfg.SSHKeyPath, err)
	}
	go d.keepConsoles(ctx, 5*time.Second)
	watchEvery := d.deps.WatchEvery
	if watchEvery <= 0 {
		watchEvery = 2 * time.Second
	}
	go func() {
		<-d.ready // reconcile seeds the handles first
		d.watchVMs(ctx, watchEvery)
	}()
	errc := make(chan error, 1)
	go func() { errc <- d.server.Serve(d.listener) }()
	d.log.Info("bangerd serving", "socket", d.cfg.Socket, "state_dir", d.cfg.StateDir, "version", api.Version, "pid", os.Getpid())
	select {
	case <-ctx.Done():
	case <-d.shutdownCh:
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	d.log.Info("bangerd shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d.server.Shutdown(sctx)
	return nil
}

// Close releases the store, the extras and the state-dir lock. VMs keep
// running: they outlive the daemon by design.
func (d *Daemon) Close() error {
	d.extras.stop()
	d.guests.closeAll()
	err := d.store.Close()
	if d.lockFile != nil {
		d.lockFile.Close()
	}
	return err
}

// Ready is closed once startup reconcile finished.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

func (d *Daemon) requestShutdown() { d.shutOnce.Do(func() { close(d.shutdownCh) }) }

// Paths derived deterministically from a VM's id.

func vmDir(cfg config.Config, id string) string { return filepath.Join(cfg.StateDir, "vms", id) }

// vmRunDir holds sockets; kept short for the 108-byte unix socket limit.
func vmRunDir(cfg config.Config, id string) string { return filepath.Join(cfg.RunDir, "vm", id[:16]) }

func apiSockPath(cfg config.Config, id string) string {
	return filepath.Join(vmRunDir(cfg, id), "api.sock")
}

func vsockPath(cfg config.Config, id string) string {
	return filepath.Join(vmRunDir(cfg, id), "vsock.sock")
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
func (d *Daemon) machine(vm model.VMRecord, im model.Image, rootDev string, h model.VMHandles) vmm.Machine {
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
		m.Binary = d.cfg.FirecrackerBin
		if im.VMLinux != "" {
			m.Kernel = im.VMLinux
		}
	} else {
		m.Binary = d.cfg.QEMUBin
	}
	if h.TapDevice != "" {
		m.GuestIP = vm.Runtime.GuestIP
		m.GatewayIP = d.gateway()
		m.Netmask = d.netmask()
	}
	return m
}
