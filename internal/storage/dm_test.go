package storage

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/system/fakehost"
)

var update = flag.Bool("update", false, "rewrite golden files")

// dmEnv is a dm-method manager on a fake host, with a 64 MiB base rootfs
// in a temp dir.
type dmEnv struct {
	host *fakehost.Host
	m    *Manager
	dir  string
	base string
}

func newDMEnv(t *testing.T) *dmEnv {
	t.Helper()
	dir := t.TempDir()
	base := filepath.Join(dir, "base.img")
	if err := createSparse(base, 64<<20); err != nil {
		t.Fatal(err)
	}
	h := fakehost.New()
	return &dmEnv{
		host: h,
		m: &Manager{Runner: h, Method: MethodDM, LockDir: dir,
			BusyRetries: 4, BusyBackoff: time.Nanosecond},
		dir:  dir,
		base: base,
	}
}

// activate creates and activates the root disk of vm.
func (e *dmEnv) activate(t *testing.T, vm string) (string, RootHandles) {
	t.Helper()
	dev, h, err := e.tryActivate(vm)
	if err != nil {
		t.Fatal(err)
	}
	return dev, h
}

func (e *dmEnv) tryActivate(vm string) (string, RootHandles, error) {
	ctx := context.Background()
	vmDir := filepath.Join(e.dir, vm)
	if err := os.MkdirAll(vmDir, 0o755); err != nil {
		return "", RootHandles{}, err
	}
	cow, err := e.m.CreateRootDisk(ctx, vm, e.base, vmDir, 32<<20)
	if err != nil {
		return "", RootHandles{}, err
	}
	return e.m.ActivateRootDisk(ctx, vm, e.base, cow)
}

// state is the fake host's state with the temp dir replaced by $DIR.
func (e *dmEnv) state() string { return strings.ReplaceAll(e.host.State(), e.dir, "$DIR") }

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if got != string(want) {
		t.Errorf("%s mismatch:\n--- got\n%s--- want\n%s", name, got, want)
	}
}

func TestDMActivateDeactivate(t *testing.T) {
	e := newDMEnv(t)
	dev, h := e.activate(t, "vm1")
	if dev != "/dev/mapper/banger-vm1" || h.DMDev != dev || h.DMName != "banger-vm1" {
		t.Errorf("device %q, handles %+v", dev, h)
	}
	if h.BaseLoop == "" || h.COWLoop == "" || h.BaseLoop == h.COWLoop {
		t.Errorf("loops %+v", h)
	}
	checkGolden(t, "dm-activated.golden", e.state())

	names, err := e.m.ListDMDevices(context.Background())
	if err != nil || len(names) != 1 || names[0] != "banger-vm1" {
		t.Errorf("ListDMDevices = %v, %v", names, err)
	}
	loops, err := e.m.ListLoopDevices(context.Background())
	if err != nil || loops[h.BaseLoop] != e.base || loops[h.COWLoop] != filepath.Join(e.dir, "vm1", "root.cow") {
		t.Errorf("ListLoopDevices = %v, %v", loops, err)
	}

	if err := e.m.DeactivateRootDisk(context.Background(), h); err != nil {
		t.Fatalf("DeactivateRootDisk: %v", err)
	}
	if s := e.state(); s != "" {
		t.Errorf("state after deactivate:\n%s", s)
	}
	// Idempotent: everything is already gone.
	if err := e.m.DeactivateRootDisk(context.Background(), h); err != nil {
		t.Errorf("second DeactivateRootDisk: %v", err)
	}
}

func TestDMDeactivateAfterManualRemove(t *testing.T) {
	e := newDMEnv(t)
	_, h := e.activate(t, "vm1")
	if _, err := e.host.Run(context.Background(), "dmsetup", "remove", h.DMName); err != nil {
		t.Fatal(err)
	}
	if err := e.m.DeactivateRootDisk(context.Background(), h); err != nil {
		t.Fatalf("DeactivateRootDisk: %v", err)
	}
	if s := e.state(); s != "" {
		t.Errorf("state:\n%s", s)
	}
}

