package engine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/cgroup"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/jail"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/units"
	"github.com/banger-dev/banger/internal/vmm"
	"golang.org/x/sys/unix"
)

// Confinement: every VMM runs as its VM's own uid/gid (allocated at create
// from uid_range, released at delete), in its own cgroup (memory = guest RAM
// + overhead, pids, cpu and io weight, optional cpu quota), in a jail that
// shows only its own files (banger-jail: mount and PID namespaces,
// pivot_root, no_new_privs, no capabilities), with the VMM's own seccomp
// filters. The cgroup is also the strongest proof that a process is a VM's.

// confined reports whether vm's VMM is confined.
func (e *Engine) confined(vm model.VMRecord) bool {
	return !vm.Spec.Options.Unconfined && vm.Runtime.UID != 0
}

// uidRange parses uid_range ("LOW-HIGH").
func parseUIDRange(s string) (lo, hi int, err error) {
	a, b, ok := strings.Cut(s, "-")
	if ok {
		lo, err = strconv.Atoi(strings.TrimSpace(a))
		if err == nil {
			hi, err = strconv.Atoi(strings.TrimSpace(b))
		}
	}
	if !ok || err != nil || lo < 1000 || hi < lo || hi > 1<<31-2 {
		return 0, 0, errdefs.Invalid("uid_range %q: want LOW-HIGH with 1000 <= LOW <= HIGH", s)
	}
	return lo, hi, nil
}

// checkUIDRange refuses a range that overlaps the host's users or groups:
// a VMM must never run as (or share files with) an existing account.
func checkUIDRange(lo, hi int) error {
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		file, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(file)
		for sc.Scan() {
			fields := strings.Split(sc.Text(), ":")
			if len(fields) < 3 {
				continue
			}
			if id, err := strconv.Atoi(fields[2]); err == nil && id >= lo && id <= hi {
				file.Close()
				return errdefs.Conflict("uid_range %d-%d overlaps %q (id %d) in %s: choose a range no user or group uses", lo, hi, fields[0], id, f)
			}
		}
		file.Close()
	}
	return nil
}

// ConfinementReady says whether this daemon can confine VMMs, and why not.
func (e *Engine) ConfinementReady() error {
	if e.cfg.Confine == "off" {
		return errors.New("confine = off in the configuration: VMMs run unconfined")
	}
	if os.Geteuid() != 0 {
		return errors.New("bangerd does not run as root: it cannot give VMMs their own users, cgroups and jails")
	}
	if e.deps.Cgroups == nil {
		return errors.New("no usable cgroups: " + e.cgroupErr)
	}
	if _, err := e.jailHelper(); err != nil {
		return err
	}
	if err := jail.CheckMount(filepath.Join(e.cfg.RunDir, "jail"), jail.NoSuid|jail.NoExec); err != nil {
		return err
	}
	if e.cfg.FirecrackerJailer != "" {
		if _, err := e.jailerBinary(); err != nil {
			return err
		}
		if err := jail.CheckMount(e.jailerBase(), jail.NoSuid|jail.NoExec|jail.NoDev); err != nil {
			return err
		}
	}
	lo, hi, err := parseUIDRange(e.cfg.UIDRange)
	if err != nil {
		return err
	}
	return checkUIDRange(lo, hi)
}

// jailHelper finds banger-jail: the configured path, else next to the
// running daemon, else on PATH.
func (e *Engine) jailHelper() (string, error) {
	return helperBinary(e.cfg.JailBin, "banger-jail", "jail helper")
}

// agentBinary finds banger-agent, the guest agent a minimal image build
// installs, as jailHelper finds banger-jail.
func (e *Engine) agentBinary() (string, error) {
	return helperBinary(e.cfg.AgentBin, "banger-agent", "guest agent")
}

// GuestAgent is the guest agent minimal images get (agent_bin), checked as
// the image build checks it.
func (e *Engine) GuestAgent() (string, error) {
	p, err := e.agentBinary()
	if err != nil {
		return "", err
	}
	return p, image.CheckAgent(p)
}

