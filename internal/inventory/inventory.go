// Package inventory accounts for every host object banger may own (VMM
// processes, taps, loop and dm devices, run and VM directories): doctor
// reports them with the VM that owns each, gc removes the orphans. It reads
// through the engine's view of the VMs and proves ownership from the kernel
// before it destroys anything; what it cannot prove it reports and leaves.
package inventory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/failpoint"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/storage"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/units"
)

// Failpoints around each removal gc makes (tests only).
var (
	fpGCRemoveBefore = failpoint.New("gc.remove.before")
	fpGCRemoveAfter  = failpoint.New("gc.remove.after")
)

// HostDisks is what the inventory needs of disks.
type HostDisks interface {
	ListLoopDevices(ctx context.Context) (map[string]string, error)
	ListDMDevices(ctx context.Context) ([]string, error)
	DeactivateRootDisk(ctx context.Context, h model.RootHandles) error
	FindRootHandles(ctx context.Context, vmID string) (model.RootHandles, error)
}

// Networker is what the inventory needs of host networking.
type Networker interface {
	ListTaps(ctx context.Context) ([]string, error)
	// TapBridge names the bridge a tap is attached to: a tap is banger's
	// (this daemon's) only when it is on this daemon's bridge.
	TapBridge(ctx context.Context, name string) (string, error)
	DeleteTap(ctx context.Context, name string) error
	ReleaseBridgeIfUnused(ctx context.Context) error
}

// Runner runs host tools (version probes).
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Policies is what the inventory needs of the guest network policy: which
// VMs have rules, and removing a VM's rules.
type Policies interface {
	List(ctx context.Context) ([]string, error)
	Remove(ctx context.Context, vmID string) error
	Check(ctx context.Context) error
}

// Inventory is doctor and gc of one bangerd.
type Inventory struct {
	Policies Policies // nil: no network policy
	Engine   *engine.Engine
	Config   config.Config
	Disks    HostDisks
	Network  Networker // nil: VMs get no network
	Runner   Runner
	Log      *slog.Logger
}

// Object is a host object with its owner.
type Object struct {
	Kind   string // process, tap, loop, dm, rundir, vmdir
	Name   string
	VM     string // owning VM's name; "" = orphan
	Orphan bool
	Detail string
}

// Check is one host check.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

// Report is doctor's answer.
type Report struct {
	Checks         []Check
	RootDiskMethod string
	DefaultVMM     string
	Objects        []Object
}

