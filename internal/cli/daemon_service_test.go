package cli

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/system"
)

// fakeHost is a serviceHost in a temporary tree: systemd "runs" when
// running is set; the unit file is absent until a test writes it.
type fakeHost struct {
	serviceHost
	root string
}

func newFakeHost(t *testing.T, running bool) fakeHost {
	t.Helper()
	root := t.TempDir()
	h := fakeHost{root: root, serviceHost: serviceHost{
		systemdDir: filepath.Join(root, "run/systemd/system"),
		unitDirs:   []string{filepath.Join(root, "etc/systemd/system"), filepath.Join(root, "usr/lib/systemd/system")},
		cgroupDirs: []string{filepath.Join(root, "cgroup/unified/system.slice"), filepath.Join(root, "cgroup/systemd/system.slice")},
		procDir:    filepath.Join(root, "proc"),
		configFile: filepath.Join(root, "etc/banger/config.toml"),
	}}
	for _, d := range h.unitDirs {
		mustMkdir(t, d)
	}
	if running {
		mustMkdir(t, h.systemdDir)
	}
	return h
}

// installUnit puts the real unit file into the vendor unit directory.
func (h fakeHost) installUnit(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "packaging", "bangerd.service"))
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(h.unitDirs[1], serviceUnit), string(b))
}

