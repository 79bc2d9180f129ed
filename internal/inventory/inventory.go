package daemon

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/storage"
	"github.com/banger-dev/banger/internal/system"
)

func (d *Daemon) handleDoctor(w http.ResponseWriter, r *http.Request) error {
	rep := api.DoctorReport{RootDiskMethod: string(d.deps.RootMethod)}
	check := func(name string, ok bool, detail string) {
		rep.Checks = append(rep.Checks, api.DoctorCheck{Name: name, OK: ok, Detail: detail})
	}
	kvm := d.deps.KVMUsable()
	check("kvm", kvm, map[bool]string{true: "/dev/kvm is usable", false: "/dev/kvm is missing or not usable: Firecracker cannot run; QEMU falls back to TCG (slow)"}[kvm])
	if p, err := system.LookPath(d.cfg.FirecrackerBin); err == nil {
		v, verr := runVersion(r.Context(), d.deps.Runner, p)
		check("firecracker", verr == nil, p+" "+v)
	} else {
		check("firecracker", false, fmt.Sprintf("%q not found (config firecracker_bin)", d.cfg.FirecrackerBin))
	}
	if p, err := system.LookPath(d.cfg.QEMUBin); err == nil {
		v, verr := runVersion(r.Context(), d.deps.Runner, p)
		check("qemu", verr == nil, p+" "+v)
	} else {
		check("qemu", false, fmt.Sprintf("%q not found (config qemu_bin; apt-get install qemu-system-x86)", d.cfg.QEMUBin))
	}
	_, dmErr := os.Stat("/dev/mapper/control")
	check("device-mapper", d.deps.RootMethod == storage.MethodDM,
		map[bool]string{true: "available: root disks are dm snapshots", false: "not available (" + errString(dmErr) + "): root disks are per-VM copies"}[d.deps.RootMethod == storage.MethodDM])
	_, loopErr := os.Stat("/dev/loop-control")
	check("loop", loopErr == nil, errOr(loopErr, "/dev/loop-control present"))
	_, tunErr := os.Stat("/dev/net/tun")
	check("tun", tunErr == nil, errOr(tunErr, "/dev/net/tun present"))
	check("network", d.deps.Network != nil, map[bool]string{true: "bridge " + d.cfg.Bridge + " on " + d.cfg.Subnet + " (made when a VM starts)",
		false: "disabled (daemon not root, or network = off): VMs get no network device"}[d.deps.Network != nil])
	check("dns", true, fmt.Sprintf("zone %s served on %s:53 once a VM runs; for host lookups point your resolver at it for that zone (e.g. resolvectl dns %s %s; resolvectl domain %s ~%s)",
		d.cfg.DNSZone, d.gateway(), d.cfg.Bridge, d.gateway(), d.cfg.Bridge, d.cfg.DNSZone))
	if name, accel, warning, err := d.chooseVMM(""); err == nil {
		rep.DefaultVMM = name + "/" + accel
		if warning != "" {
			check("vmm", true, warning)
		}
	} else {
		check("vmm", false, err.Error())
	}
	objs, err := d.hostObjects(r.Context())
	if err != nil {
		return err
	}
	rep.Objects = objs
	return writeJSON(w, rep)
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

// hostObjects lists every host object banger owns, with the VM that owns
// it; objects no VM accounts for are orphans.
func (d *Daemon) hostObjects(ctx context.Context) ([]api.HostObject, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[string]model.VMRecord{}
	bySock := map[string]model.VMRecord{}
	for _, vm := range vms {
		byID[vm.ID] = vm
		bySock[vm.Runtime.APISockPath] = vm
	}
	// What the VMs account for: their handles (cache, else scratch file).
	owner := map[string]string{} // "kind:name" -> vm name
	for _, vm := range vms {
		h, ok := d.handles.get(vm.ID)
		if !ok {
			h, _ = readHandlesFile(handlesPath(vm))
		}
		for kind, name := range map[string]string{"tap": h.TapDevice, "loop": h.BaseLoop, "loop2": h.COWLoop, "dm": h.DMName} {
			if name != "" {
				owner[strings.TrimSuffix(kind, "2")+":"+name] = vm.Name
			}
		}
		if h.PID != 0 {
			owner["process:"+strconv.Itoa(h.PID)] = vm.Name
		}
	}
	var objs []api.HostObject
	add := func(kind, name, detail string) {
		vm := owner[kind+":"+name]
		objs = append(objs, api.HostObject{Kind: kind, Name: name, VM: vm, Orphan: vm == "", Detail: detail})
	}
	if d.deps.Network != nil {
		taps, err := d.deps.Network.ListTaps(ctx)
		if err == nil {
			for _, t := range taps {
				add("tap", t, "")
			}
		}
	}
	if loops, err := d.deps.Disks.ListLoopDevices(ctx); err == nil {
		for dev, file := range loops {
			if strings.HasPrefix(file, d.cfg.StateDir+"/") || d.isImageFile(ctx, file) {
				add("loop", dev, file)
			}
		}
	}
	if dms, err := d.deps.Disks.ListDMDevices(ctx); err == nil {
		for _, name := range dms {
			add("dm", name, "")
		}
	}
	// VMM processes: argv naming a socket under our run dir.
	prefix := filepath.Join(d.cfg.RunDir, "vm") + "/"
	pids, _ := system.ListPIDs()
	for _, pid := range pids {
		argv, err := system.ProcCmdline(pid)
		if err != nil || pid == os.Getpid() {
			continue
		}
		for _, a := range argv {
			if i := strings.Index(a, prefix); i >= 0 && strings.Contains(a, "api.sock") {
				sock := a[i:]
				if j := strings.Index(sock, ","); j >= 0 {
					sock = sock[:j]
				}
				name := strconv.Itoa(pid)
				if vm, ok := bySock[sock]; ok && owner["process:"+name] == "" {
					// Found by argv but not recorded: owned only if vmAlive agrees.
					if alive, _ := d.vmAlive(ctx, vm); alive {
						owner["process:"+name] = vm.Name
					}
				}
				add("process", name, strings.Join(argv, " "))
				break
			}
		}
	}
	// Sockets and directories of VMs that no longer exist.
	if ents, err := os.ReadDir(filepath.Join(d.cfg.RunDir, "vm")); err == nil {
		for _, e := range ents {
			found := ""
			for _, vm := range vms {
				if strings.HasPrefix(vm.ID, e.Name()) {
					found = vm.Name
				}
			}
			owner["rundir:"+e.Name()] = found
			add("rundir", e.Name(), filepath.Join(d.cfg.RunDir, "vm", e.Name()))
		}
	}
	if ents, err := os.ReadDir(filepath.Join(d.cfg.StateDir, "vms")); err == nil {
		for _, e := range ents {
			if vm, ok := byID[e.Name()]; ok {
				owner["vmdir:"+e.Name()] = vm.Name
			}
			add("vmdir", e.Name(), filepath.Join(d.cfg.StateDir, "vms", e.Name()))
		}
	}
	sort.Slice(objs, func(i, j int) bool {
		if objs[i].Kind != objs[j].Kind {
			return objs[i].Kind < objs[j].Kind
		}
		return objs[i].Name < objs[j].Name
	})
	return objs, nil
}

func (d *Daemon) isImageFile(ctx context.Context, file string) bool {
	ims, _ := d.store.ListImages(ctx)
	for _, im := range ims {
		if im.RootfsPath == file {
			return true
		}
	}
	return false
}

// handleGC removes orphaned host objects (idempotent: a second run finds none).
func (d *Daemon) handleGC(w http.ResponseWriter, r *http.Request) error {
	dry, _ := strconv.ParseBool(r.URL.Query().Get("dry_run"))
	objs, err := d.hostObjects(r.Context())
	if err != nil {
		return err
	}
	resp := api.GCResponse{DryRun: dry, Removed: []api.HostObject{}}
	ctx := r.Context()
	// Processes first: they may hold taps and loops.
	order := map[string]int{"process": 0, "dm": 1, "loop": 2, "tap": 3, "rundir": 4, "vmdir": 5}
	sort.SliceStable(objs, func(i, j int) bool { return order[objs[i].Kind] < order[objs[j].Kind] })
	for _, o := range objs {
		if !o.Orphan {
			continue
		}
		if dry {
			resp.Removed = append(resp.Removed, o)
			continue
		}
		var err error
		switch o.Kind {
		case "process":
			pid, _ := strconv.Atoi(o.Name)
			st, serr := system.ProcStartTime(pid)
			if serr != nil {
				continue
			}
			err = system.Process{PID: pid, Start: st}.Kill(5 * time.Second)
		case "dm":
			err = d.deps.Disks.DeactivateRootDisk(ctx, storage.RootHandles{DMName: o.Name})
		case "loop":
			err = d.deps.Disks.DeactivateRootDisk(ctx, storage.RootHandles{BaseLoop: o.Name})
		case "tap":
			err = d.deps.Network.DeleteTap(ctx, o.Name)
			d.deps.Network.ReleaseBridgeIfUnused(ctx)
		case "rundir", "vmdir":
			err = os.RemoveAll(o.Detail)
		}
		if err != nil {
			resp.Errors = append(resp.Errors, fmt.Sprintf("%s %s: %v", o.Kind, o.Name, err))
			continue
		}
		resp.Removed = append(resp.Removed, o)
	}
	return writeJSON(w, resp)
}