// Doctor checks the host and lists every object banger may own.
func (inv *Inventory) Doctor(ctx context.Context) (Report, error) {
	e := inv.Engine
	cfg := inv.Config
	rep := Report{RootDiskMethod: string(e.RootMethod())}
	check := func(name string, ok bool, detail string) {
		rep.Checks = append(rep.Checks, Check{Name: name, OK: ok, Detail: detail})
	}
	kvm := e.KVMUsable()
	check("kvm", kvm, map[bool]string{true: "/dev/kvm is usable", false: "/dev/kvm is missing or not usable: Firecracker cannot run; QEMU falls back to TCG (slow)"}[kvm])
	if p, err := system.LookPath(cfg.FirecrackerBin); err == nil {
		v, verr := runVersion(ctx, inv.Runner, p)
		check("firecracker", verr == nil, p+" "+v)
	} else {
		check("firecracker", false, fmt.Sprintf("%q not found (config firecracker_bin)", cfg.FirecrackerBin))
	}
	if p, err := system.LookPath(cfg.QEMUBin); err == nil {
		v, verr := runVersion(ctx, inv.Runner, p)
		check("qemu", verr == nil, p+" "+v)
	} else {
		check("qemu", false, fmt.Sprintf("%q not found (config qemu_bin; apt-get install qemu-system-x86)", cfg.QEMUBin))
	}
	dm := e.RootMethod() == storage.MethodDM
	_, dmErr := os.Stat("/dev/mapper/control")
	check("device-mapper", dm, map[bool]string{true: "available: root disks are dm snapshots", false: "not available (" + errString(dmErr) + "): root disks are per-VM copies"}[dm])
	_, loopErr := os.Stat("/dev/loop-control")
	check("loop", loopErr == nil, errOr(loopErr, "/dev/loop-control present"))
	_, tunErr := os.Stat("/dev/net/tun")
	check("tun", tunErr == nil, errOr(tunErr, "/dev/net/tun present"))
	net := inv.Network != nil
	check("network", net, map[bool]string{true: "bridge " + cfg.Bridge + " on " + cfg.Subnet + " (made when a VM starts)",
		false: "disabled (daemon not root, or network = off): VMs get no network device"}[net])
	gw := e.Gateway()
	check("dns", true, fmt.Sprintf("zone %s served on %s:53 once a VM runs; for host lookups point your resolver at it for that zone (e.g. resolvectl dns %s %s; resolvectl domain %s ~%s)",
		cfg.DNSZone, gw, cfg.Bridge, gw, cfg.Bridge, cfg.DNSZone))
	if name, accel, warning, err := e.ChooseVMM(""); err == nil {
		rep.DefaultVMM = name + "/" + accel
		if warning != "" {
			check("vmm", true, warning)
		}
	} else {
		check("vmm", false, err.Error())
	}
	if p, err := e.GuestAgent(); err != nil {
		check("guest-agent", false, err.Error()+": minimal image builds need it (config agent_bin)")
	} else {
		check("guest-agent", true, p+" (installed by minimal image builds; clones and resumes talk to it)")
	}
	// Confinement: can this daemon confine, and does any VMM run without it?
	if err := e.ConfinementReady(); err != nil {
		check("confinement", false, err.Error())
	} else {
		check("confinement", true, "VMMs run as their VM's own uid, in their own cgroup and jail")
	}
	if vms, err := e.ListVMs(ctx); err == nil {
		var loose []string
		for _, vm := range vms {
			if vm.Runtime.State == model.StateRunning && !e.Confinement(vm).Confined {
				loose = append(loose, vm.Name)
			}
		}
		if len(loose) > 0 {
			check("unconfined-vmms", false, fmt.Sprintf("running VMs whose VMM is not confined (runs as root, no jail or cgroup): %s; recreate them without --unconfined", strings.Join(loose, ", ")))
		}
	}
	if snaps, err := e.ListSnapshots(ctx); err == nil {
		var size int64
		var files int
		for _, sn := range snaps {
			size += sn.Size
			for _, f := range []string{sn.State, sn.MemFile, sn.RootDisk, sn.WorkDisk} {
				if f != "" {
					files++
				}
			}
		}
		detail := fmt.Sprintf("%d snapshots, %d files, %s on disk (banger snapshot list)", len(snaps), files, units.FormatSize(size))
		if pools, err := e.ListPools(ctx); err == nil && len(pools) > 0 {
			members := 0
			for _, p := range pools {
				members += len(p.Members)
			}
			detail += fmt.Sprintf("; %d warm pools holding %d paused VMs (banger pool list)", len(pools), members)
		}
		check("snapshots", true, detail)
	}
	if inv.Policies != nil {
		if err := inv.Policies.Check(ctx); err != nil {
			check("network-policy", false, err.Error())
		} else {
			check("network-policy", true, "nftables tables banger owns are as banger made them")
		}
	}
	objs, err := inv.objects(ctx)
	if err != nil {
		return rep, err
	}
	rep.Objects = objs
	return rep, nil
}

func errString(err error) string {
	if err == nil {
		return "no driver"
	}
	return err.Error()
}

