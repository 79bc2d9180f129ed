package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/system"
)

func statusFields(t *testing.T, pid int) map[string]string {
	t.Helper()
	st, err := system.ProcStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestConfinement: each QEMU runs as its VM's own unprivileged uid with no
// capabilities, no_new_privs and its seccomp sandbox, alone in its cgroup,
// in a mount namespace where the state dir and the other VM's files are not
// visible; a guest that allocates past its RAM is contained inside the
// guest, and its neighbour and the daemon are unaffected.
func TestConfinement(t *testing.T) {
	requireSuite(t)
	a, b := "e2e-jail-a", "e2e-jail-b"
	deleteAtEnd(t, a, b)
	runVM(t, a)
	runVM(t, b)
	va, vb := showVM(t, a), showVM(t, b)
	if va.Confinement == nil || !va.Confinement.Confined || va.Runtime.UID == 0 || va.Runtime.UID == vb.Runtime.UID {
		t.Fatalf("confinement of %s: %+v uid %d (other %d)", a, va.Confinement, va.Runtime.UID, vb.Runtime.UID)
	}
	pa, ok := qemuFor(va.Runtime.APISockPath)
	if !ok {
		t.Fatal("no qemu for " + a)
	}
	st := statusFields(t, pa.PID)
	uid := strconv.Itoa(va.Runtime.UID)
	if !strings.HasPrefix(st["Uid"], uid+"\t") || strings.Contains(st["Uid"], "\t0") {
		t.Errorf("qemu Uid %q, want %s everywhere", st["Uid"], uid)
	}
	if st["CapEff"] != "0000000000000000" || st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" {
		t.Errorf("qemu CapEff %s NoNewPrivs %s Seccomp %s; want 0, 1, 2", st["CapEff"], st["NoNewPrivs"], st["Seccomp"])
	}
	// Alone in its cgroup.
	cg := va.Confinement.Cgroup // "v1 /banger/<id>"
	rel := strings.TrimPrefix(cg[strings.Index(cg, " ")+1:], "/")
	procs, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", rel, "cgroup.procs"))
	if err != nil {
		procs, err = os.ReadFile(filepath.Join("/sys/fs/cgroup", rel, "cgroup.procs"))
	}
	if err != nil || strings.TrimSpace(string(procs)) != strconv.Itoa(pa.PID) {
		t.Errorf("cgroup %s holds %q (%v), want only qemu %d", cg, procs, err, pa.PID)
	}
	// Its mount namespace: its own disk, nothing else of the state dir.
	root := fmt.Sprintf("/proc/%d/root", pa.PID)
	if _, err := os.Stat(root + va.Runtime.WorkDiskPath); err != nil {
		t.Errorf("own work disk not visible: %v", err)
	}
	for _, hidden := range []string{vb.Runtime.WorkDiskPath, vb.Runtime.VMDir, filepath.Join(filepath.Dir(filepath.Dir(va.Runtime.VMDir)), "banger.db")} {
		if _, err := os.Stat(root + hidden); err == nil {
			t.Errorf("%s visible from the jail", hidden)
		}
	}
	// A guest allocating past its RAM (256 MiB) is contained.
	_, _, code := banger(t, "vm", "exec", a, "--", "sh", "-c", "mkdir -p /tmp/m && mount -t tmpfs -o size=1g tmpfs /tmp/m && dd if=/dev/zero of=/tmp/m/fill bs=1M count=600 2>/dev/null; echo done")
	t.Logf("memory hog exited %d", code)
	if out := mustBanger(t, "vm", "exec", b, "--", "cat", "/etc/hostname"); out != b+"\n" {
		t.Errorf("neighbour after the hog: %q", out)
	}
	if p := daemonPID(); !p.Alive() {
		t.Error("daemon gone after the hog")
	}
	if p, ok := qemuFor(va.Runtime.APISockPath); ok {
		if in, _ := system.ProcInCgroup(p.PID, "memory:/"+rel); !in {
			t.Errorf("qemu %d left its cgroup", p.PID)
		}
		limit, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", rel, "memory.max_usage_in_bytes"))
		t.Logf("qemu peak memory in its cgroup: %s bytes", strings.TrimSpace(string(limit)))
	}
}
