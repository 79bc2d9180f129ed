package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/storage"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/system/fakehost"
	"github.com/banger-dev/banger/internal/vmm"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
	"github.com/banger-dev/banger/internal/vmm/firecracker/fcdouble"
	"golang.org/x/sys/unix"
)

// The daemontest harness: an in-process daemon on temp dirs, serving its
// socket, with the Firecracker double as a real VMM process, a fake or real
// host for disks, and a fake network.

var (
	doubleOnce sync.Once
	doublePath string
	doubleErr  error
)

// fcDouble builds cmd/fc-double once per test binary.
func fcDouble(t *testing.T) string {
	t.Helper()
	doubleOnce.Do(func() {
		dir, err := os.MkdirTemp("", "banger-fcdouble")
		if err != nil {
			doubleErr = err
			return
		}
		doublePath = filepath.Join(dir, "fc-double")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		// Static, as Firecracker is: the jailer double runs it in a chroot.
		doubleErr = system.GoBuild(ctx, "./cmd/fc-double", doublePath, "netgo", "osusergo")
	})
	if doubleErr != nil {
		t.Skipf("cannot build fc-double: %v", doubleErr)
	}
	return doublePath
}

var (
	jailOnce sync.Once
	jailPath string
	jailErr  error
)

// jailHelper builds cmd/banger-jail once per test binary.
func jailHelper(t *testing.T) string {
	t.Helper()
	jailOnce.Do(func() {
		dir, err := os.MkdirTemp("", "banger-jail")
		if err != nil {
			jailErr = err
			return
		}
		os.Chmod(dir, 0o755)
		jailPath = filepath.Join(dir, "banger-jail")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		jailErr = system.GoBuild(ctx, "./cmd/banger-jail", jailPath)
	})
	if jailErr != nil {
		t.Skipf("cannot build banger-jail: %v", jailErr)
	}
	return jailPath
}

// fakeNet is a Networker that models taps and the bridge as state.
type fakeNet struct {
	sysDir string // taps appear here, where the Firecracker double looks for them
	mu     sync.Mutex
	taps   map[string]bool
	down   map[string]bool // taps set down (SetTapUp)
	bridge bool
	fail   map[string]error
}

func newFakeNet(sysDir string) *fakeNet {
	os.MkdirAll(sysDir, 0o755)
	return &fakeNet{sysDir: sysDir, taps: map[string]bool{}, fail: map[string]error{}}
}

func (n *fakeNet) CreateTap(ctx context.Context, name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.fail["create"]; err != nil {
		return err
	}
	n.taps[name], n.bridge = true, true
	return os.WriteFile(filepath.Join(n.sysDir, name), nil, 0o644)
}

func (n *fakeNet) SetTapUp(ctx context.Context, name string, up bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.taps[name] {
		return fmt.Errorf("no tap %s", name)
	}
	if n.down == nil {
		n.down = map[string]bool{}
	}
	n.down[name] = !up
	return nil
}

func (n *fakeNet) DeleteTap(ctx context.Context, name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.taps, name)
	os.Remove(filepath.Join(n.sysDir, name))
	return nil
}

// TapBridge: every fake tap is on the daemon's bridge.
func (n *fakeNet) TapBridge(ctx context.Context, name string) (string, error) { return "banger0", nil }

func (n *fakeNet) ReleaseBridgeIfUnused(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.taps) == 0 {
		n.bridge = false
	}
	return nil
}

func (n *fakeNet) ListTaps(ctx context.Context) ([]string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []string
	for t := range n.taps {
		out = append(out, t)
	}
	sort.Strings(out)
	return out, nil
}

func (n *fakeNet) state() string {
	taps, _ := n.ListTaps(context.Background())
	return fmt.Sprintf("taps=%v bridge=%v", taps, n.bridge)
}

// devMapDriver lets the double, a real process, open a dm device that only
// exists in the fake host: it substitutes a placeholder file for it.
type devMapDriver struct {
	*firecracker.Driver
	placeholder string
}

