package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/banger-dev/banger/internal/cgroup"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/network"
	"github.com/banger-dev/banger/internal/network/policy"
	"github.com/banger-dev/banger/internal/storage"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// Deps are the engine's collaborators. Tests substitute fakes; New fills
// the real ones for anything left nil.
type Deps struct {
	Firecracker VMMDriver
	QEMU        VMMDriver
	RootDisks   RootDisks
	DiskFiles   DiskFiles
	Network     Networker // nil: VMs get no network device
	Runner      Runner
	Now         func() time.Time
	// KVMUsable reports whether /dev/kvm works; used by VMM auto-selection.
	KVMUsable func() bool
	// WatchEvery is how often the engine looks for VMs whose VMM exited on
	// its own (default 2s).
	WatchEvery time.Duration
	// LifetimeEvery is how often TTLs and idle timeouts are checked
	// (default 1s).
	LifetimeEvery time.Duration
	// SysClassNet is where taps' counters are read (default /sys/class/net).
	SysClassNet string
	// GuestAddr overrides where a VM's SSH server answers (tests with a fake guest).
	GuestAddr func(vm model.VMRecord) string
	// GuestSessionsRoot overrides the guest directory of sessions (tests
	// whose stand-in guest runs on the host).
	GuestSessionsRoot string
	// RootMethod is the root-disk method RootDisks implements (detected when RootDisks is nil).
	RootMethod storage.Method
	// NetPolicy applies each VM's guest network policy (nil: no policy,
	// as when the network is off).
	NetPolicy NetPolicy
	// Cgroups makes the VMs' cgroups; nil when confinement is off or
	// cgroups are unusable (then CgroupErr says why).
	Cgroups   *cgroup.Manager
	CgroupErr string
}

// VMMDriver is what the engine needs of a VMM (Firecracker or QEMU).
type VMMDriver interface {
	Launch(ctx context.Context, m vmm.Machine) (system.Process, error)
	Shutdown(ctx context.Context, m vmm.Machine, p system.Process, timeout time.Duration, force bool) error
	Identify(ctx context.Context, m vmm.Machine, p system.Process) error
	FindProcess(m vmm.Machine) (system.Process, bool)
	// MatchesArgv reports whether argv carries m's identity tokens exactly.
	MatchesArgv(m vmm.Machine, argv []string) bool
}

// RootDisks makes, activates and tears down VMs' root disks.
type RootDisks interface {
	CreateRootDisk(ctx context.Context, vmID, baseRootfs, vmDir string, sizeBytes int64) (string, error)
	ActivateRootDisk(ctx context.Context, vmID, baseRootfs, diskPath string) (string, model.RootHandles, error)
	DeactivateRootDisk(ctx context.Context, h model.RootHandles) error
	// ListLoopDevices maps each attached loop device to its backing file, so
	// a loop named in a scratch file is checked before it is detached.
	ListLoopDevices(ctx context.Context) (map[string]string, error)
	// FindRootHandles asks the kernel for the dm device named for a VM and
	// the loops its table uses (zero when there is none).
	FindRootHandles(ctx context.Context, vmID string) (model.RootHandles, error)
}

// DiskFiles makes work disks and reads and writes files inside disk images
// that no guest has open.
type DiskFiles interface {
	CreateWorkDisk(ctx context.Context, path string, sizeBytes int64, seedDir string) error
	InjectFiles(ctx context.Context, image string, files []storage.File) error
	WithImageMounted(ctx context.Context, image string, fn func(dir string) error) error
	ReadFileFromImage(ctx context.Context, image, path string) ([]byte, error)
}

// Networker is what the engine needs of host networking.
type Networker interface {
	CreateTap(ctx context.Context, name string) error
	// SetTapUp sets a tap up or down (down: what the VM sends is dropped,
	// and the guest sees no change of its link).
	SetTapUp(ctx context.Context, name string, up bool) error
	DeleteTap(ctx context.Context, name string) error
	ReleaseBridgeIfUnused(ctx context.Context) error
	ListTaps(ctx context.Context) ([]string, error)
}