func errOr(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

func runVersion(ctx context.Context, r Runner, bin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	out, err := r.Run(ctx, bin, "--version")
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line, err
}

// runDirName matches the per-VM run directories (the first 16 hex
// characters of a VM id) and vmDirName the VM directories (a whole id).
var (
	runDirName = regexp.MustCompile(`^[0-9a-f]{16}$`)
	vmDirName  = regexp.MustCompile(`^[0-9a-f]{32}$`)
)

// objects lists every host object banger may own, with the VM that owns
// it; objects no VM accounts for are orphans.
func (inv *Inventory) objects(ctx context.Context) ([]Object, error) {
	e := inv.Engine
	cfg := inv.Config
	// First what is on the host, then the VMs: every VM that made an object
	// seen here existed before the object did, so it is in the list taken
	// after (a VM created and started during the sweep is never taken for
	// an orphan).
	type raw struct{ kind, name, detail string }
	var found []raw
	note := func(kind, name, detail string) { found = append(found, raw{kind, name, detail}) }
	if inv.Network != nil {
		if taps, err := inv.Network.ListTaps(ctx); err == nil {
			for _, t := range taps {
				note("tap", t, "")
			}
		}
	}
	images := e.ImageFiles(ctx)
	if loops, err := inv.Disks.ListLoopDevices(ctx); err == nil {
		for dev, file := range loops {
			if strings.HasPrefix(file, cfg.StateDir+"/") || images[file] {
				note("loop", dev, file)
			}
		}
	}
	dms, dmErr := inv.Disks.ListDMDevices(ctx)
	if dmErr == nil {
		for _, name := range dms {
			note("dm", name, "")
		}
	}
	// VMM processes: a process is a candidate when its argv names a socket
	// under our run dir; it is listed with what proves (or fails to prove)
	// that it is a VMM banger launched.
	prefix := filepath.Join(cfg.RunDir, "vm") + "/"
	pids, _ := system.ListPIDs()
	for _, pid := range pids {
		if pid == os.Getpid() {
			continue
		}
		argv, err := system.ProcCmdline(pid)
		if err != nil || !mentions(argv, prefix) {
			continue
		}
		note("process", strconv.Itoa(pid), strings.Join(argv, " "))
	}
	if inv.Policies != nil {
		if ids, err := inv.Policies.List(ctx); err == nil {
			for _, id := range ids {
				note("nftrules", id, "nftables rules of vm "+id)
			}
		}
	}
	if ents, err := os.ReadDir(filepath.Join(cfg.RunDir, "vm")); err == nil {
		for _, ent := range ents {
			note("rundir", ent.Name(), filepath.Join(cfg.RunDir, "vm", ent.Name()))
		}
	}
	if ents, err := os.ReadDir(filepath.Join(cfg.StateDir, "vms")); err == nil {
		for _, ent := range ents {
			note("vmdir", ent.Name(), filepath.Join(cfg.StateDir, "vms", ent.Name()))
		}
	}

	vms, err := e.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[string]model.VMRecord{}
	for _, vm := range vms {
		byID[vm.ID] = vm
	}
	// What the VMs account for: their handles (cache, else scratch file),
	// the names derived from their ids, and the loops their dm devices are
	// built on (the kernel says so).
	owner := map[string]string{} // "kind:name" -> vm name
	dmSet := map[string]bool{}
	for _, n := range dms {
		dmSet[n] = true
	}
	for _, vm := range vms {
		h := e.HandlesHint(vm)
		for kind, name := range map[string]string{"tap": h.TapDevice, "loop": h.BaseLoop, "loop2": h.COWLoop, "dm": h.DMName} {
			if name != "" {
				owner[strings.TrimSuffix(kind, "2")+":"+name] = vm.Name
			}
		}
		owner["tap:"+e.TapName(vm.ID)] = vm.Name
		owner["dm:"+storage.DMName(vm.ID)] = vm.Name
		owner["nftrules:"+vm.ID] = vm.Name
		owner["vmdir:"+vm.ID] = vm.Name
		owner["rundir:"+vm.ID[:16]] = vm.Name
		if h.PID != 0 {
			owner["process:"+strconv.Itoa(h.PID)] = vm.Name
		}
		if !dmSet[storage.DMName(vm.ID)] {
			continue
		}
		if kh, err := inv.Disks.FindRootHandles(ctx, vm.ID); err == nil {
			for _, l := range []string{kh.BaseLoop, kh.COWLoop} {
				if l != "" {
					owner["loop:"+l] = vm.Name
				}
			}
		}
	}
	var objs []Object
	for _, f := range found {
		vm := owner[f.kind+":"+f.name]
		if vm == "" && f.kind == "process" {
			pid, _ := strconv.Atoi(f.name)
			for _, v := range vms {
				// Found by argv but not recorded (a VMM being launched, or a
				// scratch file that was lost): a process proven to be a VM's
				// VMM belongs to that VM, alive or not.
				if e.ProvesVMM(v, pid) {
					vm = v.Name
					break
				}
			}
		}
		objs = append(objs, Object{Kind: f.kind, Name: f.name, VM: vm, Orphan: vm == "", Detail: f.detail})
	}
	sort.Slice(objs, func(i, j int) bool {
		if objs[i].Kind != objs[j].Kind {
			return objs[i].Kind < objs[j].Kind
		}
		return objs[i].Name < objs[j].Name
	})
	return objs, nil
}

// mentions reports whether any argument holds a path under prefix.
func mentions(argv []string, prefix string) bool {
	for _, a := range argv {
		if strings.Contains(a, prefix) {
			return true
		}
	}
	return false
}

// GCResult lists what gc removed (or would remove with dryRun), what it
// found but left, and what failed.
type GCResult struct {
	DryRun  bool
	Removed []Object
	Kept    []Object // orphans gc will not touch, with the reason in Detail
	Errors  []string
}

// GC removes orphaned host objects. It never touches a VM that an
// operation holds or that is in a transitional state, signals only
// processes proven to be VMMs banger launched, and moves VM directories it
// cannot account for to STATE_DIR/lost+found instead of deleting disks. It
// is idempotent: a second run removes nothing.
func (inv *Inventory) GC(ctx context.Context, dryRun bool) (GCResult, error) {
	e := inv.Engine
	res := GCResult{DryRun: dryRun, Removed: []Object{}}
	// Hold every idle VM's lock for the whole sweep: a VM whose lock is
	// held, or whose state is transitional, is being changed, and
	// everything that could be its (its run and VM dirs, its derived tap and
	// dm, any process) is left alone.
	vms, err := e.ListVMs(ctx)
	if err != nil {
		return res, err
	}
	busy := map[string]bool{}
	for _, vm := range vms {
		unlock, ok := e.TryLockVM(vm.ID)
		if !ok {
			busy[vm.ID] = true
			continue
		}
		defer unlock()
		if cur, err := e.GetVMByID(ctx, vm.ID); err == nil && cur.Runtime.State.Transitional() {
			busy[vm.ID] = true
		}
	}
	objs, err := inv.objects(ctx)
	if err != nil {
		return res, err
	}
	// Processes first: they may hold taps and loops.
	order := map[string]int{"process": 0, "dm": 1, "loop": 2, "nftrules": 3, "tap": 4, "rundir": 5, "vmdir": 6}
	sort.SliceStable(objs, func(i, j int) bool { return order[objs[i].Kind] < order[objs[j].Kind] })
	keep := func(o Object, why string) {
		o.Detail = why
		res.Kept = append(res.Kept, o)
	}
	for _, o := range objs {
		if !o.Orphan {
			continue
		}
		if (o.Kind == "rundir" || o.Kind == "vmdir") && busyPrefix(busy, o.Name) {
			keep(o, "its vm is being changed")
			continue
		}
		var proof func() error
		var remove func() error
		switch o.Kind {
		case "process":
			pid, _ := strconv.Atoi(o.Name)
			p, err := inv.provenOrphanVMM(pid)
			if err != nil {
				keep(o, "not proven a vmm banger launched, not signalled: "+err.Error())
				continue
			}
			remove = func() error { return p.Kill(5 * time.Second) }
		case "dm":
			// dm names are host-wide: another daemon (another state dir)
			// may own one. Ours only when this state dir holds its VM's
			// directory (an orphan VM dir, or one moved to lost+found).
			id := strings.TrimPrefix(o.Name, storage.DMName(""))
			if !strings.HasPrefix(o.Name, storage.DMName("")) || !vmDirName.MatchString(id) || !inv.holdsVMDir(id) {
				keep(o, "not proven this daemon's: no directory of its vm in "+inv.Config.StateDir)
				continue
			}
			remove = func() error { return inv.Disks.DeactivateRootDisk(ctx, model.RootHandles{DMName: o.Name}) }
		case "loop":
			remove = func() error { return inv.Disks.DeactivateRootDisk(ctx, model.RootHandles{BaseLoop: o.Name}) }
		case "tap":
			if !strings.HasPrefix(o.Name, e.TapName("")) {
				keep(o, "not a banger tap")
				continue
			}
			if br, err := inv.Network.TapBridge(ctx, o.Name); err != nil || br != inv.Config.Bridge {
				keep(o, fmt.Sprintf("not on this daemon's bridge %s (on %q)", inv.Config.Bridge, br))
				continue
			}
			remove = func() error {
				if err := inv.Network.DeleteTap(ctx, o.Name); err != nil {
					return err
				}
				return inv.Network.ReleaseBridgeIfUnused(ctx)
			}
		case "nftrules":
			remove = func() error { return inv.Policies.Remove(ctx, o.Name) }
		case "rundir":
			if !runDirName.MatchString(o.Name) {
				keep(o, "not named like a vm run dir")
				continue
			}
			proof = func() error { return notSymlink(o.Detail) }
			remove = func() error { return os.RemoveAll(o.Detail) }
		case "vmdir":
			if !vmDirName.MatchString(o.Name) {
				keep(o, "not named like a vm dir")
				continue
			}
			src, dest := o.Detail, filepath.Join(inv.Config.StateDir, "lost+found", o.Name)
			proof = func() error { return notSymlink(src) }
			remove = func() error {
				if err := os.MkdirAll(filepath.Dir(dest), 0o700); err != nil {
					return err
				}
				return os.Rename(src, dest)
			}
			o.Detail = "moved to " + dest
		default:
			continue
		}
		if proof != nil {
			if err := proof(); err != nil {
				keep(o, err.Error())
				continue
			}
		}
		if dryRun {
			res.Removed = append(res.Removed, o)
			continue
		}
		err := fpGCRemoveBefore.Hit(ctx)
		if err == nil {
			err = remove()
		}
		if err == nil {
			err = fpGCRemoveAfter.Hit(ctx)
		}
		if err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("%s %s: %v", o.Kind, o.Name, err))
			continue
		}
		if inv.Log != nil {
			inv.Log.Info("gc removed", "kind", o.Kind, "name", o.Name, "detail", o.Detail)
		}
		e.RecordGCRemoved(o.Kind, o.Name, o.VM, o.Detail)
		res.Removed = append(res.Removed, o)
	}
	return res, nil
}

