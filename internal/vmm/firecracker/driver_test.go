package firecracker

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm/firecracker/fcdouble"
)

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestLaunchIdentifyAndGracefulShutdown(t *testing.T) {
	d, m := newMachine(t)
	ctx := context.Background()
	p, err := d.Launch(ctx, m)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	if err := d.Identify(ctx, m, p); err != nil {
		t.Fatalf("Identify: %v", err)
	}
	info, err := newAPIClient(m.APISock).describe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != m.ID || info.State != "Running" {
		t.Fatalf("GET / = %+v, want id %s Running", info, m.ID)
	}
	found, ok := d.FindProcess(m)
	if !ok || found.PID != p.PID {
		t.Fatalf("FindProcess = %+v %v, want pid %d", found, ok, p.PID)
	}
	console := readFile(t, m.ConsoleLog)
	if !strings.Contains(console, "fc-double: guest running") {
		t.Fatalf("console lacks boot line:\n%s", console)
	}
	wantArgs := "console=ttyS0 reboot=k panic=1 ip=172.30.0.2::172.30.0.1:255.255.255.0:web:eth0:off init=/sbin/init quiet"
	if !strings.Contains(console, "Command line: "+wantArgs+" ") {
		t.Fatalf("console lacks kernel command line %q:\n%s", wantArgs, console)
	}
	if _, err := os.Stat(m.VSockPath); err != nil {
		t.Fatalf("vsock socket not created: %v", err)
	}

	if err := d.Shutdown(ctx, m, p, 10*time.Second, false); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if p.Alive() {
		t.Fatal("firecracker still alive after Shutdown")
	}
	// The double prints this only when it honours Ctrl-Alt-Del (exit 0), never when killed.
	if !strings.Contains(readFile(t, m.ConsoleLog), "reboot: Restarting system") {
		t.Fatal("shutdown was not graceful: no reboot line on the console")
	}
	for _, s := range []string{m.APISock, m.VSockPath} {
		if _, err := os.Stat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s left behind (stat err %v)", s, err)
		}
	}
	if err := d.Shutdown(ctx, m, p, time.Second, false); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if err := d.Shutdown(ctx, m, p, time.Second, true); err != nil {
		t.Fatalf("forced Shutdown of a gone process: %v", err)
	}
}

func TestShutdownKillsGuestIgnoringCtrlAltDel(t *testing.T) {
	d, m := newMachine(t)
	t.Setenv(fcdouble.EnvIgnoreCAD, "1")
	ctx := context.Background()
	p, err := d.Launch(ctx, m)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	if err := d.Shutdown(ctx, m, p, 100*time.Millisecond, false); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if p.Alive() {
		t.Fatal("firecracker still alive after Shutdown")
	}
	if strings.Contains(readFile(t, m.ConsoleLog), "reboot: Restarting system") {
		t.Fatal("guest rebooted although it ignores Ctrl-Alt-Del")
	}
	if _, ok := d.FindProcess(m); ok {
		t.Fatal("FindProcess still finds the VMM")
	}
}

func TestShutdownForceKills(t *testing.T) {
	d, m := newMachine(t)
	ctx := context.Background()
	p, err := d.Launch(ctx, m)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	if err := d.Shutdown(ctx, m, p, time.Minute, true); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if p.Alive() || strings.Contains(readFile(t, m.ConsoleLog), "reboot:") {
		t.Fatal("force shutdown should SIGKILL without asking the guest")
	}
}

func TestLaunchRemovesStaleSockets(t *testing.T) {
	d, m := newMachine(t)
	// A stale API socket, as a crashed Firecracker leaves it, and a stale vsock file.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: m.APISock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if err := os.WriteFile(m.VSockPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p, err := d.Launch(ctx, m)
	if err != nil {
		t.Fatalf("Launch over stale sockets: %v", err)
	}
	if err := d.Identify(ctx, m, p); err != nil {
		t.Fatalf("Identify: %v", err)
	}
}