// helperBinary finds one of banger's own programs: bin if it is an
// absolute path, else bin (def when empty) next to the running daemon,
// else on PATH.
func helperBinary(bin, def, what string) (string, error) {
	if bin == "" {
		bin = def
	}
	if filepath.IsAbs(bin) {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("%s %s: %w", what, bin, err)
		}
		return bin, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), bin)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := system.LookPath(bin)
	if err != nil {
		return "", fmt.Errorf("%s %q not found next to bangerd or on PATH (make build puts it in bin/)", what, bin)
	}
	return p, nil
}

// jailerBinary resolves firecracker_jailer to an absolute path.
func (e *Engine) jailerBinary() (string, error) {
	p, err := system.LookPath(e.cfg.FirecrackerJailer)
	if err == nil {
		p, err = filepath.Abs(p)
	}
	if err != nil {
		return "", fmt.Errorf("firecracker_jailer %q: %w", e.cfg.FirecrackerJailer, err)
	}
	return p, nil
}

// jailerBase is the jailer's --chroot-base-dir: in the state dir, on the
// filesystem of the VMs' disks, which are hard-linked into the chroots.
func (e *Engine) jailerBase() string { return filepath.Join(e.cfg.StateDir, "jailer") }

// jailerFor is how vm's Firecracker runs through Firecracker's jailer, or
// nil when it does not (no firecracker_jailer, another VMM, unconfined, or
// the binaries cannot be found: then confine refuses to start it).
func (e *Engine) jailerFor(vm model.VMRecord) *vmm.Jailer {
	if e.cfg.FirecrackerJailer == "" || vm.Runtime.VMM != "firecracker" || !e.confined(vm) || e.deps.Cgroups == nil {
		return nil
	}
	bin, err := e.jailerBinary()
	exec := e.vmmExecutable(vm)
	if err != nil || exec == "" {
		return nil
	}
	version, settings := e.deps.Cgroups.JailerSettings(e.cgroupLimits(vm))
	return &vmm.Jailer{
		Binary: bin, ExecFile: exec, ChrootBase: e.jailerBase(),
		UID: vm.Runtime.UID, GID: vm.Runtime.UID,
		CgroupVersion: version, ParentCgroup: e.deps.Cgroups.Parent, Cgroups: settings,
	}
}

// allocateUIDLocked picks the lowest free uid of the range (under createMu).
func (e *Engine) allocateUIDLocked(ctx context.Context) (int, error) {
	lo, hi, err := parseUIDRange(e.cfg.UIDRange)
	if err != nil {
		return 0, err
	}
	if e.addrs.uids == nil {
		used, err := e.store.UsedUIDs(ctx)
		if err != nil {
			return 0, err
		}
		e.addrs.uids = map[int]bool{}
		for _, u := range used {
			e.addrs.uids[u] = true
		}
	}
	for u := lo; u <= hi; u++ {
		if !e.addrs.uids[u] {
			return u, nil
		}
	}
	return 0, errdefs.Conflict("uid_range %s is exhausted: every uid is some VM's (delete VMs or widen uid_range)", e.cfg.UIDRange)
}

// cgroupLimits are the limits of vm's cgroup.
func (e *Engine) cgroupLimits(vm model.VMRecord) cgroup.Limits {
	over, err := units.ParseSize(e.cfg.MemoryOverhead)
	if err != nil {
		over = 384 << 20
	}
	pids, _ := strconv.ParseInt(e.cfg.PidsLimit, 10, 64)
	cpuw, _ := strconv.Atoi(e.cfg.CPUWeight)
	iow, _ := strconv.Atoi(e.cfg.IOWeight)
	return cgroup.Limits{
		MemoryBytes: int64(vm.Spec.MemoryMiB)<<20 + over,
		Pids:        pids,
		CPUWeight:   cpuw,
		CPUQuota:    vm.Spec.Options.CPUQuota,
		IOWeight:    iow,
		VCPUs:       vm.Spec.VCPUs,
	}
}

func jailRoot(e *Engine, vm model.VMRecord) string {
	return filepath.Join(e.cfg.RunDir, "jail", vm.ID[:16])
}

func jailSpecPath(e *Engine, vm model.VMRecord) string {
	return filepath.Join(e.cfg.RunDir, "jail", vm.ID[:16]+".json")
}

