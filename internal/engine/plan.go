package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/network"
	"github.com/banger-dev/banger/internal/network/policy"
	"github.com/banger-dev/banger/internal/storage"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// The plan is the one ordered list of named steps that brings a VM up on
// this host. Start runs it forward; a failed start, stop, delete, reconcile
// and the exit watcher run the undos in reverse for whatever is present.
// Every undo is idempotent and destroys only what it proves is this VM's:
// names come from the VM's id, never from the scratch file, and processes,
// loop devices and taps are checked against the kernel before they go.
//
// Where each host object is made and removed:
//
//	step                         do                      undo
//	preparing vm directories     mkdir vm and run dir    remove the VM's sockets
//	making root disk             copy or COW file        (files go with the VM dir at delete)
//	making work disk             mkfs.ext4 file          (likewise)
//	activating root disk         loops + dm (dm method)  deactivate loops and dm proven ours
//	writing guest configuration  debugfs writes          -
//	creating tap                 tap bgr<id>             delete tap bgr<id>
//	applying network policy      nft rules for the tap   remove the rules tagged with the VM's id
//	confining vmm                cgroup, owners, jail    remove jail root and cgroup (killing what is left in it)
//	starting vmm                 launch the VMM          shut down the VMM proven ours
type step struct {
	key  string // short name for failpoints: start.KEY.before, teardown.KEY.after, ...
	name string
	do   func(ctx context.Context, r *run) error
	undo func(ctx context.Context, r *run) error
	// holdsOthers: while this step's object may still exist, the objects
	// of the steps before it must stay (a VMM has the disks and tap open).
	holdsOthers bool
}

// run is what one pass of the plan works on. h is saved (cache and
// handles.json) after each change, so a crash leaves a record of what
// exists.
type run struct {
	vm      *model.VMRecord
	im      model.Image
	drv     VMMDriver
	h       model.VMHandles
	rootDev string
	// stop options, for the vmm step's undo.
	force   bool
	timeout time.Duration
	// killed is set when the VMM had to be killed after a graceful stop
	// was asked for.
	killed bool
	// confinement is how the VMM is launched (nil: unconfined).
	confinement *vmm.Confinement
	// jailer is how a confined Firecracker runs through its jailer (nil: not).
	jailer *vmm.Jailer
	// incoming is the saved state a resume restores (nil: a cold boot).
	// Steps that would write into the guest's disks are skipped then.
	incoming *vmm.Incoming
	// clone is the snapshot a VM made from one restores at its first start.
	clone *Snapshot
	// took is how long each step of forward took, in plan order, for the
	// start's log line.
	took []stepTime
}

type stepTime struct {
	key string
	d   time.Duration
}

// stepTimes renders r.took as "dirs=1ms rootdisk=120ms ...".
func (r *run) stepTimes() string {
	var b strings.Builder
	for i, t := range r.took {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%s", t.key, t.d.Round(100*time.Microsecond))
	}
	return b.String()
}

func (e *Engine) plan() []step {
	return []step{
		{key: "dirs", name: "preparing vm directories", do: e.makeDirs, undo: e.removeSockets},
		{key: "rootdisk", name: "making root disk", do: e.makeRootDisk},
		{key: "workdisk", name: "making work disk", do: e.makeWorkDisk},
		{key: "activate", name: "activating root disk", do: e.activateRootDisk, undo: e.deactivateRootDisk},
		{key: "guestconfig", name: "writing guest configuration", do: e.writeGuestConfig},
		{key: "tap", name: "creating tap", do: e.createTap, undo: e.deleteTap},
		{key: "netpolicy", name: "applying network policy", do: e.applyNetPolicy, undo: e.removeNetPolicy},
		{key: "confine", name: "confining vmm", do: e.confine, undo: e.unconfine},
		{key: "vmm", name: "starting vmm", do: e.launchVMM, undo: e.stopVMM, holdsOthers: true},
	}
}

// saveHandles records r.h in the cache and the VM's scratch file.
func (e *Engine) saveHandles(r *run) error {
	e.handles.set(r.vm.ID, r.h)
	if err := hit(context.Background(), fpHandlesBefore); err != nil {
		return err
	}
	if err := writeHandlesFile(handlesPath(*r.vm), r.h); err != nil {
		return err
	}
	return hit(context.Background(), fpHandlesAfter)
}

