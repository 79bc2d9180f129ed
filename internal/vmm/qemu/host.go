package qemu

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/system"
)

// kvmGetAPIVersion is KVM_GET_API_VERSION, _IO(KVMIO=0xAE, 0x00); the stable
// KVM API has reported 12 since Linux 2.6.22 (Documentation/virt/kvm/api.rst).
const (
	kvmGetAPIVersion = 0xAE00
	kvmAPIVersion    = 12
)

// KVMUsable reports whether this process can run guests with -accel kvm:
// /dev/kvm opens read-write, speaks the stable KVM API, and the CPU offers
// hardware virtualization (vmx or svm in /proc/cpuinfo). The last check
// matters on hosts whose /dev/kvm is served without it, such as the kvm_pvm
// module of some sandboxes: there QEMU opens /dev/kvm, but a stock guest
// kernel hangs right after "Probing EDD" (measured), while TCG boots it. The
// daemon uses KVMUsable to choose between "kvm" and "tcg".
func KVMUsable() bool {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return false
	}
	hw := hasHardwareVirt(f)
	f.Close()
	return hw && kvmDeviceUsable()
}

// kvmDeviceUsable reports whether /dev/kvm opens read-write and reports KVM
// API version 12.
func kvmDeviceUsable() bool {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion)
	return err == nil && v == kvmAPIVersion
}

// hasHardwareVirt reports whether the first "flags" line of a cpuinfo text
// lists vmx (Intel VT-x) or svm (AMD-V).
func hasHardwareVirt(r io.Reader) bool {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		for _, flag := range strings.Fields(val) {
			if flag == "vmx" || flag == "svm" {
				return true
			}
		}
		return false
	}
	return false
}

// HostTSCkHz returns the host's TSC frequency in kHz, estimated from the first
// "cpu MHz" line of /proc/cpuinfo. Under TCG the guest TSC is the host TSC, and
// passing it as tsc_early_khz= keeps a microvm guest from hanging when its own
// calibration fails under load (qemu-rig.md, Gotcha 1). An approximate value
// is good enough.
func HostTSCkHz() (int, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, fmt.Errorf("read host tsc frequency: %w", err)
	}
	defer f.Close()
	khz, err := parseCPUInfoKHz(f)
	if err != nil {
		return 0, fmt.Errorf("read host tsc frequency from /proc/cpuinfo: %w", err)
	}
	return khz, nil
}

// parseCPUInfoKHz returns the first "cpu MHz" value of a cpuinfo text, in kHz.
func parseCPUInfoKHz(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil || mhz <= 0 || math.IsInf(mhz, 0) || mhz > 1e6 {
			return 0, fmt.Errorf("bad cpu MHz value %q", strings.TrimSpace(val))
		}
		return int(math.Round(mhz * 1000)), nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no \"cpu MHz\" line")
}

// Version runs "binary --version" and returns QEMU's version number (for
// example "7.2.22"), so the daemon can log it and refuse a QEMU too old for
// -M microvm. binary "" means qemu-system-x86_64 on PATH.
func Version(ctx context.Context, binary string) (string, error) {
	if binary == "" {
		binary = defaultBinary
	}
	out, err := system.ExecRunner{}.Run(ctx, binary, "--version")
	if err != nil {
		return "", fmt.Errorf("qemu version of %s: %w", binary, err)
	}
	v, err := parseVersion(string(out))
	if err != nil {
		return "", fmt.Errorf("qemu version of %s: %w", binary, err)
	}
	return v, nil
}

// parseVersion extracts the number from "QEMU emulator version 7.2.22 (Debian ...)".
func parseVersion(out string) (string, error) {
	const marker = "QEMU emulator version "
	line, _, _ := strings.Cut(out, "\n")
	_, rest, ok := strings.Cut(line, marker)
	if !ok {
		return "", fmt.Errorf("unexpected --version output %q", line)
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", fmt.Errorf("unexpected --version output %q", line)
	}
	return fields[0], nil
}