func (d devMapDriver) Launch(ctx context.Context, m vmm.Machine) (system.Process, error) {
	if strings.HasPrefix(m.RootDisk, "/dev/mapper/") {
		m.RootDisk = d.placeholder
	}
	return d.Driver.Launch(ctx, m)
}

// fakeDMDisks writes into dm devices that exist only in the fake host.
type fakeDMDisks struct {
	*storage.Manager
	host *fakehost.Host
}

func (f fakeDMDisks) InjectFiles(ctx context.Context, image string, files []storage.File) error {
	if !strings.HasPrefix(image, "/dev/mapper/") {
		return f.Manager.InjectFiles(ctx, image, files)
	}
	for _, fl := range files {
		if err := f.host.WriteImageFile(image, fl.Path, fl.Data, fl.Mode, fl.UID, fl.GID); err != nil {
			return err
		}
	}
	return nil
}

type envOpts struct {
	dm      bool // fake host with the dm method; else the real host with the copy method
	network bool // fake network
	// stateTmpfs puts the state dir on a tmpfs of this many bytes (root
	// only), so a test can fill the disk.
	stateTmpfs int64
	// confine runs VMMs confined (own uid, cgroup, jail; root only). Off,
	// the harness sets confine = off explicitly: the double's test hooks
	// (environment, fake sysfs) do not reach into a jail.
	confine bool
	// jailer (with confine) runs Firecracker through the jailer double.
	jailer bool
}

type testEnv struct {
	t       *testing.T
	cfg     config.Config
	deps    Deps
	fc      *switchDriver // the Firecracker driver, replaceable by a test
	d       *Daemon
	c       *client.Client
	host    *fakehost.Host
	net     *fakeNet
	rootfs  string
	kernel  string
	stop    func()
	stopped bool
}

func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "bd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newEnv(t *testing.T, o envOpts) *testEnv {
	t.Helper()
	return newEnvWith(t, o, nil)
}