// use makes h the host the CLI looks at for the rest of the test.
func (h fakeHost) use(t *testing.T) {
	old := hostPaths
	hostPaths = h.serviceHost
	t.Cleanup(func() { hostPaths = old })
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, path, data string) {
	t.Helper()
	mustMkdir(t, filepath.Dir(path))
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestUnitInstalled(t *testing.T) {
	for _, tc := range []struct {
		name    string
		running bool
		setup   func(t *testing.T, h fakeHost)
		want    bool
	}{
		{"systemd not running", false, func(t *testing.T, h fakeHost) { h.installUnit(t) }, false},
		{"no unit", true, func(t *testing.T, h fakeHost) {}, false},
		{"unit installed", true, func(t *testing.T, h fakeHost) { h.installUnit(t) }, true},
		{"unit in /etc only", true, func(t *testing.T, h fakeHost) {
			mustWrite(t, filepath.Join(h.unitDirs[0], serviceUnit), "[Service]\nExecStart=/usr/bin/bangerd\n")
		}, true},
		{"masked by a link to /dev/null", true, func(t *testing.T, h fakeHost) {
			h.installUnit(t)
			if err := os.Symlink(os.DevNull, filepath.Join(h.unitDirs[0], serviceUnit)); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"masked by an empty file", true, func(t *testing.T, h fakeHost) {
			h.installUnit(t)
			mustWrite(t, filepath.Join(h.unitDirs[0], serviceUnit), "")
		}, false},
		{"dangling link before the vendor unit", true, func(t *testing.T, h fakeHost) {
			h.installUnit(t)
			if err := os.Symlink(filepath.Join(h.root, "gone"), filepath.Join(h.unitDirs[0], serviceUnit)); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"linked unit (systemctl link)", true, func(t *testing.T, h fakeHost) {
			elsewhere := filepath.Join(h.root, "opt", serviceUnit)
			mustWrite(t, elsewhere, "[Service]\nExecStart=/opt/bangerd\n")
			if err := os.Symlink(elsewhere, filepath.Join(h.unitDirs[0], serviceUnit)); err != nil {
				t.Fatal(err)
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost(t, tc.running)
			tc.setup(t, h)
			if got := h.unitInstalled(); got != tc.want {
				t.Errorf("unitInstalled = %v, want %v", got, tc.want)
			}
		})
	}
}

// The CLI defers to the service only for the socket the service listens
// on: the config file's (or the default), not one moved by the environment.
func TestServiceModeFollowsSocket(t *testing.T) {
	h := newFakeHost(t, true)
	h.installUnit(t)
	h.use(t)
	def := config.Defaults()
	def.Finish()
	a := &app{cfg: config.Config{Socket: def.Socket}}
	if !a.serviceMode() {
		t.Errorf("no config file, default socket %s: not in service mode", def.Socket)
	}
	a.cfg.Socket = "/tmp/elsewhere/bangerd.sock"
	if a.serviceMode() {
		t.Errorf("socket %s, not the service's: in service mode", a.cfg.Socket)
	}
	mustWrite(t, h.configFile, "run_dir = \"/tmp/elsewhere\"\n")
	if !a.serviceMode() {
		t.Errorf("config file moves the service to %s: not in service mode", a.cfg.Socket)
	}
	a.cfg.Socket = def.Socket
	if a.serviceMode() {
		t.Errorf("config file moves the service away from %s: still in service mode", def.Socket)
	}
}

// With the service installed and not running, no command starts a daemon:
// they fail at once, exit 6, and say how to start the service. Without the
// unit, the same command starts bangerd on demand; with the unit back, the
// CLI uses the daemon that answers and status says it is not the service.
func TestServiceInstalledNeverAutoStarts(t *testing.T) {
	ch := newCLIHarness(t)
	if _, err := system.LookPath("bangerd"); err != nil {
		t.Fatalf("bangerd not on PATH, so this test would prove nothing: %v", err)
	}
	h := newFakeHost(t, true)
	h.installUnit(t)
	mustWrite(t, h.configFile, "run_dir = \""+ch.run+"\"\n")
	h.use(t)
	sock := filepath.Join(ch.run, "bangerd.sock")

	for _, args := range [][]string{{"daemon", "start"}, {"vm", "list"}, {"image", "list"}} {
		start := time.Now()
		code, out, errOut := ch.banger(args...)
		if code != ExitUnreachable {
			t.Errorf("banger %q with the service installed and stopped: exit %d, want %d (stdout %q)", args, code, ExitUnreachable, out)
		}
		if !strings.Contains(errOut, "bangerd.service is not running") || !strings.Contains(errOut, "systemctl start bangerd") {
			t.Errorf("banger %q: stderr %q does not name the service and how to start it", args, errOut)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("banger %q took %v to fail", args, d)
		}
		if _, err := os.Stat(sock); err == nil {
			t.Fatalf("banger %q created %s: a daemon was started", args, sock)
		}
		if p, ok := daemonProcess(ch.state); ok {
			t.Fatalf("banger %q started bangerd pid %d beside the service", args, p.PID)
		}
	}
	code, out, _ := ch.banger("daemon", "status")
	if code != ExitUnreachable || !strings.Contains(out, "bangerd.service is installed: start it with systemctl start bangerd") {
		t.Errorf("daemon status: exit %d, stdout %q", code, out)
	}

	// No unit: on-demand start as before.
	none := newFakeHost(t, true)
	none.use(t)
	out = ch.mustBanger("daemon", "start")
	p, ok := daemonProcess(ch.state)
	if !ok {
		t.Fatalf("daemon start without the unit started nothing: %q", out)
	}
	out = ch.mustBanger("daemon", "status")
	if !strings.Contains(out, "not managed by systemd") || strings.Contains(out, "is installed") {
		t.Errorf("daemon status of an on-demand daemon, no unit: %q", out)
	}

	// The unit appears: the answering daemon is used, nothing else starts.
	h.use(t)
	ch.mustBanger("vm", "list")
	if q, ok := daemonProcess(ch.state); !ok || q.PID != p.PID {
		t.Errorf("after vm list in service mode the daemon is %+v (%v), want pid %d", q, ok, p.PID)
	}
	out = ch.mustBanger("daemon", "status")
	if !strings.Contains(out, "not managed by systemd") || !strings.Contains(out, "bangerd.service is installed but is not this daemon") {
		t.Errorf("daemon status of an on-demand daemon with the unit installed: %q", out)
	}
	if out := ch.mustBanger("daemon", "stop"); strings.Contains(out, "bangerd.service") {
		t.Errorf("stopping an on-demand daemon mentions the service: %q", out)
	}
}

// A bangerd in the unit's cgroup means the service is starting: the CLI
// waits for it (bounded) instead of failing at once, and stops waiting when
// it is gone. VMMs left in the cgroup do not count.
func TestServiceStartingIsAwaited(t *testing.T) {
	h := newFakeHost(t, true)
	h.installUnit(t)
	run, err := os.MkdirTemp("/tmp", "bt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) }) // after tearDown below: cleanups run last first
	mustWrite(t, h.configFile, "run_dir = \""+run+"\"\n")
	procs := filepath.Join(h.cgroupDirs[1], serviceUnit, "cgroup.procs")
	mustWrite(t, procs, "4242\n4343\n")
	mustWrite(t, filepath.Join(h.procDir, "4242", "comm"), "qemu-system-x86\n")
	h.use(t)
	// Settings under which a daemon started by mistake would touch nothing.
	cfg := config.Defaults()
	cfg.StateDir, cfg.RunDir = filepath.Join(run, "state"), run
	cfg.Network, cfg.RootDiskMethod, cfg.Group = "off", "copy", "banger-test-nonexistent"
	cfg.Finish()
	a := &app{ctx: context.Background(), stdout: io.Discard, stderr: io.Discard, cfg: cfg}
	t.Cleanup(func() {
		if left := tearDown(cfg.StateDir, run, ""); left != "" {
			t.Error(left)
		}
	})

	start := time.Now()
	_, err = a.api()
	if !errors.Is(err, client.ErrDaemonUnreachable) || exitCode(err) != ExitUnreachable {
		t.Fatalf("only a VMM in the unit's cgroup: err %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("only a VMM in the unit's cgroup: waited %v", d)
	}

	comm := filepath.Join(h.procDir, "4343", "comm")
	mustWrite(t, comm, "bangerd\n")
	if !h.unitRunsBangerd() {
		t.Fatal("bangerd in the v1 systemd hierarchy's cgroup.procs not seen")
	}
	const gone = 700 * time.Millisecond
	time.AfterFunc(gone, func() { os.Remove(comm) })
	start = time.Now()
	_, err = a.api()
	d := time.Since(start)
	if !errors.Is(err, client.ErrDaemonUnreachable) {
		t.Fatalf("starting service that never answers: err %v", err)
	}
	if d < gone || d > gone+5*time.Second {
		t.Errorf("waited %v for a starting service that went away after %v", d, gone)
	}
	if _, err := os.Stat(a.cfg.StateDir); err == nil {
		t.Errorf("waiting for the service created the state dir: something tried to start a daemon")
	}
}

func TestCgroupUnit(t *testing.T) {
	for _, tc := range []struct {
		cgroup  string
		unit    string
		service bool
	}{
		{"0::/system.slice/bangerd.service\n", "bangerd.service", true},
		{"12:pids:/system.slice/bangerd.service\n1:name=systemd:/system.slice/bangerd.service\n0::/system.slice/bangerd.service\n", "bangerd.service", true},
		{"1:name=systemd:/system.slice/bangerd.service\n", "bangerd.service", true},
		{"0::/system.slice/system-bangerd.slice/bangerd@lab.service\n", "bangerd@lab.service", true},
		{"0::/user.slice/user-0.slice/session-3.scope\n", "", false},
		{"0::/system.slice/actions-runner.service\n", "actions-runner.service", false},
		{"0::/\n", "", false},
	} {
		m, err := system.ParseCgroupFile(tc.cgroup)
		if err != nil {
			t.Fatalf("%q: %v", tc.cgroup, err)
		}
		unit := cgroupUnit(m)
		if unit != tc.unit || isServiceUnit(unit) != tc.service {
			t.Errorf("%q: unit %q (bangerd's: %v), want %q (%v)", tc.cgroup, unit, isServiceUnit(unit), tc.unit, tc.service)
		}
	}
	if _, known := daemonUnit(os.Getpid()); !known {
		t.Error("this test's own cgroup is not readable")
	}
	if _, known := daemonUnit(1 << 30); known {
		t.Error("a pid that does not exist has a known unit")
	}
}

func TestManagementLines(t *testing.T) {
	for _, tc := range []struct {
		unit           string
		known, service bool
		want           string
	}{
		{"bangerd.service", true, true, "managed by systemd as bangerd.service: systemctl restart|stop bangerd"},
		{"bangerd.service", true, false, "managed by systemd as bangerd.service: systemctl restart|stop bangerd"},
		{"", true, false, "not managed by systemd: started on demand by banger, or by hand"},
		{"runner.service", true, true, "not managed by systemd: started on demand by banger, or by hand\nbangerd.service is installed but is not this daemon: banger daemon stop, then systemctl start bangerd"},
		{"", false, true, "managed by: unknown (pid 7 is not visible here)"},
	} {
		if got := strings.Join(managementLines(7, tc.unit, tc.known, tc.service), "\n"); got != tc.want {
			t.Errorf("unit %q known %v service %v:\n got %q\nwant %q", tc.unit, tc.known, tc.service, got, tc.want)
		}
	}
}

// status --wait waits for a daemon that is not there yet, and no longer.
func TestStatusWait(t *testing.T) {
	ch := newCLIHarness(t)
	start := time.Now()
	code, out, _ := ch.banger("daemon", "status", "--wait", "600ms")
	if d := time.Since(start); code != ExitUnreachable || d < 600*time.Millisecond || d > 5*time.Second {
		t.Errorf("status --wait 600ms without a daemon: exit %d after %v: %q", code, d, out)
	}
	ch.mustBanger("daemon", "start")
	start = time.Now()
	out = ch.mustBanger("daemon", "status", "--wait", "30s")
	if d := time.Since(start); d > 5*time.Second || !strings.Contains(out, "ready true") {
		t.Errorf("status --wait 30s with a ready daemon took %v: %q", d, out)
	}
	ch.mustBanger("daemon", "stop")
}
