package daemon

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
)

// What an interrupted snapshot, fork or atomic write of an earlier daemon
// left is removed at the next start: a snapshot dir without meta.json, a
// fork's temporary snapshot no clone needs, ".NAME.tmp*" files in a VM's
// dir. A named snapshot, and anything newer than the daemon, stay.
func TestStartupSweepsLeftovers(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.importImage()
	ctx := context.Background()
	vm := e.createStarted("web")
	if _, err := e.c.SuspendVM(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.SnapshotVM(ctx, "web", client.SnapshotRequest{As: "keep"}); err != nil {
		t.Fatal(err)
	}
	e.crash()

	snaps := filepath.Join(e.cfg.StateDir, "snapshots")
	meta, err := os.ReadFile(filepath.Join(snaps, "keep", "meta.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(meta, &m)
	m["name"], m["temporary"] = "fork-0123456789ab", true
	tempMeta, _ := json.Marshal(m)
	past := time.Now().Add(-time.Hour)
	plant := func(path string, data []byte) string {
		t.Helper()
		os.MkdirAll(filepath.Dir(path), 0o750)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(path, past, past)
		os.Chtimes(filepath.Dir(path), past, past)
		return path
	}
	fork := filepath.Dir(plant(filepath.Join(snaps, "fork-0123456789ab", "meta.json"), tempMeta))
	half := filepath.Dir(plant(filepath.Join(snaps, "half", "root.img"), []byte("partial")))
	tmp := plant(filepath.Join(vm.Runtime.VMDir, ".handles.json.tmp123"), []byte("{"))
	os.Chtimes(vm.Runtime.VMDir, time.Now(), time.Now())
	// Made after the new daemon started: never its business.
	e.start()
	fresh := filepath.Join(snaps, "fresh")
	os.MkdirAll(fresh, 0o750)
	e.crash()
	os.Chtimes(fresh, time.Now().Add(time.Hour), time.Now().Add(time.Hour))
	e.start()

	waitUntil(t, "leftovers removed", 5*time.Second, func() bool {
		_, e1 := os.Stat(fork)
		_, e2 := os.Stat(half)
		_, e3 := os.Stat(tmp)
		return os.IsNotExist(e1) && os.IsNotExist(e2) && os.IsNotExist(e3)
	})
	if _, err := os.Stat(filepath.Join(snaps, "keep", "meta.json")); err != nil {
		t.Errorf("named snapshot removed: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a snapshot dir newer than the daemon was removed: %v", err)
	}
	if got, err := e.c.GetVM(ctx, "web"); err != nil || got.Runtime.State != client.StateSuspended {
		t.Errorf("vm after the sweep: %v %v, want suspended", got.Runtime.State, err)
	}
	// doctor counts what is left: the named snapshot and its files.
	rep, err := e.c.Doctor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	detail := ""
	for _, c := range rep.Checks {
		if c.Name == "snapshots" {
			detail = c.Detail
		}
	}
	if !strings.HasPrefix(detail, "1 snapshots, 4 files, ") {
		t.Errorf("doctor's snapshots check: %q, want 1 snapshot of 4 files", detail)
	}
}
