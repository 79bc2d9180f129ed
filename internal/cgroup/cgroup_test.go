package cgroup

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func fakeRoot(t *testing.T, v2controllers string, v1 ...string) string {
	t.Helper()
	root := t.TempDir()
	if v2controllers != "" {
		os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte(v2controllers), 0o644)
	}
	for _, c := range v1 {
		os.MkdirAll(filepath.Join(root, c), 0o755)
		os.WriteFile(filepath.Join(root, c, "cgroup.procs"), nil, 0o644)
	}
	return root
}

func TestDetect(t *testing.T) {
	m, err := Detect(fakeRoot(t, "cpuset cpu io memory pids"), "banger")
	if err != nil || m.Mode() != V2 || m.Ref("0123456789abcdef0123456789abcdef") != "/banger/0123456789abcdef0123456789abcdef" {
		t.Fatalf("v2 with controllers: %v %v", m, err)
	}
	// v2 mounted without controllers (this host): v1 hierarchies are used.
	m, err = Detect(fakeRoot(t, "", "memory", "pids", "cpu"), "banger")
	if err != nil || m.Mode() != V1 || m.Ref("0123456789abcdef0123456789abcdef") != "memory:/banger/0123456789abcdef0123456789abcdef" {
		t.Fatalf("v1: %v %v", m, err)
	}
	if got := strings.Join(m.Controllers(), ","); got != "cpu,memory,pids" {
		t.Errorf("controllers %s", got)
	}
	if got := len(m.ProcsFiles("0123456789abcdef0123456789abcdef")); got != 3 {
		t.Errorf("%d procs files, want one per hierarchy", got)
	}
	// Neither: a clear error naming what is missing.
	if _, err := Detect(fakeRoot(t, "cpu", "cpu"), "banger"); err == nil || !strings.Contains(err.Error(), "memory, pids") {
		t.Fatalf("no memory or pids: %v", err)
	}
}

func TestCreateWritesLimitsV1(t *testing.T) {
	root := fakeRoot(t, "", "memory", "pids", "cpu")
	m, err := Detect(root, "banger")
	if err != nil {
		t.Fatal(err)
	}
	id := "0123456789abcdef0123456789abcdef"
	if _, err := m.Create(id, Limits{MemoryBytes: 512 << 20, Pids: 64, CPUWeight: 50, CPUQuota: 150}); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		"memory/banger/" + id + "/memory.limit_in_bytes": fmt.Sprint(512 << 20),
		"pids/banger/" + id + "/pids.max":                "64",
		"cpu/banger/" + id + "/cpu.shares":               "512",
		"cpu/banger/" + id + "/cpu.cfs_quota_us":         "150000",
	} {
		b, err := os.ReadFile(filepath.Join(root, file))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q (%v), want %q", file, b, err, want)
		}
	}
	if _, err := m.Create("../etc", Limits{}); err == nil {
		t.Error("a path as vm id accepted")
	}
}

// With the daemon in the root cpu cgroup (v1), a VM weighs one task per
// vCPU and the parent the sum of its VMs, as the VMMs' threads did
// unconfined; elsewhere the parent is left alone.
func TestV1SharesWeighVCPUsAndParent(t *testing.T) {
	root := fakeRoot(t, "", "memory", "pids", "cpu")
	m, err := Detect(root, "banger")
	if err != nil {
		t.Fatal(err)
	}
	m.weighParent = true
	read := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(root, "cpu", "banger", rel, "cpu.shares"))
		if err != nil {
			return err.Error()
		}
		return string(b)
	}
	a, b := "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	if _, err := m.Create(a, Limits{CPUWeight: 100, VCPUs: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(b, Limits{CPUWeight: 50, VCPUs: 4}); err != nil {
		t.Fatal(err)
	}
	// b is the one just made; a has no process yet (its VMM not started,
	// or gone): it weighs nothing.
	if read(a) != "2048" || read(b) != "2048" || read("") != "2048" {
		t.Fatalf("shares a=%s b=%s parent=%s, want 2048 2048 2048", read(a), read(b), read(""))
	}
	procs := func(id, pids string) {
		os.WriteFile(filepath.Join(root, "cpu", "banger", id, "cgroup.procs"), []byte(pids), 0o644)
	}
	procs(a, "101\n")
	procs(b, "202\n")
	m.balanceParentLocked("")
	if read("") != "4096" {
		t.Fatalf("parent with both VMMs running: %s, want 4096", read(""))
	}
	// A VM gone (the fake cgroupfs cannot rmdir a dir with files, so it
	// goes by hand), another's VMM exited: the default when none is left.
	os.RemoveAll(filepath.Join(root, "cpu", "banger", b))
	m.balanceParentLocked("")
	if read("") != "2048" {
		t.Fatalf("parent after one VM went: %s, want 2048", read(""))
	}
	procs(a, "")
	m.balanceParentLocked("")
	if read("") != "1024" {
		t.Fatalf("parent with no VMM running: %s, want 1024", read(""))
	}
	if _, s := m.JailerSettings(Limits{VCPUs: 3}); !strings.Contains(strings.Join(s, " "), "cpu.shares=3072") {
		t.Errorf("jailer settings %q: want cpu.shares=3072 for 3 vCPUs", s)
	}

	m.weighParent = false
	os.Remove(filepath.Join(root, "cpu", "banger", "cpu.shares"))
	if _, err := m.Create(a, Limits{CPUWeight: 100, VCPUs: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cpu", "banger", "cpu.shares")); err == nil {
		t.Error("parent's shares written with weighParent off")
	}
}

