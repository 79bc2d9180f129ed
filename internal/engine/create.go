package engine

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/network"
	"github.com/banger-dev/banger/internal/store"
)

// Spec defaults and bounds.
const (
	defaultVCPUs     = 2
	defaultMemoryMiB = 1024
	defaultDiskSize  = 8 << 30
	defaultWorkDisk  = 4 << 30
	maxVCPUs         = 32
	minMemoryMiB     = 64
	maxMemoryMiB     = 256 << 10
	minDiskSize      = 16 << 20
	maxDiskSize      = 16 << 40
)

// CreateSpec is what a new VM is asked to be. Zero values take defaults.
type CreateSpec struct {
	Name          string
	Image         string
	VMM           string // "", "auto", "firecracker", "qemu"
	VCPUs         int
	MemoryMiB     int
	DiskSizeBytes int64
	WorkDiskBytes int64
	Ports         []string // port forward specs, [ADDR:]HOST:GUEST[/tcp|udp]
	Options       model.VMOptions
	Lifetime      Lifetime // TTL and idle timeout (lifetimes.go)
}

// validateCreate checks and fills a create spec. Bad input is
// ErrInvalidArgument and nothing is made.
func validateCreate(req *CreateSpec) error {
	if req.VCPUs == 0 {
		req.VCPUs = defaultVCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = defaultMemoryMiB
	}
	if req.DiskSizeBytes == 0 {
		req.DiskSizeBytes = defaultDiskSize
	}
	if req.WorkDiskBytes == 0 {
		req.WorkDiskBytes = defaultWorkDisk
	}
	switch {
	case req.VCPUs < 1 || req.VCPUs > maxVCPUs:
		return errdefs.Invalid("invalid vcpus %d: want 1 to %d", req.VCPUs, maxVCPUs)
	case req.MemoryMiB < minMemoryMiB || req.MemoryMiB > maxMemoryMiB:
		return errdefs.Invalid("invalid memory %d MiB: want %d to %d", req.MemoryMiB, minMemoryMiB, maxMemoryMiB)
	case req.DiskSizeBytes < minDiskSize || req.DiskSizeBytes > maxDiskSize:
		return errdefs.Invalid("invalid disk size %d bytes: want 16MiB to 16TiB", req.DiskSizeBytes)
	case req.WorkDiskBytes < minDiskSize || req.WorkDiskBytes > maxDiskSize:
		return errdefs.Invalid("invalid work disk size %d bytes: want 16MiB to 16TiB", req.WorkDiskBytes)
	}
	switch req.VMM {
	case "", "auto", "firecracker", "qemu":
	default:
		return errdefs.Invalid("invalid vmm %q: want auto, firecracker or qemu", req.VMM)
	}
	return validateOptions(&req.Options)
}