// newEnvWith is newEnv with a last say on the daemon's dependencies.
func newEnvWith(t *testing.T, o envOpts, tweak func(*Deps)) *testEnv {
	t.Helper()
	double := fcDouble(t)
	base := shortTempDir(t)
	cfg := config.Defaults()
	cfg.StateDir = filepath.Join(base, "s")
	cfg.RunDir = filepath.Join(base, "r")
	if o.stateTmpfs > 0 {
		if os.Geteuid() != 0 {
			t.Skip("a tmpfs state dir needs root")
		}
		os.MkdirAll(cfg.StateDir, 0o750)
		if err := unix.Mount("tmpfs", cfg.StateDir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0750", o.stateTmpfs)); err != nil {
			t.Skipf("cannot mount a tmpfs: %v", err)
		}
		t.Cleanup(func() { unix.Unmount(cfg.StateDir, unix.MNT_DETACH) })
	}
	cfg.Group = "banger-test-nonexistent"
	cfg.FirecrackerBin = double
	cfg.VMM = "firecracker"
	cfg.Network = "off"
	cfg.Confine = "off"
	if o.confine {
		if os.Geteuid() != 0 {
			t.Skip("confinement needs root")
		}
		cfg.Confine = "on"
		cfg.JailBin = jailHelper(t)
		cfg.CgroupParent = "banger-test-" + filepath.Base(base)
		if o.jailer {
			cfg.FirecrackerJailer = filepath.Join(base, "jailer")
			if err := os.Symlink(double, cfg.FirecrackerJailer); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() {
			for _, c := range []string{"", "memory", "pids", "cpu", "cpuacct", "blkio"} {
				os.Remove(filepath.Join(cfg.CgroupRoot, c, cfg.CgroupParent))
			}
		})
	}
	cfg.Finish()
	e := &testEnv{t: t, cfg: cfg}
	e.kernel = filepath.Join(base, "vmlinux")
	if err := fcdouble.WriteFakeKernel(e.kernel); err != nil {
		t.Fatal(err)
	}
	e.rootfs = filepath.Join(base, "rootfs.ext4")
	placeholder := filepath.Join(base, "dm-placeholder")
	os.WriteFile(placeholder, make([]byte, 1<<20), 0o644)
	drv := &firecracker.Driver{Binary: double}
	e.deps = Deps{Deps: engine.Deps{KVMUsable: func() bool { return true }, WatchEvery: 50 * time.Millisecond}}
	if o.dm {
		e.host = fakehost.New()
		e.host.SetDMAvailable(true)
		if _, err := e.host.Run(context.Background(), "mkfs.ext4", "-q", "-F", "-L", "root", e.rootfs, "64M"); err != nil {
			t.Fatal(err)
		}
		e.deps.Runner = e.host
		e.deps.Disks = fakeDMDisks{&storage.Manager{Runner: e.host, Method: storage.MethodDM, LockDir: base, BusyBackoff: time.Millisecond}, e.host}
		e.deps.RootMethod = storage.MethodDM
		e.fc = &switchDriver{VMMDriver: devMapDriver{Driver: drv, placeholder: placeholder}}
		e.deps.Firecracker = e.fc
	} else {
		if _, err := (system.ExecRunner{}).Run(context.Background(), "mkfs.ext4", "-q", "-F", "-L", "root", e.rootfs, "32M"); err != nil {
			t.Skipf("mkfs.ext4 not usable: %v", err)
		}
		e.deps.Disks = &storage.Manager{Runner: system.ExecRunner{}, Method: storage.MethodCopy, LockDir: base}
		e.deps.RootMethod = storage.MethodCopy
		e.fc = &switchDriver{VMMDriver: drv}
		e.deps.Firecracker = e.fc
	}
	if o.network {
		e.net = newFakeNet(filepath.Join(base, "sys-class-net"))
		t.Setenv("FC_DOUBLE_NET_SYS_DIR", e.net.sysDir)
		e.deps.Network = e.net
	}
	if tweak != nil {
		tweak(&e.deps)
	}
	e.start()
	t.Cleanup(e.cleanup)
	return e
}

