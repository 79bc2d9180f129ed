package qemu

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/vmm"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata")

// baseMachine is a VM with every path set, no network.
func baseMachine() vmm.Machine {
	return vmm.Machine{
		ID:         "0123abcd",
		Name:       "web",
		VCPUs:      2,
		MemoryMiB:  256,
		Accel:      "tcg",
		Kernel:     "/var/lib/banger/images/deb/vmlinuz",
		Initrd:     "/var/lib/banger/images/deb/initramfs.cpio.gz",
		BootArgs:   "quiet root=/dev/vda",
		RootDisk:   "/var/lib/banger/vms/0123abcd/root.ext4",
		WorkDisk:   "/var/lib/banger/vms/0123abcd/work.ext4",
		APISock:    "/run/banger/vms/0123abcd/qmp.sock",
		ConsoleLog: "/var/lib/banger/vms/0123abcd/console.log",
	}
}

func withNetwork(m vmm.Machine) vmm.Machine {
	m.TapDevice = "bgtap0123abcd"
	m.GuestMAC = "52:54:00:12:34:56"
	m.GuestIP = "172.30.0.2"
	m.GatewayIP = "172.30.0.1"
	m.Netmask = "255.255.255.0"
	return m
}

func TestArgvGolden(t *testing.T) {
	kvmTap := withNetwork(baseMachine())
	kvmTap.Accel = "kvm"
	kvmTap.Initrd = ""
	tcgTap := withNetwork(baseMachine())
	tcgTap.WorkDisk = ""
	tcgNoTSC := baseMachine()
	cases := []struct {
		name   string
		m      vmm.Machine
		binary string
		tscKHz int
	}{
		{"tcg-initrd-notap", baseMachine(), "qemu-system-x86_64", 2593906},
		{"tcg-tap-noworkdisk", tcgTap, "/usr/bin/qemu-system-x86_64", 2593906},
		{"tcg-no-tsc", tcgNoTSC, "qemu-system-x86_64", 0},
		{"kvm-tap-noinitrd", kvmTap, "qemu-system-x86_64", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			argv, err := buildArgv(tc.m, tc.binary, tc.tscKHz)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(argv, "\n") + "\n"
			path := filepath.Join("testdata", "argv", tc.name+".golden")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if got != string(want) {
				t.Errorf("argv differs from %s:\n--- got\n%s--- want\n%s", path, got, want)
			}
			// The identity token that Identify and FindProcess rely on.
			if !servesSocket(argv, tc.m.APISock) {
				t.Errorf("argv does not hold -qmp %s", qmpToken(tc.m.APISock))
			}
			if servesSocket(argv, tc.m.APISock+"x") || servesSocket(argv, "") {
				t.Error("servesSocket matched a different socket")
			}
			if !runsMachine(argv, tc.m) {
				t.Error("runsMachine does not recognise the argv it was built from")
			}
		})
	}
}

func argValue(t *testing.T, argv []string, flag string) string {
	t.Helper()
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1]
		}
	}
	t.Fatalf("argv has no %s: %q", flag, argv)
	return ""
}

func TestAccelSelectsCPU(t *testing.T) {
	for accel, cpu := range map[string]string{"tcg": "max", "kvm": "host"} {
		m := baseMachine()
		m.Accel = accel
		argv, err := buildArgv(m, "qemu", 1000)
		if err != nil {
			t.Fatal(err)
		}
		if got := argValue(t, argv, "-accel"); got != accel {
			t.Errorf("accel %s: -accel %q", accel, got)
		}
		if got := argValue(t, argv, "-cpu"); got != cpu {
			t.Errorf("accel %s: -cpu %q, want %q", accel, got, cpu)
		}
	}
}

func TestKernelCmdline(t *testing.T) {
	m := withNetwork(baseMachine())
	got := kernelCmdline(m, 2593906)
	want := "console=ttyS0 quiet root=/dev/vda reboot=t panic=-1 tsc_early_khz=2593906 " +
		"ip=172.30.0.2::172.30.0.1:255.255.255.0:web:eth0:off"
	if got != want {
		t.Errorf("cmdline\n got %q\nwant %q", got, want)
	}

	m = baseMachine()
	m.BootArgs = "  "
	if got, want := kernelCmdline(m, 0), "console=ttyS0 reboot=t panic=-1"; got != want {
		t.Errorf("cmdline without network or tsc: got %q, want %q", got, want)
	}
}

func TestKernelIPArg(t *testing.T) {
	m := withNetwork(baseMachine())
	if got, want := m.KernelIPArg(), "ip=172.30.0.2::172.30.0.1:255.255.255.0:web:eth0:off"; got != want {
		t.Errorf("KernelIPArg = %q, want %q", got, want)
	}
	argv, err := buildArgv(m, "qemu", 0)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(argValue(t, argv, "-append"), "ip="); n != 1 {
		t.Errorf("-append holds ip= %d times, want 1", n)
	}
	if got := baseMachine().KernelIPArg(); got != "" {
		t.Errorf("KernelIPArg without network = %q, want empty", got)
	}
}

func TestValidateRejects(t *testing.T) {
	cases := map[string]func(*vmm.Machine){
		"unknown accel":   func(m *vmm.Machine) { m.Accel = "hvf" },
		"empty accel":     func(m *vmm.Machine) { m.Accel = "" },
		"empty id":        func(m *vmm.Machine) { m.ID = "" },
		"id with comma":   func(m *vmm.Machine) { m.ID = "a,process=x" },
		"no vcpus":        func(m *vmm.Machine) { m.VCPUs = 0 },
		"no memory":       func(m *vmm.Machine) { m.MemoryMiB = 0 },
		"no kernel":       func(m *vmm.Machine) { m.Kernel = "" },
		"no root disk":    func(m *vmm.Machine) { m.RootDisk = "" },
		"no qmp socket":   func(m *vmm.Machine) { m.APISock = "" },
		"no console":      func(m *vmm.Machine) { m.ConsoleLog = "" },
		"comma in disk":   func(m *vmm.Machine) { m.RootDisk = "/x/a,format=qcow2" },
		"comma in socket": func(m *vmm.Machine) { m.APISock = "/x/q.sock,server=off" },
		"tap without mac": func(m *vmm.Machine) { m.TapDevice = "tap0" },
	}
	for name, mutate := range cases {
		m := baseMachine()
		mutate(&m)
		if _, err := buildArgv(m, "qemu", 0); err == nil {
			t.Errorf("%s: buildArgv accepted %+v", name, m)
		}
	}
}

func TestQEMULogPath(t *testing.T) {
	m := baseMachine()
	if got, want := qemuLogPath(m), m.ConsoleLog+".qemu"; got != want {
		t.Errorf("qemuLogPath = %q, want %q", got, want)
	}
	m.LogPath = "/var/log/q.log"
	if got := qemuLogPath(m); got != "/var/log/q.log" {
		t.Errorf("qemuLogPath with LogPath = %q", got)
	}
}
