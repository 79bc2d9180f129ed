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
	if _, err := m.Create(id, Limits{MemoryBytes: 256 << 20, Pids: 32}); err != nil {
		t.Fatal(err)
	}
	if !m.Exists(id) {
		t.Fatal("cgroup not made")
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