// start runs a daemon on e's dirs (again, after a simulated crash).
func (e *testEnv) start() {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logger := slog.New(slog.NewTextHandler(testWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := New(ctx, e.cfg, e.deps, logger)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	d.API.ReadHeaderTimeout = 500 * time.Millisecond
	if err := d.Listen(); err != nil {
		cancel()
		d.Close()
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { d.Serve(ctx); close(done) }()
	e.d = d
	e.c = &client.Client{Socket: e.cfg.Socket}
	e.stopped = false
	e.stop = func() {
		cancel()
		<-done
		d.Close()
	}
	select {
	case <-d.Ready():
	case <-time.After(20 * time.Second):
		e.t.Fatal("reconcile did not finish")
	}
}

// crash stops serving without stopping any VM, as a kill -9 would leave them.
func (e *testEnv) crash() {
	if !e.stopped {
		e.stopped = true
		e.stop()
	}
}

func (e *testEnv) cleanup() {
	// Kill whatever VMM the test left, then stop the daemon.
	if !e.stopped {
		vms, _ := e.d.Store.ListVMs(context.Background())
		for _, vm := range vms {
			e.d.Engine.DeleteVM(context.Background(), vm.Name, true)
		}
	}
	e.crash()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (e *testEnv) importImage() {
	e.t.Helper()
	if _, err := e.c.ImportImage(context.Background(), api.ImportImageRequest{Name: "base", Kernel: e.kernel, Rootfs: e.rootfs}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *testEnv) createStarted(name string) model.VMRecord {
	e.t.Helper()
	ctx := context.Background()
	if _, err := e.c.CreateVM(ctx, api.CreateVMRequest{Name: name, DiskSizeBytes: 64 << 20, WorkDiskBytes: 32 << 20}); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.c.StartVM(ctx, name); err != nil {
		e.t.Fatal(err)
	}
	vm, err := e.d.Store.GetVM(ctx, name)
	if err != nil {
		e.t.Fatal(err)
	}
	return vm
}

// switchDriver is a VMM driver a test can swap while the daemon runs.
type switchDriver struct {
	mu sync.Mutex
	engine.VMMDriver
	next engine.VMMDriver
}

func (s *switchDriver) set(d engine.VMMDriver) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next = d
}

func (s *switchDriver) cur() engine.VMMDriver {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next != nil {
		return s.next
	}
	return s.VMMDriver
}

func (s *switchDriver) Launch(ctx context.Context, m vmm.Machine) (system.Process, error) {
	return s.cur().Launch(ctx, m)
}

// Suspend, SetGuestTime and Resume pass through to the current driver.
func (s *switchDriver) Suspend(ctx context.Context, m vmm.Machine, p system.Process, dir string) (vmm.Incoming, error) {
	return s.cur().(engine.Suspender).Suspend(ctx, m, p, dir)
}

func (s *switchDriver) SetGuestTime(ctx context.Context, m vmm.Machine, t time.Time) error {
	return s.cur().(engine.Suspender).SetGuestTime(ctx, m, t)
}

func (s *switchDriver) Resume(ctx context.Context, m vmm.Machine, p system.Process) error {
	return s.cur().(engine.Suspender).Resume(ctx, m, p)
}

// handlesPath is where the engine keeps a VM's scratch file.
func handlesPath(vm model.VMRecord) string { return filepath.Join(vm.Runtime.VMDir, "handles.json") }

// writeHandlesFile plants a scratch file, as a crash or a tamperer would leave it.
func writeHandlesFile(path string, h model.VMHandles) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// readHandlesFile reads a VM's scratch file.
func readHandlesFile(path string) (model.VMHandles, error) {
	var h model.VMHandles
	b, err := os.ReadFile(path)
	if err != nil {
		return h, err
	}
	return h, json.Unmarshal(b, &h)
}

// handles is what the daemon knows of vm's host objects.
func (e *testEnv) handles(vm model.VMRecord) model.VMHandles { return e.d.Engine.HandlesHint(vm) }

// vmmProcess finds the double serving vm, if any.
func (e *testEnv) vmmProcess(vm model.VMRecord) (system.Process, bool) {
	return system.FindProcess(func(argv []string) bool { return system.ArgvHasPair(argv, "--api-sock", vm.Runtime.APISockPath) })
}

// assertNothingLeft checks that no process, socket, handle or host object
// of vm remains.
func (e *testEnv) assertNothingLeft(vm model.VMRecord) {
	e.t.Helper()
	if p, ok := e.vmmProcess(vm); ok {
		e.t.Errorf("vmm process %d still running", p.PID)
	}
	for _, p := range []string{vm.Runtime.APISockPath, vm.Runtime.VSockPath, handlesPath(vm)} {
		if _, err := os.Stat(p); err == nil {
			e.t.Errorf("%s still exists", p)
		}
	}
	if e.d.Engine.HasRuntime(vm.ID) {
		e.t.Errorf("handles of %s still cached", vm.Name)
	}
	if e.host != nil {
		for _, line := range strings.Split(e.host.State(), "\n") {
			if strings.HasPrefix(line, "loop ") || strings.HasPrefix(line, "dm ") || strings.HasPrefix(line, "mount ") {
				e.t.Errorf("host object left: %s", line)
			}
		}
	}
	if e.net != nil && len(e.net.taps) != 0 {
		e.t.Errorf("taps left: %s", e.net.state())
	}
}

// raw sends a request as written, for bodies the client would never make,
// and returns the status and the body.
func (e *testEnv) raw(method, path string, body io.Reader) (int, string) {
	e.t.Helper()
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", e.cfg.Socket)
	}}}
	req, err := http.NewRequest(method, "http://banger"+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
