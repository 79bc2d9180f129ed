package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// doubleBin is cmd/fc-double, built once for the package's tests.
var (
	doubleBin string
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fc-double-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	doubleBin = filepath.Join(dir, "fc-double")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	// Static (pure-Go net and user lookups), as Firecracker is: the jailer
	// double runs it in a chroot without a dynamic loader.
	buildErr = system.GoBuild(ctx, "./cmd/fc-double", doubleBin, "netgo", "osusergo")
	cancel()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// needDouble skips when the go tool is missing and fails on a broken build.
func needDouble(t *testing.T) {
	t.Helper()
	if errors.Is(buildErr, system.ErrNoTool) {
		t.Skip("go command not installed: cannot build cmd/fc-double")
	}
	if buildErr != nil {
		t.Fatalf("build fc-double: %v", buildErr)
	}
}

// newMachine returns a machine whose files live in a fresh short directory
// (unix socket paths are limited to 108 bytes) and a driver running the double.
// Any VMM left running by the test is killed at cleanup.
func newMachine(t *testing.T) (*Driver, vmm.Machine) {
	t.Helper()
	needDouble(t)
	dir, err := os.MkdirTemp("", "fcd")
	if err != nil {
		t.Fatal(err)
	}
	m := vmm.Machine{
		ID:          "0123456789abcdef",
		Name:        "web",
		VCPUs:       2,
		MemoryMiB:   256,
		Kernel:      filepath.Join(dir, "vmlinux"),
		BootArgs:    "init=/sbin/init quiet",
		RootDisk:    filepath.Join(dir, "root.img"),
		WorkDisk:    filepath.Join(dir, "work.img"),
		GuestIP:     "172.30.0.2",
		GatewayIP:   "172.30.0.1",
		Netmask:     "255.255.255.0",
		APISock:     filepath.Join(dir, "api.sock"),
		VSockPath:   filepath.Join(dir, "vsock.sock"),
		VSockCID:    3,
		ConsoleLog:  filepath.Join(dir, "console.log"),
		LogPath:     filepath.Join(dir, "firecracker.log"),
		MetricsPath: filepath.Join(dir, "metrics.json"),
	}
	for _, f := range []string{m.Kernel, m.RootDisk, m.WorkDisk} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := &Driver{Binary: doubleBin}
	t.Cleanup(func() {
		if p, ok := d.FindProcess(m); ok {
			_ = p.Kill(3 * time.Second)
		}
		os.RemoveAll(dir)
	})
	return d, m
}
