package qemu

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// Real boots need a guest image. The test binary's root parent process (the
// one outside the private network namespace, where the Debian mirror is
// reachable) builds one with image.Build before re-executing itself in the
// namespace, and hands it over in these variables. A developer may point
// guestDirEnv at a prebuilt image (vmlinuz, initrd.img, rootfs.ext4) instead.
const (
	guestDirEnv      = "BANGER_QEMU_TEST_GUEST"
	guestBootArgsEnv = "BANGER_QEMU_TEST_BOOTARGS"
	guestSkipEnv     = "BANGER_QEMU_TEST_GUEST_SKIP" // why no guest could be built
)

// bootTests are the tests that boot real guests; the parent builds an image
// only when -test.run selects one of them.
var bootTests = []string{"TestBootTCG", "TestBootTCGNetwork", "TestBootKVM", "TestSnapshotTCG"}

const bootLimit = 60 * time.Second // rcS done within this, or the boot failed

type guestImage struct {
	kernel, initrd, rootfs, bootArgs string
}

// requireGuest skips unless this test may boot a guest here: root, inside
// the private network namespace, QEMU installed, an image available.
func requireGuest(t *testing.T) guestImage {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("booting a guest needs root (run go test as root)")
	}
	if !system.InPrivateNetNS() {
		t.Skip("booting a guest needs the private network namespace of system.ReexecInNewNetNS")
	}
	if _, err := system.LookPath(defaultBinary); err != nil {
		t.Skipf("%s not installed", defaultBinary)
	}
	dir := os.Getenv(guestDirEnv)
	if dir == "" {
		t.Skipf("no guest image: %s", os.Getenv(guestSkipEnv))
	}
	g := guestImage{
		kernel:   filepath.Join(dir, "vmlinuz"),
		initrd:   filepath.Join(dir, "initrd.img"),
		rootfs:   filepath.Join(dir, "rootfs.ext4"),
		bootArgs: os.Getenv(guestBootArgsEnv),
	}
	if g.bootArgs == "" {
		g.bootArgs = "quiet root=/dev/vda"
	}
	for _, f := range []string{g.kernel, g.initrd, g.rootfs} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("guest image incomplete: %v", err)
		}
	}
	return g
}

// newGuestMachine makes per-VM copies of the disks in a fresh directory.
func newGuestMachine(t *testing.T, g guestImage, accel string) vmm.Machine {
	t.Helper()
	dir := t.TempDir()
	r := system.ExecRunner{}
	ctx := context.Background()
	root := filepath.Join(dir, "root.ext4")
	work := filepath.Join(dir, "work.ext4")
	if _, err := r.Run(ctx, "cp", "--sparse=always", g.rootfs, root); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(ctx, "mkfs.ext4", "-q", "-F", "-L", "work", work, "16M"); err != nil {
		t.Fatal(err)
	}
	return vmm.Machine{
		ID:         "0a1b2c3d",
		Name:       "qemutest",
		VCPUs:      1,
		MemoryMiB:  256,
		Accel:      accel,
		Kernel:     g.kernel,
		Initrd:     g.initrd,
		BootArgs:   g.bootArgs,
		RootDisk:   root,
		WorkDisk:   work,
		APISock:    filepath.Join(dir, "qmp.sock"),
		ConsoleLog: filepath.Join(dir, "console.log"),
	}
}

var rcsDone = regexp.MustCompile(`rcS done ([0-9.]+)`)

