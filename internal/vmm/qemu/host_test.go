package qemu

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/system"
)

func TestParseCPUInfoKHz(t *testing.T) {
	f, err := os.Open("testdata/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	khz, err := parseCPUInfoKHz(f)
	if err != nil {
		t.Fatal(err)
	}
	if khz != 2593906 {
		t.Errorf("khz = %d, want 2593906 (first cpu MHz line)", khz)
	}
	for _, bad := range []string{"", "processor : 0\n", "cpu MHz : fast\n", "cpu MHz : -5\n"} {
		if _, err := parseCPUInfoKHz(strings.NewReader(bad)); err == nil {
			t.Errorf("parseCPUInfoKHz(%q) succeeded", bad)
		}
	}
}

func TestHostTSCkHz(t *testing.T) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil || !strings.Contains(string(b), "cpu MHz") {
		t.Skip("host /proc/cpuinfo has no cpu MHz line")
	}
	khz, err := HostTSCkHz()
	if err != nil {
		t.Fatal(err)
	}
	if khz < 100_000 || khz > 10_000_000 {
		t.Errorf("HostTSCkHz = %d, outside 100 MHz..10 GHz", khz)
	}
}

func TestHasHardwareVirt(t *testing.T) {
	f, err := os.Open("testdata/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if hasHardwareVirt(f) {
		t.Error("hasHardwareVirt = true for a cpuinfo without vmx/svm")
	}
	for _, flags := range []string{"flags : fpu vmx sse\n", "flags\t\t: svm lm\n"} {
		if !hasHardwareVirt(strings.NewReader(flags)) {
			t.Errorf("hasHardwareVirt(%q) = false", flags)
		}
	}
	if hasHardwareVirt(strings.NewReader("flags : vmxnet\n")) {
		t.Error("hasHardwareVirt matched a flag that only starts with vmx")
	}
}

func TestKVMUsableMatchesHost(t *testing.T) {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skip("no /proc/cpuinfo")
	}
	hw := hasHardwareVirt(strings.NewReader(string(b)))
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	dev := err == nil
	if dev {
		f.Close()
	}
	// Any kernel since 2.6.22 reports API version 12 once /dev/kvm opens.
	if got, want := KVMUsable(), hw && dev; got != want {
		t.Errorf("KVMUsable() = %v; /dev/kvm opens: %v, cpu has vmx/svm: %v", got, dev, hw)
	}
}

func TestParseVersion(t *testing.T) {
	out := "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n"
	v, err := parseVersion(out)
	if err != nil || v != "7.2.22" {
		t.Errorf("parseVersion = %q, %v; want 7.2.22", v, err)
	}
	if v, err := parseVersion("QEMU emulator version 8.0.0\n"); err != nil || v != "8.0.0" {
		t.Errorf("parseVersion without package = %q, %v", v, err)
	}
	if _, err := parseVersion("firecracker v1.16.1\n"); err == nil {
		t.Error("parseVersion accepted firecracker output")
	}
}

func TestVersion(t *testing.T) {
	if _, err := system.LookPath(defaultBinary); err != nil {
		t.Skipf("%s not installed", defaultBinary)
	}
	v, err := Version(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(v, ".") {
		t.Errorf("Version = %q, want a dotted number", v)
	}
	if _, err := Version(context.Background(), "/nonexistent/qemu"); err == nil {
		t.Error("Version of a missing binary succeeded")
	}
}