// CreateVM records a new VM: name, id, derived paths, guest address and
// vsock CID, and binds its port forwards. Disks are made at first start, so
// a create is a single row insert; on failure nothing remains.
func (e *Engine) CreateVM(ctx context.Context, req CreateSpec) (model.VMRecord, error) {
	if req.Options.From != "" {
		if err := e.checkFrom(&req); err != nil {
			return model.VMRecord{}, err
		}
	}
	if err := validateCreate(&req); err != nil {
		return model.VMRecord{}, err
	}
	if err := e.checkLifetime(req.Lifetime); err != nil {
		return model.VMRecord{}, err
	}
	e.setLifetime(&req.Options, req.Lifetime)
	if req.Name != "" {
		if err := validName(req.Name); err != nil {
			return model.VMRecord{}, errdefs.Invalid("%w", err)
		}
	}
	ports, err := e.validatePorts(ctx, req.Ports)
	if err != nil {
		return model.VMRecord{}, err
	}
	imageName := req.Image
	if imageName != "" {
		if _, err := e.store.GetImage(ctx, imageName); err != nil {
			return model.VMRecord{}, errdefs.NotFound("image %q not found (banger image list shows the images)", imageName)
		}
	} else if im, err := e.store.GetImage(ctx, ""); err == nil {
		imageName = im.Name
	}
	vmmName, accel := "", ""
	if req.VMM != "" && req.VMM != "auto" {
		if vmmName, accel, _, err = e.ChooseVMM(req.VMM); err != nil {
			return model.VMRecord{}, errdefs.Invalid("%w", err)
		}
	}

	e.createMu.Lock()
	defer e.createMu.Unlock()
	if req.Name == "" {
		req.Name = generateName(func(n string) bool { _, err := e.store.GetVM(ctx, n); return err == nil })
	} else if _, err := e.store.GetVM(ctx, req.Name); err == nil {
		return model.VMRecord{}, errdefs.AlreadyExists("vm %q already exists", req.Name)
	}
	if err := e.addrs.loadLocked(ctx, e.store); err != nil {
		return model.VMRecord{}, err
	}
	ip, err := e.addrs.allocateIPLocked(e.NetConfig().Subnet)
	if err != nil {
		return model.VMRecord{}, errdefs.Conflict("allocating a guest address: %w", err)
	}
	cid := e.addrs.nextCIDLocked()
	uid := 0
	if e.cfg.Confine == "off" {
		req.Options.Unconfined = true
	}
	if req.Options.Unconfined {
		e.log.Warn("vm will run unconfined (asked explicitly)", "vm", req.Name)
	} else {
		if err := e.ConfinementReady(); err != nil {
			return model.VMRecord{}, errdefs.Conflict("vm %q cannot be confined: %w (or create it with --unconfined, or set confine = off)", req.Name, err)
		}
		if uid, err = e.allocateUIDLocked(ctx); err != nil {
			return model.VMRecord{}, err
		}
	}
	id := newID()
	now := e.deps.Now().UTC()
	dir := VMDir(e.cfg, id)
	vm := model.VMRecord{
		ID: id, Name: req.Name, Image: imageName,
		Spec: model.VMSpec{VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, DiskSizeBytes: req.DiskSizeBytes, WorkDiskBytes: req.WorkDiskBytes, Options: req.Options},
		Runtime: model.VMRuntime{
			State: model.StateCreated, VMM: vmmName, Accel: accel, RootDiskMethod: string(e.deps.RootMethod),
			GuestIP: ip, GuestMAC: network.MACFromID(id),
			APISockPath: apiSockPath(e.cfg, id), VSockPath: vsockPath(e.cfg, id), VSockCID: cid,
			LogPath: filepath.Join(dir, "console.log"), MetricsPath: filepath.Join(dir, "metrics.log"),
			DNSName: req.Name + "." + e.cfg.DNSZone, VMDir: dir, SystemOverlay: filepath.Join(dir, "overlay"),
			WorkDiskPath: filepath.Join(dir, "work.ext4"),
			UID:          uid,
		},
		CreatedAt: now, UpdatedAt: now,
	}
	if err := hit(ctx, fpCreateInsertBefore); err != nil {
		return model.VMRecord{}, err
	}
	if err := e.store.CreateVM(ctx, vm); err != nil {
		if errors.Is(err, store.ErrExists) {
			return model.VMRecord{}, errdefs.AlreadyExists("%w", err)
		}
		return model.VMRecord{}, err
	}
	e.emit(EventUpdated, vm)
	e.addrs.takeLocked(vm)
	err = hit(ctx, fpCreateInsertAfter)
	if err == nil {
		err = e.addPorts(ctx, vm, ports)
	}
	if err != nil {
		e.store.DeleteVM(context.WithoutCancel(ctx), vm.ID)
		e.emit(EventDeleted, vm)
		e.addrs.releaseLocked(vm)
		return model.VMRecord{}, err
	}
	e.emit(EventCreated, vm)
	e.log.Info("vm created", "vm", vm.Name, "id", vm.ID, "ip", ip)
	return vm, nil
}

// addrBook is the set of guest addresses and vsock CIDs in use, kept in
// memory (under createMu) so a create does not scan the table; it is loaded
// from the store on first use and follows every create and delete.
type addrBook struct {
	loaded bool
	ips    map[netip.Addr]bool
	cids   map[uint32]bool
	uids   map[int]bool // loaded on first confined create
}

func (b *addrBook) loadLocked(ctx context.Context, st *store.Store) error {
	if b.loaded {
		return nil
	}
	ips, cids, err := st.UsedAddresses(ctx)
	if err != nil {
		return err
	}
	b.ips, b.cids = make(map[netip.Addr]bool, len(ips)), make(map[uint32]bool, len(cids))
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil {
			b.ips[a] = true
		}
	}
	for _, c := range cids {
		b.cids[c] = true
	}
	b.loaded = true
	return nil
}

func (b *addrBook) allocateIPLocked(subnet netip.Prefix) (string, error) {
	used := make([]netip.Addr, 0, len(b.ips))
	for a := range b.ips {
		used = append(used, a)
	}
	a, err := network.AllocateIP(subnet, used)
	if err != nil {
		return "", err
	}
	return a.String(), nil
}

// nextCIDLocked returns the lowest vsock CID >= 3 not in use (0-2 are reserved).
func (b *addrBook) nextCIDLocked() uint32 {
	for c := uint32(3); ; c++ {
		if !b.cids[c] {
			return c
		}
	}
}

func (b *addrBook) takeLocked(vm model.VMRecord) {
	if !b.loaded {
		return
	}
	if a, err := netip.ParseAddr(vm.Runtime.GuestIP); err == nil {
		b.ips[a] = true
	}
	b.cids[vm.Runtime.VSockCID] = true
	if b.uids != nil && vm.Runtime.UID != 0 {
		b.uids[vm.Runtime.UID] = true
	}
}

func (b *addrBook) releaseLocked(vm model.VMRecord) {
	if !b.loaded {
		return
	}
	if a, err := netip.ParseAddr(vm.Runtime.GuestIP); err == nil {
		delete(b.ips, a)
	}
	delete(b.cids, vm.Runtime.VSockCID)
	if b.uids != nil {
		delete(b.uids, vm.Runtime.UID)
	}
}