// bootGuest launches m and waits for the guest's readiness marker. It
// returns the process, the wall time to the marker and the guest's uptime
// at that moment.
func bootGuest(t *testing.T, d *Driver, m vmm.Machine) (system.Process, time.Duration, string) {
	t.Helper()
	start := time.Now()
	p, err := d.Launch(context.Background(), m)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background(), m, p, 0, true) })
	launched := time.Since(start)
	for {
		b, _ := os.ReadFile(m.ConsoleLog)
		if sm := rcsDone.FindSubmatch(b); sm != nil {
			wall := time.Since(start)
			t.Logf("%s: QMP running after %s, rcS done after %s (guest uptime %ss)",
				m.Accel, launched.Round(time.Millisecond), wall.Round(time.Millisecond), sm[1])
			return p, wall, string(sm[1])
		}
		if !p.Alive() {
			t.Fatalf("qemu exited during boot; console:\n%s\nqemu log:\n%s", tail(b), readTail(qemuLogPath(m)))
		}
		if time.Since(start) > bootLimit {
			t.Fatalf("no rcS done within %s; console:\n%s", bootLimit, tail(b))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(b []byte) string {
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

func readTail(path string) string {
	b, _ := os.ReadFile(path)
	return tail(b)
}

// assertNothingLeft checks that no QEMU serves m's socket and the socket is gone.
func assertNothingLeft(t *testing.T, d *Driver, m vmm.Machine, p system.Process) {
	t.Helper()
	if p.Alive() {
		t.Errorf("qemu pid %d still alive", p.PID)
	}
	if q, ok := d.FindProcess(m); ok {
		t.Errorf("a process (pid %d) still holds -qmp %s", q.PID, qmpToken(m.APISock))
	}
	if _, err := os.Lstat(m.APISock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("qmp socket %s left behind (%v)", m.APISock, err)
	}
	if _, err := os.Lstat(agentSock(m)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("agent socket %s left behind (%v)", agentSock(m), err)
	}
}

func TestBootTCG(t *testing.T) {
	g := requireGuest(t)
	d := &Driver{}
	m := newGuestMachine(t, g, "tcg")

	p, _, _ := bootGuest(t, d, m)
	if argv, _ := system.ProcCmdline(p.PID); !strings.Contains(strings.Join(argv, " "), "tsc_early_khz=") {
		t.Errorf("tcg guest booted without tsc_early_khz: %q", argv)
	}
	if err := d.Identify(context.Background(), m, p); err != nil {
		t.Fatalf("Identify: %v", err)
	}
	if q, ok := d.FindProcess(m); !ok || q != p {
		t.Errorf("FindProcess = %+v, %v; want %+v", q, ok, p)
	}
	other := m
	other.APISock = filepath.Join(filepath.Dir(m.APISock), "other.sock")
	if err := d.Identify(context.Background(), other, p); err == nil {
		t.Error("Identify accepted a QEMU whose QMP socket differs")
	}
	if _, ok := d.FindProcess(other); ok {
		t.Error("FindProcess matched a QEMU whose QMP socket differs")
	}
	if _, err := d.Launch(context.Background(), m); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second Launch of a running VM: %v, want ErrAlreadyRunning", err)
	}

	start := time.Now()
	if err := d.Shutdown(context.Background(), m, p, 20*time.Second, false); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	t.Logf("tcg: graceful shutdown took %s", time.Since(start).Round(time.Millisecond))
	assertNothingLeft(t, d, m, p)
	// The guest powered itself off (power button -> acpid -> poweroff -f).
	if b, _ := os.ReadFile(m.ConsoleLog); !bytes.Contains(b, []byte("Power down")) {
		t.Errorf("guest did not power down by itself; console:\n%s", tail(b))
	}

	// Second boot, forced stop.
	p, _, _ = bootGuest(t, d, m)
	start = time.Now()
	if err := d.Shutdown(context.Background(), m, p, 20*time.Second, true); err != nil {
		t.Fatalf("Shutdown(force): %v", err)
	}
	t.Logf("tcg: forced shutdown took %s", time.Since(start).Round(time.Millisecond))
	assertNothingLeft(t, d, m, p)
}

func TestBootTCGNetwork(t *testing.T) {
	g := requireGuest(t)
	// The tap lives in this test's private network namespace and vanishes with it.
	const tap = "bgqtest0"
	r := system.ExecRunner{}
	ctx := context.Background()
	for _, args := range [][]string{
		{"tuntap", "add", "dev", tap, "mode", "tap"},
		{"addr", "add", "172.30.0.1/24", "dev", tap},
		{"link", "set", tap, "up"},
	} {
		if _, err := r.Run(ctx, "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _, _ = r.Run(ctx, "ip", "link", "del", tap) })
	d := &Driver{}
	m := newGuestMachine(t, g, "tcg")
	m.TapDevice = tap
	m.GuestMAC = "52:54:00:0a:1b:2c"
	m.GuestIP = "172.30.0.2"
	m.GatewayIP = "172.30.0.1"
	m.Netmask = "255.255.255.0"
	p, _, _ := bootGuest(t, d, m)
	// The guest applied ip= to its virtio-net device and dropbear listens.
	start := time.Now()
	for {
		c, err := net.DialTimeout("tcp", "172.30.0.2:22", 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("guest ssh port unreachable: %v; console:\n%s", err, readTail(m.ConsoleLog))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("tcg: guest port 22 reachable %s after rcS done", time.Since(start).Round(time.Millisecond))
	if err := d.Shutdown(ctx, m, p, 20*time.Second, false); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	assertNothingLeft(t, d, m, p)
}

func TestBootKVM(t *testing.T) {
	g := requireGuest(t)
	if !KVMUsable() {
		t.Skip("KVMUsable() is false: /dev/kvm does not open read-write or the cpu has no vmx/svm")
	}
	d := &Driver{}
	m := newGuestMachine(t, g, "kvm")
	p, _, _ := bootGuest(t, d, m)
	if err := d.Identify(context.Background(), m, p); err != nil {
		t.Fatalf("Identify: %v", err)
	}
	start := time.Now()
	if err := d.Shutdown(context.Background(), m, p, 20*time.Second, false); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	t.Logf("kvm: graceful shutdown took %s", time.Since(start).Round(time.Millisecond))
	assertNothingLeft(t, d, m, p)
}

// wantsBootTests reports whether the -test.run pattern selects a boot test.
func wantsBootTests(runPattern string) bool {
	if runPattern == "" {
		return true
	}
	top, _, _ := strings.Cut(runPattern, "/")
	re, err := regexp.Compile(top)
	if err != nil {
		return false
	}
	for _, name := range bootTests {
		if re.MatchString(name) {
			return true
		}
	}
	return false
}
