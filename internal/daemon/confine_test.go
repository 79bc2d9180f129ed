package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/system"
	"golang.org/x/sys/unix"
)

// procStatus returns the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	st, err := system.ProcStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A confined VMM runs as its VM's own uid with no capabilities and
// no_new_privs, in its own cgroup with the configured limits, in a mount
// namespace that shows its own files and nothing else of the state dir.
// Stop removes the cgroup and the jail; delete frees the uid.
func TestConfinedVMM(t *testing.T) {
	e := newEnv(t, envOpts{confine: true})
	e.importImage()
	ctx := context.Background()
	a := e.createStarted("jailed")
	b := e.createStarted("neighbour")
	if a.Runtime.UID < 200000 || b.Runtime.UID < 200000 || a.Runtime.UID == b.Runtime.UID {
		t.Fatalf("uids %d and %d: want distinct uids from the range", a.Runtime.UID, b.Runtime.UID)
	}
	p, ok := e.vmmProcess(a)
	if !ok {
		t.Fatal("no vmm")
	}
	st := procStatus(t, p.PID)
	uid := strconv.Itoa(a.Runtime.UID)
	if st["Uid"] != strings.Join([]string{uid, uid, uid, uid}, "\t") || st["Gid"] != strings.Join([]string{uid, uid, uid, uid}, "\t") {
		t.Errorf("vmm runs as Uid %q Gid %q, want %s everywhere", st["Uid"], st["Gid"], uid)
	}
	if st["CapEff"] != "0000000000000000" || st["CapBnd"] != "0000000000000000" || st["NoNewPrivs"] != "1" {
		t.Errorf("vmm CapEff %s CapBnd %s NoNewPrivs %s", st["CapEff"], st["CapBnd"], st["NoNewPrivs"])
	}
	if !strings.Contains(st["NSpid"], "\t1") {
		t.Errorf("vmm not pid 1 of its own pid namespace: NSpid %q", st["NSpid"])
	}
	// Its cgroup holds exactly it, with the limits.
	ref := "memory:/" + e.cfg.CgroupParent + "/" + a.ID
	if in, err := system.ProcInCgroup(p.PID, ref); err != nil || !in {
		t.Errorf("vmm not in %s: %v", ref, err)
	}
	memDir := filepath.Join(e.cfg.CgroupRoot, "memory", e.cfg.CgroupParent, a.ID)
	procs, _ := os.ReadFile(filepath.Join(memDir, "cgroup.procs"))
	if strings.TrimSpace(string(procs)) != strconv.Itoa(p.PID) {
		t.Errorf("cgroup holds %q, want only %d", procs, p.PID)
	}
	limit, _ := os.ReadFile(filepath.Join(memDir, "memory.limit_in_bytes"))
	if want := strconv.Itoa(a.Spec.MemoryMiB<<20 + 384<<20); strings.TrimSpace(string(limit)) != want {
		t.Errorf("memory limit %s, want %s", limit, want)
	}
	pids, _ := os.ReadFile(filepath.Join(e.cfg.CgroupRoot, "pids", e.cfg.CgroupParent, a.ID, "pids.max"))
	if strings.TrimSpace(string(pids)) != "512" {
		t.Errorf("pids.max %q", pids)
	}
	// Its view of the filesystem: its own disk, not the neighbour's, not the store.
	root := fmt.Sprintf("/proc/%d/root", p.PID)
	if _, err := os.Stat(root + a.Runtime.WorkDiskPath); err != nil {
		t.Errorf("own work disk not visible in the jail: %v", err)
	}
	for _, hidden := range []string{b.Runtime.WorkDiskPath, b.Runtime.VMDir, filepath.Join(e.cfg.StateDir, "banger.db"), e.cfg.SSHKeyPath} {
		if _, err := os.Stat(root + hidden); err == nil {
			t.Errorf("%s is visible in the jail", hidden)
		}
	}
	// Its files belong to its uid.
	for _, f := range []string{a.Runtime.WorkDiskPath, filepath.Join(a.Runtime.VMDir, "root.img"), a.Runtime.LogPath} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != a.Runtime.UID {
			t.Errorf("%s owned by uid %d, want %d", f, st.Uid, a.Runtime.UID)
		}
	}
	vm, err := e.c.GetVM(ctx, "jailed")
	if err != nil || vm.Live == nil || !vm.Live.Alive {
		t.Fatalf("confined vm not alive: %+v %v", vm.Live, err)
	}
	// Stop releases the cgroup and the jail; the VMM is gone.
	if _, err := e.c.StopVM(ctx, "jailed", client.StopRequest{}); err != nil {
		t.Fatal(err)
	}
	if p.Alive() {
		t.Error("vmm survived stop")
	}
	if _, err := os.Stat(memDir); !os.IsNotExist(err) {
		t.Errorf("cgroup left after stop: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.cfg.RunDir, "jail", a.ID[:16])); !os.IsNotExist(err) {
		t.Errorf("jail root left after stop: %v", err)
	}
	// Delete frees the uid for the next VM.
	if err := e.c.DeleteVM(ctx, "jailed", false); err != nil {
		t.Fatal(err)
	}
	c, err := e.c.CreateVM(ctx, client.CreateVMRequest{Name: "next", DiskSizeBytes: 64 << 20, WorkDiskBytes: 32 << 20})
	if err != nil || c.Runtime.UID != a.Runtime.UID {
		t.Fatalf("uid not reused after delete: %d (want %d) %v", c.Runtime.UID, a.Runtime.UID, err)
	}
}

