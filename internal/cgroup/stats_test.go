package cgroup

import (
	"os"
	"path/filepath"
	"testing"
)

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Stats reads memory, CPU and block I/O from either hierarchy's files.
func TestStats(t *testing.T) {
	root := t.TempDir()
	v2 := filepath.Join(root, "v2", "banger", "vm1")
	writeFile(t, filepath.Join(v2, "memory.current"), "4096\n")
	writeFile(t, filepath.Join(v2, "cpu.stat"), "usage_usec 1500\nuser_usec 1000\n")
	writeFile(t, filepath.Join(v2, "io.stat"), "8:0 rbytes=100 wbytes=20 rios=1 wios=1\n253:1 rbytes=5 wbytes=7 rios=1 wios=1\n")
	m := &Manager{Root: filepath.Join(root, "v2"), Parent: "banger", mode: V2}
	u, err := m.Stats("vm1")
	if err != nil || u != (Usage{MemoryBytes: 4096, CPUNanos: 1500000, ReadBytes: 105, WriteBytes: 27}) {
		t.Errorf("v2 stats %+v %v", u, err)
	}
	v1 := filepath.Join(root, "v1")
	writeFile(t, filepath.Join(v1, "memory", "banger", "vm1", "memory.usage_in_bytes"), "8192\n")
	writeFile(t, filepath.Join(v1, "cpuacct", "banger", "vm1", "cpuacct.usage"), "42\n")
	writeFile(t, filepath.Join(v1, "blkio", "banger", "vm1", "blkio.throttle.io_service_bytes"), "8:0 Read 10\n8:0 Write 3\n8:0 Sync 13\n8:0 Total 13\nTotal 13\n")
	m = &Manager{Root: v1, Parent: "banger", mode: V1}
	u, err = m.Stats("vm1")
	if err != nil || u != (Usage{MemoryBytes: 8192, CPUNanos: 42, ReadBytes: 10, WriteBytes: 3}) {
		t.Errorf("v1 stats %+v %v", u, err)
	}
}