func TestDMDeactivateBusyThenGone(t *testing.T) {
	e := newDMEnv(t)
	_, h := e.activate(t, "vm1")
	e.host.BusyTimes("dmsetup remove", 2)
	e.host.BusyTimes("losetup --detach "+h.COWLoop, 1)
	if err := e.m.DeactivateRootDisk(context.Background(), h); err != nil {
		t.Fatalf("DeactivateRootDisk: %v", err)
	}
	if n := e.host.Count("dmsetup remove"); n != 3 {
		t.Errorf("dmsetup remove ran %d times, want 3", n)
	}
	if s := e.state(); s != "" {
		t.Errorf("state:\n%s", s)
	}
}

func TestDMDeactivateBusyForever(t *testing.T) {
	e := newDMEnv(t)
	_, h := e.activate(t, "vm1")
	before := e.state()
	e.host.BusyTimes("dmsetup remove", -1)
	err := e.m.DeactivateRootDisk(context.Background(), h)
	if !errors.Is(err, system.ErrBusy) {
		t.Fatalf("DeactivateRootDisk = %v, want ErrBusy", err)
	}
	if n := e.host.Count("dmsetup remove"); n != e.m.BusyRetries {
		t.Errorf("dmsetup remove ran %d times, want %d", n, e.m.BusyRetries)
	}
	// Loops stay while the dm device does, so the same handles retry.
	if s := e.state(); s != before {
		t.Errorf("state changed:\n%s", s)
	}
	e.host.ClearFaults()
	if err := e.m.DeactivateRootDisk(context.Background(), h); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if s := e.state(); s != "" {
		t.Errorf("state:\n%s", s)
	}
}

