package jail

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func goodSpec(root string) Spec {
	return Spec{VMID: "0123456789abcdef0123456789abcdef", UID: 200000, GID: 200000, Root: root,
		CgroupProcs: []string{"/sys/fs/cgroup/memory/banger/x/cgroup.procs"}, Binds: []Bind{{Path: "/var/lib/banger/vms/x/root.img"}},
		Argv: []string{"/usr/bin/qemu-system-x86_64", "-M", "microvm"}}
}

func TestValidate(t *testing.T) {
	if err := goodSpec("/run/banger/jail/x").Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Spec){
		"root uid":         func(s *Spec) { s.UID = 0 },
		"root gid":         func(s *Spec) { s.GID = 0 },
		"jail root /":      func(s *Spec) { s.Root = "/" },
		"relative root":    func(s *Spec) { s.Root = "jail" },
		"relative argv0":   func(s *Spec) { s.Argv[0] = "qemu" },
		"empty argv":       func(s *Spec) { s.Argv = nil },
		"unclean bind":     func(s *Spec) { s.Binds = []Bind{{Path: "/var/lib/../etc"}} },
		"bind /":           func(s *Spec) { s.Binds = []Bind{{Path: "/"}} },
		"not cgroup.procs": func(s *Spec) { s.CgroupProcs = []string{"/etc/passwd"} },
	} {
		s := goodSpec("/run/banger/jail/x")
		mut(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

func TestReadRefusesUnsafeSpecFiles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "spec.json")
	if err := Write(p, goodSpec("/run/banger/jail/x")); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if s, err := Read(p); err != nil || s.UID != 200000 {
			t.Fatalf("read back: %+v %v", s, err)
		}
	}
	os.Chmod(p, 0o666)
	if _, err := Read(p); err == nil || !strings.Contains(err.Error(), "not writable by others") {
		t.Errorf("world-writable spec: %v", err)
	}
	os.Chmod(p, 0o600)
	link := filepath.Join(dir, "link.json")
	os.Symlink(p, link)
	if _, err := Read(link); err == nil {
		t.Error("spec read through a symlink")
	}
	if err := Write(filepath.Join(dir, "bad.json"), Spec{}); err == nil {
		t.Error("an invalid spec written")
	}
}

func TestUnderSystemDirs(t *testing.T) {
	for p, want := range map[string]bool{"/usr/bin/qemu-system-x86_64": true, "/usr": true, "/usrx/bin": false, "/tmp/fc": false, "/lib64/ld.so": true} {
		if got := UnderSystemDirs(p); got != want {
			t.Errorf("UnderSystemDirs(%s) = %v", p, got)
		}
	}
}