// confine prepares vm's confinement before its VMM starts: the cgroup with
// its limits, the VM's files and tap owned by its uid, the jail root, and
// the spec the helper reads. The VMM step then launches through it.
func (e *Engine) confine(ctx context.Context, r *run) error {
	vm := *r.vm
	if !e.confined(vm) {
		e.log.Warn("vm runs unconfined (asked explicitly)", "vm", vm.Name)
		return nil
	}
	if err := e.ConfinementReady(); err != nil {
		return fmt.Errorf("vm %q must run confined: %w", vm.Name, err)
	}
	helper, _ := e.jailHelper()
	notes, err := e.deps.Cgroups.Create(vm.ID, e.cgroupLimits(vm))
	if err != nil {
		return err
	}
	for _, n := range notes {
		e.log.Info("cgroup limits", "vm", vm.Name, "note", n)
	}
	uid := vm.Runtime.UID
	// The files the VMM opens: its disks, logs and run dir, owned by it.
	rw := []string{rootDiskPath(vm), vm.Runtime.WorkDiskPath, VMRunDir(e.cfg, vm.ID)}
	// A VMM that saves or loads its own state files (Firecracker) needs
	// the suspend dir.
	if err := os.MkdirAll(suspendDir(vm), 0o750); err != nil {
		return err
	}
	rw = append(rw, suspendDir(vm))
	for _, p := range []string{vm.Runtime.LogPath, filepath.Join(vm.Runtime.VMDir, "vmm.log"), vm.Runtime.MetricsPath} {
		if err := createOwned(p, uid); err != nil {
			return err
		}
		rw = append(rw, p)
	}
	var devices []string
	for _, p := range rw {
		if err := os.Lchown(p, uid, uid); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("giving %s to uid %d: %w", p, uid, err)
		}
	}
	if r.rootDev != "" && r.rootDev != rootDiskPath(vm) {
		// A dm device: the jail gets its own node of it, owned by the VM's uid.
		devices = append(devices, r.rootDev)
	}
	if r.h.TapDevice != "" {
		if o, ok := e.deps.Network.(interface {
			SetTapOwner(ctx context.Context, name string, uid, gid int) error
		}); ok {
			if err := o.SetTapOwner(ctx, r.h.TapDevice, uid, uid); err != nil {
				return err
			}
		}
	}
	if e.cfg.FirecrackerJailer != "" && vm.Runtime.VMM == "firecracker" {
		// Firecracker's jailer makes the jail itself (its driver places
		// the files); the cgroup made above is the one it joins.
		if r.jailer = e.jailerFor(vm); r.jailer == nil {
			return fmt.Errorf("vm %q must run confined: firecracker_jailer %q or firecracker %q not found", vm.Name, e.cfg.FirecrackerJailer, e.cfg.FirecrackerBin)
		}
		return nil
	}
	root := jailRoot(e, vm)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	binds := []jail.Bind{}
	for _, p := range rw {
		binds = append(binds, jail.Bind{Path: p})
	}
	// The VMM's own executable, when it lives outside the system dirs.
	for _, p := range []string{e.vmmExecutable(vm), r.im.KernelPath, r.im.VMLinux, r.im.InitrdPath} {
		if p != "" && !jail.UnderSystemDirs(p) {
			binds = append(binds, jail.Bind{Path: p, ReadOnly: true})
		}
	}
	if r.rootDev == rootDiskPath(vm) && r.im.RootfsPath != "" && vm.Runtime.RootDiskMethod == "dm-snapshot" {
		binds = append(binds, jail.Bind{Path: r.im.RootfsPath, ReadOnly: true})
	}
	r.confinement = &vmm.Confinement{
		Helper:   helper,
		SpecPath: jailSpecPath(e, vm),
		Spec: jail.Spec{
			VMID: vm.ID, UID: uid, GID: uid, Root: root,
			CgroupProcs: e.deps.Cgroups.ProcsFiles(vm.ID),
			Binds:       binds,
			Devices:     append(devices, jail.DefaultDevices...),
		},
	}
	return nil
}

