package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

// Orphans planted beside a live VM: doctor flags exactly them, gc removes
// exactly them, a second gc finds nothing, and the live VM is untouched.
func TestDoctorAndGCOrphans(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	ctx := context.Background()
	live := e.createStarted("keeper")
	lh := e.handles(live)

	// An orphan VMM: a double serving a socket under our run dir for no VM.
	orphanDir := filepath.Join(e.cfg.RunDir, "vm", "0badc0de0badc0de")
	os.MkdirAll(orphanDir, 0o750)
	orphanSock := filepath.Join(orphanDir, "api.sock")
	op, err := system.StartDetached(system.DetachedSpec{Argv: []string{e.cfg.FirecrackerBin, "--api-sock", orphanSock, "--id", "orphan"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { op.Kill(time.Second) })
	// An orphan tap, dm device and loop, and a VM directory with no row.
	e.net.CreateTap(ctx, "bgrorphan00000")
	orphanFile := filepath.Join(e.cfg.StateDir, "vms", "0badc0de0badc0de0badc0de0badc0de", "root.cow")
	os.MkdirAll(filepath.Dir(orphanFile), 0o750)
	os.WriteFile(orphanFile, make([]byte, 1<<20), 0o600)
	loop, err := e.host.Run(ctx, "losetup", "--find", "--show", orphanFile)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(orphanSock); err == nil {
			break
		}
	}

	rep, err := e.c.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	orphans := map[string]bool{}
	for _, o := range rep.Objects {
		if o.Orphan {
			orphans[o.Kind+":"+o.Name] = true
		} else if o.VM != "keeper" {
			t.Errorf("object %+v owned by unknown vm", o)
		}
	}
	want := []string{"process:" + strconv.Itoa(op.PID), "tap:bgrorphan00000", "loop:" + strings.TrimSpace(string(loop)),
		"rundir:0badc0de0badc0de", "vmdir:0badc0de0badc0de0badc0de0badc0de"}
	for _, w := range want {
		if !orphans[w] {
			t.Errorf("doctor did not flag %s; objects: %+v", w, rep.Objects)
		}
	}
	for _, own := range []string{"tap:" + lh.TapDevice, "process:" + strconv.Itoa(lh.PID), "dm:" + lh.DMName, "vmdir:" + live.ID} {
		if orphans[own] {
			t.Errorf("live vm's %s flagged as orphan", own)
		}
	}
	if rep.RootDiskMethod != "dm-snapshot" {
		t.Errorf("root disk method %q", rep.RootDiskMethod)
	}

	dry, err := e.c.GC(ctx, true)
	if err != nil || len(dry.Removed) != len(orphans) {
		t.Fatalf("dry run: %+v %v", dry, err)
	}
	if !op.Alive() {
		t.Fatal("dry run killed the orphan")
	}
	res, err := e.c.GC(ctx, false)
	if err != nil || len(res.Errors) > 0 {
		t.Fatalf("gc: %+v %v", res, err)
	}
	if op.Alive() {
		t.Error("orphan vmm survived gc")
	}
	if e.net.taps["bgrorphan00000"] {
		t.Error("orphan tap survived gc")
	}
	if strings.Contains(e.host.State(), orphanFile) && strings.Contains(e.host.State(), "loop ") {
		for _, l := range strings.Split(e.host.State(), "\n") {
			if strings.HasPrefix(l, "loop ") && strings.Contains(l, orphanFile) {
				t.Errorf("orphan loop survived: %s", l)
			}
		}
	}
	if _, err := os.Stat(filepath.Dir(orphanFile)); !os.IsNotExist(err) {
		t.Error("orphan vm dir survived gc")
	}
	again, err := e.c.GC(ctx, false)
	if err != nil || len(again.Removed) != 0 {
		t.Fatalf("second gc removed %+v (%v)", again.Removed, err)
	}
	vm, err := e.c.GetVM(ctx, "keeper")
	if err != nil || vm.Live == nil || !vm.Live.Alive {
		t.Fatalf("live vm hurt by gc: %+v %v", vm.Live, err)
	}
}

// doctor flags a running VMM that is not confined.
func TestDoctorFlagsUnconfined(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.importImage()
	e.createStarted("loose")
	rep, err := e.c.Doctor(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	found, agent := false, false
	for _, c := range rep.Checks {
		if c.Name == "unconfined-vmms" {
			found = !c.OK && strings.Contains(c.Detail, "loose")
		}
		// The test binary has no banger-agent beside it: doctor says where
		// it is looked for, or where it was found.
		if c.Name == "guest-agent" {
			agent = c.OK && strings.Contains(c.Detail, "banger-agent") || !c.OK && strings.Contains(c.Detail, "agent_bin")
		}
	}
	if !found {
		t.Fatalf("doctor did not flag the unconfined vm: %+v", rep.Checks)
	}
	if !agent {
		t.Errorf("doctor has no guest-agent check, or an unhelpful one: %+v", rep.Checks)
	}
}
