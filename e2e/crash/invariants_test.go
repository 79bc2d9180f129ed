package crash

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

// TestInvariantsSeeLeaks checks the checker: each kind of leftover the
// crash tests look for, planted by hand behind the daemon's back, must be
// reported; a clean installation must not be.
func TestInvariantsSeeLeaks(t *testing.T) {
	in := newInstallation(t)
	in.restart()
	in.importImage()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := in.client()
	for _, name := range []string{"run", "idle"} {
		if _, err := c.CreateVM(ctx, createSpec(name)); err != nil {
			t.Fatal(err)
		}
	}
	vm, err := c.StartVM(ctx, "run")
	if err != nil {
		t.Fatal(err)
	}
	idle, err := c.GetVM(ctx, "idle")
	if err != nil {
		t.Fatal(err)
	}
	if bad := in.checkInvariants(ctx, nil); len(bad) > 0 {
		t.Fatalf("a clean installation reported:\n  %s", strings.Join(bad, "\n  "))
	}

	expect := func(what, want string) {
		t.Helper()
		bad := in.checkInvariants(ctx, nil)
		for _, b := range bad {
			if strings.Contains(b, want) {
				return
			}
		}
		t.Errorf("%s: no violation containing %q; got %q", what, want, bad)
	}
	undo := func(fn func()) { t.Helper(); fn(); in.waitReady() }

	// A VMM for a VM that is not running, and one no VM accounts for.
	idleRun := filepath.Join(in.run, "vm", idle.ID[:16])
	os.MkdirAll(idleRun, 0o750)
	stray, err := system.StartDetached(system.DetachedSpec{Argv: []string{helpers.fcDouble, "--api-sock", filepath.Join(idleRun, "api.sock"), "--id", idle.ID}})
	if err != nil {
		t.Fatal(err)
	}
	waitFile(filepath.Join(idleRun, "api.sock"), 5*time.Second)
	expect("a vmm serving a created vm's socket", "vm idle (created): fc-double pid")
	expect("a vmm serving a created vm's socket", "vm idle (created): api.sock left in its run dir")
	undo(func() { stray.Kill(5 * time.Second); os.Remove(filepath.Join(idleRun, "api.sock")) })

	orphanRun := filepath.Join(in.run, "vm", randomHex(16))
	os.MkdirAll(orphanRun, 0o750)
	lone, err := system.StartDetached(system.DetachedSpec{Argv: []string{helpers.fcDouble, "--api-sock", filepath.Join(orphanRun, "api.sock"), "--id", randomHex(32)}})
	if err != nil {
		t.Fatal(err)
	}
	waitFile(filepath.Join(orphanRun, "api.sock"), 5*time.Second)
	expect("a vmm no vm accounts for", "belongs to no vm")
	expect("a vmm no vm accounts for", "gc --dry-run would remove process")
	undo(func() { lone.Kill(5 * time.Second) })
	expect("a run dir no vm accounts for", "run dir "+filepath.Base(orphanRun)+" belongs to no vm")
	undo(func() { os.RemoveAll(orphanRun) })

	// Scratch files and directories.
	handles := filepath.Join(in.state, "vms", idle.ID, "handles.json")
	os.MkdirAll(filepath.Dir(handles), 0o750)
	os.WriteFile(handles, []byte(`{"pid": 1}`), 0o600)
	expect("handles.json of a created vm", "vm idle (created): handles.json left")
	undo(func() { os.Remove(handles) })
	os.RemoveAll(filepath.Dir(handles))

	orphanVM := filepath.Join(in.state, "vms", randomHex(32))
	os.MkdirAll(orphanVM, 0o750)
	expect("a vm dir no vm accounts for", "vm dir "+filepath.Base(orphanVM)+" belongs to no vm")
	expect("a vm dir no vm accounts for", "gc --dry-run would remove vmdir")
	undo(func() { os.RemoveAll(orphanVM) })

	// Confinement leftovers: a jail of a VM that is not running, and a
	// cgroup no VM accounts for.
	jail := filepath.Join(in.run, "jail", idle.ID[:16])
	os.MkdirAll(jail, 0o700)
	expect("a jail of a created vm", "vm idle (created): jail "+jail+" left")
	undo(func() { os.Remove(jail) })
	if parents := in.cgroupParents(); len(parents) > 0 {
		stray := filepath.Join(parents[0], randomHex(32))
		if err := os.MkdirAll(stray, 0o755); err != nil {
			t.Fatal(err)
		}
		expect("a cgroup no vm accounts for", "cgroup "+stray+" belongs to no vm")
		undo(func() { syscall.Rmdir(stray) })
	}

	os.Remove(filepath.Join(in.state, "vms", vm.ID, "handles.json"))
	expect("a running vm without handles.json", "vm run (running): no handles.json")
	undo(func() {
		// Restart so reconcile writes the scratch file again.
		in.kill9()
		in.restart()
	})

	// The running VM's VMM dies behind the daemon's back: until the exit
	// watcher notices, the VM is recorded running but not alive.
	for _, d := range in.doubles(nil) {
		if d.sock == vm.Runtime.APISockPath {
			syscall.Kill(d.pid, syscall.SIGKILL)
		}
	}
	expect("a running vm whose vmm died", "vm run (running): not proven alive")

	if bad := in.deleteAll(ctx, true); len(bad) > 0 {
		t.Fatalf("delete every vm:\n  %s", strings.Join(bad, "\n  "))
	}
	os.MkdirAll(filepath.Join(in.state, "vms", randomHex(32)), 0o750)
	if bad := in.checkEmpty(ctx); len(bad) == 0 {
		t.Error("checkEmpty missed a vm dir left behind")
	}
	if in.ns != nil {
		// A tap no vm accounts for (made in the installation's namespace).
		tap := "bgr" + randomHex(12)
		if _, err := (system.ExecRunner{}).Run(ctx, "nsenter", "--net="+in.ns.path, "--", "ip", "tuntap", "add", "dev", tap, "mode", "tap"); err != nil {
			t.Fatalf("ip tuntap add: %v", err)
		}
		expect("a tap no vm accounts for", "tap "+tap+" belongs to no vm")
	}
	in.kill9()
}
