package qemu

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// fakeVM is a VM run by a fake QEMU process (this test binary, see
// fakeQEMUMain) whose argv holds "-name banger-<id>" and
// "-qmp unix:<sock>,server=on,wait=off".
type fakeVM struct {
	m     vmm.Machine
	p     system.Process
	state string // command log the fake writes
}

func startFakeQEMU(t *testing.T, mode string) fakeVM {
	t.Helper()
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	m := baseMachine()
	m.APISock = filepath.Join(dir, "qmp.sock")
	m.ConsoleLog = filepath.Join(dir, "console.log")
	state := filepath.Join(dir, "state")
	p, err := system.StartDetached(system.DetachedSpec{
		Argv:    []string{exe, "-name", guestName(m.ID), "-M", "microvm", "-m", "256", "-smp", "2", "-qmp", qmpToken(m.APISock)},
		Env:     append(os.Environ(), fakeQEMUEnv+"="+mode, fakeQEMUStateEnv+"="+state),
		LogPath: filepath.Join(dir, "fake.log"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill(5 * time.Second) })
	if mode != "sleep" {
		waitFor(t, "fake qemu socket", func() bool { _, err := os.Stat(m.APISock); return err == nil })
	} else {
		waitFor(t, "fake process argv", func() bool {
			argv, _ := system.ProcCmdline(p.PID)
			return servesSocket(argv, m.APISock)
		})
	}
	return fakeVM{m: m, p: p, state: state}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (v fakeVM) commands(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(v.state)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range strings.Split(string(b), "\n") {
		if c != "" && c != "qmp_capabilities" {
			out = append(out, c)
		}
	}
	return out
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

func assertGone(t *testing.T, v fakeVM) {
	t.Helper()
	if v.p.Alive() {
		t.Errorf("process %d still alive", v.p.PID)
	}
	if _, err := os.Lstat(v.m.APISock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("qmp socket %s left behind (%v)", v.m.APISock, err)
	}
	if p, ok := (&Driver{}).FindProcess(v.m); ok {
		t.Errorf("FindProcess still finds pid %d", p.PID)
	}
}

func TestIdentifyRefusesNonQEMU(t *testing.T) {
	// A process whose argv holds the exact -qmp token but runs no monitor.
	v := startFakeQEMU(t, "sleep")
	d := &Driver{}
	p, ok := d.FindProcess(v.m)
	if !ok || p.PID != v.p.PID {
		t.Fatalf("FindProcess = %+v, %v; want pid %d (argv match)", p, ok, v.p.PID)
	}
	err := d.Identify(context.Background(), v.m, v.p)
	if err == nil {
		t.Fatal("Identify accepted a process without a QMP monitor")
	}
	t.Logf("identify error: %v", err)
	// Launch must not start a second VMM for a socket someone claims.
	if _, err := d.Launch(context.Background(), v.m); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("Launch over a claimed socket: %v, want ErrAlreadyRunning", err)
	}
}

func TestIdentifyAndFindProcess(t *testing.T) {
	v := startFakeQEMU(t, "no-acpid")
	d := &Driver{}
	if err := d.Identify(context.Background(), v.m, v.p); err != nil {
		t.Fatalf("Identify: %v", err)
	}
	other := v.m
	other.APISock = v.m.APISock + ".other"
	if err := d.Identify(context.Background(), other, v.p); err == nil {
		t.Error("Identify accepted a process serving another socket")
	}
	if _, ok := d.FindProcess(other); ok {
		t.Error("FindProcess matched another socket")
	}
	// Same socket, other VM id: argv -name and QMP query-name disagree.
	otherID := v.m
	otherID.ID = "ffff0000"
	if err := d.Identify(context.Background(), otherID, v.p); err == nil {
		t.Error("Identify accepted a QEMU named for another VM")
	}
	if _, ok := d.FindProcess(otherID); ok {
		t.Error("FindProcess matched a QEMU named for another VM")
	}
	stale := v.p
	stale.Start++ // same PID, different start time: a reused PID
	if err := d.Identify(context.Background(), v.m, stale); err == nil {
		t.Error("Identify accepted a process with another start time")
	}
	if err := d.Identify(context.Background(), v.m, system.Process{}); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("Identify of no process: %v, want os.ErrProcessDone", err)
	}
}

func TestShutdownRepeatsPowerdown(t *testing.T) {
	// The first press is lost (acpid not yet running); the second powers off.
	v := startFakeQEMU(t, "acpid-late")
	if err := (&Driver{}).Shutdown(context.Background(), v.m, v.p, 30*time.Second, false); err != nil {
		t.Fatal(err)
	}
	assertGone(t, v)
	cmds := v.commands(t)
	if count(cmds, "system_powerdown") != 2 || count(cmds, "quit") != 0 {
		t.Errorf("commands %q, want two system_powerdown and no quit", cmds)
	}
}

func TestShutdownQuitsWhenGuestIgnoresPowerdown(t *testing.T) {
	v := startFakeQEMU(t, "no-acpid")
	if err := (&Driver{}).Shutdown(context.Background(), v.m, v.p, 1500*time.Millisecond, false); err != nil {
		t.Fatal(err)
	}
	assertGone(t, v)
	cmds := v.commands(t)
	if count(cmds, "system_powerdown") < 1 || len(cmds) == 0 || cmds[len(cmds)-1] != "quit" {
		t.Errorf("commands %q, want system_powerdown then quit", cmds)
	}
}

func TestShutdownKillsWedgedQEMU(t *testing.T) {
	v := startFakeQEMU(t, "wedged")
	if err := (&Driver{}).Shutdown(context.Background(), v.m, v.p, 300*time.Millisecond, false); err != nil {
		t.Fatal(err)
	}
	// The fake never removes its socket when killed, like QEMU: Shutdown must.
	assertGone(t, v)
	if cmds := v.commands(t); count(cmds, "quit") != 1 {
		t.Errorf("commands %q, want one quit before the kill", cmds)
	}
}

func TestShutdownForce(t *testing.T) {
	v := startFakeQEMU(t, "no-acpid")
	if err := (&Driver{}).Shutdown(context.Background(), v.m, v.p, time.Minute, true); err != nil {
		t.Fatal(err)
	}
	assertGone(t, v)
	if cmds := v.commands(t); len(cmds) != 0 {
		t.Errorf("forced shutdown talked QMP: %q", cmds)
	}
}

func TestShutdownIsIdempotent(t *testing.T) {
	v := startFakeQEMU(t, "wedged")
	d := &Driver{}
	if err := d.Shutdown(context.Background(), v.m, v.p, 0, true); err != nil {
		t.Fatal(err)
	}
	// A stale socket left by a crashed QEMU (killed processes do not unlink).
	ln, err := net.Listen("unix", v.m.APISock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	for _, force := range []bool{false, true} {
		if err := d.Shutdown(context.Background(), v.m, v.p, time.Second, force); err != nil {
			t.Errorf("Shutdown(force=%v) of a gone process: %v", force, err)
		}
	}
	assertGone(t, v)
	// No process at all (the daemon lost its handles): nothing to do.
	if err := d.Shutdown(context.Background(), v.m, system.Process{}, time.Second, false); err != nil {
		t.Errorf("Shutdown of no process: %v", err)
	}
}

func TestShutdownKeepsSocketOfAnotherProcess(t *testing.T) {
	// Stale handles: the process given is gone, but a live QEMU (another
	// process) serves the socket. Its socket must survive.
	live := startFakeQEMU(t, "no-acpid")
	d := &Driver{}
	if err := d.Shutdown(context.Background(), live.m, system.Process{PID: 1 << 22, Start: 1}, time.Second, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(live.m.APISock); err != nil {
		t.Errorf("socket of the live process removed: %v", err)
	}
	if err := d.Identify(context.Background(), live.m, live.p); err != nil {
		t.Errorf("live process no longer identifiable: %v", err)
	}
}

func TestShutdownCancelledKills(t *testing.T) {
	// A cancelled stop cuts the graceful wait short but still leaves no VMM
	// behind, like the Firecracker driver.
	v := startFakeQEMU(t, "no-acpid")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := (&Driver{}).Shutdown(ctx, v.m, v.p, time.Minute, false); err != nil {
		t.Fatalf("Shutdown with a cancelled context: %v", err)
	}
	assertGone(t, v)
}

func TestRemoveSocketRefusesRegularFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "not-a-socket")
	if err := os.WriteFile(path, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := removeSocket(path); err == nil {
		t.Error("removeSocket removed a regular file")
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("file gone: %v", err)
	}
}

func TestLaunchFailureLeavesNothing(t *testing.T) {
	if _, err := system.LookPath(defaultBinary); err != nil {
		t.Skipf("%s not installed", defaultBinary)
	}
	dir := t.TempDir()
	m := baseMachine()
	m.Kernel = filepath.Join(dir, "missing-vmlinuz")
	m.Initrd = ""
	m.RootDisk = filepath.Join(dir, "root.ext4")
	m.WorkDisk = ""
	m.APISock = filepath.Join(dir, "qmp.sock")
	m.ConsoleLog = filepath.Join(dir, "console.log")
	if err := os.WriteFile(m.RootDisk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := (&Driver{}).Launch(context.Background(), m)
	if err == nil {
		t.Fatal("Launch with a missing kernel succeeded")
	}
	t.Logf("launch error: %v", err)
	// The cause comes from QEMU's own log, which names the kernel.
	if !strings.Contains(err.Error(), "missing-vmlinuz") || !strings.Contains(err.Error(), "qemu log") {
		t.Errorf("error lacks QEMU's reason: %v", err)
	}
	if _, err := os.Lstat(m.APISock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("qmp socket left behind: %v", err)
	}
	if p, ok := (&Driver{}).FindProcess(m); ok {
		t.Errorf("qemu pid %d left running", p.PID)
	}
}
