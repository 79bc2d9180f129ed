package daemon

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/network"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

func TestStartWritesHandlesAndStopCleansUp(t *testing.T) {
	for _, dm := range []bool{false, true} {
		name := map[bool]string{false: "copy", true: "dm"}[dm]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, envOpts{dm: dm, network: true})
			e.importImage()
			vm := e.createStarted("web")
			h, err := readHandlesFile(handlesPath(vm))
			if err != nil {
				t.Fatal(err)
			}
			p, ok := e.vmmProcess(vm)
			if !ok || h.PID != p.PID || h.PIDStart != p.Start {
				t.Fatalf("handles.json %+v does not name the vmm process %+v", h, p)
			}
			if h.TapDevice == "" || !e.net.taps[h.TapDevice] {
				t.Fatalf("tap %q not created: %s", h.TapDevice, e.net.state())
			}
			if dm {
				if h.BaseLoop == "" || h.COWLoop == "" || h.DMName != "banger-"+vm.ID || h.DMDev == "" {
					t.Fatalf("dm handles missing: %+v", h)
				}
				if !strings.Contains(e.host.State(), "dm banger-"+vm.ID) {
					t.Fatalf("no dm device in host state:\n%s", e.host.State())
				}
				// The SSH key reached the VM's own root disk.
				key, err := e.host.ReadImageFile(h.DMDev, "/root/.ssh/authorized_keys")
				if err != nil || !strings.HasPrefix(string(key), "ssh-ed25519 ") {
					t.Fatalf("authorized_keys in dm root disk: %q %v", key, err)
				}
			} else if h.BaseLoop != "" || h.DMName != "" {
				t.Fatalf("copy method recorded dm handles: %+v", h)
			}
			got, err := e.c.GetVM(context.Background(), "web")
			if err != nil || got.Live == nil || !got.Live.Alive || got.Live.Handles != h {
				t.Fatalf("show: %+v %v", got.Live, err)
			}
			if _, err := e.c.StopVM(context.Background(), "web", api.StopRequest{TimeoutSeconds: 5}); err != nil {
				t.Fatal(err)
			}
			e.assertNothingLeft(vm)
			if e.net.bridge {
				t.Error("bridge kept after its last tap went")
			}
			st, _ := e.d.Store.GetVM(context.Background(), "web")
			if st.Runtime.State != model.StateStopped {
				t.Fatalf("state %s", st.Runtime.State)
			}
			// Idempotent: stop again, delete twice at the daemon level.
			if _, err := e.c.StopVM(context.Background(), "web", api.StopRequest{}); err != nil {
				t.Fatalf("second stop: %v", err)
			}
			if err := e.c.DeleteVM(context.Background(), "web", false); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(vm.Runtime.VMDir); !os.IsNotExist(err) {
				t.Fatalf("vm dir left: %v", err)
			}
			if err := e.d.Engine.DeleteVM(context.Background(), "web", false); !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("delete of an already deleted vm: %v, want not found", err)
			}
		})
	}
}