// A VMM still holding the device is the real cause of busy.
func TestDMDeactivateWhileHeld(t *testing.T) {
	e := newDMEnv(t)
	_, h := e.activate(t, "vm1")
	e.host.Hold(h.DMDev)
	if err := e.m.DeactivateRootDisk(context.Background(), h); !errors.Is(err, system.ErrBusy) {
		t.Fatalf("DeactivateRootDisk while held = %v, want ErrBusy", err)
	}
	e.host.Release(h.DMDev)
	if err := e.m.DeactivateRootDisk(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if s := e.state(); s != "" {
		t.Errorf("state:\n%s", s)
	}
}

func TestDMCreateFailureUnwinds(t *testing.T) {
	e := newDMEnv(t)
	ctx := context.Background()
	vmDir := filepath.Join(e.dir, "vm1")
	os.Mkdir(vmDir, 0o755)
	cow, err := e.m.CreateRootDisk(ctx, "vm1", e.base, vmDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	e.host.FailNext("dmsetup create", "device-mapper: reload ioctl on banger-vm1  failed: Invalid argument\nCommand failed.\n")
	if _, _, err := e.m.ActivateRootDisk(ctx, "vm1", e.base, cow); err == nil {
		t.Fatal("ActivateRootDisk succeeded")
	}
	if s := e.state(); s != "" {
		t.Errorf("state after failed activate:\n%s", s)
	}

	// Failing at the second loop undoes the first.
	e.host.FailNext("losetup --find --show "+cow, "losetup: "+cow+": failed to set up loop device: Resource temporarily unavailable")
	if _, _, err := e.m.ActivateRootDisk(ctx, "vm1", e.base, cow); err == nil {
		t.Fatal("ActivateRootDisk succeeded")
	}
	if s := e.state(); s != "" {
		t.Errorf("state after failed activate:\n%s", s)
	}
}

func TestDMNameInUse(t *testing.T) {
	e := newDMEnv(t)
	ctx := context.Background()
	// Someone else's device already has the name.
	loop, err := e.host.Run(ctx, "losetup", "--find", "--show", e.base)
	if err != nil {
		t.Fatal(err)
	}
	table := "0 8 linear " + strings.TrimSpace(string(loop)) + " 0"
	if _, err := e.host.Run(ctx, "dmsetup", "create", "banger-vm1", "--table", table); err != nil {
		t.Fatal(err)
	}
	before := e.state()
	vmDir := filepath.Join(e.dir, "vm1")
	os.Mkdir(vmDir, 0o755)
	cow, err := e.m.CreateRootDisk(ctx, "vm1", e.base, vmDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = e.m.ActivateRootDisk(ctx, "vm1", e.base, cow)
	if !errors.Is(err, system.ErrExists) {
		t.Fatalf("ActivateRootDisk = %v, want ErrExists", err)
	}
	if s := e.state(); s != before {
		t.Errorf("state changed:\n%s\nwant\n%s", s, before)
	}
}

func TestDMConcurrentActivate(t *testing.T) {
	e := newDMEnv(t)
	const n = 10
	handles := make([]RootHandles, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if _, handles[i], err = e.tryActivate(fmt.Sprintf("vm%d", i)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, h := range handles {
		for _, l := range []string{h.BaseLoop, h.COWLoop} {
			if l == "" || seen[l] {
				t.Errorf("loop %q empty or shared: %+v", l, handles)
			}
			seen[l] = true
		}
	}
	names, err := e.m.ListDMDevices(context.Background())
	if err != nil || len(names) != n {
		t.Errorf("ListDMDevices = %v, %v", names, err)
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.m.DeactivateRootDisk(context.Background(), handles[i]); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if s := e.state(); s != "" {
		t.Errorf("state:\n%s", s)
	}
}

func TestDMCreateRootDisk(t *testing.T) {
	e := newDMEnv(t)
	vmDir := t.TempDir()
	p, err := e.m.CreateRootDisk(context.Background(), "vm1", e.base, vmDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || p != filepath.Join(vmDir, "root.cow") || st.Size() != 64<<20 {
		t.Fatalf("root disk %s: %v %v", p, st, err)
	}
	if alloc := allocated(t, p); alloc != 0 {
		t.Errorf("cow allocated %d bytes, want a hole", alloc)
	}
	if _, err := e.m.CreateRootDisk(context.Background(), "vm1", e.base, vmDir, 0); !errors.Is(err, os.ErrExist) {
		t.Errorf("second CreateRootDisk = %v, want ErrExist", err)
	}
	for _, bad := range []string{"", "../x", "a/b", "a b", strings.Repeat("x", 77)} {
		if _, err := e.m.CreateRootDisk(context.Background(), bad, e.base, vmDir, 0); err == nil {
			t.Errorf("vm id %q accepted", bad)
		}
	}
}

func TestDetectMethod(t *testing.T) {
	dir := t.TempDir()
	control := filepath.Join(dir, "control")
	old := dmControlPath
	t.Cleanup(func() { dmControlPath = old })
	h := fakehost.New()
	ctx := context.Background()

	dmControlPath = control // absent
	if m := DetectMethod(ctx, h); m != MethodCopy {
		t.Errorf("no control node: %s", m)
	}
	os.WriteFile(control, nil, 0o600)
	if m := DetectMethod(ctx, h); m != MethodDM {
		t.Errorf("dm available: %s", m)
	}
	h.SetDMAvailable(false)
	if m := DetectMethod(ctx, h); m != MethodCopy {
		t.Errorf("node without driver: %s", m)
	}
	m := &Manager{Runner: h, Method: MethodCopy}
	if names, err := m.ListDMDevices(ctx); err != nil || names != nil {
		t.Errorf("ListDMDevices without dm = %v, %v", names, err)
	}
}

func TestCopyActivateHasNoHandles(t *testing.T) {
	m := &Manager{Runner: fakehost.New(), Method: MethodCopy}
	p := filepath.Join(t.TempDir(), "root.img")
	os.WriteFile(p, nil, 0o600)
	dev, h, err := m.ActivateRootDisk(context.Background(), "vm1", "/nonexistent", p)
	if err != nil || dev != p || !h.IsZero() {
		t.Errorf("ActivateRootDisk = %q %+v %v", dev, h, err)
	}
	if err := m.DeactivateRootDisk(context.Background(), h); err != nil {
		t.Error(err)
	}
	if _, _, err := m.ActivateRootDisk(context.Background(), "vm1", "", p+".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing disk: %v", err)
	}
}