func TestLaunchFailureUnwinds(t *testing.T) {
	d, m := newMachine(t)
	m.Kernel += ".missing"
	_, err := d.Launch(context.Background(), m)
	if err == nil {
		t.Fatal("Launch succeeded without a kernel")
	}
	for _, want := range []string{"PUT /boot-source", "Boot source error: The kernel file cannot be opened: No such file or directory"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if p, ok := d.FindProcess(m); ok {
		t.Errorf("firecracker %d left running after failed launch", p.PID)
	}
	for _, s := range []string{m.APISock, m.VSockPath} {
		if _, err := os.Stat(s); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s left behind (stat err %v)", s, err)
		}
	}
}

func TestLaunchReportsEarlyExitWithConsole(t *testing.T) {
	d, m := newMachine(t)
	m.ID = "not_valid" // Firecracker aborts on ids with anything but alphanumerics and '-'
	_, err := d.Launch(context.Background(), m)
	if err == nil {
		t.Fatal("Launch succeeded with an invalid instance id")
	}
	if !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "Invalid instance ID") {
		t.Fatalf("error %q should say the VMM exited and quote its console", err)
	}
}

func TestIdentifyRefusesOtherInstance(t *testing.T) {
	d, m := newMachine(t)
	ctx := context.Background()
	p, err := d.Launch(ctx, m)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	other := m
	other.ID = "fedcba9876543210"
	err = d.Identify(ctx, other, p)
	if err == nil || !strings.Contains(err.Error(), `answers for instance "0123456789abcdef"`) {
		t.Fatalf("Identify with the wrong id = %v", err)
	}
	moved := m
	moved.APISock += ".other"
	if err := d.Identify(ctx, moved, p); err == nil || !strings.Contains(err.Error(), "argv") {
		t.Fatalf("Identify with another socket path = %v", err)
	}
}

func TestIdentifyRefusesProcessWithoutAPI(t *testing.T) {
	d, m := newMachine(t)
	// Something that carries the right argv pair but is not a VMM.
	p, err := system.StartDetached(system.DetachedSpec{Argv: []string{"sh", "-c", "sleep 30; :", "fake", "--api-sock", m.APISock, "--id", m.ID}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill(3 * time.Second) })
	err = d.Identify(context.Background(), m, p)
	if err == nil || !strings.Contains(err.Error(), "GET /") {
		t.Fatalf("Identify of a non-VMM = %v, want a failed GET /", err)
	}
	dead := system.Process{PID: p.PID, Start: p.Start + 1}
	if err := d.Identify(context.Background(), m, dead); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Fatalf("Identify of a reused pid = %v", err)
	}
}

func TestVersion(t *testing.T) {
	needDouble(t)
	v, err := Version(context.Background(), doubleBin)
	if err != nil {
		t.Fatal(err)
	}
	if v != "v"+fcdouble.Version {
		t.Fatalf("Version = %q, want v%s", v, fcdouble.Version)
	}
}

func TestBootArgs(t *testing.T) {
	_, m := newMachine(t)
	if got, want := bootArgs(m), "console=ttyS0 reboot=k panic=1 ip=172.30.0.2::172.30.0.1:255.255.255.0:web:eth0:off init=/sbin/init quiet"; got != want {
		t.Fatalf("bootArgs = %q, want %q", got, want)
	}
	m.GuestIP, m.BootArgs = "", "  "
	if got, want := bootArgs(m), "console=ttyS0 reboot=k panic=1"; got != want {
		t.Fatalf("bootArgs without network = %q, want %q", got, want)
	}
}

func TestShutdownRespectsContext(t *testing.T) {
	d, m := newMachine(t)
	t.Setenv(fcdouble.EnvIgnoreCAD, "1")
	p, err := d.Launch(context.Background(), m)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// With the context gone the wait is cut short and the VMM killed, not left running.
	if err := d.Shutdown(ctx, m, p, time.Hour, false); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if p.Alive() {
		t.Fatal("firecracker still alive")
	}
}