// noteHandles records r.h as saveHandles does, during teardown: the kernel
// and the cache are what teardown acts on, so a scratch file that cannot be
// written (a full disk, something planted at its path) is logged, not fatal.
func (e *Engine) noteHandles(r *run) {
	if err := e.saveHandles(r); err != nil {
		e.log.Warn("recording handles during teardown", "vm", r.vm.Name, "err", err)
	}
}

// forward runs the plan; when a step fails, it undoes that step (its undo
// removes whatever half of it exists) and every step done before it, in
// reverse order, and returns the failure naming the step.
func (e *Engine) forward(ctx context.Context, r *run) error {
	steps := e.plan()
	for i, s := range steps {
		fp := planPoints[s.key]
		err := hit(ctx, fp.doBefore)
		if err == nil {
			began := time.Now()
			err = s.do(ctx, r)
			r.took = append(r.took, stepTime{s.key, time.Since(began)})
		}
		if err == nil {
			err = hit(ctx, fp.doAfter)
		}
		if err != nil {
			undoErr := e.undo(ctx, r, steps[:i+1])
			return errors.Join(fmt.Errorf("%s: %w", s.name, err), undoErr)
		}
	}
	return nil
}

// undo runs the undos of steps in reverse, without the request's deadline.
// A VMM that cannot be stopped ends the unwinding at once: its disks and
// tap stay while it may still use them. Other failures are collected and
// the unwinding goes on; what remains stays recorded in the scratch file.
func (e *Engine) undo(ctx context.Context, r *run, steps []step) error {
	ctx = context.WithoutCancel(ctx)
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		s := steps[i]
		if s.undo == nil {
			continue
		}
		fp := planPoints[s.key]
		err := hit(ctx, fp.undoBefore)
		if err == nil {
			err = s.undo(ctx, r)
		}
		if err == nil {
			err = hit(ctx, fp.undoAfter)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", s.name, err))
			if s.holdsOthers {
				break
			}
		}
	}
	if len(errs) == 0 {
		e.handles.delete(r.vm.ID)
		if err := removeHandlesFile(handlesPath(*r.vm)); err != nil {
			e.log.Warn("removing the scratch file", "vm", r.vm.Name, "err", err)
		}
	} else {
		e.noteHandles(r)
	}
	return errors.Join(errs...)
}

// teardown runs every undo of the plan for whatever is present.
func (e *Engine) teardown(ctx context.Context, r *run) error {
	return e.undo(ctx, r, e.plan())
}

func (e *Engine) makeDirs(ctx context.Context, r *run) error {
	if err := os.MkdirAll(r.vm.Runtime.VMDir, 0o750); err != nil {
		return err
	}
	return os.MkdirAll(VMRunDir(e.cfg, r.vm.ID), 0o750)
}