// holdsVMDir reports whether this state dir holds a directory of VM id.
func (inv *Inventory) holdsVMDir(id string) bool {
	for _, d := range []string{"vms", "lost+found"} {
		if st, err := os.Lstat(filepath.Join(inv.Config.StateDir, d, id)); err == nil && st.IsDir() {
			return true
		}
	}
	return false
}

func busyPrefix(busy map[string]bool, name string) bool {
	for id := range busy {
		if strings.HasPrefix(id, name) {
			return true
		}
	}
	return false
}

func notSymlink(path string) error {
	st, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if st.Mode()&os.ModeSymlink != 0 {
		return errors.New(path + " is a symlink")
	}
	return nil
}

// provenOrphanVMM proves that pid is a VMM that banger launched for a VM
// that no longer exists: its executable is a configured VMM binary, and its
// argv holds the exact API socket argument banger gives a VMM, for a socket
// in a per-VM run dir named like a VM id prefix. A process that merely
// mentions the path (a debugging client, a PID reused by another program)
// fails.
func (inv *Inventory) provenOrphanVMM(pid int) (system.Process, error) {
	st, err := system.ProcStartTime(pid)
	if err != nil {
		return system.Process{}, fmt.Errorf("process %d is gone", pid)
	}
	p := system.Process{PID: pid, Start: st}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return p, err
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	argv, err := system.ProcCmdline(pid)
	if err != nil {
		return p, err
	}
	runVM := filepath.Join(inv.Config.RunDir, "vm")
	sockOK := func(sock string) bool {
		dir, file := filepath.Split(sock)
		return file == "api.sock" && filepath.Dir(filepath.Clean(dir)) == runVM && runDirName.MatchString(filepath.Base(filepath.Clean(dir)))
	}
	switch exe {
	case resolve(inv.Config.FirecrackerBin):
		for i := 0; i+1 < len(argv); i++ {
			if argv[i] == "--api-sock" && sockOK(argv[i+1]) {
				return p, nil
			}
		}
	case resolve(inv.Config.QEMUBin):
		for i := 0; i+1 < len(argv); i++ {
			if argv[i] == "-qmp" {
				if s, ok := strings.CutPrefix(argv[i+1], "unix:"); ok {
					if s, ok = strings.CutSuffix(s, ",server=on,wait=off"); ok && sockOK(s) {
						return p, nil
					}
				}
			}
		}
	default:
		return p, fmt.Errorf("its executable %s is not a configured vmm", exe)
	}
	return p, errors.New("its argv is not that of a vmm banger launched")
}

func resolve(bin string) string {
	p, err := system.LookPath(bin)
	if err != nil {
		return "\x00" // matches no executable
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}