func TestInRootCPUCgroup(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]bool{
		"4:memory:/x\n2:cpuacct:/\n1:cpu:/\n0::/\n":     true,
		"3:cpu,cpuacct:/\n":                             true,
		"3:cpu,cpuacct:/system.slice/bangerd.service\n": false,
		"0::/\n": false, // v2 only: no v1 cpu hierarchy
	} {
		p := filepath.Join(dir, "cgroup")
		os.WriteFile(p, []byte(content), 0o644)
		if got := inRootCPUCgroup(p); got != want {
			t.Errorf("%q: %v, want %v", content, got, want)
		}
	}
	if inRootCPUCgroup(filepath.Join(dir, "missing")) {
		t.Error("missing file: true")
	}
}

// On a real host (root): create, join is left to the jail helper, remove.
func TestRealCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	parent := fmt.Sprintf("banger-unit-%d", os.Getpid())
	m, err := Detect("/sys/fs/cgroup", parent)
	if err != nil {
		t.Skipf("no usable cgroups here: %v", err)
	}
	id := "fedcba9876543210fedcba9876543210"
	t.Cleanup(func() {
		m.Remove(id)
		for _, c := range []string{"", "memory", "pids", "cpu", "cpuacct", "blkio"} {
			os.Remove(filepath.Join(m.Root, c, parent))
		}
	})
	if _, err := m.Create(id, Limits{MemoryBytes: 256 << 20, Pids: 32, CPUWeight: 100, VCPUs: 2}); err != nil {
		t.Fatal(err)
	}
	if !m.Exists(id) {
		t.Fatal("cgroup not made")
	}
	if m.Mode() == V1 && m.weighParent {
		b, _ := os.ReadFile(filepath.Join(m.Root, "cpu", parent, "cpu.shares"))
		if strings.TrimSpace(string(b)) != "2048" {
			t.Errorf("parent cpu.shares %q with one 2-vCPU VM, want 2048", b)
		}
	}
	if ids, _ := m.List(); len(ids) != 1 || ids[0] != id {
		t.Fatalf("List = %v", ids)
	}
	if pids, err := m.Members(id); err != nil || len(pids) != 0 {
		t.Fatalf("members of a new cgroup: %v %v", pids, err)
	}
	if err := m.Remove(id); err != nil || m.Exists(id) {
		t.Fatalf("remove: %v", err)
	}
	if err := m.Remove(id); err != nil {
		t.Fatalf("second remove: %v", err)
	}
}

func TestJailerSettings(t *testing.T) {
	l := Limits{MemoryBytes: 640 << 20, Pids: 512, CPUWeight: 200, CPUQuota: 150}
	m, err := Detect(fakeRoot(t, "", "memory", "pids", "cpu", "cpuacct"), "banger")
	if err != nil {
		t.Fatal(err)
	}
	v, s := m.JailerSettings(l)
	want := "memory.limit_in_bytes=671088640 pids.max=512 cpu.shares=2048 cpu.cfs_quota_us=150000 cpuacct.usage=0"
	if got := strings.Join(s, " "); v != 1 || got != want {
		t.Fatalf("v1 settings = %d %q, want 1 %q", v, got, want)
	}
	m, err = Detect(fakeRoot(t, "cpu memory pids"), "banger")
	if err != nil {
		t.Fatal(err)
	}
	v, s = m.JailerSettings(Limits{MemoryBytes: 1 << 30, CPUQuota: 50})
	want = "memory.max=1073741824 pids.max=max cpu.max=50000 100000"
	if got := strings.Join(s, " "); v != 2 || got != want {
		t.Fatalf("v2 settings = %d %q, want 2 %q", v, got, want)
	}
}