func TestStopAfterResourcesRemovedByHand(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	vm := e.createStarted("hand")
	h := e.handles(vm)
	// Someone kills the VMM, removes the dm device and the tap.
	p, _ := e.vmmProcess(vm)
	if err := p.Kill(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	// The exit watcher may have torn the VM down already: gone is fine.
	if _, err := e.host.Run(context.Background(), "dmsetup", "remove", h.DMName); err != nil && !errors.Is(err, system.ErrNotFound) {
		t.Fatal(err)
	}
	e.net.DeleteTap(context.Background(), h.TapDevice)
	for range 2 {
		if _, err := e.c.StopVM(context.Background(), "hand", api.StopRequest{}); err != nil {
			t.Fatalf("stop after manual removal: %v", err)
		}
	}
	e.assertNothingLeft(vm)
	for range 2 {
		if err := e.c.DeleteVM(context.Background(), "hand", true); err != nil && !api.IsNotFound(err) {
			t.Fatal(err)
		}
	}
}

func TestFailedStartUnwinds(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	ctx := context.Background()
	if _, err := e.c.CreateVM(ctx, api.CreateVMRequest{Name: "broken", DiskSizeBytes: 64 << 20, WorkDiskBytes: 32 << 20}); err != nil {
		t.Fatal(err)
	}
	// The kernel vanishes after the daemon checked the image and made the
	// disks, the dm device and the tap: Firecracker refuses PUT /boot-source.
	e.fc.set(vanishingKernel{VMMDriver: e.fc.VMMDriver, kernel: e.kernel})
	defer e.fc.set(nil)
	_, err := e.c.StartVM(ctx, "broken")
	if err == nil || !strings.Contains(err.Error(), "boot-source") {
		t.Fatalf("start error %v does not name the failing call", err)
	}
	vm, _ := e.d.Store.GetVM(ctx, "broken")
	if vm.Runtime.State != model.StateError || !strings.Contains(vm.Runtime.LastError, "boot-source") {
		t.Fatalf("state %s last error %q", vm.Runtime.State, vm.Runtime.LastError)
	}
	e.assertNothingLeft(vm)
	// Fixed, it starts.
	os.Rename(e.kernel+".gone", e.kernel)
	e.fc.set(nil)
	if _, err := e.c.StartVM(ctx, "broken"); err != nil {
		t.Fatalf("start after fix: %v", err)
	}
}

func TestTapFailureUnwindsRootDisk(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	ctx := context.Background()
	e.c.CreateVM(ctx, api.CreateVMRequest{Name: "notap", DiskSizeBytes: 64 << 20, WorkDiskBytes: 32 << 20})
	e.net.fail["create"] = os.ErrPermission
	if _, err := e.c.StartVM(ctx, "notap"); err == nil || !strings.Contains(err.Error(), "creating tap") {
		t.Fatalf("start error: %v", err)
	}
	vm, _ := e.d.Store.GetVM(ctx, "notap")
	e.assertNothingLeft(vm)
}

// A process that is not this VM's VMM sitting on the recorded PID, even with
// the socket path in its argv, is never adopted and never signalled.
func TestPIDReuseNeverAdoptedOrSignalled(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	vm := e.createStarted("reuse")
	h := e.handles(vm)
	e.crash()
	p, _ := e.vmmProcess(vm)
	p.Kill(5 * time.Second)
	// An impostor takes the place: same socket path in its argv, no API.
	imp, err := system.StartDecoy([]string{"fc-double", "--api-sock", vm.Runtime.APISockPath, "--id", vm.ID})
	if err != nil {
		t.Fatal(err)
	}
	defer imp.Kill(time.Second)
	h.PID, h.PIDStart = imp.PID, imp.Start
	writeHandlesFile(handlesPath(vm), h)
	e.start()
	got, _ := e.d.Store.GetVM(context.Background(), "reuse")
	if got.Runtime.State != model.StateStopped {
		t.Fatalf("impostor adopted: state %s", got.Runtime.State)
	}
	if alive, _ := e.d.Engine.Alive(context.Background(), got); alive {
		t.Fatal("vmAlive trusts the impostor")
	}
	if !imp.Alive() {
		t.Fatal("impostor was signalled")
	}
	// And a stop or delete never signals it either.
	writeHandlesFile(handlesPath(got), h)
	got.Runtime.State = model.StateRunning
	e.d.Store.UpdateVM(context.Background(), &got)
	if _, err := e.c.StopVM(context.Background(), "reuse", api.StopRequest{Force: true}); err != nil {
		t.Fatal(err)
	}
	if !imp.Alive() {
		t.Fatal("stop signalled the impostor")
	}
	imp.Kill(time.Second)
	e.assertNothingLeft(got)
}

func TestDaemonCrashKeepsLiveVM(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	vm := e.createStarted("survivor")
	before := e.handles(vm)
	e.crash()
	e.start()
	got, err := e.c.GetVM(context.Background(), "survivor")
	if err != nil {
		t.Fatal(err)
	}
	if got.Runtime.State != model.StateRunning || got.Live == nil || !got.Live.Alive || got.Live.Handles != before {
		t.Fatalf("after restart: state %s live %+v, want handles %+v", got.Runtime.State, got.Live, before)
	}
	if _, err := e.c.StopVM(context.Background(), "survivor", api.StopRequest{}); err != nil {
		t.Fatal(err)
	}
	e.assertNothingLeft(vm)
}

// The VMM dies while the daemon is down: reconcile tears down dm, loops and
// tap with the scratch handles and records the VM stopped.
func TestReconcileDemotesDeadVM(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	vm := e.createStarted("victim")
	e.crash()
	p, _ := e.vmmProcess(vm)
	if err := p.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.WaitExit(5 * time.Second)
	e.start()
	got, _ := e.d.Store.GetVM(context.Background(), "victim")
	if got.Runtime.State != model.StateStopped || got.Runtime.LastError == "" {
		t.Fatalf("state %s, last error %q", got.Runtime.State, got.Runtime.LastError)
	}
	e.assertNothingLeft(got)
}

// Reconcile from a scratch file alone, on the fake host: no process, the dm
// device, both loops and the tap are issued teardown.
func TestReconcileFromScratchTearsDown(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	ctx := context.Background()
	e.importImage()
	e.c.CreateVM(ctx, api.CreateVMRequest{Name: "ghost", DiskSizeBytes: 64 << 20, WorkDiskBytes: 32 << 20})
	vm, _ := e.d.Store.GetVM(ctx, "ghost")
	os.MkdirAll(vm.Runtime.VMDir, 0o750)
	cow, err := e.deps.Disks.CreateRootDisk(ctx, vm.ID, e.rootfs, vm.Runtime.VMDir, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	_, rh, err := e.deps.Disks.ActivateRootDisk(ctx, vm.ID, e.rootfs, cow)
	if err != nil {
		t.Fatal(err)
	}
	tap := network.TapName(vm.ID)
	e.net.CreateTap(ctx, tap)
	h := model.VMHandles{PID: 0, TapDevice: tap, RootHandles: rh}
	writeHandlesFile(handlesPath(vm), h)
	vm.Runtime.State, vm.Runtime.VMM = model.StateRunning, "firecracker"
	e.d.Store.UpdateVM(ctx, &vm)
	e.crash()
	if !strings.Contains(e.host.State(), "dm "+rh.DMName) {
		t.Fatal("setup: no dm device")
	}
	e.start()
	got, _ := e.d.Store.GetVM(ctx, "ghost")
	if got.Runtime.State != model.StateStopped {
		t.Fatalf("state %s", got.Runtime.State)
	}
	e.assertNothingLeft(got)
}

func TestInterruptedDeleteFinishedAtStartup(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	vm := e.createStarted("halfgone")
	vm.Runtime.State = model.StateDeleting
	e.d.Store.UpdateVM(context.Background(), &vm)
	e.crash()
	e.start()
	if _, err := e.d.Store.GetVM(context.Background(), "halfgone"); err == nil {
		t.Fatal("interrupted delete not finished")
	}
	e.assertNothingLeft(vm)
	if _, err := os.Stat(vm.Runtime.VMDir); !os.IsNotExist(err) {
		t.Fatal("vm dir left")
	}
}

// vanishingKernel moves the kernel away just before the VMM is launched.
type vanishingKernel struct {
	engine.VMMDriver
	kernel string
}

func (v vanishingKernel) Launch(ctx context.Context, m vmm.Machine) (system.Process, error) {
	os.Rename(v.kernel, v.kernel+".gone")
	return v.VMMDriver.Launch(ctx, m)
}

func TestUnbootableImageRefusedBeforeAnything(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	ctx := context.Background()
	e.c.CreateVM(ctx, api.CreateVMRequest{Name: "nokernel", DiskSizeBytes: 64 << 20, WorkDiskBytes: 32 << 20})
	os.WriteFile(e.kernel, []byte("not a kernel"), 0o644)
	_, err := e.c.StartVM(ctx, "nokernel")
	if err == nil || !strings.Contains(err.Error(), "cannot be booted by firecracker") {
		t.Fatalf("start of an unbootable image: %v", err)
	}
	vm, _ := e.d.Store.GetVM(ctx, "nokernel")
	if _, err := os.Stat(vm.Runtime.WorkDiskPath); err == nil {
		t.Fatal("work disk made for an unbootable image")
	}
	e.assertNothingLeft(vm)
}

// The VMM exits on its own while the daemon runs (guest poweroff, crash):
// the daemon notices, releases dm, loops, tap and sockets, and records it.
func TestVMMExitNoticedWhileRunning(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	vm := e.createStarted("shortlived")
	p, _ := e.vmmProcess(vm)
	if err := p.Kill(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	var got model.VMRecord
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		got, _ = e.d.Store.GetVM(context.Background(), "shortlived")
		if got.Runtime.State == model.StateStopped {
			break
		}
	}
	if got.Runtime.State != model.StateStopped || !strings.Contains(got.Runtime.LastError, "exited") {
		t.Fatalf("state %s, last error %q", got.Runtime.State, got.Runtime.LastError)
	}
	e.assertNothingLeft(got)
	// And it starts again.
	if _, err := e.c.StartVM(context.Background(), "shortlived"); err != nil {
		t.Fatal(err)
	}
}
