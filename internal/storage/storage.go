// Package storage makes and tears down a VM's disks: the root disk (a
// device-mapper snapshot of the image's rootfs where the host has
// device-mapper, else a per-VM copy) and the work disk (a sparse ext4 image).
// It also reads and writes files inside ext4 images without mounting them.
// Every external tool runs through a Runner, so the dm method is tested
// against the fake host in internal/system/fakehost.
package storage

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"time"
)

// Runner runs an external command and returns its stdout. system.ExecRunner
// and fakehost.Host satisfy it.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Method is how a VM's root disk is made. It is stored with the VM so that
// doctor and `vm show` can say which one is in use.
type Method string

// The root disk methods.
const (
	// MethodDM stacks a per-VM copy-on-write file on the shared read-only
	// rootfs with a device-mapper snapshot target.
	MethodDM Method = "dm-snapshot"
	// MethodCopy gives each VM its own copy of the rootfs, reflinked where the
	// filesystem can, else sparse. It needs no device-mapper.
	MethodCopy Method = "copy"
)

// dmControlPath is the device-mapper control node; a variable so tests can
// point DetectMethod at a path that does or does not exist.
var dmControlPath = "/dev/mapper/control"

// DetectMethod picks MethodDM when the kernel's device-mapper answers
// (/dev/mapper/control exists and `dmsetup version` succeeds), else
// MethodCopy. The node alone is not enough: containers often have it without
// a driver behind it.
func DetectMethod(ctx context.Context, r Runner) Method {
	if _, err := os.Stat(dmControlPath); err != nil {
		return MethodCopy
	}
	if _, err := r.Run(ctx, "dmsetup", "version"); err != nil {
		return MethodCopy
	}
	return MethodDM
}

// DMName is the device-mapper name of a VM's root disk. The prefix lets
// doctor and gc tell banger's devices from others'.
func DMName(vmID string) string { return dmPrefix + vmID }

const dmPrefix = "banger-"

// validID matches VM ids safe to put in a dm name and a path: the
// containerd identifier rule, capped well under the dm name limit (127).
var validID = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

func checkVMID(vmID string) error {
	if len(vmID) == 0 || len(vmID) > 76 || !validID.MatchString(vmID) {
		return fmt.Errorf("invalid vm id %q", vmID)
	}
	return nil
}

// Manager makes, activates and tears down disks. The zero value is not
// usable: Runner and Method must be set.
type Manager struct {
	Runner Runner
	Method Method
	Logger *slog.Logger // optional

	// LockDir holds the host-wide lock file that serialises loop and dm
	// setup across processes; default os.TempDir().
	LockDir string
	// BusyRetries is how many times teardown retries a device that is busy
	// before giving up; default 6.
	BusyRetries int
	// BusyBackoff is the first wait between those retries, doubled each
	// time; default 50ms (so about 3s in all).
	BusyBackoff time.Duration
}

func (m *Manager) log() *slog.Logger {
	if m.Logger != nil {
		return m.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (m *Manager) busyRetries() int {
	if m.BusyRetries > 0 {
		return m.BusyRetries
	}
	return 6
}

func (m *Manager) busyBackoff() time.Duration {
	if m.BusyBackoff > 0 {
		return m.BusyBackoff
	}
	return 50 * time.Millisecond
}