// NetPolicy is what the engine needs of the guest network policy.
type NetPolicy interface {
	Apply(ctx context.Context, p policy.VMPolicy) error
	Remove(ctx context.Context, vmID string) error
}

// Runner runs host tools (system.ExecRunner in production).
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// NetConfig is the host network VMs get (bridge, subnet, egress NAT).
func (e *Engine) NetConfig() network.Config { return NetConfigOf(e.cfg) }

// NetConfigOf is the host network of a configuration.
func NetConfigOf(cfg config.Config) network.Config {
	c := network.Config{Bridge: cfg.Bridge, EgressNAT: cfg.EgressNAT}
	c.Subnet, _ = parsePrefix(cfg.Subnet)
	return c.WithDefaults()
}

// Gateway is the host's address on the bridge: the guests' gateway and resolver.
func (e *Engine) Gateway() string { return e.NetConfig().Gateway().String() }
func (e *Engine) netmask() string { return e.NetConfig().Netmask() }

// RootMethod is the root-disk method in use.
func (e *Engine) RootMethod() storage.Method { return e.deps.RootMethod }

// KVMUsable reports whether /dev/kvm works on this host.
func (e *Engine) KVMUsable() bool { return e.deps.KVMUsable() }

// Networking reports whether VMs get a network device (root and network not off).
func (e *Engine) Networking() bool { return e.deps.Network != nil }

// driverFor returns the driver of a VM's VMM.
func (e *Engine) driverFor(name string) (VMMDriver, error) {
	switch name {
	case "firecracker":
		return e.deps.Firecracker, nil
	case "qemu":
		return e.deps.QEMU, nil
	}
	return nil, fmt.Errorf("unknown vmm %q", name)
}

// ChooseVMM resolves a requested VMM ("", "auto", "firecracker", "qemu") to
// a VMM and accelerator this host can run, or explains why not.
func (e *Engine) ChooseVMM(requested string) (vmmName, accel, warning string, err error) {
	if requested == "" {
		requested = e.cfg.VMM
	}
	kvm := e.deps.KVMUsable()
	_, fcErr := system.LookPath(e.cfg.FirecrackerBin)
	_, qErr := system.LookPath(e.cfg.QEMUBin)
	qAccel := func() string {
		switch e.cfg.Accel {
		case "kvm", "tcg":
			return e.cfg.Accel
		}
		if kvm {
			return "kvm"
		}
		return "tcg"
	}
	switch requested {
	case "firecracker":
		// Firecracker's own error reports a missing /dev/kvm; doctor warns beforehand.
		if fcErr != nil {
			return "", "", "", fmt.Errorf("vmm firecracker: binary %q not found", e.cfg.FirecrackerBin)
		}
		return "firecracker", "kvm", "", nil
	case "qemu":
		if qErr != nil {
			return "", "", "", fmt.Errorf("vmm qemu: binary %q not found (install qemu-system-x86)", e.cfg.QEMUBin)
		}
		a := qAccel()
		if a == "kvm" && !kvm {
			return "", "", "", fmt.Errorf("vmm qemu with accel kvm: /dev/kvm is not usable on this host")
		}
		if a == "tcg" {
			warning = "no usable /dev/kvm: QEMU runs under software emulation (TCG), which is slow"
		}
		return "qemu", a, warning, nil
	case "auto":
		if kvm && fcErr == nil {
			return "firecracker", "kvm", "", nil
		}
		if qErr == nil {
			a := qAccel()
			if a == "tcg" {
				warning = "no usable /dev/kvm: QEMU runs under software emulation (TCG), which is slow"
			}
			return "qemu", a, warning, nil
		}
		if fcErr == nil {
			return "firecracker", "kvm", "", nil
		}
		return "", "", "", fmt.Errorf("no VMM found: install firecracker (with /dev/kvm) or qemu-system-x86")
	}
	return "", "", "", fmt.Errorf("unknown vmm %q: want auto, firecracker or qemu", requested)
}
