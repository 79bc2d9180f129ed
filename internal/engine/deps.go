package daemon

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/network"
	"github.com/banger-dev/banger/internal/storage"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
	"github.com/banger-dev/banger/internal/vmm/qemu"
)

// VMMDriver is what the daemon needs of a VMM (Firecracker or QEMU).
type VMMDriver interface {
	Launch(ctx context.Context, m vmm.Machine) (system.Process, error)
	Shutdown(ctx context.Context, m vmm.Machine, p system.Process, timeout time.Duration, force bool) error
	Identify(ctx context.Context, m vmm.Machine, p system.Process) error
	FindProcess(m vmm.Machine) (system.Process, bool)
}

// DiskManager is what the daemon needs of root and work disks.
type DiskManager interface {
	CreateRootDisk(ctx context.Context, vmID, baseRootfs, vmDir string, sizeBytes int64) (string, error)
	ActivateRootDisk(ctx context.Context, vmID, baseRootfs, diskPath string) (string, storage.RootHandles, error)
	DeactivateRootDisk(ctx context.Context, h storage.RootHandles) error
	CreateWorkDisk(ctx context.Context, path string, sizeBytes int64, seedDir string) error
	InjectFiles(ctx context.Context, image string, files []storage.File) error
	WithImageMounted(ctx context.Context, image string, fn func(dir string) error) error
	ReadFileFromImage(ctx context.Context, image, path string) ([]byte, error)
	ListLoopDevices(ctx context.Context) (map[string]string, error)
	ListDMDevices(ctx context.Context) ([]string, error)
}

// Networker is what the daemon needs of host networking.
type Networker interface {
	CreateTap(ctx context.Context, name string) error
	DeleteTap(ctx context.Context, name string) error
	ReleaseBridgeIfUnused(ctx context.Context) error
	ListTaps(ctx context.Context) ([]string, error)
}

// Runner runs host tools (system.ExecRunner in production).
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// fillDeps sets real implementations for every dependency left nil.
func (d *Daemon) fillDeps() {
	if d.deps.Runner == nil {
		d.deps.Runner = system.ExecRunner{Logger: d.log}
	}
	if d.deps.Now == nil {
		d.deps.Now = time.Now
	}
	if d.deps.KVMUsable == nil {
		d.deps.KVMUsable = qemu.KVMUsable
	}
	if d.deps.Firecracker == nil {
		d.deps.Firecracker = &firecracker.Driver{Binary: d.cfg.FirecrackerBin, Logger: d.log}
	}
	if d.deps.QEMU == nil {
		d.deps.QEMU = &qemu.Driver{Binary: d.cfg.QEMUBin, Logger: d.log}
	}
	if d.deps.Disks == nil {
		method := storage.Method(d.cfg.RootDiskMethod)
		if method == "" || method == "auto" {
			method = storage.DetectMethod(context.Background(), d.deps.Runner)
		}
		d.deps.Disks = &storage.Manager{Runner: d.deps.Runner, Method: method, Logger: d.log, LockDir: d.cfg.RunDir}
		d.deps.RootMethod = method
	}
	if d.deps.RootMethod == "" {
		d.deps.RootMethod = storage.MethodCopy
	}
	if d.deps.Network == nil && d.cfg.Network != "off" && d.cfg.Network != "false" && os.Geteuid() == 0 {
		nm := &network.Manager{Config: d.netConfig(), Logger: d.log}
		d.deps.Network = nm
	}
}

func (d *Daemon) netConfig() network.Config {
	c := network.Config{Bridge: d.cfg.Bridge, EgressNAT: d.cfg.EgressNAT}
	c.Subnet, _ = parsePrefix(d.cfg.Subnet)
	return c.WithDefaults()
}

func (d *Daemon) gateway() string { return d.netConfig().Gateway().String() }
func (d *Daemon) netmask() string { return d.netConfig().Netmask() }

// driverFor returns the driver of a VM's VMM.
func (d *Daemon) driverFor(name string) (VMMDriver, error) {
	switch name {
	case "firecracker":
		return d.deps.Firecracker, nil
	case "qemu":
		return d.deps.QEMU, nil
	}
	return nil, fmt.Errorf("unknown vmm %q", name)
}

// chooseVMM resolves a requested VMM ("", "auto", "firecracker", "qemu") to
// a VMM and accelerator this host can run, or explains why not.
func (d *Daemon) chooseVMM(requested string) (vmmName, accel, warning string, err error) {
	if requested == "" {
		requested = d.cfg.VMM
	}
	kvm := d.deps.KVMUsable()
	_, fcErr := system.LookPath(d.cfg.FirecrackerBin)
	_, qErr := system.LookPath(d.cfg.QEMUBin)
	qAccel := func() string {
		switch d.cfg.Accel {
		case "kvm", "tcg":
			return d.cfg.Accel
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
			return "", "", "", fmt.Errorf("vmm firecracker: binary %q not found", d.cfg.FirecrackerBin)
		}
		return "firecracker", "kvm", "", nil
	case "qemu":
		if qErr != nil {
			return "", "", "", fmt.Errorf("vmm qemu: binary %q not found (install qemu-system-x86)", d.cfg.QEMUBin)
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

// rootHandles and the VM handles convert between storage's view and the model's.
func rootHandles(h model.VMHandles) storage.RootHandles {
	return storage.RootHandles{BaseLoop: h.BaseLoop, COWLoop: h.COWLoop, DMName: h.DMName, DMDev: h.DMDev}
}