// With firecracker_jailer, a confined Firecracker runs through the jailer
// (its double): as the VM's uid, init of its own PID namespace, rooted in
// its chroot under <state_dir>/jailer, in the VM's cgroup with its limits.
// The daemon proves it (alive), stops it, and nothing is left.
func TestConfinedVMMThroughJailer(t *testing.T) {
	e := newEnv(t, envOpts{confine: true, jailer: true})
	e.importImage()
	ctx := context.Background()
	a := e.createStarted("jailed")
	h := e.handles(a)
	p := system.Process{PID: h.PID, Start: h.PIDStart}
	if !p.Alive() {
		t.Fatalf("no vmm at the recorded pid %d", h.PID)
	}
	st := procStatus(t, p.PID)
	uid := strconv.Itoa(a.Runtime.UID)
	if st["Uid"] != strings.Join([]string{uid, uid, uid, uid}, "\t") || st["CapEff"] != "0000000000000000" {
		t.Errorf("vmm Uid %q CapEff %s, want uid %s and no capabilities", st["Uid"], st["CapEff"], uid)
	}
	if f := strings.Fields(st["NSpid"]); len(f) != 2 || f[1] != "1" {
		t.Errorf("vmm not pid 1 of its own pid namespace: NSpid %q", st["NSpid"])
	}
	jailDir := filepath.Join(e.cfg.StateDir, "jailer", "fc-double", a.ID)
	chroot, _ := os.Stat(filepath.Join(jailDir, "root"))
	root, _ := os.Stat(fmt.Sprintf("/proc/%d/root", p.PID))
	if chroot == nil || root == nil || !os.SameFile(chroot, root) {
		t.Errorf("vmm's root is not its chroot %s", filepath.Join(jailDir, "root"))
	}
	ref := "memory:/" + e.cfg.CgroupParent + "/" + a.ID
	if in, err := system.ProcInCgroup(p.PID, ref); err != nil || !in {
		t.Errorf("vmm not in %s: %v", ref, err)
	}
	memDir := filepath.Join(e.cfg.CgroupRoot, "memory", e.cfg.CgroupParent, a.ID)
	limit, _ := os.ReadFile(filepath.Join(memDir, "memory.limit_in_bytes"))
	if want := strconv.Itoa(a.Spec.MemoryMiB<<20 + 384<<20); strings.TrimSpace(string(limit)) != want {
		t.Errorf("memory limit %s, want %s", limit, want)
	}
	vm, err := e.c.GetVM(ctx, "jailed")
	if err != nil || vm.Live == nil || !vm.Live.Alive {
		t.Fatalf("jailed vm not alive: %+v %v", vm.Live, err)
	}
	if _, err := e.c.StopVM(ctx, "jailed", client.StopRequest{}); err != nil {
		t.Fatal(err)
	}
	if p.Alive() {
		t.Error("vmm survived stop")
	}
	for _, left := range []string{jailDir, memDir} {
		if _, err := os.Stat(left); !os.IsNotExist(err) {
			t.Errorf("%s left after stop: %v", left, err)
		}
	}
	// Started again: a fresh jail, the same proofs.
	if _, err := e.c.StartVM(ctx, "jailed"); err != nil {
		t.Fatal(err)
	}
	if vm, err := e.c.GetVM(ctx, "jailed"); err != nil || vm.Live == nil || !vm.Live.Alive {
		t.Fatalf("restarted jailed vm not alive: %v", err)
	}
	if err := e.c.DeleteVM(ctx, "jailed", true); err != nil {
		t.Fatal(err)
	}
	for _, left := range []string{jailDir, memDir} {
		if _, err := os.Stat(left); !os.IsNotExist(err) {
			t.Errorf("%s left after delete: %v", left, err)
		}
	}
}

// A jail dir on a nosuid/noexec mount: create refuses before anything is
// made, naming the mount, and doctor says how to fix it.
func TestConfinedCreateRefusesNoexecJailDir(t *testing.T) {
	e := newEnv(t, envOpts{confine: true})
	e.importImage()
	ctx := context.Background()
	jail := filepath.Join(e.cfg.RunDir, "jail")
	os.MkdirAll(jail, 0o700)
	if err := unix.Mount("tmpfs", jail, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "size=1m,mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(jail, unix.MNT_DETACH) })
	_, err := e.c.CreateVM(ctx, client.CreateVMRequest{Name: "noexec", DiskSizeBytes: 64 << 20, WorkDiskBytes: 32 << 20})
	if err == nil || !strings.Contains(err.Error(), "on mount "+jail) || !strings.Contains(err.Error(), "nosuid,noexec") {
		t.Fatalf("create with the jail dir on a nosuid,noexec mount = %v", err)
	}
	if vms, _ := e.c.ListVMs(ctx); len(vms) != 0 {
		t.Errorf("refused create left %d vms", len(vms))
	}
	rep, err := e.c.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range rep.Checks {
		if c.Name == "confinement" && !c.OK && strings.Contains(c.Detail, "mount -o remount,suid,exec "+jail) {
			found = true
		}
	}
	if !found {
		t.Errorf("doctor does not say how to fix the jail dir's mount: %+v", rep.Checks)
	}
}