// removeSockets removes the VM's sockets (Firecracker never unlinks them).
// The paths are derived from the VM's id.
func (e *Engine) removeSockets(ctx context.Context, r *run) error {
	var errs []error
	for _, p := range []string{apiSockPath(e.cfg, r.vm.ID), vsockPath(e.cfg, r.vm.ID)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if matches, _ := filepath.Glob(vsockPath(e.cfg, r.vm.ID) + "_*"); matches != nil {
		for _, m := range matches {
			os.Remove(m)
		}
	}
	return errors.Join(errs...)
}

func (e *Engine) makeRootDisk(ctx context.Context, r *run) error {
	if r.clone != nil {
		return e.copyFromSnapshot(ctx, r.clone, r.clone.RootDisk, rootDiskPath(*r.vm))
	}
	if _, err := os.Stat(rootDiskPath(*r.vm)); err == nil {
		return nil
	}
	_, err := e.deps.RootDisks.CreateRootDisk(ctx, r.vm.ID, r.im.RootfsPath, r.vm.Runtime.VMDir, r.vm.Spec.DiskSizeBytes)
	return err
}

func (e *Engine) makeWorkDisk(ctx context.Context, r *run) error {
	if r.clone != nil {
		return e.copyFromSnapshot(ctx, r.clone, r.clone.WorkDisk, r.vm.Runtime.WorkDiskPath)
	}
	if _, err := os.Stat(r.vm.Runtime.WorkDiskPath); err == nil {
		return nil
	}
	seed := filepath.Join(r.vm.Runtime.VMDir, "work-seed")
	if err := os.MkdirAll(filepath.Join(seed, ".banger", "sessions"), 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(seed)
	return e.deps.DiskFiles.CreateWorkDisk(ctx, r.vm.Runtime.WorkDiskPath, r.vm.Spec.WorkDiskBytes, seed)
}

func (e *Engine) activateRootDisk(ctx context.Context, r *run) error {
	if r.incoming != nil {
		// A suspended VM kept its root disk active: reuse what the kernel has.
		if kh := e.provenRootHandles(ctx, *r.vm, r.h.RootHandles); kh.DMDev != "" {
			r.h.RootHandles = kh
			r.rootDev = kh.DMDev
			return e.saveHandles(r)
		}
	}
	dev, rh, err := e.deps.RootDisks.ActivateRootDisk(ctx, r.vm.ID, r.im.RootfsPath, rootDiskPath(*r.vm))
	if err != nil {
		return err
	}
	r.rootDev = dev
	r.h.RootHandles = rh
	return e.saveHandles(r)
}

// deactivateRootDisk tears down the VM's dm device and loops. What goes is
// what the kernel says holds this VM's root disk: the dm device named from
// its id and the loops in that device's table, and otherwise loops backed
// by this VM's own files. Names from the scratch file only add loops that
// the kernel confirms are backed by this VM's files (after a reboot a loop
// number may belong to someone else).
func (e *Engine) deactivateRootDisk(ctx context.Context, r *run) error {
	rh := e.provenRootHandles(ctx, *r.vm, r.h.RootHandles)
	if rh.IsZero() {
		r.h.RootHandles = model.RootHandles{}
		return nil
	}
	if err := e.deps.RootDisks.DeactivateRootDisk(ctx, rh); err != nil {
		return err
	}
	r.h.RootHandles = model.RootHandles{}
	e.noteHandles(r)
	return nil
}

// provenRootHandles is what of a VM's root disk the kernel proves is there
// and the VM's: see deactivateRootDisk.
func (e *Engine) provenRootHandles(ctx context.Context, vm model.VMRecord, hint model.RootHandles) model.RootHandles {
	if hint.DMName != "" && hint.DMName != storage.DMName(vm.ID) {
		e.log.Warn("scratch file names a dm device that is not this vm's: leaving it alone", "vm", vm.Name, "dm", hint.DMName)
	}
	dmMethod := e.deps.RootMethod == storage.MethodDM || vm.Runtime.RootDiskMethod == string(storage.MethodDM)
	if !dmMethod && hint.IsZero() {
		return model.RootHandles{}
	}
	if kh, err := e.deps.RootDisks.FindRootHandles(ctx, vm.ID); err != nil {
		e.log.Warn("cannot read the vm's dm device; using checked scratch names", "vm", vm.Name, "err", err)
	} else if kh.DMName != "" {
		return kh
	}
	// No dm device: only loops backed by this VM's files remain to remove.
	loops, err := e.deps.RootDisks.ListLoopDevices(ctx)
	if err != nil {
		e.log.Warn("cannot list loop devices; leaving them", "vm", vm.Name, "err", err)
		return model.RootHandles{}
	}
	var out model.RootHandles
	cow := rootDiskPath(vm)
	base := ""
	if im, err := e.store.GetImage(ctx, vm.Image); err == nil {
		base = im.RootfsPath
	}
	backs := func(dev, want string) bool {
		file, ok := loops[dev]
		return ok && want != "" && strings.TrimSuffix(file, " (deleted)") == want
	}
	if hint.COWLoop != "" && backs(hint.COWLoop, cow) {
		out.COWLoop = hint.COWLoop
	} else {
		for dev := range loops {
			if backs(dev, cow) {
				out.COWLoop = dev
				break
			}
		}
	}
	// A base loop is over the shared image file: only the one the scratch
	// file names, and only if it is still over that file.
	if hint.BaseLoop != "" && backs(hint.BaseLoop, base) {
		out.BaseLoop = hint.BaseLoop
	} else if hint.BaseLoop != "" {
		e.log.Warn("loop device is not over this vm's image: leaving it alone", "vm", vm.Name, "loop", hint.BaseLoop)
	}
	return out
}

// writeGuestConfig writes banger's SSH key, the hostname and the resolver
// into the VM's own root disk before boot, so access never depends on what
// the image already contains. The files are also kept in the VM's system
// overlay directory for inspection.
func (e *Engine) writeGuestConfig(ctx context.Context, r *run) error {
	if r.incoming != nil {
		return nil // the restored guest has these files in its memory and disk already
	}
	pub, err := e.sshPublicKey()
	if err != nil {
		return err
	}
	vm := *r.vm
	files := []storage.File{
		{Path: "/root/.ssh/authorized_keys", Mode: 0o600, Data: pub},
		{Path: "/etc/hostname", Mode: 0o644, Data: []byte(vm.Name + "\n")},
		{Path: "/etc/resolv.conf", Mode: 0o644, Data: []byte(fmt.Sprintf("nameserver %s\nsearch %s\n", e.Gateway(), e.cfg.DNSZone))},
	}
	if err := os.MkdirAll(vm.Runtime.SystemOverlay, 0o750); err == nil {
		for _, f := range files {
			p := filepath.Join(vm.Runtime.SystemOverlay, strings.TrimPrefix(f.Path, "/"))
			os.MkdirAll(filepath.Dir(p), 0o750)
			os.WriteFile(p, f.Data, f.Mode)
		}
	}
	// A clone's host key, which its guest kept on tmpfs only (see
	// identifyClone), goes to its disk before it boots cold. Not into the
	// overlay copy: a private key is kept in one place.
	if key, err := os.ReadFile(cloneHostKeyPath(vm)); err == nil {
		kf, err := agent.GuestKeyFiles(key)
		if err != nil {
			return fmt.Errorf("the clone's host key %s: %w", cloneHostKeyPath(vm), err)
		}
		for _, f := range kf {
			files = append(files, storage.File{Path: f.Path, Mode: os.FileMode(f.Mode), Data: f.Data})
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading the clone's host key: %w", err)
	}
	return e.deps.DiskFiles.InjectFiles(ctx, r.rootDev, files)
}

// createTap makes the VM's tap, named from its id. The name is recorded
// before the tap exists, so a crash in between leaves a record to clean.
func (e *Engine) createTap(ctx context.Context, r *run) error {
	if e.deps.Network == nil {
		return nil
	}
	r.h.TapDevice = network.TapName(r.vm.ID)
	if err := e.saveHandles(r); err != nil {
		return err
	}
	if err := e.deps.Network.CreateTap(ctx, r.h.TapDevice); err != nil {
		return err
	}
	if r.clone != nil {
		// A clone restores its source's MAC and address: it stays off the
		// bridge until it has its own (StartVM sets the tap up then). Its
		// own link stays up, so the guest sees no carrier change, which
		// its kernel would act on only up to a second later.
		if err := e.deps.Network.SetTapUp(ctx, r.h.TapDevice, false); err != nil {
			return err
		}
	}
	// A reused address may be cached at a deleted VM's MAC (see
	// network.Manager.SetNeighbor): best effort, a miss only costs time.
	if n, ok := e.deps.Network.(neighborSetter); ok && r.vm.Runtime.GuestIP != "" && r.vm.Runtime.GuestMAC != "" {
		if err := n.SetNeighbor(ctx, r.vm.Runtime.GuestIP, r.vm.Runtime.GuestMAC); err != nil {
			e.log.Warn("neighbour entry for the guest", "vm", r.vm.Name, "err", err)
		}
	}
	return nil
}

// neighborSetter is the optional part of Network that updates the host's
// neighbour cache for a guest.
type neighborSetter interface {
	SetNeighbor(ctx context.Context, ip, mac string) error
}

// deleteTap removes the VM's own tap, whose name is derived from its id,
// whatever the scratch file says: a name read from handles.json is a hint,
// and a tap banger did not name for this VM is never deleted. A VM whose
// scratch file was lost still has its tap removed.
func (e *Engine) deleteTap(ctx context.Context, r *run) error {
	if e.deps.Network == nil {
		r.h.TapDevice = ""
		return nil
	}
	own := network.TapName(r.vm.ID)
	if r.h.TapDevice != "" && r.h.TapDevice != own {
		e.log.Warn("scratch file names a tap that is not this vm's: leaving it alone", "vm", r.vm.Name, "tap", r.h.TapDevice, "own", own)
	}
	taps, err := e.deps.Network.ListTaps(ctx)
	if err != nil {
		return fmt.Errorf("listing taps: %w", err)
	}
	present := false
	for _, t := range taps {
		present = present || t == own
	}
	if present {
		if err := e.deps.Network.DeleteTap(ctx, own); err != nil {
			return err
		}
		if err := e.deps.Network.ReleaseBridgeIfUnused(ctx); err != nil {
			e.log.Warn("releasing bridge", "err", err)
		}
	}
	r.h.TapDevice = ""
	e.noteHandles(r)
	return nil
}

func (e *Engine) launchVMM(ctx context.Context, r *run) error {
	if r.incoming == nil {
		os.Remove(r.vm.Runtime.LogPath) // a fresh console log per boot
	}
	if r.confinement != nil {
		// A confined VMM opens its console log itself, as its own user.
		if err := createOwned(r.vm.Runtime.LogPath, r.confinement.Spec.UID); err != nil {
			return err
		}
	}
	m := e.machine(*r.vm, r.im, r.rootDev, r.h)
	m.Confine, m.Jailer = r.confinement, r.jailer
	if e.confined(*r.vm) && m.Confine == nil && m.Jailer == nil {
		return fmt.Errorf("vm %q: refusing to start its vmm unconfined", r.vm.Name)
	}
	m.Incoming = r.incoming
	p, err := r.drv.Launch(ctx, m)
	if err != nil {
		return err
	}
	r.h.PID, r.h.PIDStart = p.PID, p.Start
	return e.saveHandles(r)
}

// stopVMM shuts down the VM's VMM if a process proven to be it runs: by
// asking (within the timeout) unless force, then by SIGKILL, even when its
// API does not answer. A process that is not proven this VM's VMM is never
// signalled; it is logged and forgotten.
func (e *Engine) stopVMM(ctx context.Context, r *run) error {
	if r.h.PID == 0 {
		if p, ok := e.findVMM(*r.vm); ok {
			r.h.PID, r.h.PIDStart = p.PID, p.Start
		} else {
			return nil
		}
	}
	p := system.Process{PID: r.h.PID, Start: r.h.PIDStart}
	if err := e.proveVMM(*r.vm, r.h); err != nil {
		if !errors.Is(err, errProcessGone) {
			e.log.Warn("process not signalled: not proven this vm's vmm", "vm", r.vm.Name, "pid", p.PID, "reason", err)
		}
		r.h.PID, r.h.PIDStart = 0, 0
		e.noteHandles(r)
		return nil
	}
	drv := r.drv
	if drv == nil {
		var err error
		if drv, err = e.driverFor(r.vm.Runtime.VMM); err != nil {
			return err
		}
	}
	started := time.Now()
	if err := drv.Shutdown(ctx, e.machine(*r.vm, r.im, r.rootDev, r.h), p, r.timeout, r.force); err != nil {
		return err
	}
	if !r.force && r.timeout > 0 && time.Since(started) >= r.timeout {
		r.killed = true
	}
	r.h.PID, r.h.PIDStart = 0, 0
	e.noteHandles(r)
	return nil
}

// errStopTimedOut reports a graceful stop that had to kill the VMM.
func errStopTimedOut(vm model.VMRecord, timeout time.Duration) error {
	return errdefs.Unavailable("vm %q did not shut down within %s: its vmm was killed", vm.Name, timeout)
}

// vmPolicy is vm's guest network policy for its tap.
func (e *Engine) vmPolicy(vm model.VMRecord, tap string) (policy.VMPolicy, error) {
	ip, err := netip.ParseAddr(vm.Runtime.GuestIP)
	if err != nil {
		return policy.VMPolicy{}, fmt.Errorf("guest ip %q: %w", vm.Runtime.GuestIP, err)
	}
	n := vm.Spec.Options.Net
	p := policy.VMPolicy{VMID: vm.ID, Tap: tap, MAC: vm.Runtime.GuestMAC, IP: ip, Isolated: n.Isolated, AllowHostPorts: n.AllowHost}
	for _, list := range []struct {
		in  []string
		out *[]netip.Prefix
	}{{n.EgressAllow, &p.EgressAllow}, {n.EgressDeny, &p.EgressDeny}} {
		for _, c := range list.in {
			pfx, err := netip.ParsePrefix(c)
			if err != nil {
				return p, errdefs.Invalid("egress CIDR %q: %w", c, err)
			}
			*list.out = append(*list.out, pfx)
		}
	}
	return p, nil
}

// applyNetPolicy puts the VM's guest network policy on its tap before the
// VMM can send a frame: no reaching the host but DNS and allowed ports, no
// spoofing, isolation and egress lists as asked.
func (e *Engine) applyNetPolicy(ctx context.Context, r *run) error {
	if e.deps.NetPolicy == nil || r.h.TapDevice == "" {
		return nil
	}
	p, err := e.vmPolicy(*r.vm, r.h.TapDevice)
	if err != nil {
		return err
	}
	return e.deps.NetPolicy.Apply(ctx, p)
}

// removeNetPolicy removes the rules tagged with the VM's id (idempotent).
func (e *Engine) removeNetPolicy(ctx context.Context, r *run) error {
	if e.deps.NetPolicy == nil {
		return nil
	}
	return e.deps.NetPolicy.Remove(ctx, r.vm.ID)
}