// unconfine removes vm's cgroup, jail root and spec once its VMM is gone.
// Processes still in the cgroup are proven the VM's by that membership and
// are killed first.
func (e *Engine) unconfine(ctx context.Context, r *run) error {
	vm := *r.vm
	if j := e.jailerFor(vm); j != nil {
		// Left by a VMM that died on its own (its driver removes it on stop).
		if err := j.Remove(vm.ID); err != nil {
			e.log.Warn("removing jailer chroot", "vm", vm.Name, "err", err)
		}
	}
	os.Remove(jailSpecPath(e, vm))
	if err := os.Remove(jailRoot(e, vm)); err != nil && !errors.Is(err, os.ErrNotExist) {
		e.log.Warn("removing jail root", "vm", vm.Name, "err", err)
	}
	if e.deps.Cgroups == nil || !e.deps.Cgroups.Exists(vm.ID) {
		return nil
	}
	// The VMM has exited, but its parent may not have reaped it yet: a
	// zombie still counts as a member. Wait a little for members to go,
	// killing any live one (membership proves it is this VM's).
	deadline := time.Now().Add(5 * time.Second)
	backoff := time.Millisecond
	for {
		pids, err := e.deps.Cgroups.Members(vm.ID)
		if err != nil {
			return err
		}
		if len(pids) == 0 || time.Now().After(deadline) {
			break
		}
		for _, pid := range pids {
			st, err := system.ProcStartTime(pid)
			if err != nil {
				continue // gone, or a zombie waiting for its parent
			}
			if in, _ := system.ProcInCgroup(pid, e.deps.Cgroups.Ref(vm.ID)); in {
				e.log.Warn("killing a process left in the vm's cgroup", "vm", vm.Name, "pid", pid)
				(system.Process{PID: pid, Start: st}).Kill(5 * time.Second)
			}
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, 50*time.Millisecond)
	}
	return e.deps.Cgroups.Remove(vm.ID)
}

// createOwned makes sure path exists as a regular file (never through a
// symlink) owned by uid.
func createOwned(path string, uid int) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|unix.O_NOFOLLOW, 0o640)
	if err != nil {
		return fmt.Errorf("preparing %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Chown(uid, uid); err != nil {
		return fmt.Errorf("giving %s to uid %d: %w", path, uid, err)
	}
	return nil
}

// ConfinementInfo describes how a VM's VMM is (or will be) confined.
type ConfinementInfo struct {
	Confined bool
	Reason   string // why not
	UID      int
	Cgroup   string
	Limits   cgroup.Limits
	Jail     string
	Seccomp  string
	Net      model.NetPolicy
}

// Confinement describes vm's confinement for vm show.
func (e *Engine) Confinement(vm model.VMRecord) ConfinementInfo {
	ci := ConfinementInfo{Net: vm.Spec.Options.Net}
	if !e.confined(vm) {
		ci.Reason = "unconfined: asked explicitly (--unconfined or confine = off)"
		return ci
	}
	ci.Confined, ci.UID, ci.Limits = true, vm.Runtime.UID, e.cgroupLimits(vm)
	if e.deps.Cgroups != nil {
		ci.Cgroup = string(e.deps.Cgroups.Mode()) + " " + e.deps.Cgroups.Rel(vm.ID)
	}
	ci.Jail = jailRoot(e, vm) + " (mount and pid namespaces, pivot_root, no capabilities, no_new_privs)"
	if j := e.jailerFor(vm); j != nil {
		ci.Jail = j.ChrootDir(vm.ID) + " (firecracker jailer: chroot, mount and pid namespaces, no capabilities)"
	}
	switch vm.Runtime.VMM {
	case "qemu":
		ci.Seccomp = "qemu -sandbox on (obsolete, elevateprivileges, spawn, resourcecontrol denied)"
	case "firecracker":
		ci.Seccomp = "firecracker default filters"
	}
	return ci
}

// validateOptions checks a create's options.
func validateOptions(o *model.VMOptions) error {
	if o.CPUQuota < 0 || o.CPUQuota > 100*256 {
		return errdefs.Invalid("invalid cpu quota %d%%: want 1 to %d (percent of one CPU), or 0 for none", o.CPUQuota, 100*256)
	}
	for _, p := range o.Net.AllowHost {
		if p == 0 {
			return errdefs.Invalid("invalid --allow-host port 0")
		}
	}
	for _, list := range [][]string{o.Net.EgressAllow, o.Net.EgressDeny} {
		for i, c := range list {
			pfx, err := netip.ParsePrefix(c)
			if err != nil {
				if a, aerr := netip.ParseAddr(c); aerr == nil {
					pfx = netip.PrefixFrom(a, a.BitLen())
				} else {
					return errdefs.Invalid("invalid egress CIDR %q: %w", c, err)
				}
			}
			list[i] = pfx.Masked().String()
		}
	}
	return nil
}
